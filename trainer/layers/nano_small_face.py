"""Nano-B's small-face modules: ScaleDecoupling, SemanticEnhancement, ScaleSequenceAttention (ASSN).

Each is a few thousand parameters and cheap at P3 (stride 8) resolution: every full-resolution conv
is depthwise or a 1x1 into a narrow ``mid`` width (default 16), never a dense 1x1 over a 3C
concatenation. Each is a residual branch ``x + branch(x)`` whose last op is a BatchNorm with its
scale (gamma) initialised to **zero**, so a freshly built module is the identity: a Nano-B whose
other layers are copied from the teacher starts out computing what the teacher's layers compute,
and the new modules grow in from there (the "zero-init last BN" trick of ResNets / ReZero). BN
scales are also what channel pruning already knows how to slice, unlike a bare ``nn.Parameter``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn(cin: int, cout: int, k: int = 1, groups: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias, size-preserving padding) -> BN; indices 0, 1."""
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=pad, groups=groups, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
    )


def _zero_bn(seq: nn.Sequential) -> nn.Sequential:
    """Zero the scale of the BN at index 1 so the residual branch starts at exactly 0."""
    nn.init.zeros_(seq[1].weight)
    return seq


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # Legacy nearest, as the BiFPN: exports to ONNX Resize (asymmetric, floor) and to OpenVINO.
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


class ScaleDecoupling(nn.Module):
    """Separate small-scale content in C3 from what C4 already explains.

    ``(c3 (N, C3, H, W), c4 (N, C4, H/2, W/2)) -> (N, C3, H, W)``:
    ``detail = ReLU(BN(1x1 c3 -> mid) - up(BN(1x1 c4 -> mid)))`` is the part of the shallow features
    the deeper level does not predict (large faces live in both, small faces mostly in C3);
    ``out = c3 + BN0(1x1 mid -> C3)(detail)``. Params ~ mid * (2*C3 + C4); at P3 only two
    1x1 convs into / out of ``mid`` channels run.
    """

    def __init__(self, c3: int = 64, c4: int = 128, mid: int = 16) -> None:
        super().__init__()
        self.small = _conv_bn(c3, mid)
        self.large = _conv_bn(c4, mid)
        self.expand = _zero_bn(_conv_bn(mid, c3))

    def forward(self, c3: torch.Tensor, c4: torch.Tensor) -> torch.Tensor:
        detail = torch.relu(self.small(c3) - _up(self.large(c4), c3))
        return c3 + self.expand(detail)


class SemanticEnhancement(nn.Module):
    """Widen the receptive field of one fused level with a dilated depthwise conv + a narrow bottleneck.

    ``(N, C, H, W) -> (N, C, H, W)``: ``x + BN0(1x1 mid->C)(ReLU(BN(1x1 C->mid)(ReLU(BN(dw3x3 d=2)(x)))))``.
    Params ~ 9C + 2*C*mid.
    """

    def __init__(self, channels: int = 64, mid: int = 16, dilation: int = 2) -> None:
        super().__init__()
        self.context = _conv_bn(channels, channels, 3, groups=channels, dilation=dilation)
        self.reduce = _conv_bn(channels, mid)
        self.expand = _zero_bn(_conv_bn(mid, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.context(x))
        y = torch.relu(self.reduce(y))
        return x + self.expand(y)


class ScaleSequenceAttention(nn.Module):
    """ASSN: attention on P3 computed from the scale sequence (P3, up(P4), up(P5)).

    ``(p3, p4, p5) each (N, C, ., .) -> (N, C, H3, W3)``. The three levels are fused per channel
    (three depthwise 1x1 convs = a learned per-channel weighting along the scale axis, the cheap
    form of a 3-D conv over the sequence), refined by a depthwise 3x3, then gated by a spatial
    attention map (7x7 conv over [max_c, mean_c], as CBAM) and a channel attention vector (MLP
    C -> mid -> C on the global average): ``out = p3 + BN0(fused * spatial * channel)``.
    """

    def __init__(self, channels: int = 64, mid: int = 8, kernel_size: int = 7) -> None:
        super().__init__()
        c = channels
        self.w3 = nn.Conv2d(c, c, 1, groups=c)
        self.w4 = nn.Conv2d(c, c, 1, groups=c)
        self.w5 = nn.Conv2d(c, c, 1, groups=c)
        self.refine = _conv_bn(c, c, 3, groups=c)
        self.spatial = _conv_bn(2, 1, kernel_size)
        self.channel = nn.Sequential(nn.Linear(c, mid), nn.ReLU(inplace=True), nn.Linear(mid, c))
        self.out = nn.BatchNorm2d(c)
        nn.init.zeros_(self.out.weight)

    def forward(self, p3: torch.Tensor, p4: torch.Tensor, p5: torch.Tensor) -> torch.Tensor:
        fused = self.w3(p3) + self.w4(_up(p4, p3)) + self.w5(_up(p5, p3))
        fused = self.refine(fused)
        pooled = torch.cat([fused.amax(dim=1, keepdim=True), fused.mean(dim=1, keepdim=True)], dim=1)
        spatial = torch.sigmoid(self.spatial(pooled))
        channel = torch.sigmoid(self.channel(fused.mean(dim=(2, 3))))[:, :, None, None]
        return p3 + self.out(fused * spatial * channel)
