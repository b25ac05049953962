"""Datasets, the data config, collation and the (resumable, DDP-aware) loader.

Every sample is a pure function of ``(seed, epoch, index)``: the augmentation RNG is seeded from
those three numbers, and the loader's order comes from a ``DistributedSampler`` seeded the same way.
So a run resumed mid-epoch sees exactly the batches an uninterrupted run would have seen, with
any number of workers.

A batch is ``(images (B, 3, S, S) float32, [targets (N_i, 15)])``; a target row is
``x1, y1, x2, y2, lx0, ly0, ..., lx4, ly4, label`` normalised to ``[0, 1]``, ``label`` 1 for a face
with landmarks and -1 for one without (the RetinaFace convention the loss reads).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from edge.errors import DatasetError
from trainer.data.augment import CROP_SCALES, EvalTransform, TrainTransform
from trainer.data.labels import FaceSample, read_label_txt
from trainer.data.pseudo import Detect, list_images, pseudo_label
from trainer.data.synthetic import load_face_crops, load_photos, make_scene
from trainer.data.wider import read_wider

DEFAULT_FACE_CROPS = "../shared/data/face-crops-5pt/lfw5590_net7876_aflw_80px.tar.gz"


@dataclass(frozen=True)
class DataConfig:
    """The ``[data]`` table. Empty strings switch a source off; at least one source must be on.

    Paths are relative to the working directory.
    """

    label_file: str = ""  # RetinaFace label.txt (train format, with or without landmarks)
    image_root: str = ""  # images for label_file; default: images/ (or WIDER_*/images/) beside it
    wider_root: str = ""  # a WIDER folder in the official layout (WIDER_val/images + ground_truth/)
    synthetic_scenes: int = 0  # synthetic scenes per epoch (0 = off)
    face_crops: str = DEFAULT_FACE_CROPS  # archive of 5-point face crops for synthetic scenes
    background_photos: str = ""  # optional folder of photos, blurred into synthetic backgrounds
    synthetic_face_px: tuple[float, float] = (12.0, 256.0)  # face widths in scene pixels
    synthetic_faces: tuple[int, int] = (1, 12)  # faces per scene (min, max)
    pseudo_images: str = ""  # folder of unlabelled images, labelled by a teacher
    pseudo_teacher: str = ""  # teacher model file (.pth checkpoint or .onnx), unless `detect` is given
    pseudo_score: float = 0.8  # keep teacher detections at or above this score
    pseudo_scale: int = 640  # the teacher sees images with the longer side resized to this
    img_dim: int = 640  # square training input size
    crop: bool = True
    crop_scales: tuple[float, ...] = CROP_SCALES  # crop side / short side, drawn uniformly (augment.py)
    distort: bool = True
    mirror: bool = True
    batch_size: int = 32  # per process (per GPU under DDP)
    num_workers: int = 4
    # More training inputs, as [img_dim, batch_size] or [img_dim, batch_size, crop_scales], taking
    # turns step by step with the main one: [[640, 2]] makes every other step a batch of two 640-px
    # crops. A 320-px input never holds a face larger than 320 px, so the 512-px anchors are trained
    # only as background there (docs/nano_b.md); a larger input in the mix trains them without giving
    # up the small-face scale. crop_scales replaces data.crop_scales for that input; [] means no crop:
    # the whole image padded to a square, so [1024, 1, []] shows a 1024-px-wide WIDER image at the
    # scale evaluation at original size shows it. Each extra input draws its own crops; warm-up epochs
    # still count the main stream's batches.
    extra_inputs: tuple[tuple[int, int] | tuple[int, int, tuple[float, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.img_dim < 32 or self.img_dim % 32:
            raise ValueError(f"img_dim must be a positive multiple of 32, got {self.img_dim}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.synthetic_scenes < 0 or self.num_workers < 0:
            raise ValueError("synthetic_scenes and num_workers must be >= 0")
        if not self.crop_scales or not all(0 < c <= 1 for c in self.crop_scales):
            raise ValueError(f"crop_scales must be fractions in (0, 1], got {self.crop_scales}")
        if not 1 <= self.synthetic_faces[0] <= self.synthetic_faces[1]:
            raise ValueError(f"synthetic_faces must be (min >= 1, max >= min), got {self.synthetic_faces}")
        for entry in self.extra_inputs:
            scales = entry[2] if len(entry) == 3 else ()  # type: ignore[misc]
            if not (
                len(entry) in (2, 3)
                and entry[0] >= 32
                and entry[0] % 32 == 0
                and entry[1] >= 1
                and isinstance(scales, tuple | list)
                and all(0 < c <= 1 for c in scales)
            ):
                want = "[img_dim (a multiple of 32), batch_size >= 1] or [..., crop scales in (0, 1]]"
                raise ValueError(f"extra_inputs entries must be {want}, got {list(entry)}")


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation RNG of one sample: independent of worker count and iteration order."""
    return np.random.default_rng([seed, epoch, index])


def to_target(boxes: np.ndarray, ldm: np.ndarray) -> torch.Tensor:
    """Normalised boxes ``(N, 4)`` + landmarks ``(N, 10)`` (-1 missing) -> ``(N, 15)`` target rows."""
    label = np.where(ldm[:, 0] >= 0, 1.0, -1.0).astype(np.float32)[:, None]
    return torch.from_numpy(np.concatenate([boxes, ldm, label], axis=1).astype(np.float32))


class FaceDataset(Dataset):
    """Annotated images (files or in-memory) through a transform; call :meth:`set_epoch` each epoch."""

    def __init__(self, samples: Sequence[FaceSample], transform: Callable, seed: int = 0) -> None:
        if not samples:
            raise DatasetError("empty dataset: no samples")
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.samples[index]
        rng = sample_rng(self.seed, self.epoch, index)
        image, boxes, ldm = self.transform(s.load_bgr(), s.boxes.copy(), s.landmarks.copy(), rng)
        return torch.from_numpy(image), to_target(boxes, ldm)


class SyntheticDataset(Dataset):
    """``length`` synthetic scenes per epoch, new ones every epoch, each reproducible from its seed."""

    def __init__(
        self,
        length: int,
        archive: str | Path,
        transform: Callable,
        scene_px: int = 640,
        face_px: tuple[float, float] = (12.0, 256.0),
        faces: tuple[int, int] = (1, 12),
        photos_dir: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        if length < 1:
            raise DatasetError("empty dataset: synthetic_scenes must be >= 1")
        self.crops = load_face_crops(str(archive))
        self.photos = load_photos(photos_dir)
        self.length, self.transform, self.seed, self.epoch = length, transform, seed, 0
        self.scene_px, self.face_px, self.faces = scene_px, face_px, faces

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> FaceSample:
        """The raw scene (pixels, pixel boxes and landmarks) behind item ``index`` this epoch."""
        # A different stream from the augmentation RNG of the same index (1 << 20 offset).
        rng = sample_rng(self.seed + (1 << 20), self.epoch, index)
        size = (self.scene_px, self.scene_px)
        return make_scene(self.crops, rng, size, self.faces, self.face_px, self.photos)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.scene(index)
        rng = sample_rng(self.seed, self.epoch, index)
        image, boxes, ldm = self.transform(s.pixels, s.boxes, s.landmarks, rng)
        return torch.from_numpy(image), to_target(boxes, ldm)


class EpochConcat(ConcatDataset):
    """ConcatDataset that forwards :meth:`set_epoch` to its parts."""

    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            d.set_epoch(epoch)  # type: ignore[attr-defined]


def resized(
    dataset: EpochConcat, img_dim: int, seed: int, crop_scales: tuple[float, ...] | None = None
) -> EpochConcat:
    """The same samples through the same transform at another square input size, with augmentation
    drawn from ``seed`` (so its crops are not the original's crops scaled up). ``crop_scales``, when
    given, replaces the transform's crop sides; ``()`` means no crop (the whole image, padded)."""
    changes: dict[str, Any] = {"img_dim": img_dim}
    if crop_scales is not None:
        changes.update(crop=bool(crop_scales), scales=tuple(crop_scales) or CROP_SCALES)
    parts = []
    for part in dataset.datasets:
        copy_ = copy.copy(part)
        copy_.transform = replace(part.transform, **changes)  # type: ignore[attr-defined]
        copy_.seed = seed  # type: ignore[attr-defined]
        parts.append(copy_)
    return EpochConcat(parts)


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Stack images; keep targets as a list (faces per image differ)."""
    images = torch.stack([b[0] for b in batch])
    return images, [b[1] for b in batch]


def build_dataset(
    cfg: DataConfig, seed: int = 0, detect: Detect | None = None, train: bool = True
) -> EpochConcat:
    """All sources switched on in ``cfg`` as one dataset (train or eval transform).

    ``detect`` is the teacher for ``pseudo_images``; raises :class:`DatasetError` when no source is
    configured or one yields nothing.
    """
    transform: Callable = EvalTransform(cfg.img_dim)
    if train:
        transform = TrainTransform(cfg.img_dim, cfg.crop, cfg.distort, cfg.mirror, cfg.crop_scales)
    parts: list[Dataset] = []
    if cfg.label_file:
        samples = read_label_txt(cfg.label_file, cfg.image_root or None)
        parts.append(FaceDataset(samples, transform, seed))
    if cfg.wider_root:
        parts.append(FaceDataset(read_wider(cfg.wider_root), transform, seed))
    if cfg.pseudo_images:
        if detect is None:  # the caller turns data.pseudo_teacher into one (eval.predict.pseudo_teacher)
            raise DatasetError(
                "data.pseudo_images is set but no teacher was given to label them (set data.pseudo_teacher)"
            )
        samples = pseudo_label(list_images(cfg.pseudo_images), detect, cfg.pseudo_score)
        parts.append(FaceDataset(samples, transform, seed))
    if cfg.synthetic_scenes:
        parts.append(
            SyntheticDataset(
                cfg.synthetic_scenes,
                cfg.face_crops,
                transform,
                cfg.img_dim,
                cfg.synthetic_face_px,
                cfg.synthetic_faces,
                cfg.background_photos or None,
                seed,
            )
        )
    if not parts:
        raise DatasetError(
            "no training data configured: set data.label_file, data.wider_root, data.synthetic_scenes "
            "or data.pseudo_images"
        )
    return EpochConcat(parts)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    epoch: int,
    seed: int = 0,
    num_workers: int = 0,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
    skip_batches: int = 0,
    drop_last: bool = True,
) -> DataLoader:
    """The loader for one epoch: this rank's shard in a seeded order, the first ``skip_batches`` skipped.

    ``skip_batches`` is how a resumed run continues mid-epoch without replaying batches.
    """
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    sampler.set_epoch(epoch)
    indices = list(sampler)[skip_batches * batch_size :]
    if len(sampler) < batch_size and drop_last:
        raise DatasetError(
            f"dataset has {len(dataset)} images ({len(sampler)} per process), "
            f"fewer than one batch of {batch_size}"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=indices,  # a plain index list: order fixed above
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,  # workers must pick up the new epoch set on the dataset
    )


class _EpochItems(Dataset):
    """``items[(epoch, index)]``: the epoch travels with every index, so one set of persistent workers
    serves every epoch. (A loader per epoch re-forks its workers each time: with the ~10-batch epochs
    of the ../shared recipes an H100 then spent most of its time waiting, 2.7 steps/s at batch 32.)"""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        # Every item, not only on change: without workers the dataset is shared with other streams.
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class _EpochBatches:
    """The batch sampler of :func:`endless_batches`: each epoch's seeded order (this rank's shard), cut
    into full batches."""

    def __init__(
        self, dataset: Dataset, batch_size: int, seed: int, start: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.per_epoch = batches_per_epoch(dataset, batch_size, world_size)
        if self.per_epoch < 1:
            n = len(dataset)  # type: ignore[arg-type]
            each = f" to each of {world_size} processes" if world_size > 1 else ""
            raise DatasetError(f"training set of {n} images gives no full batch of {batch_size}{each}")
        self.start = divmod(start, self.per_epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, skip = self.start
        # The sampler build_loader uses (drop_last: every rank takes the same number of steps).
        sampler = DistributedSampler(
            self.dataset,
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=True,
            seed=self.seed,
            drop_last=True,
        )
        while True:
            sampler.set_epoch(epoch)
            order = list(sampler)
            for b in range(skip, self.per_epoch):
                yield [(epoch, i) for i in order[b * self.batch_size : (b + 1) * self.batch_size]]
            epoch, skip = epoch + 1, 0


def endless_batches(
    dataset: Dataset,
    batch_size: int,
    seed: int = 0,
    num_workers: int = 0,
    start_batch: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Generator[tuple[torch.Tensor, list[torch.Tensor]], None, None]:
    """Batches epoch after epoch, forever, from one loader with persistent workers.

    Batch ``k`` is exactly batch ``k % per_epoch`` of ``build_loader(dataset, batch_size, k //
    per_epoch, seed, rank=rank, world_size=world_size)`` (same order, same augmentation, this rank's
    shard), so ``start_batch`` resumes a killed run without replaying anything, whatever the number
    of workers.
    """
    loader = DataLoader(
        _EpochItems(dataset),
        batch_sampler=_EpochBatches(dataset, batch_size, seed, start_batch, rank, world_size),  # type: ignore[arg-type]
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
    yield from loader


def interleaved_batches(
    sources: Sequence[tuple[Dataset, int]],
    seed: int = 0,
    num_workers: int = 0,
    start_batch: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Generator[tuple[torch.Tensor, list[torch.Tensor]], None, None]:
    """Step ``t`` draws from ``sources[t % len(sources)]`` (``(dataset, batch_size)`` pairs), each an
    :func:`endless_batches` stream, so ``start_batch`` resumes every one of them where it stopped.

    With one source this is :func:`endless_batches` itself (stream 0 keeps ``seed`` and every worker).
    """
    n = len(sources)
    if n == 0:
        raise ValueError("no training sources to draw batches from")
    # Stream k served the steps t < start_batch with t % n == k. Its own order (seed + k) and a share
    # of the workers, so n streams do not start n times the processes.
    workers = -(-num_workers // n)
    streams = [
        endless_batches(ds, bs, seed + k, workers, max(0, -(-(start_batch - k) // n)), rank, world_size)
        for k, (ds, bs) in enumerate(sources)
    ]
    try:
        for t in itertools.count(start_batch):
            yield next(streams[t % n])
    finally:
        for stream in streams:
            stream.close()


def batches_per_epoch(dataset: Dataset, batch_size: int, world_size: int = 1, drop_last: bool = True) -> int:
    """Optimizer steps in one epoch on each rank."""
    n = len(dataset)  # type: ignore[arg-type]
    per_rank = n // world_size if drop_last else -(-n // world_size)
    return per_rank // batch_size if drop_last else -(-per_rank // batch_size)
