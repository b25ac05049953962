"""Fit each pyramid level's face-logit offset to the teacher, after phase 3 (``calibrate.images``).

The pruned student ranks faces well within a level but is over-confident on whole levels it saw little
of: its 256-px anchors fire on torsos, posters and crowd blocks where the teacher's stay quiet
(docs/nano_b.md, "Teacher-calibrated levels"). Detections of every level are ranked together by score,
so one level's excess confidence costs AP everywhere. A constant per level corrects that at no run-time
cost: it is added to the face logit's bias in that level's class head, which the ONNX export keeps.

Each offset ``b`` minimises the mean binary cross-entropy between the teacher's face probability and
``sigmoid(student face log-odds + b)`` over every anchor of the level, on training images at original
size (the test scale of the headline numbers; ``split.val_scale`` in the pipeline). No labels and no
held-out image are used: the teacher alone says how confident each level should be. The loss is
convex in ``b``: a few Newton steps.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from edge.anchors import DEFAULT_STEPS, level_counts
from trainer.data.labels import FaceSample
from trainer.eval.predict import preprocess, torch_runner

log = logging.getLogger(__name__)


def real_samples(dataset: Dataset) -> list[FaceSample]:
    """The annotated images behind a training dataset (synthetic scenes have no image to show)."""
    if isinstance(dataset, ConcatDataset):
        return [s for d in dataset.datasets for s in real_samples(d)]
    return list(getattr(dataset, "samples", []))


def pick_images(samples: Sequence[FaceSample], n: int) -> list[FaceSample]:
    """``n`` samples chosen by a hash of their image, so the choice does not depend on file order."""
    key = {id(s): hashlib.sha256(str(s.image).encode()).hexdigest() for s in samples}
    return sorted(samples, key=lambda s: key[id(s)])[:n]


@torch.no_grad()
def _face_outputs(model: nn.Module, blob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(face log-odds, face probability) per anchor of one image."""
    conf = model(blob)[1][0].float()
    return conf[:, 1] - conf[:, 0], conf.softmax(-1)[:, 1]


def fit_offset(logodds: torch.Tensor, target: torch.Tensor, iters: int = 25) -> float:
    """``b`` minimising mean BCE(target, sigmoid(logodds + b)) (Newton's method; convex in ``b``)."""
    z, p = logodds.double(), target.double()
    b = 0.0
    for _ in range(iters):
        q = torch.sigmoid(z + b)
        grad, hess = float((q - p).mean()), float((q * (1 - q)).mean())
        if hess <= 0.0:
            break
        step = grad / hess
        b -= step
        if abs(step) < 1e-6:
            break
    return b


def level_offsets(
    student: nn.Module,
    teacher: nn.Module,
    images: Iterable[np.ndarray],
    scale: int | None = None,
) -> list[float]:
    """One face-logit offset per pyramid level: the student's level put at the teacher's confidence.
    Images run at ``scale`` (the longer side; None: original size), as evaluation runs them. Both
    networks run on V1's priors (DESIGN §2), so their anchors align one for one."""
    student.eval()
    teacher.eval()
    runner = torch_runner(student, "nano_b")  # the evaluation's preprocessing (mean, colour order)
    zs: list[list[torch.Tensor]] = [[] for _ in DEFAULT_STEPS]
    ps: list[list[torch.Tensor]] = [[] for _ in DEFAULT_STEPS]
    for image in images:
        blob, _, _ = preprocess(image, runner, scale)
        x = torch.from_numpy(blob)
        z, _ = _face_outputs(student, x.to(next(student.parameters()).device))
        _, p = _face_outputs(teacher, x.to(next(teacher.parameters()).device))
        if z.shape != p.shape:
            raise ValueError(f"student and teacher disagree on anchors: {z.shape[0]} vs {p.shape[0]}")
        counts = level_counts(blob.shape[3], blob.shape[2])
        for k, (zk, pk) in enumerate(zip(z.cpu().split(counts), p.cpu().split(counts), strict=True)):
            zs[k].append(zk)
            ps[k].append(pk)
    if not zs[0]:
        raise ValueError("calibration needs at least one image")
    return [fit_offset(torch.cat(z), torch.cat(p)) for z, p in zip(zs, ps, strict=True)]


@torch.no_grad()
def shift_face_logits(class_heads: nn.ModuleList, offsets: Sequence[float]) -> None:
    """Add ``offsets[k]`` to the face logit of every anchor of level ``k`` (the bias of its class head;
    channels are (anchor, class) pairs, class 1 = face, trainer.layers.heads)."""
    if len(offsets) != len(class_heads):
        raise ValueError(f"{len(offsets)} offsets for {len(class_heads)} class heads")
    for head, b in zip(class_heads, offsets, strict=True):
        head.conv1x1.bias[1::2] += b
