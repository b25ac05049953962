"""Model files the trainer reads back: each says which network it holds, and that network is rebuilt.

``load_model(path)`` is how ``evaluate``, ``export`` and ``info`` open a PyTorch file. What the file
holds decides the network, never its name:

- a V1 training checkpoint (``last.pt``, ``step-N.pt``, written by
  :class:`trainer.engine.Checkpointer`): its ``config`` is the run's config, whose ``[model]`` table
  names the variant and its options (``deformable`` for V1);
- a model checkpoint ``{"arch", "config", "model"}`` (``model_final.pth``, :func:`save_model`, what
  V1 training ends with): ``arch`` and the builder options in ``config``;
- a Nano-B student (``student.pt``, :func:`save_student`, written when each pipeline phase ends):
  ``arch``, ``config`` and the pruning ``spec``. A phase's own ``last.pt`` / ``step-N.pt`` is training
  state (student and KD weights, no architecture) and is refused with a pointer to ``student.pt``;
- a bare state dict (the official V1 ``.pth``, a ``model_final.pth`` of older runs): its keys. V1 is the
  network with ``bacbkbone_0_cbam.*`` keys, deformable when it has ``offset_conv`` keys.

``arch`` (``--arch``) is needed only for a bare state dict whose keys name no known network (a Nano-B
state dict: its options and pruned widths are not in its keys). Weights load with ``strict=True``;
every failure is one :class:`~edge.errors.ModelError` line naming the file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge.errors import ModelError
from trainer.layers.state import drop_profiler_keys, load_state_strict
from trainer.models.nano_b import NanoB, NanoBConfig, nano_b_from_state
from trainer.models.registry import build_model

TRAINING_CHECKPOINT = "featherface-train-state/1"  # trainer.engine.checkpoint.CHECKPOINT_FORMAT

# A training checkpoint also holds the NumPy RNG state: let exactly those types through the
# weights-only unpickler, instead of unpickling arbitrary objects from a file given on the command line.
_numpy_core = getattr(np, "_core", None) or np.core  # numpy 2 renamed np.core to np._core
_NUMPY_RNG_GLOBALS = [_numpy_core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _v1_options(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    return {"deformable": any(".offset_conv." in k for k in state)}


# Networks a bare state dict can be recognised as: a key prefix only that network has, and the
# builder options its keys reveal.
_SIGNATURES: dict[str, tuple[str, Callable[[Mapping[str, torch.Tensor]], dict[str, Any]]]] = {
    "v1": ("bacbkbone_0_cbam.", _v1_options),
}

# Options of a ``[model]`` table that initialise a network rather than shape it (not builder options
# once the trained weights are loaded over it).
_INIT_ONLY = {"name", "weights", "backbone_weights"}


def read_file(path: str | Path) -> Any:
    """``torch.load`` (weights only) with one-line :class:`ModelError` messages."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        with torch.serialization.safe_globals(_NUMPY_RNG_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged files surface as pickle, zip or runtime errors
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"cannot read model file {path}: {reason}") from exc


def _agree(path: Path, said: str | None, arch: str | None) -> str:
    """The network's registry name: what the file ``said``, which ``arch`` (``--arch``) may repeat."""
    said, arch = (str(a).replace("-", "_") if a else "" for a in (said, arch))
    if said and arch and arch != said:
        raise ModelError(f"{path} holds a {said} network, not {arch} (drop --arch: the file names it)")
    return said or arch


def describe(
    obj: Any, path: Path, arch: str | None = None
) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """``(arch, builder options, state dict)`` of a loaded file that is not a Nano-B student.

    ``arch`` names the network of a bare state dict; a file that names its own network must agree.
    """
    options: dict[str, Any] = {}
    state: Any = obj
    said: str | None = None
    if isinstance(obj, Mapping) and obj.get("format") == TRAINING_CHECKPOINT:
        table = (obj.get("config") or {}).get("model") or {}
        said = table.get("name")
        options = {k: v for k, v in table.items() if k not in _INIT_ONLY}
        state = obj.get("model")
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        said, options, state = obj.get("arch"), dict(obj.get("config") or {}), obj["model"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state = obj["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"model file {path} holds no state_dict of tensors")
    state = {k.removeprefix("module."): v for k, v in drop_profiler_keys(state).items()}
    name = _agree(path, said, arch)
    if not name:
        name = next((n for n, (key, _) in _SIGNATURES.items() if any(k.startswith(key) for k in state)), "")
    if not name:
        raise ModelError(f"{path} does not name its network; pass --arch (e.g. nano-b)")
    if not options and name in _SIGNATURES:
        options = _SIGNATURES[name][1](state)
    return name, options, state


def save_student(path: str | Path, model: NanoB, spec: dict | None, extra: dict | None = None) -> Path:
    """A Nano-B student: weights + builder config + pruning spec in one file (``weights_only``-loadable,
    no pickled modules), written atomically."""
    from trainer.config import to_dict

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "arch": "nano_b",
        "config": to_dict(model.cfg),
        "spec": spec,
        "state_dict": model.state_dict(),
        **(extra or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def load_kd_state(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The KD loss's learned weights saved with a student (None in files written before they were)."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    state = blob.get("kd_state") if isinstance(blob, dict) else None
    return dict(state) if state else None


def load_student(path: str | Path) -> tuple[NanoB, dict | None]:
    """Inverse of :func:`save_student`: ``(model in eval mode, spec)``; ModelError when it does not fit.

    The pruned widths are read off the saved tensors (:func:`~trainer.models.nano_b.nano_b_from_state`,
    the one way a pruned network is rebuilt); the spec rides along as the record of how it was pruned.
    """
    from trainer.config import from_dict

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Nano-B file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read Nano-B file {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(blob, dict) or blob.get("arch") != "nano_b":
        raise ModelError(f"{path} is not a Nano-B file (no arch 'nano_b')")
    cfg = from_dict(NanoBConfig, blob["config"], source=str(path), table="config")
    try:
        model = nano_b_from_state(cfg, blob["state_dict"])
    except ModelError as exc:
        raise ModelError(f"{path}: weights do not fit the recorded architecture: {exc}") from None
    return model.eval(), blob.get("spec")


def save_model(
    path: str | Path,
    state: Mapping[str, torch.Tensor],
    run_config: Mapping[str, Any] | None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """A trained network as a model checkpoint ``{"arch", "config", "model", "provenance"}``: the
    variant and builder options from the run config's ``[model]`` table, so :func:`load_model` needs
    no ``--arch``; written atomically."""
    table = dict((run_config or {}).get("model") or {})
    blob = {
        "arch": table.get("name"),
        "config": {k: v for k, v in table.items() if k not in _INIT_ONLY},
        "model": dict(state),
        "provenance": dict(provenance or {}),
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def load_model(path: str | Path, arch: str | None = None) -> tuple[nn.Module, str]:
    """A ``.pth`` / ``.pt`` file the trainer wrote (or the official V1) -> ``(model in eval mode, arch)``.

    See the module docstring for the kinds of file and what each says about its network.
    """
    path = Path(path)
    obj = read_file(path)
    if isinstance(obj, Mapping) and obj.get("arch") == "nano_b" and "spec" in obj:
        _agree(path, "nano_b", arch)
        # A pipeline student, possibly pruned: its widths come from its saved tensors.
        return load_student(path)[0].eval(), "nano_b"
    model_state = obj.get("model") if isinstance(obj, Mapping) else None
    if (
        isinstance(model_state, Mapping)
        and not obj.get("config")
        and any(k.startswith("student.") for k in model_state)
    ):
        raise ModelError(
            f"{path} is a Nano-B phase's training state (no architecture in it); use the student.pt "
            "its phase writes when it ends, in the same folder"
        )
    name, options, state = describe(obj, path, arch)
    model = build_model(name, **options)
    load_state_strict(model, state, str(path))
    return model.eval(), name


__all__ = [
    "describe",
    "load_kd_state",
    "load_model",
    "load_student",
    "read_file",
    "save_model",
    "save_student",
]
