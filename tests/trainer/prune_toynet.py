"""A small detector-shaped network with every coupling the pruning code must survive.

Not a test module (no ``test_`` prefix): the pruning tests import it. It has BN, depthwise-separable
blocks (groups = channels), a residual add, a channel concatenation, a CBAM-like channel attention
MLP (Linear C -> C/r -> C multiplying the channels), a grouped conv (groups=2, like the grouped SSH),
and 1x1 heads whose outputs (anchors x {2, 4, 10}) must never change size.
"""

from __future__ import annotations

import torch
from torch import nn

ANCHORS = 2


def conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.1),
    )


def dw_sep(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(conv_bn(cin, cin, stride, groups=cin), conv_bn(cin, cout, k=1))


class ChannelAttention(nn.Module):
    """x * sigmoid(MLP(avgpool(x))) with an MLP of two Linears, as in CBAM's channel gate."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3)))))
        return x * torch.sigmoid(att)[:, :, None, None]


class ToyNet(nn.Module):
    """Input (N, 3, H, W) -> (loc, conf, landm) with (N, A*H/8*W/8 + ..., 4 / 2 / 10) like RetinaFace."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = conv_bn(3, w, stride=2)
        self.block1 = dw_sep(w, 2 * w, stride=2)
        self.block2 = dw_sep(2 * w, 2 * w)  # residual: block1 + block2(block1)
        self.block3 = dw_sep(2 * w, 4 * w, stride=2)
        self.lateral = conv_bn(4 * w, 2 * w, k=1)
        self.attn = ChannelAttention(4 * w)  # over the concatenation [lateral, block2-out pooled]
        self.down = nn.MaxPool2d(2)
        self.fuse = dw_sep(4 * w, 2 * w)
        self.ssh = conv_bn(2 * w, 2 * w, groups=2)  # grouped conv like the grouped SSH
        self.head_mid = conv_bn(2 * w, 2 * w, k=1)  # internal head channels: prunable
        self.cls = nn.Conv2d(2 * w, ANCHORS * 2, 1)  # final head convs: outputs never pruned
        self.box = nn.Conv2d(2 * w, ANCHORS * 4, 1)
        self.ldm = nn.Conv2d(2 * w, ANCHORS * 10, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        a = self.block1(x)
        b = a + self.block2(a)
        c = self.block3(b)
        cat = torch.cat([self.lateral(c), self.down(b)], dim=1)
        f = self.fuse(self.attn(cat))
        h = self.head_mid(self.ssh(f))
        n = x.shape[0]
        loc = self.box(h).permute(0, 2, 3, 1).reshape(n, -1, 4)
        conf = self.cls(h).permute(0, 2, 3, 1).reshape(n, -1, 2)
        landm = self.ldm(h).permute(0, 2, 3, 1).reshape(n, -1, 10)
        return loc, conf, landm

    def prune_groups(self) -> dict[str, list[nn.Module]]:
        """The same contract as nano_b: convs / linears whose output filters may be pruned."""
        return {
            "backbone_early": [self.stem[0], self.block1[1][0]],
            "backbone_late": [self.block2[1][0], self.block3[1][0]],
            "cbam": [self.attn.fc1],
            "bifpn": [self.lateral[0], self.fuse[1][0]],
            "ssh": [self.ssh[0]],
            "heads": [self.head_mid[0]],
        }
