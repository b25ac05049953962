"""Filter ranking by the geometric-median criterion (FPGM, He et al., CVPR 2019).

A layer's filters are points in R^(in*k*k). The filter whose summed Euclidean distance to all other
filters is smallest lies nearest the layer's geometric median: what it contributes is best replaced
by the others, so it is pruned first. Low score = prune first; the score itself is the importance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def fpgm_scores(weight: torch.Tensor) -> torch.Tensor:
    """Distance-sum of each output filter to all others: ``s_i = sum_j ||W_i - W_j||_2``.

    ``weight`` is ``(out, ...)`` (a conv or linear weight); returns ``(out,)`` float32 scores. A layer
    with one filter scores 0 (nothing to compare with).
    """
    flat = weight.detach().reshape(weight.shape[0], -1).double()
    # ||a-b||^2 = |a|^2 + |b|^2 - 2ab in float64: one small matmul, far faster than torch.cdist on CPU,
    # and exact enough (clamped at 0) that literal filters give literal distances.
    sq = (flat * flat).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T).clamp_(min=0.0)
    d2.fill_diagonal_(0.0)
    return d2.sqrt().sum(dim=1).float()


def rank_filters(weight: torch.Tensor) -> torch.Tensor:
    """Filter indices in pruning order: nearest the geometric median (lowest distance-sum) first.

    Ties break by index (a stable sort), so the ranking is deterministic.
    """
    return torch.sort(fpgm_scores(weight), stable=True).indices


def n_to_prune(n: int, rate: float, chunks: int = 1, multiple: int = 1) -> int:
    """How many of ``n`` channels a rate removes: rounded, a multiple of ``chunks`` (equal per group of
    a grouped conv), and always leaving at least one channel per chunk.

    With ``multiple`` > 1 the channels *kept* are rounded to a multiple of it (and of ``chunks``):
    ONNX Runtime's blocked-layout (NCHWc) kernels need channel counts in multiples of the SIMD block
    (8 floats on AVX2, 16 on AVX-512); a pruned width of 42 fell off them and ran its depthwise
    convs about 4x slower per multiply-add than an aligned one (docs/BENCHMARKS.md). A set narrower
    than one block is left whole."""
    if n <= 0 or rate <= 0.0:
        return 0
    if multiple > 1:
        step = math.lcm(multiple, chunks)
        keep = max(step, round(n * (1.0 - rate) / step) * step)
        return max(0, n - keep)
    per_chunk = n // chunks
    k = round(rate * per_chunk)
    return max(0, min(k, per_chunk - 1)) * chunks


def select_lowest(scores: torch.Tensor, k: int, chunks: int = 1) -> list[int]:
    """Indices of the ``k`` lowest scores; with ``chunks`` > 1 the channels are split into that many
    contiguous equal parts (the groups of a grouped conv) and ``k / chunks`` are taken from each."""
    n = scores.numel()
    if k <= 0:
        return []
    if n % chunks or k % chunks:
        raise ValueError(f"cannot take {k} of {n} channels equally from {chunks} chunks")
    size, per = n // chunks, k // chunks
    picked: list[int] = []
    for c in range(chunks):
        part = scores[c * size : (c + 1) * size]
        order = torch.sort(part, stable=True).indices[:per]
        picked.extend(int(i) + c * size for i in order)
    return sorted(picked)


def aggregate_scores(parts: Sequence[tuple[torch.Tensor, Sequence[int]]], n: int) -> torch.Tensor:
    """Combine FPGM scores of coupled layers into one score per shared channel.

    ``parts`` holds ``(scores, root_idxs)``: a layer's per-filter scores and which of the ``n`` coupled
    channels each filter is. Each layer's scores are divided by their mean first, so a wide 3x3 conv does
    not drown a depthwise conv's 9-weight filters; channels no layer scores get +inf (never chosen).
    The result is the *mean* over the layers that score a channel: behind a concatenation different
    channels have different numbers of producers, and a sum would favour keeping those with more.
    """
    total = torch.zeros(n)
    count = torch.zeros(n)
    for scores, idxs in parts:
        if scores.numel() == 0:
            continue
        scores = scores.detach().float().cpu()  # the tally lives on the CPU whatever the model's device
        mean = scores.mean()
        norm = scores / mean if mean > 0 else torch.zeros_like(scores)
        index = torch.as_tensor(list(idxs), dtype=torch.long)
        total.index_add_(0, index, norm)
        count.index_add_(0, index, torch.ones(index.numel()))
    out = total / count.clamp(min=1)
    out[count == 0] = float("inf")
    return out
