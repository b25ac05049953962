"""``featherface-train info``: a per-module parameter table, totals and MACs of a model variant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from edge.errors import ConfigError
from trainer.eval.complexity import count_macs
from trainer.models import build_model, count_parameters, parameter_table

MAC_SIZES: tuple[tuple[int, int], ...] = ((320, 240), (640, 480))
V1_PARAMETERS = 592_371


def build_for_info(arch: str, config: str | Path | None = None) -> nn.Module:
    """``nano_b`` (from a pipeline config's ``[model]`` table, or defaults) or ``v1``; ``nano-b`` is the
    same name, as the other commands spell it. Files go through :func:`trainer.models.files.load_model`."""
    arch = arch.replace("-", "_")
    if arch == "nano_b" and config is not None:
        from trainer.models.nano_b import NanoB
        from trainer.pipeline.recipe import load_recipe

        return NanoB(load_recipe(config).model)
    if config is not None:
        raise ConfigError("--config applies to --arch nano_b only")
    return build_model(arch)


def model_info(model: nn.Module, depth: int = 1) -> dict[str, Any]:
    """Rows ``(module, params, share)``, the total, and MACs at :data:`MAC_SIZES`."""
    total = count_parameters(model)
    rows = [(name, n, n / total) for name, n in parameter_table(model, depth)]
    macs = {f"{w}x{h}": count_macs(model.eval(), w, h) for w, h in MAC_SIZES}
    return {"rows": rows, "total": total, "macs": macs, "vs_v1": total / V1_PARAMETERS}


def print_info(title: str, info: dict[str, Any]) -> None:
    """The table with rich (plain text when piped)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("module")
    table.add_column("parameters", justify="right")
    table.add_column("share", justify="right")
    for name, n, share in info["rows"]:
        table.add_row(name, f"{n:,}", f"{100 * share:.1f} %")
    table.add_section()
    table.add_row("total", f"{info['total']:,}", f"{100 * info['vs_v1']:.1f} % of V1")
    console = Console()
    console.print(table)
    for size, macs in info["macs"].items():
        console.print(f"MACs at {size}: {macs / 1e6:,.1f} M")
