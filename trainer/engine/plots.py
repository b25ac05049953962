"""Loss-curve PNGs from the metrics log (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_losses(
    rows: Sequence[dict[str, Any]],
    out_png: str | Path,
    keys: Sequence[str] = ("loss", "loc", "conf", "landm"),
    x: str = "step",
    title: str = "training loss",
    kind: str | None = "train",
) -> Path | None:
    """One panel per key (log-scale y) plus the learning rate, against ``x``; ``None`` if no data.

    ``kind`` selects rows whose ``kind`` field equals it (``None``: all rows).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if kind is None or r.get("kind") == kind]
    keys = [k for k in keys if any(k in r for r in rows)]
    if not rows or not keys:
        return None
    panels = [*keys, "lr"] if any("lr" in r for r in rows) else list(keys)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        pts = [(r[x], r[key]) for r in rows if key in r and x in r and r[key] is not None]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, lw=1.2)
            if key != "lr" and min(ys) > 0:
                ax.set_yscale("log")
        ax.set_title(key)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
