"""The training engine: optimiser + schedule, checkpoints, logs, plots, DDP, and the one training loop
(:func:`~trainer.engine.loop.train_loop`, steps as the unit) that V1 (through the epoch driver
:func:`~trainer.engine.fit.fit`) and the three Nano-B phases (:mod:`trainer.pipeline.train`) run."""

from trainer.engine.checkpoint import Checkpointer, restore, seed_everything
from trainer.engine.ddp import DistInfo, init_distributed, unwrap, wrap_model
from trainer.engine.fit import FitResult, RunConfig, fit
from trainer.engine.log import JsonlLogger, read_jsonl
from trainer.engine.loop import LoopSettings, StepFn, TrainState, multibox_step, optimizer_step, train_loop
from trainer.engine.optim import OptimConfig, build_optimizer, build_scheduler
from trainer.engine.plots import plot_losses

__all__ = [
    "Checkpointer",
    "DistInfo",
    "FitResult",
    "JsonlLogger",
    "LoopSettings",
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
    "train_loop",
    "unwrap",
    "wrap_model",
]
