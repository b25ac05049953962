"""Reading weight files and strict loading with one-line :class:`ModelError` messages.

``torch.load`` and ``load_state_dict`` raise many exception types with multi-line messages; the
CLIs want one line naming the file and what is wrong, so every weight file goes through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from edge.errors import ModelError

# Keys written by a FLOPs profiler (thop) into the official checkpoints at every module level.
PROFILER_KEYS: tuple[str, ...] = ("total_ops", "total_params")


def read_state_dict(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """Load a ``state_dict`` (or a dict holding one under ``state_dict`` / ``model``) from ``path``.

    Raises :class:`ModelError` when the file is missing, unreadable or holds no tensor mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{what} file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file surfaces as pickle, zip or runtime errors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot read {what} file {path}: {reason}") from exc
    if isinstance(obj, Mapping):
        for inner in ("state_dict", "model"):
            if isinstance(obj.get(inner), Mapping):
                obj = obj[inner]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{what} file {path} holds no state_dict of tensors")
    return dict(obj)


def drop_profiler_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``total_ops`` / ``total_params`` entries at any level (``a.b.total_ops`` too)."""
    return {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in PROFILER_KEYS}


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``module.load_state_dict(state, strict=True)``, failing with a one-line :class:`ModelError`.

    The message names the first few missing, unexpected and mis-shaped keys and the ``source``.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{label}: {', '.join(keys[:3])}{more}")
    if problems:
        raise ModelError(f"{source} does not fit {type(module).__name__}: {'; '.join(problems)}")
    module.load_state_dict(state, strict=True)
