"""MobileNetV1 backbone (width 0.25 by default) returning three feature levels.

Channel contract: input ``(N, 3, H, W)``; outputs ``(C3, C4, C5)`` at strides 8, 16, 32 with
``widths[5]``, ``widths[11]`` and ``widths[13]`` channels (64, 128, 256 for MobileNetV1-0.25) and
spatial sizes ``ceil(H/s) x ceil(W/s)`` (every strided conv is 3x3 with symmetric padding 1).

Module names (``stage1.0.0`` ...) follow the RetinaFace / FeatherFace checkpoints, so both the
FeatherFace V1 ``body.*`` weights and the ImageNet MobileNetV1-0.25 file load without renaming.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from trainer.layers.state import drop_profiler_keys, load_state_strict, read_state_dict

# Output channels of the stem and of the 13 depthwise-separable blocks, MobileNetV1 at width 0.25.
MOBILENET_V1_025_WIDTHS: tuple[int, ...] = (8, 16, 32, 32, 64, 64, 128, 128, 128, 128, 128, 128, 256, 256)
# Stride of the stem and of each block; the stage boundaries follow the strides 8 / 16 / 32.
_STRIDES: tuple[int, ...] = (2, 1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
# Stage 1 = stem + blocks 1..5 (ends at stride 8), stage 2 = blocks 6..11, stage 3 = blocks 12..13.
_STAGE_ENDS: tuple[int, ...] = (6, 12, 14)


def conv_bn(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """3x3 conv (padding 1, no bias) -> BN -> LeakyReLU; indices 0, 1, 2."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """Depthwise-separable block, indices 0-5: dw 3x3 (stride), BN, LeakyReLU, pw 1x1, BN, LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 feature extractor: ``forward(x) -> (C3, C4, C5)``.

    ``widths`` (14 ints: stem, then each block's output) makes the widths data, so a pruned
    backbone can be rebuilt from its saved channel spec. The ImageNet classifier is not included.
    """

    def __init__(self, widths: Sequence[int] = MOBILENET_V1_025_WIDTHS, leaky: float = 0.1) -> None:
        super().__init__()
        if len(widths) != len(_STRIDES):
            raise ValueError(f"MobileNetV1 needs {len(_STRIDES)} widths, got {len(widths)}")
        self.widths = tuple(int(w) for w in widths)
        layers: list[nn.Module] = [conv_bn(3, self.widths[0], _STRIDES[0], leaky)]
        for i in range(1, len(self.widths)):
            layers.append(conv_dw(self.widths[i - 1], self.widths[i], _STRIDES[i], leaky))
        a, b, c = _STAGE_ENDS
        self.stage1 = nn.Sequential(*layers[:a])
        self.stage2 = nn.Sequential(*layers[a:b])
        self.stage3 = nn.Sequential(*layers[b:c])

    @property
    def out_channels(self) -> tuple[int, int, int]:
        """Channels of (C3, C4, C5)."""
        return tuple(self.widths[i - 1] for i in _STAGE_ENDS)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        c5 = self.stage3(c4)
        return c3, c4, c5


def load_imagenet_backbone(backbone: MobileNetV1, path: str | Path) -> MobileNetV1:
    """Load the ImageNet MobileNetV1 file (``state_dict`` with ``module.`` prefix, plus ``fc``).

    The classifier (``fc.*``) is dropped; every backbone key must match (strict), so a file for
    another width fails with a one-line :class:`~edge.errors.ModelError`.
    """
    state = read_state_dict(path, "ImageNet backbone")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in drop_profiler_keys(state).items() if not k.startswith(("fc.", "avg."))}
    load_state_strict(backbone, state, str(path))
    return backbone
