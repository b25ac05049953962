"""Checkpoints holding the full training state, so a killed run resumes exactly where it stopped.

A checkpoint is one ``torch.save`` dict: ``model``, ``optimizer``, ``scheduler``, ``scaler``,
``epoch`` (the epoch in progress), ``step`` (optimiser steps done), ``step_in_epoch``, ``rng``
(Python, NumPy, torch CPU and CUDA states), ``config`` (the plain-dict config that built the run),
``format`` and anything the caller adds under ``extra``. Files are written atomically
(temp file + rename): ``last.pt`` always, the ``keep`` newest ``step-XXXXXXX.pt``, ``best.pt`` on demand.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.errors import ModelError
from trainer.engine.optim import resume_schedule

CHECKPOINT_FORMAT = "featherface-train-state/1"


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop touches."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())  # a checkpoint loaded onto a GPU moved it there
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Checkpointer:
    """Saves and loads training-state checkpoints in ``out_dir`` (rank 0 only calls :meth:`save`)."""

    def __init__(self, out_dir: str | Path, keep: int = 3) -> None:
        self.dir = Path(out_dir)
        self.keep = keep

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    def save(self, state: dict[str, Any], best: bool = False) -> Path:
        """Write ``state`` (plus RNG states and the format tag) as ``last.pt`` and ``step-N.pt``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {**state, "format": CHECKPOINT_FORMAT, "rng": rng_state()}
        path = self.dir / f"step-{int(state['step']):07d}.pt"
        _atomic_save(state, path)
        _atomic_save(state, self.last)
        if best:
            _atomic_save(state, self.dir / "best.pt")
        if self.keep > 0:  # keep=0 keeps every step file
            for old in sorted(self.dir.glob("step-*.pt"))[: -self.keep]:
                old.unlink(missing_ok=True)
        return path

    def load(
        self, path: str | Path | None = None, map_location: str | torch.device = "cpu"
    ) -> dict[str, Any]:
        """Read a checkpoint (``last.pt`` by default); :class:`ModelError` when absent or foreign."""
        path = Path(path) if path is not None else self.last
        if not path.is_file():
            raise ModelError(f"no checkpoint to resume from: {path}")
        try:
            # Our own files: they hold NumPy RNG state and config dicts, which weights_only refuses.
            state = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc:
            raise ModelError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from exc
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ModelError(f"{path} is not a featherface training checkpoint ({CHECKPOINT_FORMAT})")
        return state


def restore(
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    restore_rng: bool = True,
) -> None:
    """Load every part of a checkpoint into the live objects (strict for the model).

    A per-step ``LambdaLR`` keeps the live schedule and peak rates (:func:`resume_schedule`): a run
    resumed with a longer schedule or another rate follows the config it was resumed with.
    """
    model.load_state_dict(state["model"], strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        base_lrs = list(scheduler.base_lrs)
        scheduler.load_state_dict(state["scheduler"])
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            resume_schedule(scheduler, base_lrs, scheduler.last_epoch)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if restore_rng and "rng" in state:
        set_rng_state(state["rng"])


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
