"""CBAM: channel attention then spatial attention (Woo et al., 2018), optionally residual.

Channel contract: ``(N, C, H, W) -> (N, C, H, W)``; works at any H x W (the pooling is global and the
spatial conv is padded to keep the size). Module names (``ChannelGate.mlp.1``, ``SpatialGate.spatial.conv``
...) follow the FeatherFace V1 checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelGate(nn.Module):
    """x * sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))), one shared MLP C -> C/r -> C with biases.

    ``mlp`` indices: 0 Flatten, 1 Linear, 2 ReLU, 3 Linear (the checkpoint's ``mlp.1`` / ``mlp.3``).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        return x * torch.sigmoid(att)[:, :, None, None]


class ChannelPool(nn.Module):
    """``(N, C, H, W) -> (N, 2, H, W)``: [max over channels, mean over channels], in that order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)


class ConvBN(nn.Module):
    """Conv (no bias, size-preserving padding) -> BN, named ``conv`` / ``bn`` as in the checkpoint."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SpatialGate(nn.Module):
    """x * sigmoid(BN(conv_k([max_c x, mean_c x]))), a single k x k conv 2 -> 1 without bias."""

    def __init__(self, kernel_size: int = 7, bn_eps: float = 1e-5, bn_momentum: float = 0.01) -> None:
        super().__init__()
        self.compress = ChannelPool()
        self.spatial = ConvBN(2, 1, kernel_size, bn_eps=bn_eps, bn_momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.spatial(self.compress(x)))


class CBAM(nn.Module):
    """Channel gate then spatial gate (applied to the channel-gated tensor).

    Args:
        channels: C, in and out.
        reduction: MLP bottleneck ratio, hidden = max(1, C // reduction) (V1: 16).
        kernel_size: spatial-gate conv size (V1: 7).
        bn_eps, bn_momentum: the spatial gate's BN (V1: 1e-5, 0.01).
        residual: if True return ``ReLU(CBAM(x) + x)`` (how V1 uses every CBAM), else ``CBAM(x)``.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        kernel_size: int = 7,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.01,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.ChannelGate = ChannelGate(channels, reduction)
        self.SpatialGate = SpatialGate(kernel_size, bn_eps=bn_eps, bn_momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.SpatialGate(self.ChannelGate(x))
        return torch.relu(y + x) if self.residual else y
