"""The training engine: optimiser + schedule, checkpoints, logs, plots and the optimiser step
(:func:`~trainer.engine.loop.optimizer_step`) that V1 and the Nano-B phases both train through;
DDP and the epoch driver :func:`~trainer.engine.fit.fit` serve V1 (the Nano-B phases run their own
step loop, :mod:`trainer.pipeline.train`, single-process)."""

from trainer.engine.checkpoint import Checkpointer, restore, seed_everything
from trainer.engine.ddp import DistInfo, init_distributed, unwrap, wrap_model
from trainer.engine.fit import FitResult, RunConfig, fit
from trainer.engine.log import JsonlLogger, read_jsonl
from trainer.engine.loop import StepFn, TrainState, multibox_step, optimizer_step, train_epoch
from trainer.engine.optim import OptimConfig, build_optimizer, build_scheduler
from trainer.engine.plots import plot_losses

__all__ = [
    "Checkpointer",
    "DistInfo",
    "FitResult",
    "JsonlLogger",
    "OptimConfig",
    "RunConfig",
    "StepFn",
    "TrainState",
    "build_optimizer",
    "build_scheduler",
    "fit",
    "init_distributed",
    "multibox_step",
    "optimizer_step",
    "plot_losses",
    "read_jsonl",
    "restore",
    "seed_everything",
    "train_epoch",
    "unwrap",
    "wrap_model",
]
