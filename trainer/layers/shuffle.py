"""Channel shuffle and the V1 channel-shuffle block that follows each SSH.

Two permutations go by the name "channel shuffle"; ``variant`` picks one (C channels, g groups):
- ``"shufflenet"``: view ``(N, g, C/g, H, W)``, swap axes 1-2: output = channels
  ``0, C/g, 2C/g, ..., 1, C/g+1, ...`` (ShuffleNet's interleave of the groups);
- ``"v1"``: view ``(N, C/g, g, H, W)``, swap axes 1-2: output = channels ``0, g, 2g, ..., 1, g+1, ...``
  (for g = 2: the even channels, then the odd ones) — what the FeatherFace V1 weights expect.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

ShuffleVariant = Literal["shufflenet", "v1"]


def channel_shuffle(x: torch.Tensor, groups: int, variant: ShuffleVariant = "shufflenet") -> torch.Tensor:
    """Permute the channels of ``x`` (NCHW); see the module docstring for the two orders."""
    n, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"channel_shuffle: {c} channels do not split into {groups} groups")
    if variant == "shufflenet":
        shape = (n, groups, c // groups, h, w)
    elif variant == "v1":
        shape = (n, c // groups, groups, h, w)
    else:
        raise ValueError(f"channel_shuffle: unknown variant {variant!r}")
    return x.view(shape).transpose(1, 2).reshape(n, c, h, w)


class ChannelShuffle(nn.Module):
    """Module form of :func:`channel_shuffle` (no parameters)."""

    def __init__(self, groups: int = 2, variant: ShuffleVariant = "shufflenet") -> None:
        super().__init__()
        self.groups, self.variant = groups, variant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups, self.variant)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, variant={self.variant!r}"


class ShuffleBlock(nn.Sequential):
    """V1's ``ssh{k}_cs``: shuffle -> 1x1 C->M -> BN -> dw 3x3 M -> BN -> 1x1 M->C -> BN -> ReLU.

    ``(N, channels, H, W) -> (N, channels, H, W)``; indices 0-7 as in the checkpoint; convs have no
    bias and there is no activation before the final ReLU. V1: channels 64, mid 32, groups 2, "v1".
    """

    def __init__(
        self,
        channels: int = 64,
        mid_channels: int | None = None,
        groups: int = 2,
        variant: ShuffleVariant = "v1",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        mid = mid_channels or channels // 2

        def bn(ch: int) -> nn.BatchNorm2d:
            return nn.BatchNorm2d(ch, eps=bn_eps, momentum=bn_momentum)

        super().__init__(
            ChannelShuffle(groups, variant),
            nn.Conv2d(channels, mid, 1, bias=False),
            bn(mid),
            nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False),
            bn(mid),
            nn.Conv2d(mid, channels, 1, bias=False),
            bn(channels),
            nn.ReLU(inplace=True),
        )
