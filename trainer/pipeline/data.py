"""Data for the Nano-B pipeline: our own event split of a WIDER folder, the other training sources,
the teacher as a pseudo-labeller, and an endless seeded batch stream that resumes mid-epoch.

The split is by **event** (``0--Parade`` is event 0): images of ``split.val_events`` are validation
only and never reach a training batch (:func:`split_wider` returns disjoint lists, and the tests
check it).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Generator, Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from edge.errors import DatasetError
from trainer.data.augment import EvalTransform, TrainTransform
from trainer.data.dataset import EpochConcat, FaceDataset, build_dataset, endless_batches
from trainer.data.labels import FaceSample
from trainer.data.wider import read_wider
from trainer.eval.widerface import WiderGroundTruth, event_number, load_ground_truth, locate_wider_val
from trainer.pipeline.recipe import NanoBRecipe


def split_wider(
    samples: list[FaceSample], val_events: tuple[int, ...]
) -> tuple[list[FaceSample], list[FaceSample]]:
    """``(train, val)``: samples whose event folder number is in ``val_events`` go to val only."""
    train, val = [], []
    for s in samples:
        if s.image is None:
            raise DatasetError("WIDER samples must be image files")
        (val if event_number(Path(s.image).parent.name) in val_events else train).append(s)
    return train, val


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def guard_against_leakage(val: list[FaceSample], cfg: object) -> None:
    """Refuse a run whose other sources (label file, pseudo-label or background folders) contain a
    held-out image — by path or by content, since copies are the usual way it happens."""
    from trainer.data.labels import read_label_txt
    from trainer.data.pseudo import list_images

    held = {_digest(Path(s.image)): Path(s.image) for s in val if s.image is not None}
    if not held:
        return
    sources: list[tuple[str, Iterable[Path]]] = []
    if getattr(cfg, "label_file", ""):
        samples = read_label_txt(cfg.label_file, getattr(cfg, "image_root", "") or None)  # type: ignore[attr-defined]
        sources.append(("data.label_file", (Path(s.image) for s in samples if s.image is not None)))
    for key in ("pseudo_images", "background_photos"):
        if getattr(cfg, key, ""):
            sources.append((f"data.{key}", list_images(getattr(cfg, key))))
    for key, paths in sources:
        for path in paths:
            twin = held.get(_digest(path))
            if twin is not None:
                raise DatasetError(
                    f"{key}: {path} is the held-out validation image {twin} (split.val_events); "
                    "remove it from the training sources"
                )


def teacher_detector(teacher: torch.nn.Module, scale: int = 640):
    """The teacher as a pseudo-labelling ``detect(image) -> (boxes_px, scores, landmarks_px)``."""
    from trainer.eval.predict import detect, torch_runner

    runner = torch_runner(teacher, "teacher")

    def run(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        dets = detect(runner, image, scale)
        return dets[:, :4], dets[:, 4], dets[:, 5:15] if dets.shape[1] >= 15 else None

    return run


@dataclasses.dataclass
class PipelineData:
    """Training set, validation set (loss) and validation ground truth (AP), all from the split."""

    train: Dataset
    val: Dataset | None
    val_gt: WiderGroundTruth | None
    val_images_dir: Path | None
    train_wider: int
    val_wider: int

    def describe(self) -> str:
        return (
            f"train {len(self.train)} images ({self.train_wider} WIDER), "  # type: ignore[arg-type]
            f"val {self.val_wider} WIDER images"
        )


def build_pipeline_data(recipe: NanoBRecipe, teacher: torch.nn.Module | None) -> PipelineData:
    """Every training source of ``recipe.data`` plus the WIDER train split; the val split apart."""
    cfg, split, seed = recipe.data, recipe.split, recipe.run.seed
    parts: list[Dataset] = []
    train_n = val_n = 0
    val_ds: Dataset | None = None
    val_gt: WiderGroundTruth | None = None
    images_dir: Path | None = None
    if cfg.wider_root:
        train_s, val_s = split_wider(read_wider(cfg.wider_root), split.val_events)
        train_n, val_n = len(train_s), len(val_s)
        if split.val_events and not val_s:
            present = sorted({event_number(Path(s.image).parent.name) for s in train_s if s.image})
            raise DatasetError(
                f"split.val_events {list(split.val_events)} match no event under {cfg.wider_root} "
                f"(events present: {present})"
            )
        guard_against_leakage(val_s, cfg)
        if train_s:
            parts.append(
                FaceDataset(train_s, TrainTransform(cfg.img_dim, cfg.crop, cfg.distort, cfg.mirror), seed)
            )
        if val_s:
            val_ds = FaceDataset(val_s, EvalTransform(cfg.img_dim), seed)
            images_dir, gt_dir = locate_wider_val(cfg.wider_root)
            val_gt = load_ground_truth(gt_dir).only_events(split.val_events).head(split.val_limit or None)
    others = dataclasses.replace(cfg, wider_root="")
    if others.label_file or others.synthetic_scenes or others.pseudo_images:
        detect = teacher_detector(teacher) if (others.pseudo_images and teacher is not None) else None
        parts.append(build_dataset(others, seed=seed, detect=detect, train=True))
    if not parts:
        raise DatasetError(
            "no training data: set data.wider_root, label_file, synthetic_scenes or pseudo_images"
        )
    return PipelineData(EpochConcat(parts), val_ds, val_gt, images_dir, train_n, val_n)


def batch_stream(
    dataset: Dataset, batch_size: int, seed: int, start_step: int = 0, num_workers: int = 0
) -> Generator[tuple[torch.Tensor, list[torch.Tensor]], None, None]:
    """Endless batches epoch after epoch; starting at ``start_step`` replays nothing already seen."""
    return endless_batches(dataset, batch_size, seed, num_workers, start_batch=start_step)
