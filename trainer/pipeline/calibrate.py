"""Fit each pyramid level's face score to the teacher, after phase 3 (``calibrate.images``).

The pruned student ranks faces well within a level but is over-confident on whole levels it saw little
of: its 256-px anchors fire on torsos, posters and crowd blocks where the teacher's stay quiet
(docs/nano_b.md, "Teacher-calibrated levels"). Detections of every level are ranked together by score,
so one level's excess confidence costs AP everywhere. A scale and an offset per level correct that at
no run-time cost: the face log-odds ``z`` of level k become ``a_k z + b_k`` by rewriting the face rows
of that level's class head (a 1x1 conv, so any affine map of its output is another 1x1 conv), which
the ONNX export keeps.

Each (a, b) minimises the mean binary cross-entropy between the teacher's face probability and
``sigmoid(a z + b)`` over every anchor of the level (Platt scaling with the teacher as the target), on
training images at original size (the test scale of the headline numbers; ``split.val_scale`` in the
pipeline). No labels and no held-out image are used: the teacher alone says how confident each level
should be. The loss is convex in (a, b): a few Newton steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import ConcatDataset, Dataset

from edge.anchors import DEFAULT_STEPS, level_counts
from trainer.data.labels import FaceSample
from trainer.eval.predict import preprocess, torch_runner
from trainer.pipeline.data import image_key

log = logging.getLogger(__name__)

# Scales fitted on trained networks lie in 0.5-1.1 (docs/nano_b.md); one outside this range means the
# student's level and the teacher's disagree beyond what a calibration should paper over.
SCALE_RANGE = (0.25, 4.0)


def real_samples(dataset: Dataset) -> list[FaceSample]:
    """The image files behind a training dataset (synthetic scenes have none to show)."""
    if isinstance(dataset, ConcatDataset):
        return [s for d in dataset.datasets for s in real_samples(d)]
    return [s for s in getattr(dataset, "samples", []) if s.image is not None]


def pick_images(samples: Sequence[FaceSample], n: int) -> list[FaceSample]:
    """``n`` samples chosen by a hash of ``<event>/<name>`` (as the held-out split is), so the choice
    depends neither on file order nor on where the dataset lies."""
    return sorted(samples, key=image_key)[:n]


@torch.no_grad()
def _face_outputs(model: nn.Module, blob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(face log-odds, face probability) per anchor of one image."""
    conf = model(blob)[1][0].float()
    return conf[:, 1] - conf[:, 0], conf.softmax(-1)[:, 1]


def _bce(x: torch.Tensor, p: torch.Tensor, w: torch.Tensor) -> float:
    return float(F.binary_cross_entropy_with_logits(x @ w, p))


def fit_level(
    logodds: torch.Tensor, target: torch.Tensor, iters: int = 50, tol: float = 1e-9
) -> tuple[float, float]:
    """(a, b) minimising mean BCE(target, sigmoid(a * logodds + b)): Newton's method with a
    backtracking line search (a full step from (1, 0) can saturate every sigmoid when the log-odds
    spread over tens of units, as a trained detector's background anchors do).

    A target with less than one face in all (the teacher saw nothing on this level: the optimum is at
    infinity), a fit that does not converge, or a scale outside ``SCALE_RANGE`` (a level whose scores
    do not follow the teacher's at all) is refused: (1, 0), with a warning."""
    x = torch.stack([logodds.double(), torch.ones_like(logodds, dtype=torch.float64)], 1)
    p = target.double()
    if float(p.sum()) < 1.0 or float((1 - p).sum()) < 1.0:
        log.warning("level calibration: the teacher's target is one-sided; level left as it is")
        return 1.0, 0.0
    w = torch.tensor([1.0, 0.0], dtype=torch.float64)
    ridge = 1e-9 * torch.eye(2, dtype=torch.float64)
    loss = _bce(x, p, w)
    for _ in range(iters):
        q = torch.sigmoid(x @ w)
        grad = x.T @ (q - p) / len(p)
        if float(grad.abs().max()) < tol:
            break
        step = torch.linalg.solve((x * (q * (1 - q))[:, None]).T @ x / len(p) + ridge, grad)
        t = 1.0
        while t > 1e-10 and _bce(x, p, w - t * step) > loss - 1e-4 * t * float(grad @ step):
            t *= 0.5
        w = w - t * step
        loss = _bce(x, p, w)
    grad = x.T @ (torch.sigmoid(x @ w) - p) / len(p)
    a, b = float(w[0]), float(w[1])
    if not (math.isfinite(a) and math.isfinite(b) and a > 0 and float(grad.abs().max()) < 1e-6):
        log.warning("level calibration did not converge (a %.3g, b %.3g): left as it is", a, b)
        return 1.0, 0.0
    if not SCALE_RANGE[0] <= a <= SCALE_RANGE[1]:
        # A scale near 0 flattens the level to one score: the student's level does not follow the
        # teacher's (an untrained level), and no calibration can make it rank faces.
        log.warning("level calibration scale %.3g is outside %s: left as it is", a, SCALE_RANGE)
        return 1.0, 0.0
    return a, b


def level_calibration(
    student: nn.Module,
    teacher: nn.Module,
    images: Iterable[np.ndarray],
    scale: int | None = None,
) -> list[tuple[float, float]]:
    """(scale, offset) of the face log-odds per pyramid level: the student's levels put at the
    teacher's confidence. Images run at ``scale`` (the longer side; None: original size), as
    evaluation runs them. Both networks run on V1's priors (DESIGN §2), so their anchors align one
    for one."""
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
    return [fit_level(torch.cat(z), torch.cat(p)) for z, p in zip(zs, ps, strict=True)]


@torch.no_grad()
def calibrate_face_logits(class_heads: nn.ModuleList, params: Sequence[tuple[float, float]]) -> None:
    """Make level ``k``'s face log-odds ``a z + b`` for ``params[k] = (a, b)``: the face row of each
    anchor becomes background row + a (face row - background row), its bias + b (channels are
    (anchor, class) pairs, class 1 = face, trainer.layers.heads); the background rows stay."""
    if len(params) != len(class_heads):
        raise ValueError(f"{len(params)} calibrations for {len(class_heads)} class heads")
    for head, (a, b) in zip(class_heads, params, strict=True):
        conv = head.conv1x1
        for t in (conv.weight, conv.bias):
            t[1::2] = t[0::2] + a * (t[1::2] - t[0::2])
        conv.bias[1::2] += b
