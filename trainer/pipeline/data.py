"""Data for the Nano-B pipeline: our own split of the training images, the other training sources,
the teacher as a pseudo-labeller, and an endless seeded batch stream that resumes mid-epoch.

Two splits, both disjoint by construction (tested):

- a WIDER folder (``data.wider_root``) by **event** (``0--Parade`` is event 0): images of
  ``split.val_events`` are validation only, scored with the official setting lists;
- a training label file (``data.label_file``, e.g. ``wider-train-pool``) by **image**: the
  ``split.val_images`` images whose path hashes lowest are held out, scored with size-based settings.

Whatever the split, no training image may be an image of an evaluation set (``split.eval_sets``):
:func:`guard_against_eval_sets` refuses the run, by content and by WIDER file name.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from edge.errors import DatasetError
from trainer.data.augment import EvalTransform, TrainTransform
from trainer.data.dataset import EpochConcat, FaceDataset, build_dataset, resized
from trainer.data.labels import FaceSample, read_label_txt
from trainer.data.pseudo import Detect, list_images
from trainer.data.wider import (
    WiderGroundTruth,
    event_number,
    load_ground_truth,
    locate_wider_val,
    read_wider,
)
from trainer.eval.widerface import ground_truth_from_boxes
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


def image_key(s: FaceSample) -> str:
    """sha256 of ``<event>/<name>``: the same for an image wherever its dataset lies."""
    if s.image is None:
        raise DatasetError("a label file split needs image files")
    rel = f"{Path(s.image).parent.name}/{Path(s.image).name}"
    return hashlib.sha256(rel.encode()).hexdigest()


def split_by_image(samples: list[FaceSample], count: int) -> tuple[list[FaceSample], list[FaceSample]]:
    """``(train, val)``: the ``count`` samples whose ``<event>/<name>`` hashes lowest go to val.

    A hash of the path, not a shuffle: the same image stays held out when the label file is
    reordered or grows, so a checkpoint is never scored on an image it was trained on."""
    if count <= 0:
        return list(samples), []
    if count >= len(samples):
        raise DatasetError(
            f"split.val_images = {count} leaves no training image (the file has {len(samples)})"
        )

    held = {id(s) for s in sorted(samples, key=image_key)[:count]}
    return [s for s in samples if id(s) not in held], [s for s in samples if id(s) in held]


def size_ground_truth(val: list[FaceSample]) -> tuple[WiderGroundTruth, Path]:
    """Ground truth of held-out label-file images (size-based settings) and their images folder."""
    roots = {Path(s.image).parent.parent for s in val if s.image is not None}
    if len(roots) != 1:
        raise DatasetError(f"held-out images must share one <images>/<event>/ folder, found {len(roots)}")
    items = [(Path(s.image).parent.name, Path(s.image).stem, s.boxes) for s in val if s.image is not None]
    return ground_truth_from_boxes(items), roots.pop()


@functools.cache  # size and mtime key the cache: a rewritten file is hashed again
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _digest(path: Path) -> str:
    """sha256 of a file's bytes, computed once per file version: both guards hash every training
    image, and a full WIDER train set is gigabytes."""
    st = path.stat()
    return _file_digest(str(path), st.st_size, st.st_mtime_ns)


def guard_against_leakage(
    val: list[FaceSample], cfg: object, label_samples: list[FaceSample] | None = None
) -> None:
    """Refuse a run whose other sources (label file, pseudo-label or background folders) contain a
    held-out image — by path or by content, since copies are the usual way it happens.
    ``label_samples``: the label file as already read (else it is read from ``cfg.label_file``)."""
    held = {_digest(Path(s.image)): Path(s.image) for s in val if s.image is not None}
    if not held:
        return
    sources: list[tuple[str, Iterable[Path]]] = []
    if getattr(cfg, "label_file", ""):
        samples = label_samples
        if samples is None:
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
                    f"{key}: {path} is the held-out validation image {twin} (split.val_events / val_images); "
                    "remove it from the training sources"
                )


def _images_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def guard_against_eval_sets(train: Iterable[Path], eval_sets: Iterable[str]) -> None:
    """Refuse a run that trains on an image of an evaluation set, found by content (a copy) or by its
    WIDER file name (WIDER names are unique; a re-encoded or resized copy keeps its name)."""
    digests: dict[str, Path] = {}
    names: dict[str, Path] = {}
    for root in map(Path, eval_sets):
        if not root.is_dir():
            continue  # that set is not on this machine: nothing of it can leak
        for path in _images_under(root):
            digests[_digest(path)] = path
            names[path.name] = path
    if not digests:
        return
    for path in train:
        twin = names.get(path.name) or digests.get(_digest(path))
        if twin is not None:
            raise DatasetError(
                f"training image {path} is the evaluation image {twin} (split.eval_sets); "
                "remove it from the training sources"
            )


def _training_images(train_wider: list[FaceSample], cfg: object) -> list[Path]:
    """Every image file a run trains on: the WIDER / label-file train split and the photo folders."""
    paths = [Path(s.image) for s in train_wider if s.image is not None]
    for key in ("pseudo_images", "background_photos"):
        if getattr(cfg, key, ""):
            paths.extend(list_images(getattr(cfg, key)))
    return paths


def teacher_detector(teacher: torch.nn.Module, scale: int = 640) -> Detect:
    """The teacher as a pseudo-labelling ``detect(image) -> (boxes_px, scores, landmarks_px)``."""
    from trainer.eval.predict import runner_detect, torch_runner

    return runner_detect(torch_runner(teacher, "teacher"), scale)


@dataclasses.dataclass
class PipelineData:
    """Training set, validation set (loss) and validation ground truth (AP), all from the split."""

    train: Dataset
    val: Dataset | None
    val_gt: WiderGroundTruth | None
    val_images_dir: Path | None
    train_wider: int
    val_wider: int
    extra_train: tuple[tuple[Dataset, int], ...] = ()  # data.extra_inputs: (dataset, batch size) each

    def train_sources(self, batch_size: int) -> list[tuple[Dataset, int]]:
        """The (dataset, batch size) pairs that take turns step by step: the main one first."""
        return [(self.train, batch_size), *self.extra_train]

    def describe(self) -> str:
        return (
            f"train {len(self.train)} images ({self.train_wider} WIDER), "  # type: ignore[arg-type]
            f"val {self.val_wider} WIDER images"
        )


def build_pipeline_data(recipe: NanoBRecipe, teacher: torch.nn.Module | None) -> PipelineData:
    """Every training source of ``recipe.data`` plus the WIDER train split; the val split apart."""
    cfg, split, seed = recipe.data, recipe.split, recipe.run.seed
    train_n = val_n = 0
    val_ds: Dataset | None = None
    val_gt: WiderGroundTruth | None = None
    images_dir: Path | None = None
    train_s: list[FaceSample] = []
    val_s: list[FaceSample] = []
    if cfg.wider_root:
        train_s, val_s = split_wider(read_wider(cfg.wider_root), split.val_events)
        if split.val_events and not val_s:
            present = sorted({event_number(Path(s.image).parent.name) for s in train_s if s.image})
            raise DatasetError(
                f"split.val_events {list(split.val_events)} match no event under {cfg.wider_root} "
                f"(events present: {present})"
            )
        if val_s:
            images_dir, gt_dir = locate_wider_val(cfg.wider_root)
            val_gt = load_ground_truth(gt_dir).only_events(split.val_events).head(split.val_limit or None)
    split_labels = bool(cfg.label_file and split.val_images and not cfg.wider_root)
    if split_labels:
        samples = read_label_txt(cfg.label_file, cfg.image_root or None)
        train_s, val_s = split_by_image(samples, split.val_images)
        val_gt, images_dir = size_ground_truth(val_s)
        val_gt = val_gt.head(split.val_limit or None)
    # The WIDER / label-file train split is built here; the other sources by build_dataset below.
    others = dataclasses.replace(cfg, wider_root="", label_file="" if split_labels else cfg.label_file)
    label_train = read_label_txt(others.label_file, others.image_root or None) if others.label_file else []
    guard_against_leakage(val_s, others, label_train)
    guard_against_eval_sets(_training_images(train_s + label_train, cfg), split.eval_sets)
    train_n, val_n = len(train_s), len(val_s)
    if val_s:
        val_ds = FaceDataset(val_s, EvalTransform(cfg.img_dim), seed)
    parts: list[Dataset] = []
    if train_s:
        transform = TrainTransform(cfg.img_dim, cfg.crop, cfg.distort, cfg.mirror, cfg.crop_scales)
        parts.append(FaceDataset(train_s, transform, seed))
    if others.label_file or others.synthetic_scenes or others.pseudo_images:
        detect = None
        if others.pseudo_images:  # the pipeline's own teacher, else the one data.pseudo_teacher names
            from trainer.eval.predict import pseudo_teacher

            detect = teacher_detector(teacher) if teacher is not None else pseudo_teacher(others)
        parts.append(build_dataset(others, seed=seed, detect=detect, train=True))
    if not parts:
        raise DatasetError(
            "no training data: set data.wider_root, label_file, synthetic_scenes or pseudo_images"
        )
    train = EpochConcat(parts)
    # Each extra input size: the same samples (pseudo-labelled once), its own crops (seed + k).
    extra = tuple(
        (resized(train, entry[0], seed + k, *entry[2:]), entry[1])  # type: ignore[misc]
        for k, entry in enumerate(cfg.extra_inputs, start=1)
    )
    return PipelineData(train, val_ds, val_gt, images_dir, train_n, val_n, extra)
