"""BiFPN cell over three levels (P3, P4, P5) with fast normalised fusion (EfficientDet style).

Channel contract: a cell maps ``(p3, p4, p5)`` at strides 8 / 16 / 32 to three tensors of
``num_channels`` each, same spatial sizes as its inputs. The first cell of a stack takes backbone
features with ``conv_channels = (C3, C4, C5)`` channels and projects them with 1x1 convs; later
cells take ``num_channels`` everywhere (``conv_channels=None``).

Padding: with ``same_padding=True`` (V1), convs and max-pools pad as TensorFlow's "SAME" computes
it (total ``(ceil(n/s) - 1)*s + k - n``, the smaller half left/top) and the padding is **zeros even
before the max-pool**, which is what the official weights were trained with. ``same_padding=False``
uses PyTorch's symmetric ``k // 2`` padding (and -inf padding in the max-pool): the output sizes are
identical, the graph is simpler to export, but numbers differ from the V1 checkpoint at borders.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _same_total(n: int, kernel_size: int, stride: int) -> int:
    """TensorFlow's total "SAME" padding of an axis of ``n``: ``(ceil(n/s) - 1)*s + k - n``, at least 0.

    Integer arithmetic only, and the clamp only where it can bite (``k < s``): the same numbers as
    ``math.ceil``, but at export, where ``n`` is symbolic, ``math.ceil`` / ``max`` / a test on the
    result turned into shape expressions that grew through the three BiFPN cells and every layer
    after them (the V1 export took 4 minutes instead of under one).
    """
    total = ((n + stride - 1) // stride - 1) * stride + kernel_size - n
    return total if kernel_size >= stride else max(total, 0)


def same_pad(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Zero-pad ``x`` (NCHW) the TensorFlow "SAME" way for a ``kernel_size`` / ``stride`` window."""
    if kernel_size == 1 and stride == 1:  # no padding at any size
        return x
    h, w = x.shape[-2:]
    pad_h, pad_w = _same_total(h, kernel_size, stride), _same_total(w, kernel_size, stride)
    return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])


class SameConv2d(nn.Module):
    """``nn.Conv2d`` (held as ``.conv``) with "SAME" zero padding, or symmetric ``k//2`` padding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
        same_padding: bool = True,
    ) -> None:
        super().__init__()
        self.same_padding = same_padding
        self.kernel_size, self.stride = kernel_size, stride
        padding = 0 if same_padding else kernel_size // 2
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=padding, groups=groups, bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_padding:
            x = same_pad(x, self.kernel_size, self.stride)
        return self.conv(x)


class SameMaxPool2d(nn.Module):
    """3x3 / stride-2 max-pool; "SAME" zero padding (zeros join the max) or symmetric -inf padding."""

    def __init__(self, kernel_size: int = 3, stride: int = 2, same_padding: bool = True) -> None:
        super().__init__()
        self.same_padding = same_padding
        self.kernel_size, self.stride = kernel_size, stride
        padding = 0 if same_padding else kernel_size // 2
        self.pool = nn.MaxPool2d(kernel_size, stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_padding:
            x = same_pad(x, self.kernel_size, self.stride)
        return self.pool(x)


class SeparableConvBlock(nn.Module):
    """Depthwise 3x3 (no bias) -> pointwise 1x1 (bias) -> BN; no activation (V1 / EfficientDet).

    ``in_channels -> out_channels``, size preserved.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        same_padding: bool = True,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.depthwise_conv = SameConv2d(
            in_channels, in_channels, 3, groups=in_channels, bias=False, same_padding=same_padding
        )
        self.pointwise_conv = SameConv2d(in_channels, out_channels, 1, same_padding=same_padding)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pointwise_conv(self.depthwise_conv(x)))


class Swish(nn.Module):
    """x * sigmoid(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def _fast_weights(param: torch.Tensor, eps: float) -> torch.Tensor:
    # Fast normalised fusion: ReLU keeps weights >= 0; the sum runs over every entry of the
    # parameter, even one the node does not use (V1's p5_w2 has three, two are used).
    w = torch.relu(param)
    return w / (w.sum() + eps)


def upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Legacy ``nearest`` resize to ``like``'s H x W: source index = floor(dst * in / out) per axis."""
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


class BiFPNCell(nn.Module):
    """One BiFPN cell on three levels, ``(p3, p4, p5) -> (p3_out, p4_out, p5_out)``.

    Args:
        num_channels: width of every node (V1: 64).
        conv_channels: ``(C3, C4, C5)`` input channels for the first cell of a stack (adds the
            ``p*_down_channel`` projections, separate ones ``p4/p5_down_channel_2`` for the bottom-up
            path); ``None`` for later cells, whose inputs already have ``num_channels``.
        epsilon: added to the fusion-weight sum (V1: 1e-4).
        bn_eps, bn_momentum: every BN in the cell (V1: 1e-3, 0.01).
        same_padding: "SAME" zero padding (V1) or symmetric padding, see the module docstring.
    """

    def __init__(
        self,
        num_channels: int = 64,
        conv_channels: Sequence[int] | None = None,
        epsilon: float = 1e-4,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        same_padding: bool = True,
    ) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.first_time = conv_channels is not None

        def sep() -> SeparableConvBlock:
            return SeparableConvBlock(
                num_channels, bn_eps=bn_eps, bn_momentum=bn_momentum, same_padding=same_padding
            )

        self.conv4_up = sep()
        self.conv3_up = sep()
        self.conv4_down = sep()
        self.conv5_down = sep()
        self.p4_downsample = SameMaxPool2d(3, 2, same_padding=same_padding)
        self.p5_downsample = SameMaxPool2d(3, 2, same_padding=same_padding)
        self.swish = Swish()

        if conv_channels is not None:
            c3, c4, c5 = conv_channels

            def proj(cin: int) -> nn.Sequential:
                return nn.Sequential(
                    SameConv2d(cin, num_channels, 1, same_padding=same_padding),
                    nn.BatchNorm2d(num_channels, eps=bn_eps, momentum=bn_momentum),
                )

            self.p5_down_channel = proj(c5)
            self.p4_down_channel = proj(c4)
            self.p3_down_channel = proj(c3)
            self.p4_down_channel_2 = proj(c4)
            self.p5_down_channel_2 = proj(c5)

        self.p4_w1 = nn.Parameter(torch.ones(2))
        self.p3_w1 = nn.Parameter(torch.ones(2))
        self.p4_w2 = nn.Parameter(torch.ones(3))
        self.p5_w2 = nn.Parameter(torch.ones(3))

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3, p4, p5 = inputs
        if self.first_time:
            p4_bu, p5_bu = self.p4_down_channel_2(p4), self.p5_down_channel_2(p5)
            p3, p4, p5 = self.p3_down_channel(p3), self.p4_down_channel(p4), self.p5_down_channel(p5)
        else:
            p4_bu, p5_bu = p4, p5

        # Top-down path.
        w = _fast_weights(self.p4_w1, self.epsilon)
        p4_up = self.conv4_up(self.swish(w[0] * p4 + w[1] * upsample_to(p5, p4)))
        w = _fast_weights(self.p3_w1, self.epsilon)
        p3_out = self.conv3_up(self.swish(w[0] * p3 + w[1] * upsample_to(p4_up, p3)))

        # Bottom-up path (the first cell reads its own `_2` projections of C4 / C5 here).
        w = _fast_weights(self.p4_w2, self.epsilon)
        p4_out = self.conv4_down(self.swish(w[0] * p4_bu + w[1] * p4_up + w[2] * self.p4_downsample(p3_out)))
        w = _fast_weights(self.p5_w2, self.epsilon)
        p5_out = self.conv5_down(self.swish(w[0] * p5_bu + w[1] * self.p5_downsample(p4_out)))
        return p3_out, p4_out, p5_out


class BiFPN(nn.Sequential):
    """``num_cells`` BiFPN cells in sequence; the first projects ``conv_channels`` to ``num_channels``.

    ``forward((C3, C4, C5)) -> (P3, P4, P5)``, each with ``num_channels`` channels. Indices ``0..n-1``
    are the cells (the checkpoint's ``bifpn.0`` ...).
    """

    def __init__(
        self,
        conv_channels: Sequence[int],
        num_channels: int = 64,
        num_cells: int = 3,
        **cell_kwargs: float | bool,
    ) -> None:
        cells = [
            BiFPNCell(num_channels, conv_channels if i == 0 else None, **cell_kwargs)  # type: ignore[arg-type]
            for i in range(num_cells)
        ]
        super().__init__(*cells)

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        feats = tuple(inputs)
        for cell in self:
            feats = cell(feats)
        return feats
