"""FeatherFace V1, the teacher: exactly the network behind the official weights (see V1_SPEC.md).

    MobileNetV1-0.25 -> (C3 64, C4 128, C5 256) -> residual CBAM per level -> BiFPN x3 (64 ch)
    -> residual CBAM -> SSH (deformable 3x3 convs) -> channel-shuffle block -> 1x1 heads, 2 anchors

Input: BGR float, mean (104, 117, 123) subtracted, no scaling, NCHW, any H x W (:func:`to_input`).
Output of ``forward``: raw ``(loc (N,A,4), conf logits (N,A,2), landmarks (N,A,10))`` over the
priors of :func:`edge.anchors.prior_boxes(W, H)` (levels P3, P4, P5); softmax is for inference.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainer.layers.bifpn import BiFPN
from trainer.layers.cbam import CBAM
from trainer.layers.heads import BboxHead, ClassHead, LandmarkHead, make_heads
from trainer.layers.mobilenet import MobileNetV1
from trainer.layers.shuffle import ShuffleBlock
from trainer.layers.ssh import SSH
from trainer.layers.state import drop_profiler_keys, load_state_strict, read_state_dict
from trainer.models.registry import register

V1_MEAN_BGR: tuple[float, float, float] = (104.0, 117.0, 123.0)
V1_PARAMETERS = 592_371  # learnable parameters of the official network (sum of tensor sizes)
FPN_CHANNELS = 64
NUM_ANCHORS = 2


class FeatherFaceV1(nn.Module):
    """The V1 network. Attribute names mirror the official ``state_dict`` (typos included).

    Args:
        deformable: True (the official network) uses DCNv2 in every SSH 3x3 conv; False builds
            plain 3x3 convs in their place (key ``ssh{k}.<branch>.0.weight``), loadable from
            :func:`v1_plain_conv_state` — e.g. to initialise a student or to export.
    """

    def __init__(self, deformable: bool = True) -> None:
        super().__init__()
        self.deformable = deformable
        self.body = MobileNetV1()
        c3, c4, c5 = self.body.out_channels
        cbam = {"reduction": 16, "kernel_size": 7, "bn_eps": 1e-5, "bn_momentum": 0.01, "residual": True}
        self.bacbkbone_0_cbam = CBAM(c3, **cbam)
        self.bacbkbone_1_cbam = CBAM(c4, **cbam)
        self.bacbkbone_2_cbam = CBAM(c5, **cbam)
        self.bifpn = BiFPN(
            (c3, c4, c5), FPN_CHANNELS, num_cells=3, bn_eps=1e-3, bn_momentum=0.01, same_padding=True
        )
        self.bif_cbam_0 = CBAM(FPN_CHANNELS, **cbam)
        self.bif_cbam_1 = CBAM(FPN_CHANNELS, **cbam)
        self.bif_cbam_2 = CBAM(FPN_CHANNELS, **cbam)
        conv = "deformable" if deformable else "plain"
        self.ssh1 = SSH(FPN_CHANNELS, FPN_CHANNELS, conv=conv)
        self.ssh2 = SSH(FPN_CHANNELS, FPN_CHANNELS, conv=conv)
        self.ssh3 = SSH(FPN_CHANNELS, FPN_CHANNELS, conv=conv)
        self.ssh1_cs = ShuffleBlock(FPN_CHANNELS, FPN_CHANNELS // 2, groups=2, variant="v1")
        self.ssh2_cs = ShuffleBlock(FPN_CHANNELS, FPN_CHANNELS // 2, groups=2, variant="v1")
        self.ssh3_cs = ShuffleBlock(FPN_CHANNELS, FPN_CHANNELS // 2, groups=2, variant="v1")
        self.ClassHead = make_heads(ClassHead, FPN_CHANNELS, 3, NUM_ANCHORS)
        self.BboxHead = make_heads(BboxHead, FPN_CHANNELS, 3, NUM_ANCHORS)
        self.LandmarkHead = make_heads(LandmarkHead, FPN_CHANNELS, 3, NUM_ANCHORS)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The three 64-channel maps the heads read (after ``ssh{k}_cs``), strides 8, 16, 32."""
        c3, c4, c5 = self.body(x)
        feats = (self.bacbkbone_0_cbam(c3), self.bacbkbone_1_cbam(c4), self.bacbkbone_2_cbam(c5))
        p3, p4, p5 = self.bifpn(feats)
        p3, p4, p5 = self.bif_cbam_0(p3), self.bif_cbam_1(p4), self.bif_cbam_2(p5)
        return [self.ssh1_cs(self.ssh1(p3)), self.ssh2_cs(self.ssh2(p4)), self.ssh3_cs(self.ssh3(p5))]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` (N, 3, H, W) mean-subtracted BGR -> raw (loc, conf logits, landmarks)."""
        feats = self.features(x)
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats, strict=True)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats, strict=True)], dim=1)
        ldm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats, strict=True)], dim=1)
        return loc, conf, ldm

    @classmethod
    def from_official(cls, path: str | Path, deformable: bool = True) -> FeatherFaceV1:
        """Same as :func:`load_v1_official`."""
        return load_v1_official(path, deformable=deformable)


def v1_plain_conv_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turn a deformable V1 ``state_dict`` into one for ``FeatherFaceV1(deformable=False)``.

    Each ``<prefix>.regular_conv.weight`` becomes ``<prefix>.weight``; the offset and modulator
    convs are dropped (equivalent to offsets 0 and mask 1). Other keys pass through unchanged.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".offset_conv." in key or ".modulator_conv." in key:
            continue
        out[key.replace(".regular_conv.", ".")] = value
    return out


def load_v1_official(path: str | Path, deformable: bool = True) -> FeatherFaceV1:
    """Build V1 and load the official checkpoint strictly, in eval mode on the CPU.

    Only the profiler's ``total_ops`` / ``total_params`` keys are dropped. With ``deformable=False``
    the deformable convs are replaced by plain convs holding their ``regular_conv`` weights.
    Raises :class:`~edge.errors.ModelError` for a missing, unreadable or mismatched file.
    """
    state = drop_profiler_keys(read_state_dict(path, "FeatherFace V1 weights"))
    if not deformable:
        state = v1_plain_conv_state(state)
    model = FeatherFaceV1(deformable=deformable)
    load_state_strict(model, state, str(path))
    return model.eval()


def to_input(image_bgr: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` BGR image (uint8 or float) -> ``(1, 3, H, W)`` float32 minus the V1 mean."""
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) BGR image, got shape {image_bgr.shape}")
    arr = image_bgr.astype(np.float32) - np.asarray(V1_MEAN_BGR, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]


@register("v1")
def build_v1(deformable: bool = True, weights: str | None = None) -> FeatherFaceV1:
    """Registry builder: V1, optionally loaded from ``weights`` (the official file), train mode."""
    if weights is not None:
        return load_v1_official(weights, deformable=deformable).train()
    return FeatherFaceV1(deformable=deformable)
