"""Training the V1 teacher (``featherface-train v1``): config tables and the top-to-bottom script.

cfg = load_v1_config("trainer/configs/v1.toml", data="label.txt", out="runs/v1")
train_v1(cfg, resume=False)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edge.anchors import prior_boxes
from trainer.config import load_config, override, to_dict
from trainer.data.dataset import DataConfig, build_dataset
from trainer.engine.checkpoint import seed_everything
from trainer.engine.ddp import cleanup, init_distributed
from trainer.engine.fit import FitResult, RunConfig, fit
from trainer.engine.loop import multibox_step
from trainer.engine.optim import OptimConfig
from trainer.eval.predict import pseudo_teacher
from trainer.loss.multibox import LossConfig, MultiBoxLoss

log = logging.getLogger(__name__)

# The shipped recipe, found beside the package (so the command works from any directory).
DEFAULT_V1_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "v1.toml"


@dataclass(frozen=True)
class ModelConfig:
    """The ``[model]`` table: which registered variant, and how it is initialised."""

    name: str = "v1"
    deformable: bool = True  # DCNv2 in SSH (the official V1); false = plain 3x3 convs
    weights: str = ""  # start from a full V1 state_dict (fine-tuning); "" = from scratch
    backbone_weights: str = ""  # ImageNet MobileNetV1-0.25 file for the backbone; "" = random init


@dataclass(frozen=True)
class V1Config:
    """The whole ``v1.toml``: ``[model]``, ``[data]``, ``[loss]``, ``[optim]``, ``[run]``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.data.extra_inputs:  # only the Nano-B pipeline interleaves input sizes
            raise ValueError("data.extra_inputs is a Nano-B pipeline setting; V1 training has one input size")


def load_v1_config(
    path: str | Path, data: str | Path | None = None, out: str | Path | None = None
) -> V1Config:
    """Read ``v1.toml``; ``data`` (a label.txt) and ``out`` override ``data.label_file`` / ``run.out_dir``."""
    cfg = load_config(path, V1Config)
    changes: dict[str, object] = {}
    if data is not None:
        changes["data.label_file"] = str(data)
    if out is not None:
        changes["run.out_dir"] = str(out)
    return override(cfg, changes) if changes else cfg


def build_v1_model(cfg: ModelConfig) -> torch.nn.Module:
    """The network to train, initialised as ``cfg`` says."""
    import trainer.models  # noqa: F401  (registers the variants)
    from trainer.layers.mobilenet import load_imagenet_backbone
    from trainer.models.registry import build_model

    model = build_model(cfg.name, deformable=cfg.deformable, weights=cfg.weights or None)
    if cfg.backbone_weights and not cfg.weights:
        load_imagenet_backbone(model.body, cfg.backbone_weights)
    return model


def train_v1(cfg: V1Config, resume: bool | str | Path = False) -> FitResult:
    """Train V1 on the configured data with the MultiBox loss; DDP when launched by torchrun."""
    info = init_distributed(cfg.run.device)
    try:
        seed_everything(cfg.run.seed)
        dataset = build_dataset(cfg.data, seed=cfg.run.seed, detect=pseudo_teacher(cfg.data))
        model = build_v1_model(cfg.model)
        priors = torch.from_numpy(prior_boxes(cfg.data.img_dim, cfg.data.img_dim))
        loss_fn = MultiBoxLoss(priors, cfg.loss).to(info.device)
        if info.is_main:
            log.info(
                "training %s on %d images, %dx%d, batch %d x %d process(es), device %s",
                cfg.model.name,
                len(dataset),
                cfg.data.img_dim,
                cfg.data.img_dim,
                cfg.data.batch_size,
                info.world_size,
                info.device,
            )
        return fit(
            model,
            dataset,
            multibox_step(loss_fn),
            cfg.optim,
            cfg.run,
            info,
            batch_size=cfg.data.batch_size,
            num_workers=cfg.data.num_workers,
            config=to_dict(cfg),
            resume=resume,
        )
    finally:
        cleanup(info)
