"""The training engine shared by V1 and the Nano-B phases: optimiser + schedule, DDP, checkpoints,
logs, plots, the per-epoch loop and the resumable :func:`~trainer.engine.fit.fit` driver."""
