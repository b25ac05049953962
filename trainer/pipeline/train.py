"""The step loop every Nano-B phase runs: KD steps through the engine's optimiser step (NaN guard,
AMP, clipping from ``[run]``), logging, checkpoints, resume (nanoGPT style).

``train_steps`` runs optimiser steps ``[start, steps)`` on a student. With an ``out`` folder it logs
``metrics.jsonl/.csv`` every ``log_every`` steps, saves the full training state (student, KD weights,
optimiser, schedule, RNG, any ``extra_state``) every ``ckpt_every`` steps and at the end, and on
``resume`` continues from ``out/last.pt`` exactly where the killed run stopped. Without ``out`` it is
the short, silent fine-tune of a pruning trial.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from trainer.engine.checkpoint import Checkpointer, restore
from trainer.engine.log import JsonlLogger
from trainer.engine.loop import optimizer_step
from trainer.engine.optim import build_optimizer, build_scheduler
from trainer.engine.plots import plot_losses
from trainer.pipeline.data import PipelineData, batch_stream
from trainer.pipeline.loop import kd_step, make_losses
from trainer.pipeline.recipe import NanoBRecipe

StepHook = Callable[[int], dict[str, float] | None]  # called before optimiser step t (0-based)


@dataclasses.dataclass
class PhaseContext:
    """What every phase needs: the recipe, the output root, the device, the teacher, the data."""

    recipe: NanoBRecipe
    out: Path
    device: torch.device
    teacher: nn.Module | None
    data: PipelineData
    resume: bool = False


def train_steps(
    ctx: PhaseContext,
    student: nn.Module,
    steps: int,
    lr_scale: float = 1.0,
    out: Path | None = None,
    name: str = "train",
    hook: StepHook | None = None,
    extra_state: Callable[[], dict[str, Any]] | None = None,
    load_extra: Callable[[dict[str, Any]], None] | None = None,
    kd_state: Mapping[str, torch.Tensor] | None = None,
    cycles: int = 1,
    restart_scale: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Train ``student`` in place for ``steps`` optimiser steps.

    ``kd_state`` starts the KD loss's learnable weights where the previous phase left them (instead of
    all 1, which would jolt the balance the student had settled into); returns their final state.
    ``cycles`` / ``restart_scale``: warm restarts of the schedule (:func:`build_scheduler`).
    """
    recipe, device = ctx.recipe, ctx.device
    run = recipe.run
    losses = make_losses(recipe, recipe.data.img_dim, device)
    if kd_state:
        losses.kd.load_state_dict(kd_state)
    student.to(device)
    trainable = nn.ModuleDict({"student": student, "kd": losses.kd})
    optim_cfg = dataclasses.replace(recipe.optim, lr=recipe.optim.lr * lr_scale)
    optimizer = build_optimizer(trainable, optim_cfg)
    per_epoch = max(len(ctx.data.train) // recipe.data.batch_size, 1)  # type: ignore[arg-type]
    scheduler = build_scheduler(optimizer, optim_cfg, steps, per_epoch, cycles, restart_scale)
    scaler = torch.amp.GradScaler("cuda", enabled=run.amp and device.type == "cuda")

    start = 0
    ckpt = Checkpointer(out) if out is not None else None
    if ckpt is not None and ctx.resume and ckpt.last.is_file():
        state = ckpt.load()
        restore(state, trainable, optimizer, scheduler, scaler)
        if load_extra is not None:
            load_extra(state.get("extra", {}))
        start = int(state["step"])
    logger = JsonlLogger(out, resume_step=start if start else None) if out is not None else None

    stream = batch_stream(ctx.data.train, recipe.data.batch_size, run.seed, start, recipe.data.num_workers)
    began = time.perf_counter()
    bar = tqdm(range(start, steps), desc=name, unit="step", disable=not (run.progress and out is not None))
    step_fn = kd_step(ctx.teacher, losses)
    for step in bar:
        hooked = hook(step) if hook is not None else None
        logs = optimizer_step(
            student,
            next(stream),
            step_fn,
            optimizer,
            scheduler,
            scaler,
            device=device,
            amp=run.amp,
            grad_clip=run.grad_clip,
            clip_params=student.parameters(),  # the network's, not the KD loss weights'
            where=f"{name} step {step}",
        )
        done = step + 1
        if logger is not None and (done % run.log_every == 0 or done == steps):
            row: dict[str, Any] = {
                "step": done,
                "kind": "train",
                "lr": optimizer.param_groups[0]["lr"],
                "sec": round(time.perf_counter() - began, 2),  # since this (re)start: throughput
                **logs,
                **(hooked or {}),
            }
            logger.log(row)
            bar.set_postfix(loss=f"{logs['loss']:.3f}")
        if ckpt is not None and (done % run.ckpt_every == 0 or done == steps):
            state = {
                "step": done,
                "model": trainable.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),  # the AMP loss scale (empty when AMP is off)
                "extra": extra_state() if extra_state is not None else {},
            }
            ckpt.save(state)
    stream.close()  # stop the loader's workers now, not whenever the generator is collected
    if logger is not None and out is not None:
        rows = logger.rows()
        plot_losses(
            rows, out / "loss.png", keys=("loss", "task", "kd", "kd_cls", "kd_box", "kd_ldm"), title=name
        )
        plot_losses(
            rows, out / "kd_weights.png", keys=("w_cls", "w_box", "w_ldm"), title=f"{name}: KD weights"
        )
    return {k: v.detach().cpu() for k, v in losses.kd.state_dict().items()}
