"""The training step every trainer runs, and the epoch loop V1 drives it with.

:func:`optimizer_step` is one step: batch to the device, ``step_fn(model, images, targets) -> {"loss":
total, ...}`` under autocast (CUDA with ``amp``), the NaN/inf guard, backward through the AMP scaler,
gradient clipping, optimiser and schedule step. V1 (MultiBox, :func:`train_epoch` under
:func:`~trainer.engine.fit.fit`) and the three Nano-B phases (task + distillation,
:func:`trainer.pipeline.train.train_steps`) both train through it, so the guard, AMP and clipping
from the config hold for every phase. ``on_step(state)`` runs after each optimiser step of an epoch
(checkpointing, stopping at ``max_steps``); it returns True to stop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from edge.errors import FeatherFaceError
from trainer.engine.ddp import DistInfo, mean_across_ranks
from trainer.engine.log import JsonlLogger
from trainer.loss.multibox import MultiBoxLoss

StepFn = Callable[[nn.Module, torch.Tensor, Sequence[torch.Tensor]], dict[str, torch.Tensor | float]]


class DivergedError(FeatherFaceError):
    """The loss became NaN or infinite (learning rate too high, or broken data)."""


@dataclass
class TrainState:
    """Progress counters stored in every checkpoint."""

    epoch: int = 0  # epoch in progress (0-based)
    step: int = 0  # optimiser steps done in the whole run
    step_in_epoch: int = 0  # optimiser steps done in ``epoch``
    # Running loss sums of the epoch in progress, checkpointed so a resumed epoch's mean is exact.
    epoch_sums: dict[str, float] = field(default_factory=dict)


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
) -> dict[str, float]:
    """One optimiser step on ``batch`` (see the module doc); returns the step's losses as floats.

    ``clip_params`` are the parameters whose gradient norm ``grad_clip`` caps (default: the model's);
    ``where`` names the step in the divergence error.
    """
    images, targets = batch
    images = images.to(device, non_blocking=True)
    targets = [t.to(device, non_blocking=True) for t in targets]
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
        losses = step_fn(model, images, targets)
    loss = losses["loss"]
    assert isinstance(loss, torch.Tensor), "step_fn must return the total loss as a tensor"
    if not torch.isfinite(loss):
        raise DivergedError(f"loss is {loss.item()} at {where or 'a step'}; lower optim.lr or check the data")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters() if clip_params is None else clip_params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in losses.items()}


def train_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    step_fn: StepFn,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    state: TrainState,
    info: DistInfo,
    *,
    amp: bool = False,
    grad_clip: float = 0.0,
    log_every: int = 10,
    logger: JsonlLogger | None = None,
    progress: bool = True,
    on_step: Callable[[TrainState], bool] | None = None,
) -> tuple[dict[str, float], bool]:
    """Train over ``loader`` (the rest of epoch ``state.epoch``); returns (mean losses, stopped early)."""
    model.train()
    use_amp = amp and info.device.type == "cuda"
    sums = state.epoch_sums
    window: dict[str, float] = {}
    n_window = 0
    t0 = time.perf_counter()
    bar = tqdm(
        loader,
        total=len(loader),
        desc=f"epoch {state.epoch}",
        disable=not (progress and info.is_main),
        dynamic_ncols=True,
        leave=False,
    )
    stopped = False
    for images, targets in bar:
        vals = optimizer_step(
            model,
            (images, targets),
            step_fn,
            optimizer,
            scheduler,
            scaler,
            device=info.device,
            amp=use_amp,
            grad_clip=grad_clip,
            where=f"step {state.step} (epoch {state.epoch})",
        )
        state.step += 1
        state.step_in_epoch += 1

        for k, v in vals.items():
            sums[k] = sums.get(k, 0.0) + v
            window[k] = window.get(k, 0.0) + v
        n_window += 1
        bar.set_postfix(loss=f"{vals['loss']:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        if log_every and state.step % log_every == 0:
            dt = time.perf_counter() - t0
            row = mean_across_ranks({k: v / n_window for k, v in window.items()}, info)
            if logger is not None and info.is_main:
                logger.log(
                    {
                        "kind": "train",
                        "step": state.step,
                        "epoch": state.epoch,
                        "lr": optimizer.param_groups[0]["lr"],
                        **row,
                        "images_per_s": n_window * images.shape[0] * info.world_size / max(dt, 1e-9),
                    }
                )
            window, n_window, t0 = {}, 0, time.perf_counter()
        if on_step is not None and on_step(state):
            stopped = True
            break
    bar.close()
    n = max(state.step_in_epoch, 1)
    means = mean_across_ranks({k: v / n for k, v in sums.items()}, info)
    if not all(math.isfinite(v) for v in means.values()):
        raise DivergedError(f"non-finite mean loss in epoch {state.epoch}")
    return means, stopped
