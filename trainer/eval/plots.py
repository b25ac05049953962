"""PR-curve PNGs for a WIDER FACE evaluation (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

from trainer.eval.widerface import WiderResult


def plot_pr_curves(result: WiderResult, out_dir: str | Path, label: str = "model") -> list[Path]:
    """Write ``pr_<setting>.png`` per setting and ``pr_all.png`` with the three curves; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    fig_all, ax_all = plt.subplots(figsize=(6, 5))
    for setting, res in result.settings.items():
        curve_label = f"{label} ({100 * res.ap:.2f})"
        fig, ax = plt.subplots(figsize=(6, 5))
        for a, lab in ((ax, curve_label), (ax_all, f"{setting} {100 * res.ap:.2f}")):
            a.plot(res.recall, res.precision, linewidth=2.0, label=lab)
        ax.set_title(f"WIDER FACE val — {setting} ({res.faces} faces)")
        _decorate(ax)
        path = out_dir / f"pr_{setting}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    ax_all.set_title(f"WIDER FACE val — {label}")
    _decorate(ax_all)
    path = out_dir / "pr_all.png"
    fig_all.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig_all)
    paths.append(path)
    return paths


def _decorate(ax: object) -> None:
    ax.set_xlabel("Recall")  # type: ignore[attr-defined]
    ax.set_ylabel("Precision")  # type: ignore[attr-defined]
    ax.set_xlim(0.0, 1.0)  # type: ignore[attr-defined]
    ax.set_ylim(0.0, 1.01)  # type: ignore[attr-defined]
    ax.grid(True, alpha=0.3)  # type: ignore[attr-defined]
    ax.legend(loc="lower left")  # type: ignore[attr-defined]
