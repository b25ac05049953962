"""A Nano-B phase's training: KD steps through the engine's one loop
(:func:`~trainer.engine.loop.train_loop`: NaN guard, AMP and clipping from ``[run]``, logging,
checkpoints), under DDP when launched by torchrun.

``train_steps`` runs optimiser steps ``[start, steps)`` on a student. With an ``out`` folder it logs
``metrics.jsonl/.csv`` every ``log_every`` steps, saves the full training state (student, KD weights,
optimiser, schedule, RNG, any ``extra_state``) every ``ckpt_every`` steps and at the end, and on
``resume`` continues from ``out/last.pt`` exactly where the killed run stopped. Without ``out`` it is
the short, silent fine-tune of a pruning trial. Under DDP (``ctx.info``) each rank trains on its own
shard of every epoch with ``data.batch_size`` images a step; the student's and the KD weights'
gradients are averaged over ranks, so every rank holds the same network after every step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.data.dataset import batches_per_epoch, interleaved_batches
from trainer.engine.checkpoint import Checkpointer, restore
from trainer.engine.ddp import DistInfo, average_gradients, broadcast_buffers, wrap_model
from trainer.engine.log import JsonlLogger
from trainer.engine.loop import LoopSettings, TrainState, train_loop
from trainer.engine.optim import build_optimizer, build_scheduler
from trainer.engine.plots import plot_losses
from trainer.pipeline.data import PipelineData
from trainer.pipeline.loop import FeatureTaps, kd_step, make_losses
from trainer.pipeline.recipe import NanoBRecipe

FEATURE_KD_KEY = "feature_kd"  # the fitted feature-KD maps, in a checkpoint's extra state
StepHook = Callable[[int], dict[str, float] | None]  # called before optimiser step t (0-based)


@dataclasses.dataclass
class PhaseContext:
    """What every phase needs: the recipe, the output root, the teacher, the data, where this process
    sits (rank and device; one process unless launched by torchrun)."""

    recipe: NanoBRecipe
    out: Path
    teacher: nn.Module | None
    data: PipelineData
    resume: bool = False
    info: DistInfo = dataclasses.field(default_factory=DistInfo)

    @property
    def device(self) -> torch.device:
        return self.info.device

    def alone(self) -> PhaseContext:
        """This context as one process: for work rank 0 does by itself (the pruning search's trials)."""
        return dataclasses.replace(self, info=DistInfo(device=self.device))


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
    freeze_bn: bool = False,
) -> dict[str, torch.Tensor]:
    """Train ``student`` in place for ``steps`` optimiser steps.

    ``kd_state`` starts the KD loss's learnable weights where the previous phase left them (instead of
    all 1, which would jolt the balance the student had settled into); returns their final state.
    ``cycles`` / ``restart_scale``: warm restarts of the schedule (:func:`build_scheduler`).
    ``freeze_bn``: BatchNorm layers normalise with their running statistics and keep them.
    """
    recipe, info = ctx.recipe, ctx.info
    run = recipe.run
    losses = make_losses(recipe, recipe.data.img_dim, info.device)
    if kd_state:
        losses.kd.load_state_dict(kd_state)
    # The bare student stays the caller's: DDP wraps it and updates it in place. No SyncBatchNorm:
    # pruning surgery and export read the student's own BatchNorm2d modules.
    model = wrap_model(student, info, sync_bn=False)
    losses.kd.to(info.device)
    average_gradients(losses.kd, info)
    trainable = nn.ModuleDict({"student": student, "kd": losses.kd})
    optim_cfg = dataclasses.replace(recipe.optim, lr=recipe.optim.lr * lr_scale)
    optimizer = build_optimizer(trainable, optim_cfg)
    per_epoch = max(batches_per_epoch(ctx.data.train, recipe.data.batch_size, info.world_size), 1)
    scheduler = build_scheduler(optimizer, optim_cfg, steps, per_epoch, cycles, restart_scale)
    scaler = torch.amp.GradScaler("cuda", enabled=run.amp and info.device.type == "cuda")

    state = TrainState()
    feature_state = None
    # Feature KD's maps are fitted, not trained: they live outside the optimiser, in the checkpoint's
    # extra state, so a run resumed from a checkpoint made without them just starts fitting.
    features: FeatureTaps | None = None
    ckpt = Checkpointer(out) if out is not None else None
    if ckpt is not None and ctx.resume and ckpt.last.is_file():
        saved = ckpt.load(map_location="cpu")  # RNG states stay CPU tensors; weights are copied over
        restore(saved, trainable, optimizer, scheduler, scaler)
        extra = dict(saved.get("extra", {}))
        feature_state = extra.pop(FEATURE_KD_KEY, None)
        if load_extra is not None:
            load_extra(extra)
        state.step = int(saved["step"])
    logger = None
    if out is not None and info.is_main:
        logger = JsonlLogger(out, resume_step=state.step if state.step else None)

    def save() -> None:
        assert ckpt is not None
        ckpt.save(
            {
                "step": state.step,
                "model": trainable.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),  # the AMP loss scale (empty when AMP is off)
                "extra": {
                    **(extra_state() if extra_state is not None else {}),
                    **({FEATURE_KD_KEY: features.loss.state_dict()} if features is not None else {}),
                },
            }
        )

    settings = LoopSettings(
        name=name,
        amp=run.amp,
        grad_clip=run.grad_clip,
        log_every=run.log_every if out is not None else 0,
        save_every=run.ckpt_every,
        progress=run.progress and out is not None,
    )
    stream = interleaved_batches(
        ctx.data.train_sources(recipe.data.batch_size),
        run.seed,
        recipe.data.num_workers,
        start_batch=state.step,
        rank=info.rank,
        world_size=info.world_size,
    )
    try:
        if ctx.teacher is not None and recipe.distill.feature_weight > 0:
            # Attached inside the try: the hooks on the shared teacher come off whatever happens.
            features = FeatureTaps.attach(student, ctx.teacher, info.device)
            if feature_state is not None:
                features.loss.load_state_dict(feature_state)
        train_loop(
            model,
            stream,
            kd_step(ctx.teacher, losses, features, freeze_bn),
            optimizer,
            scheduler,
            scaler,
            info,
            state,
            steps,
            settings,
            clip_params=student.parameters(),  # the network's, not the KD loss weights'
            logger=logger,
            save=save if ckpt is not None else None,
            before_step=hook,
        )
    finally:
        stream.close()  # stop the loader's workers now, not whenever the generator is collected
        if features is not None:
            features.close()  # later forward passes (validation, export) capture nothing
    broadcast_buffers(trainable, info)  # every rank leaves with the same network and KD weights
    if logger is not None and out is not None:
        rows = logger.rows()
        plot_losses(
            rows, out / "loss.png", keys=("loss", "task", "kd", "kd_cls", "kd_box", "kd_ldm"), title=name
        )
        plot_losses(
            rows, out / "kd_weights.png", keys=("w_cls", "w_box", "w_ldm"), title=f"{name}: KD weights"
        )
    return {k: v.detach().cpu() for k, v in losses.kd.state_dict().items()}
