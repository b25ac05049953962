"""An explicit model registry: variants register a builder under a name; tests iterate over them.

    @register("v1")
    def build_v1(deformable: bool = True) -> nn.Module: ...

    model = build_model("v1", deformable=False)

Every builder takes keyword arguments only (its config) and returns an ``nn.Module`` whose
``forward(x)`` returns raw ``(loc (N,A,4), conf logits (N,A,2), landmarks (N,A,10))`` over the priors
of :func:`edge.anchors.prior_boxes`. Variants are registered when their module is imported;
``trainer.models`` imports all of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from edge.errors import ConfigError

Builder = Callable[..., nn.Module]
B = TypeVar("B", bound=Builder)

_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[B], B]:
    """Decorator: register ``builder`` under ``name`` (a second builder for one name is a bug)."""

    def deco(builder: B) -> B:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].__module__})")
        _REGISTRY[name] = builder
        return builder

    return deco


def available_models() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


def build_model(name: str, **cfg: object) -> nn.Module:
    """Build variant ``name`` with config ``cfg``; unknown names / keys raise :class:`ConfigError`."""
    builder = _REGISTRY.get(name)
    if builder is None:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(available_models()) or 'none'}")
    try:
        inspect.signature(builder).bind(**cfg)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: bad config: {exc}") from exc
    return builder(**cfg)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Sum of ``numel`` over the model's parameters (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parameter_table(model: nn.Module, depth: int = 1) -> list[tuple[str, int]]:
    """``(module_name, params)`` for each submodule at ``depth`` (1 = direct children), in order.

    Parameters held directly by a shallower module appear under its own name, so the counts
    always sum to :func:`count_parameters`; modules without parameters are left out.
    """
    rows: list[tuple[str, int]] = []

    def walk(module: nn.Module, prefix: str, level: int) -> None:
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if level == depth:
            total = sum(p.numel() for p in module.parameters())
            if total:
                rows.append((prefix, total))
            return
        if own:
            rows.append((prefix or "(root)", own))
        for child_name, child in module.named_children():
            walk(child, f"{prefix}.{child_name}" if prefix else child_name, level + 1)

    walk(model, "", 0)
    return rows
