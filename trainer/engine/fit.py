"""V1's resumable training driver (DDP, AMP), counted in epochs: the epoch view of the engine's one
step loop (:func:`~trainer.engine.loop.train_loop`), which the Nano-B phases run too.

``fit`` reads top to bottom: build the optimiser, schedule and AMP scaler; restore a checkpoint when
resuming; then run ``epochs x steps_per_epoch`` steps (or ``max_steps``) from one endless stream of
this rank's batches (each epoch's seeded order, the batches already done skipped), closing each epoch
with its mean losses, a checkpoint and the loss plot on rank 0. Stopping at ``max_steps`` and resuming
reproduces an uninterrupted run exactly (on CPU; on CUDA up to non-deterministic kernels).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from edge.errors import ConfigError
from trainer.data.dataset import batches_per_epoch, endless_batches
from trainer.engine.checkpoint import Checkpointer, restore
from trainer.engine.ddp import DistInfo, average_gradients, barrier, unwrap, wrap_model
from trainer.engine.log import JsonlLogger
from trainer.engine.loop import LoopSettings, StepFn, TrainState, close_epoch, train_loop
from trainer.engine.optim import OptimConfig, build_optimizer, build_scheduler
from trainer.engine.plots import plot_losses
from trainer.models.files import save_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """The ``[run]`` table: length, seed, device, checkpoints and logging of a training run."""

    out_dir: str = "runs/v1"
    epochs: int = 250
    max_steps: int = 0  # stop (with a checkpoint) after this many optimiser steps; 0 = all epochs
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # float16 autocast + GradScaler, CUDA only
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    log_every: int = 20  # steps between log rows
    save_every_steps: int = 0  # extra mid-epoch checkpoints; 0 = end of each epoch only
    keep_checkpoints: int = 3  # step-*.pt files kept (last.pt always)
    progress: bool = True  # tqdm bars (rank 0)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.max_steps < 0 or self.log_every < 0 or self.save_every_steps < 0:
            raise ValueError("epochs must be >= 1; max_steps, log_every, save_every_steps >= 0")


@dataclass(frozen=True)
class FitResult:
    state: TrainState
    out_dir: Path
    final_weights: Path | None  # the trained model as a self-describing model checkpoint (rank 0)


def fit(
    model: nn.Module,
    dataset: Dataset,
    step_fn: StepFn,
    optim_cfg: OptimConfig,
    run: RunConfig,
    info: DistInfo,
    *,
    batch_size: int,
    num_workers: int = 0,
    config: dict[str, Any] | None = None,
    resume: bool | str | Path = False,
    extra_state: dict[str, Any] | None = None,
    aux: nn.Module | None = None,
) -> FitResult:
    """Train ``model`` on ``dataset`` with ``step_fn``; see the module doc.

    ``config`` is stored in every checkpoint (and ``extra_state`` under ``extra``); ``resume`` is True
    (``out_dir/last.pt``) or a checkpoint path; a fresh run refuses a folder that already holds one.
    ``aux`` is a module with trainable parameters outside the model (e.g. learnable loss weights in
    ``step_fn``): optimised alongside it, saved under ``aux`` and restored on resume.
    """
    out = Path(run.out_dir)
    steps_per_epoch = batches_per_epoch(dataset, batch_size, info.world_size)
    if steps_per_epoch < 1:
        raise ConfigError(
            f"data: {len(dataset)} images give no full batch of {batch_size} per process; "
            "lower data.batch_size"
        )
    total_steps = run.epochs * steps_per_epoch

    model = wrap_model(model, info)
    if aux is not None:
        aux.to(info.device)
        average_gradients(aux, info)  # DDP averages the model's gradients only
    optimizer = build_optimizer(unwrap(model), optim_cfg, aux)
    scheduler = build_scheduler(optimizer, optim_cfg, total_steps, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=run.amp and info.device.type == "cuda")
    ckpt = Checkpointer(out, keep=run.keep_checkpoints)
    state = TrainState()
    if not resume and ckpt.last.exists():
        raise ConfigError(f"{out} already holds a training run (last.pt): use --resume or another --out")
    if resume:
        # On the CPU: the RNG states must stay CPU tensors; load_state_dict copies weights to the device.
        saved = ckpt.load(None if resume is True else resume, map_location="cpu")
        restore(saved, unwrap(model), optimizer, scheduler, scaler)
        if aux is not None:
            aux.load_state_dict(saved["aux"])
        changed = _changed_keys(saved.get("config") or {}, config or {})
        if changed and info.is_main:
            log.warning("resuming with a changed config: %s", ", ".join(changed))
        state = TrainState(saved["epoch"], saved["step"], saved["step_in_epoch"], saved["epoch_sums"])
        saved_per = saved.get("steps_per_epoch", steps_per_epoch)  # absent from older checkpoints
        if saved_per != steps_per_epoch or state.epoch * steps_per_epoch + state.step_in_epoch != state.step:
            raise ConfigError(
                f"{ckpt.last if resume is True else resume}: saved at {saved_per} steps an epoch, this run "
                f"has {steps_per_epoch}; resume with the batch size and number of processes it started with"
            )
    logger = JsonlLogger(out, resume_step=state.step if resume else None) if info.is_main else None

    def save() -> None:
        ckpt.save(
            {
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": state.epoch,
                "step": state.step,
                "step_in_epoch": state.step_in_epoch,
                "steps_per_epoch": steps_per_epoch,  # the data position resume relies on
                "epoch_sums": dict(state.epoch_sums),
                "config": config or {},
                "extra": extra_state or {},
                "aux": aux.state_dict() if aux is not None else {},
            }
        )

    def end_epoch(epoch: int, means: dict[str, float]) -> None:
        if logger is not None:
            logger.log({"kind": "epoch", "step": state.step, "epoch": epoch, **means})
            plot_losses(logger.rows(), out / "loss_curves.png")

    if state.step_in_epoch >= steps_per_epoch:  # saved between an epoch's last step and its close
        close_epoch(state, info, end_epoch)
        if info.is_main:
            save()
        barrier(info)
    stop = min(run.max_steps, total_steps) if run.max_steps else total_steps
    if state.step < stop:
        batches = endless_batches(
            dataset,
            batch_size,
            run.seed,
            num_workers,
            start_batch=state.step,
            rank=info.rank,
            world_size=info.world_size,
        )
        settings = LoopSettings(
            name="train",
            amp=run.amp,
            grad_clip=run.grad_clip,
            log_every=run.log_every,
            save_every=run.save_every_steps,
            steps_per_epoch=steps_per_epoch,
            progress=run.progress,
        )
        try:
            train_loop(
                model,
                batches,
                step_fn,
                optimizer,
                scheduler,
                scaler,
                info,
                state,
                stop,
                settings,
                logger=logger,
                save=save,
                on_epoch=end_epoch,
            )
        finally:
            batches.close()  # stop the loader's workers now

    final = None
    if info.is_main:
        if logger is not None:
            plot_losses(logger.rows(), out / "loss_curves.png")
        final = save_model(
            out / "model_final.pth",
            unwrap(model).state_dict(),
            config,
            {"run": str(out), "step": state.step, "epoch": state.epoch},
        )
    barrier(info)
    return FitResult(state, out, final)


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out
