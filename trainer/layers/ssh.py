"""SSH context module (RetinaFace / FeatherFace): 3x3, "5x5" and "7x7" branches as stacked 3x3 convs.

Channel contract: ``(N, in_channel, H, W) -> (N, out_channel, H, W)``; ``out_channel`` must be a
multiple of 4: the 3x3 branch gives ``out/2``, the 5x5 and 7x7 branches ``out/4`` each, concatenated
in that order and passed through ReLU.

``conv`` picks the 3x3 conv of every branch: ``"deformable"`` (V1: modulated deformable convs, key
``<branch>.0.{offset_conv,modulator_conv,regular_conv}``) or ``"plain"`` (``nn.Conv2d``, key
``<branch>.0.weight``; with ``groups`` > 1 for a grouped SSH). Branch names keep the checkpoint's
spelling, including the lower-case ``conv7x7_3``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from trainer.layers.deform import DeformableConv2d

ConvKind = Literal["deformable", "plain"]


def _conv3x3(cin: int, cout: int, conv: ConvKind, groups: int) -> nn.Module:
    if conv == "deformable":
        if groups != 1:
            raise ValueError("SSH: deformable convs do not take groups")
        return DeformableConv2d(cin, cout, 3, stride=1, padding=1, bias=False)
    if conv == "plain":
        return nn.Conv2d(cin, cout, 3, 1, 1, groups=groups, bias=False)
    raise ValueError(f"SSH: conv must be 'deformable' or 'plain', got {conv!r}")


def _branch(
    cin: int, cout: int, conv: ConvKind, groups: int, leaky: float | None, bn_eps: float, bn_momentum: float
) -> nn.Sequential:
    # Indices 0 conv, 1 BN, [2 LeakyReLU]: the checkpoint's layout.
    layers: list[nn.Module] = [
        _conv3x3(cin, cout, conv, groups),
        nn.BatchNorm2d(cout, eps=bn_eps, momentum=bn_momentum),
    ]
    if leaky is not None:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True))
    return nn.Sequential(*layers)


class SSH(nn.Module):
    """SSH block. Args: channels in/out, ``conv`` kind, ``groups`` (plain only), LeakyReLU slope
    ``leaky`` for the two inner activations, BN ``bn_eps`` / ``bn_momentum`` (V1: PyTorch defaults)."""

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        conv: ConvKind = "deformable",
        groups: int = 1,
        leaky: float = 0.1,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if out_channel % 4:
            raise ValueError(f"SSH: out_channel must be a multiple of 4, got {out_channel}")
        half, quarter = out_channel // 2, out_channel // 4
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        self.conv3X3 = _branch(in_channel, half, conv, groups, None, **bn)
        self.conv5X5_1 = _branch(in_channel, quarter, conv, groups, leaky, **bn)
        self.conv5X5_2 = _branch(quarter, quarter, conv, groups, None, **bn)
        self.conv7X7_2 = _branch(quarter, quarter, conv, groups, leaky, **bn)
        self.conv7x7_3 = _branch(quarter, quarter, conv, groups, None, **bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c3 = self.conv3X3(x)
        c5_1 = self.conv5X5_1(x)
        c5 = self.conv5X5_2(c5_1)
        c7 = self.conv7x7_3(self.conv7X7_2(c5_1))
        return torch.relu(torch.cat([c3, c5, c7], dim=1))
