"""The six B-FPGM layer groups, their pruning-rate bounds, and rate validation.

A model that can be pruned exposes ``prune_groups() -> dict[str, list[nn.Module]]``: for each group
name, the convs / linears whose *output filters* may be removed. Depthwise convs are not listed: they
follow their producer through the dependency graph. The final head convs (anchors x {2, 4, 10}
outputs) are never listed, and any coupled channel set that reaches a model output is refused anyway.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from edge.errors import ConfigError

# DESIGN §3: per-group bounds on the fraction of output filters removed.
GROUP_BOUNDS: dict[str, tuple[float, float]] = {
    "backbone_early": (0.0, 0.4),
    "backbone_late": (0.1, 0.6),
    "cbam": (0.1, 0.6),
    "bifpn": (0.1, 0.6),
    "ssh": (0.1, 0.6),
    "heads": (0.0, 0.3),
}
GROUP_NAMES: tuple[str, ...] = tuple(GROUP_BOUNDS)

PruneGroups = dict[str, list[nn.Module]]


def validate_rates(
    rates: Mapping[str, float], bounds: Mapping[str, tuple[float, float]] = GROUP_BOUNDS
) -> dict[str, float]:
    """Return ``rates`` as a plain dict after checking names and bounds (missing groups -> 0 only if 0 is
    allowed). Raises ConfigError naming the offending group."""
    out: dict[str, float] = {}
    for name in rates:
        if name not in bounds:
            raise ConfigError(f"unknown pruning group {name!r} (known: {', '.join(bounds)})")
    for name, (lo, hi) in bounds.items():
        if name not in rates:
            if lo > 0.0:
                raise ConfigError(f"pruning rate for group {name!r} missing (bounds [{lo}, {hi}])")
            out[name] = 0.0
            continue
        r = float(rates[name])
        # A tiny tolerance: rates come back from JSON / Optuna as floats at the bound itself.
        if not (lo - 1e-9 <= r <= hi + 1e-9):
            raise ConfigError(f"pruning rate {r:.4g} for group {name!r} outside its bounds [{lo}, {hi}]")
        out[name] = min(max(r, lo), hi)
    return out


def validate_groups(groups: Mapping[str, list[nn.Module]]) -> PruneGroups:
    """Check a model's ``prune_groups()``: known names, conv / linear members, no module in two groups."""
    seen: dict[int, str] = {}
    out: PruneGroups = {}
    for name, modules in groups.items():
        if name not in GROUP_BOUNDS:
            raise ConfigError(
                f"model declares unknown pruning group {name!r} (known: {', '.join(GROUP_NAMES)})"
            )
        for m in modules:
            if not isinstance(m, nn.Conv2d | nn.Linear):
                raise ConfigError(f"pruning group {name!r} holds a {type(m).__name__}; only Conv2d/Linear")
            if id(m) in seen:
                raise ConfigError(f"a module is in both pruning groups {seen[id(m)]!r} and {name!r}")
            seen[id(m)] = name
        out[name] = list(modules)
    return out


def model_groups(model: nn.Module) -> PruneGroups:
    """The validated ``prune_groups()`` of ``model`` (a ConfigError if it has none)."""
    fn = getattr(model, "prune_groups", None)
    if fn is None:
        raise ConfigError(f"{type(model).__name__} has no prune_groups(); it cannot be B-FPGM pruned")
    return validate_groups(fn())
