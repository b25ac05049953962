"""Optimiser and learning-rate schedule: SGD or AdamW, linear warm-up, then cosine or step decay.

The schedule is a per-step ``LambdaLR`` (its state is just the step count), so it checkpoints and
resumes exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass(frozen=True)
class OptimConfig:
    """The ``[optim]`` table. ``lr`` is the peak rate for the whole (global) batch."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD momentum; AdamW uses betas
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4
    nesterov: bool = False
    warmup_epochs: float = 5.0  # linear warm-up from warmup_start * lr
    warmup_start: float = 0.01
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: tuple[float, ...] = (0.63, 0.83)  # step decay points as fractions of training
    gamma: float = 0.1  # step decay factor
    min_lr_ratio: float = 0.01  # cosine floor as a fraction of lr

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup_epochs < 0 or not 0 <= self.warmup_start <= 1:
            raise ValueError("warmup_epochs must be >= 0 and warmup_start in [0, 1]")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(f"milestones are fractions of training in (0, 1), got {self.milestones}")


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, aux: nn.Module | None = None
) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters; biases and norm weights get no weight decay.

    ``aux`` holds trainable parameters outside the model (e.g. learnable loss weights); they are
    optimised in a third group, without weight decay.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if aux is not None:
        groups.append({"params": [p for p in aux.parameters() if p.requires_grad], "weight_decay": 0.0})
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_factor(step: int, total_steps: int, warmup_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of ``cfg.lr`` at optimiser step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return cfg.warmup_start + (1 - cfg.warmup_start) * step / warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    progress = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "cosine":
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    frac = step / max(total_steps, 1)
    return cfg.gamma ** sum(frac >= m for m in cfg.milestones)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: OptimConfig,
    total_steps: int,
    steps_per_epoch: int,
    cycles: int = 1,
    restart_scale: float = 0.5,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule over ``total_steps`` optimiser steps; call ``scheduler.step()`` after each.

    ``cycles`` > 1 runs the steps as that many warm-up + decay cycles (warm restarts) of
    ``total_steps // cycles`` steps (the last one takes the remainder), cycle ``k`` (counting from 0)
    peaking at ``restart_scale ** k``. Cycle 0 is exactly the one-cycle schedule of that many steps, so
    a finished one-cycle run can go on as the first cycle of a longer recipe (resume its ``last.pt``;
    :func:`trainer.engine.checkpoint.restore` keeps the new schedule).
    """
    if cycles < 1 or not restart_scale > 0:
        raise ValueError(f"cycles must be >= 1 and restart_scale > 0, got {cycles}, {restart_scale}")
    length = max(total_steps // cycles, 1)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        cycle = min(step // length, cycles - 1)
        n = length if cycle < cycles - 1 else max(total_steps - cycle * length, 1)
        return restart_scale**cycle * lr_factor(step - cycle * length, n, min(warmup, max(n - 1, 0)), cfg)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resume_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, base_lrs: list[float], step: int) -> None:
    """After loading a checkpoint, put the live recipe's schedule back in charge from ``step``.

    The loaded optimiser carries the learning rate the *old* run set for this step and the loaded
    scheduler its old peak rates; a resume with a longer schedule (more cycles) would run one step at
    the old rate, and a changed base rate would be ignored for the rest of the run.
    """
    scheduler.base_lrs = list(base_lrs)
    for group, base, fn in zip(scheduler.optimizer.param_groups, base_lrs, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = base
        group["lr"] = base * fn(step)
