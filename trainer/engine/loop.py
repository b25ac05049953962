"""The one training loop: V1 (:func:`~trainer.engine.fit.fit`) and the three Nano-B phases
(:func:`trainer.pipeline.train.train_steps`) both run :func:`train_loop`.

Steps are the unit. :func:`train_loop` takes optimiser steps ``[state.step, stop)`` from an endless
batch iterator; each is :func:`optimizer_step`: batch to the device, ``step_fn(model, images,
targets) -> {"loss": total, ...}`` under autocast (CUDA with ``amp``), the NaN/inf guard, backward
through the AMP scaler, gradient clipping, optimiser and schedule step. Around the steps the loop logs
the window's mean losses (averaged over DDP ranks) every ``log_every`` steps, checkpoints through the
caller's ``save`` (rank 0, then a barrier) every ``save_every`` steps and at the end, and, with
``steps_per_epoch``, keeps the epoch view: per-epoch mean losses, an ``on_epoch`` call and a
checkpoint at every epoch's end. A caller's ``before_step(step)`` runs before each step (soft
pruning's re-zeroing) and may add values to the next log row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from edge.errors import FeatherFaceError
from trainer.engine.ddp import DistInfo, barrier, mean_across_ranks
from trainer.engine.log import JsonlLogger
from trainer.loss.multibox import MultiBoxLoss

StepFn = Callable[[nn.Module, torch.Tensor, Sequence[torch.Tensor]], dict[str, torch.Tensor | float]]
Batch = tuple[torch.Tensor, Sequence[torch.Tensor]]


class DivergedError(FeatherFaceError):
    """The loss became NaN or infinite (learning rate too high, or broken data)."""


@dataclass
class TrainState:
    """Progress counters stored in every checkpoint; the epoch fields are the epoch view of ``step``."""

    epoch: int = 0  # epoch in progress (0-based)
    step: int = 0  # optimiser steps done in the whole run
    step_in_epoch: int = 0  # optimiser steps done in ``epoch``
    # Running loss sums of the epoch in progress, checkpointed so a resumed epoch's mean is exact.
    epoch_sums: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LoopSettings:
    """How :func:`train_loop` runs: its name in logs and errors, AMP, clipping, cadences."""

    name: str = "train"
    amp: bool = False  # float16 autocast + the caller's GradScaler, CUDA only
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    log_every: int = 10  # steps between log rows (and the last step); 0 = no rows
    save_every: int = 0  # steps between checkpoints (and the last step, and epoch ends)
    steps_per_epoch: int = 0  # > 0: the epoch view
    progress: bool = True  # a tqdm bar on rank 0


def multibox_step(loss_fn: MultiBoxLoss) -> StepFn:
    """The V1 step: forward, then the MultiBox loss; keys ``loss``, ``loc``, ``conf``, ``landm``."""

    def step(
        model: nn.Module, images: torch.Tensor, targets: Sequence[torch.Tensor]
    ) -> dict[str, torch.Tensor | float]:
        parts = loss_fn(model(images), targets)
        return {"loss": parts.total, "loc": parts.loc, "conf": parts.conf, "landm": parts.landm}

    return step


def optimizer_step(
    model: nn.Module,
    batch: tuple[torch.Tensor, Sequence[torch.Tensor]],
    step_fn: StepFn,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    *,
    device: torch.device,
    amp: bool = False,
    grad_clip: float = 0.0,
    clip_params: Iterable[nn.Parameter] | None = None,
    where: str = "",
    info: DistInfo | None = None,
) -> dict[str, float]:
    """One optimiser step on ``batch`` (see the module doc); returns the step's losses as floats.

    ``clip_params`` are the parameters whose gradient norm ``grad_clip`` caps (default: the model's);
    ``where`` names the step in the divergence error; under DDP (``info``) every rank stops together
    when any rank's loss is not finite (otherwise the others would wait in backward's all-reduce).
    """
    images, targets = batch
    images = images.to(device, non_blocking=True)
    targets = [t.to(device, non_blocking=True) for t in targets]
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
        losses = step_fn(model, images, targets)
    loss = losses["loss"]
    assert isinstance(loss, torch.Tensor), "step_fn must return the total loss as a tensor"
    bad = not torch.isfinite(loss).item()
    if info is not None and info.distributed:
        flag = torch.tensor([float(bad)], device=info.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        bad = bool(flag.item())
    if bad:
        value = loss.item() if not torch.isfinite(loss) else "not finite on another rank"
        raise DivergedError(f"loss is {value} at {where or 'a step'}; lower optim.lr or check the data")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters() if clip_params is None else clip_params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in losses.items()}


def train_loop(
    model: nn.Module,
    batches: Iterator[Batch],
    step_fn: StepFn,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    info: DistInfo,
    state: TrainState,
    stop: int,
    settings: LoopSettings,
    *,
    clip_params: Iterable[nn.Parameter] | None = None,
    logger: JsonlLogger | None = None,
    save: Callable[[], None] | None = None,
    before_step: Callable[[int], dict[str, float] | None] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> None:
    """Train until ``state.step == stop`` (see the module doc); ``state`` is updated in place.

    ``clip_params`` (default: the model's) are what ``grad_clip`` caps; ``logger`` writes on rank 0;
    ``save`` writes a checkpoint of the state as it is (called on rank 0 only).
    """
    s = settings
    per = s.steps_per_epoch
    clip = list(clip_params) if clip_params is not None else None
    use_amp = s.amp and info.device.type == "cuda"
    model.train()
    window: dict[str, float] = {}
    extras: dict[str, float] = {}
    n_window = n_images = 0
    began = t0 = time.perf_counter()
    bar = tqdm(
        range(state.step, stop),
        desc=s.name,
        unit="step",
        disable=not (s.progress and info.is_main),
        dynamic_ncols=True,
    )
    for _ in bar:
        hooked = before_step(state.step) if before_step is not None else None
        extras.update(hooked or {})
        batch = next(batches)
        where = f"{s.name} step {state.step}" + (f" (epoch {state.epoch})" if per else "")
        vals = optimizer_step(
            model,
            batch,
            step_fn,
            optimizer,
            scheduler,
            scaler,
            device=info.device,
            amp=use_amp,
            grad_clip=s.grad_clip,
            clip_params=clip,
            where=where,
            info=info,
        )
        state.step += 1
        n_window += 1
        n_images += batch[0].shape[0]
        for k, v in vals.items():
            window[k] = window.get(k, 0.0) + v
        bar.set_postfix(loss=f"{vals['loss']:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        if s.log_every and (state.step % s.log_every == 0 or state.step == stop):
            # A collective under DDP: every rank reaches it at the same steps.
            row = mean_across_ranks({k: v / n_window for k, v in window.items()}, info)
            if logger is not None and info.is_main:
                now = time.perf_counter()
                logger.log(
                    {
                        "kind": "train",
                        "step": state.step,
                        **({"epoch": state.epoch} if per else {}),
                        "lr": optimizer.param_groups[0]["lr"],
                        **row,
                        **extras,
                        "sec": round(now - began, 2),  # since this (re)start: throughput in the log
                        "images_per_s": n_images * info.world_size / max(now - t0, 1e-9),
                    }
                )
            window, extras, n_window, n_images, t0 = {}, {}, 0, 0, time.perf_counter()
        ended = False
        if per:
            state.step_in_epoch += 1
            for k, v in vals.items():
                state.epoch_sums[k] = state.epoch_sums.get(k, 0.0) + v
            if state.step_in_epoch >= per:
                close_epoch(state, info, on_epoch)
                ended = True
        if save is not None and (
            ended or state.step == stop or (s.save_every and state.step % s.save_every == 0)
        ):
            if per and state.epoch_sums:
                # Rank 0 saves the sums for every rank: make them the ranks' mean (the epoch mean is
                # linear in them, so a resumed epoch's mean stays exact). A collective, reached by all.
                state.epoch_sums = mean_across_ranks(state.epoch_sums, info)
            if info.is_main:
                save()
            barrier(info)
    bar.close()


def close_epoch(
    state: TrainState, info: DistInfo, on_epoch: Callable[[int, dict[str, float]], None] | None
) -> None:
    """The epoch view: mean losses of the finished epoch over every rank, then the next epoch."""
    means = mean_across_ranks({k: v / state.step_in_epoch for k, v in state.epoch_sums.items()}, info)
    if not all(math.isfinite(v) for v in means.values()):
        raise DivergedError(f"non-finite mean loss in epoch {state.epoch}")
    if on_epoch is not None:
        on_epoch(state.epoch, means)
    state.epoch, state.step_in_epoch, state.epoch_sums = state.epoch + 1, 0, {}
