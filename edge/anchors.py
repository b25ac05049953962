"""Prior boxes, box/landmark decoding and NMS in NumPy: the math shared by edge and trainer.

Conventions (RetinaFace / FeatherFace):
- priors are ``(A, 4)`` rows ``(cx, cy, w, h)`` normalised to the input size, ordered level by
  level (stride 8, 16, 32), row-major over the feature map, the sizes of one location adjacent;
- decoded boxes are ``(x1, y1, x2, y2)`` normalised to the input size (multiply by W, H for pixels);
- landmarks are ``(A, 10)`` as ``x0, y0, x1, y1, ...`` normalised the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_MIN_SIZES: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
DEFAULT_STEPS: tuple[int, ...] = (8, 16, 32)
DEFAULT_VARIANCES: tuple[float, float] = (0.1, 0.2)


def _feature_map(width: int, height: int, step: int) -> tuple[int, int]:
    """``(rows, cols)`` of a pyramid level: ``ceil(H/s) x ceil(W/s)``, exactly as the V1 weights were
    trained."""
    return math.ceil(height / step), math.ceil(width / step)


def prior_boxes(
    width: int,
    height: int,
    min_sizes: Sequence[Sequence[int]] = DEFAULT_MIN_SIZES,
    steps: Sequence[int] = DEFAULT_STEPS,
    clip: bool = False,
) -> np.ndarray:
    """Anchor priors for a ``width`` x ``height`` input, ``(A, 4)`` float32 ``(cx, cy, w, h)``.

    Feature maps are ``ceil(H/s) x ceil(W/s)`` (:func:`_feature_map`).
    """
    levels = []
    for sizes, step in zip(min_sizes, steps, strict=True):
        fh, fw = _feature_map(width, height, step)
        cy, cx = np.meshgrid(
            (np.arange(fh, dtype=np.float64) + 0.5) * step / height,
            (np.arange(fw, dtype=np.float64) + 0.5) * step / width,
            indexing="ij",
        )
        n = len(sizes)
        lvl = np.empty((fh, fw, n, 4), dtype=np.float64)
        lvl[..., 0] = cx[..., None]
        lvl[..., 1] = cy[..., None]
        lvl[..., 2] = np.asarray(sizes, dtype=np.float64) / width
        lvl[..., 3] = np.asarray(sizes, dtype=np.float64) / height
        levels.append(lvl.reshape(-1, 4))
    priors = np.concatenate(levels, axis=0).astype(np.float32)
    if clip:
        np.clip(priors, 0.0, 1.0, out=priors)
    return priors


def level_counts(
    width: int,
    height: int,
    min_sizes: Sequence[Sequence[int]] = DEFAULT_MIN_SIZES,
    steps: Sequence[int] = DEFAULT_STEPS,
) -> list[int]:
    """How many of :func:`prior_boxes`' anchors each pyramid level holds, in its order."""
    return [
        math.prod(_feature_map(width, height, step)) * len(sizes)
        for sizes, step in zip(min_sizes, steps, strict=True)
    ]


def decode_boxes(
    loc: np.ndarray, priors: np.ndarray, variances: Sequence[float] = DEFAULT_VARIANCES
) -> np.ndarray:
    """Regression ``(A, 4)`` + priors -> corner boxes ``(A, 4)`` ``(x1, y1, x2, y2)``, normalised."""
    centre = priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * variances[1])
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def encode_boxes(
    boxes: np.ndarray, priors: np.ndarray, variances: Sequence[float] = DEFAULT_VARIANCES
) -> np.ndarray:
    """Inverse of :func:`decode_boxes`: corner boxes (normalised) -> regression targets."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = boxes[:, 2:] - boxes[:, :2]
    g_c = (centre - priors[:, :2]) / (variances[0] * priors[:, 2:])
    g_s = np.log(size / priors[:, 2:]) / variances[1]
    return np.concatenate([g_c, g_s], axis=1)


def decode_landmarks(
    ldm: np.ndarray, priors: np.ndarray, variances: Sequence[float] = DEFAULT_VARIANCES
) -> np.ndarray:
    """Landmark regression ``(A, 2K)`` + priors -> ``(A, 2K)`` points ``x, y, ...`` normalised."""
    k = ldm.shape[1] // 2
    pts = ldm.reshape(-1, k, 2) * variances[0] * priors[:, None, 2:] + priors[:, None, :2]
    return pts.reshape(-1, 2 * k)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, plus_one: float = 0.0) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, highest score first.

    ``plus_one=1.0`` reproduces the reference code's pixel convention (areas ``(x2-x1+1)(y2-y1+1)``),
    which the WIDER evaluation numbers were produced with; use 0 for normalised boxes.
    """
    if len(boxes) == 0:
        return np.zeros((0,), dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + plus_one) * (y2 - y1 + plus_one)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + plus_one)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + plus_one)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)
