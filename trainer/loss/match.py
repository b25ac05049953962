"""Torch prior matching and box / landmark encoding for the MultiBox loss (gradient-side twin of
:mod:`edge.anchors`, cross-checked against it in tests/trainer/test_multibox.py).

Conventions: priors ``(A, 4)`` ``(cx, cy, w, h)`` normalised (as :func:`edge.anchors.prior_boxes`);
ground-truth boxes ``(N, 4)`` ``(x1, y1, x2, y2)`` normalised; landmarks ``(N, 10)`` ``x0, y0, ...``
normalised; variances ``(0.1, 0.2)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from edge.anchors import DEFAULT_VARIANCES


def point_form(priors: torch.Tensor) -> torch.Tensor:
    """``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``."""
    return torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], dim=1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix ``(len(a), len(b))`` of corner boxes (no +1 convention: coordinates are normalised)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(dim=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def encode(
    matched: torch.Tensor, priors: torch.Tensor, variances: Sequence[float] = DEFAULT_VARIANCES
) -> torch.Tensor:
    """Corner boxes ``(A, 4)`` matched to priors -> regression targets (inverse of ``decode_boxes``)."""
    g_c = ((matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]) / (variances[0] * priors[:, 2:])
    g_s = torch.log((matched[:, 2:] - matched[:, :2]) / priors[:, 2:]) / variances[1]
    return torch.cat([g_c, g_s], dim=1)


def encode_landmarks(
    matched: torch.Tensor, priors: torch.Tensor, variances: Sequence[float] = DEFAULT_VARIANCES
) -> torch.Tensor:
    """Landmarks ``(A, 2K)`` matched to priors -> targets (inverse of ``decode_landmarks``)."""
    pts = matched.reshape(matched.shape[0], -1, 2)
    g = (pts - priors[:, None, :2]) / (variances[0] * priors[:, None, 2:])
    return g.reshape(matched.shape[0], -1)


def match(
    truths: torch.Tensor,
    landmarks: torch.Tensor,
    labels: torch.Tensor,
    priors: torch.Tensor,
    threshold: float = 0.35,
    force_min_iou: float = 0.2,
    variances: Sequence[float] = DEFAULT_VARIANCES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Match one image's ground truth to the priors with the RetinaFace rule.

    A prior takes the GT it overlaps most; it is positive when that IoU >= ``threshold``. Each GT is
    also forced onto its best prior (which then belongs to it whatever its IoU), for every GT whose
    best IoU reaches ``force_min_iou`` (RetinaFace's 0.2: tiny faces no prior can represent stay
    unmatched instead of producing extreme regression targets).

    Returns ``(loc_t (A, 4), conf_t (A,) long, landm_t (A, 10))``; ``conf_t`` is the GT ``label``
    (1 = face with landmarks, -1 = face without) on positives and 0 on background.
    """
    num_priors = priors.shape[0]
    if truths.numel() == 0:
        conf = torch.zeros(num_priors, dtype=torch.long, device=priors.device)
        return priors.new_zeros((num_priors, 4)), conf, priors.new_zeros((num_priors, landmarks.shape[-1]))
    overlaps = box_iou(truths, point_form(priors))  # (N, A)
    best_prior_overlap, best_prior_idx = overlaps.max(dim=1)  # per GT
    best_truth_overlap, best_truth_idx = overlaps.max(dim=0)  # per prior
    forced = best_prior_idx[best_prior_overlap >= force_min_iou]
    best_truth_overlap.index_fill_(0, forced, 2.0)  # forced priors are positive whatever their IoU
    # The RetinaFace loop `for j: best_truth_idx[best_prior_idx[j]] = j` lets the later GT win a shared
    # best prior; scatter with amax does the same deterministically (also on CUDA).
    owner = torch.full_like(best_truth_idx, -1)
    owner.scatter_reduce_(0, best_prior_idx, torch.arange(len(truths), device=priors.device), reduce="amax")
    best_truth_idx = torch.where(owner >= 0, owner, best_truth_idx)
    conf = labels[best_truth_idx].long()
    conf[best_truth_overlap < threshold] = 0
    loc = encode(truths[best_truth_idx], priors, variances)
    landm = encode_landmarks(landmarks[best_truth_idx], priors, variances)
    return loc, conf, landm


def match_batch(
    targets: Sequence[torch.Tensor],
    priors: torch.Tensor,
    threshold: float = 0.35,
    force_min_iou: float = 0.2,
    variances: Sequence[float] = DEFAULT_VARIANCES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`match` over a batch of ``(N_i, 15)`` targets -> ``loc_t (B, A, 4)``, ``conf_t (B, A)``,
    ``landm_t (B, A, 10)``."""
    locs, confs, landms = [], [], []
    for t in targets:
        t = t.to(priors.device, torch.float32)
        loc, conf, landm = match(t[:, :4], t[:, 4:14], t[:, 14], priors, threshold, force_min_iou, variances)
        locs.append(loc)
        confs.append(conf)
        landms.append(landm)
    return torch.stack(locs), torch.stack(confs), torch.stack(landms)
