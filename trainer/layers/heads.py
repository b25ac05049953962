"""1x1 prediction heads: class logits, box regressions, landmark regressions per anchor.

Channel contract: each head maps ``(N, in_channels, H, W)`` to ``(N, H*W*num_anchors, D)`` with D = 2
(class logits, index 1 = face), 4 (box) or 10 (5 landmarks as x, y pairs), flattened row-major over
(y, x) with the anchors of one location adjacent — the prior order of :func:`edge.anchors.prior_boxes`.
Module names (``conv1x1``) follow the RetinaFace / FeatherFace checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class _Head(nn.Module):
    dims: int = 0

    def __init__(self, in_channels: int = 64, num_anchors: int = 2) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(in_channels, num_anchors * self.dims, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.dims)


class ClassHead(_Head):
    """Class logits, ``(N, H*W*A, 2)``; softmax belongs to inference / the loss, not here."""

    dims = 2


class BboxHead(_Head):
    """Box regressions (dx, dy, dw, dh in prior units / variances), ``(N, H*W*A, 4)``."""

    dims = 4


class LandmarkHead(_Head):
    """Landmark regressions (5 x (dx, dy)), ``(N, H*W*A, 10)``."""

    dims = 10


def make_heads(
    head: type[_Head], in_channels: int | Sequence[int], levels: int = 3, num_anchors: int = 2
) -> nn.ModuleList:
    """One ``head`` per level (indices 0..levels-1); ``in_channels`` is one int or one per level."""
    chans = [in_channels] * levels if isinstance(in_channels, int) else list(in_channels)
    if len(chans) != levels:
        raise ValueError(f"make_heads: {len(chans)} channel counts for {levels} levels")
    return nn.ModuleList(head(c, num_anchors) for c in chans)
