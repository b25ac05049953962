"""The Nano-B pipeline config: one TOML file, strict frozen dataclasses (see :mod:`trainer.config`).

Tables: ``[run]``, ``[model]`` (:class:`~trainer.models.nano_b.NanoBConfig`), ``[teacher]``, ``[data]``
(:class:`~trainer.data.dataset.DataConfig`), ``[split]``, ``[loss]``, ``[distill]``, ``[optim]``,
``[phase1]``, ``[prune]``, ``[phase3]``, ``[calibrate]``. Every key has a default except where stated,
so a config file lists only what it changes; an unknown key is an error naming file, table and key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from trainer.config import load_config
from trainer.data.dataset import DataConfig
from trainer.engine.optim import OptimConfig
from trainer.loss.distill import DistillConfig
from trainer.loss.multibox import LossConfig
from trainer.models.nano_b import NanoBConfig


@dataclass(frozen=True)
class RunConfig:
    out_dir: str = "runs/nano_b"
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda", "auto"
    threads: int = 0  # torch intra-op threads on the CPU (0: torch's default)
    progress: bool = True  # tqdm bars
    log_every: int = 10  # optimiser steps between metric rows
    ckpt_every: int = 100  # optimiser steps between checkpoints
    export_size: tuple[int, int] = (320, 240)  # (W, H) of the final ONNX export
    export: bool = True  # write export/nano_b.onnx (with the DESIGN §1 metadata) at the end
    bn_recalibration: int = 8  # batches that re-estimate BN statistics after teacher init and after removal
    grad_clip: float = 10.0  # max gradient norm of the student (0 = off): a bad batch cannot blow up BN
    amp: bool = False  # float16 autocast + GradScaler on CUDA (no effect on the CPU)
    # A trained Nano-B to fine-tune instead of making one: an exported .onnx (rebuilt by
    # trainer.export.from_onnx: a shipped file is enough) or a student.pt. Phases 1 and 2 are skipped
    # and phase 3 starts from it; "" runs the whole pipeline.
    start_from: str = ""


@dataclass(frozen=True)
class TeacherConfig:
    weights: str = "../shared/weights/featherface_v1_official.pth"  # V1, WIDER-trained
    deformable: bool = True  # the real teacher; False runs plain convs (faster, slightly different)
    init_student: bool = True  # copy / slice the teacher's tensors into Nano-B (init_from_teacher)
    imagenet_backbone: str = (
        "../shared/weights/mobilenetv1_0.25_imagenet.tar"  # used when init_student is off
    )


@dataclass(frozen=True)
class SplitConfig:
    """Our own train / validation split: of a WIDER folder (``data.wider_root``) by event, or of a
    training label file (``data.label_file``) by image (``val_images``).

    Held-out images are never trained on; they score the pruning search and every phase.
    """

    val_events: tuple[int, ...] = (0, 3, 9)
    val_scale: int = 640  # held-out AP at this longer side (pixels); 0 = original size
    val_limit: int = 0  # first N held-out images only (0: all)
    # Hold out this many images of data.label_file (chosen by a hash of their path, so the split never
    # changes when the file is reordered or grows); scored with size-based settings
    # (trainer.eval.widerface.SIZE_SETTINGS), since a training label file has no official setting lists.
    val_images: int = 0
    # Evaluation sets no training image may come from (by content or by WIDER file name); a folder
    # that is absent is skipped. The pipeline refuses a run that would train on one of their images.
    eval_sets: tuple[str, ...] = ("../shared/data/wider-val-eval", "../shared/data/wider-val-dev")

    def __post_init__(self) -> None:
        if self.val_images < 0:
            raise ValueError(f"val_images must be >= 0, got {self.val_images}")


@dataclass(frozen=True)
class PhaseConfig:
    """A training phase measured in optimiser steps (CPU budgets are steps, not epochs)."""

    steps: int = 1000
    lr_scale: float = 1.0  # multiplies optim.lr (phase 3 fine-tunes at a reduced rate)
    # Warm restarts: the steps run as this many warm-up + cosine cycles of steps // cycles (the last
    # takes the remainder), cycle k (from 0) peaking at restart_scale ** k x the phase rate, so a longer
    # phase 3 can go on from a finished shorter one.
    cycles: int = 1
    restart_scale: float = 0.5
    # BatchNorm in eval mode while training (its affine part still learns), so a network fine-tuned
    # from a finished file keeps the statistics its function was made with. Off: on the shipped file
    # it lost 0.4 / 2.3 / 2.8 held-out points against train-mode BN (docs/nano_b.md, "Fine-tuning a
    # shipped file").
    freeze_bn: bool = False

    def __post_init__(self) -> None:
        if self.steps < 0 or self.cycles < 1 or 0 < self.steps < self.cycles:
            raise ValueError(
                f"need steps >= cycles >= 1 (or steps = 0), got steps {self.steps}, cycles {self.cycles}"
            )
        if not self.restart_scale > 0:
            raise ValueError(f"restart_scale must be > 0, got {self.restart_scale}")


@dataclass(frozen=True)
class PruneConfig:
    """Phase 2: Bayesian search for per-group rates, soft pruning on a polynomial schedule, removal."""

    target_params: tuple[int, int] = (120_000, 180_000)
    trials: int = 25  # DESIGN: default 25, at least 15
    recovery_steps: int = 30  # short KD fine-tune of each trial before it is scored
    lr_scale: float = 0.3  # x optim.lr for the trial recovery and the soft-pruning steps
    score: Literal["loss", "ap"] = "loss"  # trial score on the held-out events (AP is slower on a CPU)
    penalty: float = 10.0  # score penalty per unit of relative distance outside target_params
    soft_steps: int = 400  # training steps under soft pruning with the chosen rates
    soft_boundaries: int = 8  # FPGM re-rank-and-zero points, spread over the first part of soft_steps
    # Boundary b comes at step (b - 1) * (active // soft_boundaries), active = soft_steps * (1 - this):
    # after the last one the final selection is held at zero while training goes on (>= this fraction).
    settle_fraction: float = 0.3
    power: float = 3.0  # polynomial schedule exponent
    trace_size: int = 64  # square input used to trace the dependency graph
    # Kept channels per coupled set rounded to a multiple of this: ONNX Runtime's fast blocked (NCHWc)
    # kernels need 16-channel blocks on AVX-512 and 8 on AVX2; an odd pruned width runs several
    # times slower per multiply-add (docs/BENCHMARKS.md). 1 keeps the exact rates.
    channel_multiple: int = 16
    # Search score += this x (trial's measured ONNX Runtime 1-thread latency at run.export_size / the
    # unpruned student's): trades held-out score for real CPU time, not only parameters. 0: off.
    latency_weight: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.target_params
        if not 0 < lo <= hi:
            raise ValueError(
                f"target_params must be (low, high) with 0 < low <= high, got {self.target_params}"
            )
        if self.channel_multiple < 1:
            raise ValueError(f"channel_multiple must be >= 1, got {self.channel_multiple}")
        if self.trials < 1 or self.soft_boundaries < 1:
            raise ValueError("trials and soft_boundaries must be >= 1")
        if not 0.0 <= self.settle_fraction < 1.0:
            raise ValueError(f"settle_fraction must be in [0, 1), got {self.settle_fraction}")
        active = max(round(self.soft_steps * (1.0 - self.settle_fraction)), 1)
        if active < self.soft_boundaries:
            # Fewer steps than boundaries: the last boundaries would never be reached in training.
            raise ValueError(
                f"soft_steps x (1 - settle_fraction) = {active} is fewer than soft_boundaries "
                f"= {self.soft_boundaries}"
            )


@dataclass(frozen=True)
class CalibrateConfig:
    """After phase 3: a scale and an offset of each pyramid level's face log-odds, fitted to the
    teacher (no labels) on this many training images at ``split.val_scale`` and folded into the class
    heads (trainer.pipeline.calibrate). 0: off."""

    images: int = 0

    def __post_init__(self) -> None:
        if self.images < 0:
            raise ValueError(f"images must be >= 0, got {self.images}")


@dataclass(frozen=True)
class NanoBRecipe:
    run: RunConfig = field(default_factory=RunConfig)
    model: NanoBConfig = field(default_factory=NanoBConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    phase1: PhaseConfig = field(default_factory=PhaseConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    phase3: PhaseConfig = field(default_factory=lambda: PhaseConfig(steps=500, lr_scale=0.1))
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)

    def __post_init__(self) -> None:
        if self.calibrate.images and not self.teacher.weights:
            raise ValueError("calibrate.images needs a teacher: teacher.weights is empty")


def load_recipe(path: str | Path) -> NanoBRecipe:
    """Read and validate a Nano-B pipeline config (ConfigError naming file / table / key)."""
    return load_config(path, NanoBRecipe)
