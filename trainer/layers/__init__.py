"""Building blocks shared by the FeatherFace models; each module states its channel contract.

- :mod:`~trainer.layers.mobilenet`: MobileNetV1 backbone -> (C3, C4, C5)
- :mod:`~trainer.layers.cbam`: CBAM (channel + spatial attention), optionally residual
- :mod:`~trainer.layers.bifpn`: BiFPN cells (fast normalised fusion, "SAME" or symmetric padding)
- :mod:`~trainer.layers.deform`: modulated deformable conv (DCNv2) with a pure-PyTorch fallback
- :mod:`~trainer.layers.ssh`: SSH context module (deformable or plain / grouped convs)
- :mod:`~trainer.layers.shuffle`: channel shuffle and V1's shuffle block
- :mod:`~trainer.layers.heads`: 1x1 class / box / landmark heads
- :mod:`~trainer.layers.state`: reading weight files, strict loading with one-line errors
"""

from trainer.layers.bifpn import BiFPN, BiFPNCell, SeparableConvBlock
from trainer.layers.cbam import CBAM
from trainer.layers.deform import DeformableConv2d, deform_conv2d
from trainer.layers.heads import BboxHead, ClassHead, LandmarkHead, make_heads
from trainer.layers.mobilenet import MobileNetV1
from trainer.layers.shuffle import ChannelShuffle, ShuffleBlock, channel_shuffle
from trainer.layers.ssh import SSH

__all__ = [
    "CBAM",
    "SSH",
    "BboxHead",
    "BiFPN",
    "BiFPNCell",
    "ChannelShuffle",
    "ClassHead",
    "DeformableConv2d",
    "LandmarkHead",
    "MobileNetV1",
    "SeparableConvBlock",
    "ShuffleBlock",
    "channel_shuffle",
    "deform_conv2d",
    "make_heads",
]
