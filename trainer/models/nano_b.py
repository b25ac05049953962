"""Nano-B, the FeatherFace student that ships to devices (DESIGN §2), registered as ``nano_b``.

Data flow (every box can be switched off by :class:`NanoBConfig` for ablations)::

    body (MobileNetV1-0.25) -> C3, C4, C5            strides 8 / 16 / 32, 64 / 128 / 256 ch
    C3 <- ScaleDecoupling(C3, C4)                      P3 small-face path
    Ck <- CBAM_r8(Ck) (residual)                       efficient CBAM, reduction 8
    P3, P4, P5 <- BiFPN(C3, C4, C5)                    depthwise-separable cells, 64 ch
    Pk <- SemanticEnhancement(Pk)
    P3 <- ScaleSequenceAttention(P3, P4, P5)           ASSN, P3 only
    P4, P5 <- CBAM_r8(P4), CBAM_r8(P5)                 post-BiFPN CBAM on P4 / P5
    Fk <- ShuffleBlock(GroupedSSH(Pk))                 3x3 / 5x5 / 7x7 as stacked 3x3, groups 2
    heads: 1x1 class / box / landmark per level        2 anchors per location, V1 priors

``forward(x)`` returns raw ``(loc (N,A,4), conf logits (N,A,2), landmarks (N,A,10))`` over the priors
of :func:`edge.anchors.prior_boxes`, anchor for anchor the same as the V1 teacher. Module names
mirror V1's wherever the tensors match, so :mod:`trainer.models.init_from_teacher` can copy them.

The channel shuffle after the SSH is **folded** into the next 1x1 conv by default: a fixed
permutation followed by a dense 1x1 conv equals that conv with permuted input columns, so it costs
nothing at run time and leaves no reshape for channel pruning to trace through.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edge.errors import ConfigError, ModelError
from trainer.layers.bifpn import BiFPN
from trainer.layers.cbam import CBAM
from trainer.layers.heads import BboxHead, ClassHead, LandmarkHead, make_heads
from trainer.layers.mobilenet import MOBILENET_V1_025_WIDTHS, MobileNetV1
from trainer.layers.nano_small_face import ScaleDecoupling, ScaleSequenceAttention, SemanticEnhancement
from trainer.layers.shuffle import ShuffleBlock
from trainer.layers.ssh import SSH
from trainer.models.registry import register

PRUNE_GROUPS: tuple[str, ...] = ("backbone_early", "backbone_late", "cbam", "bifpn", "ssh", "heads")
# V1's shuffle block interleaves 2 groups (its "v1" order); kept whatever the SSH's conv groups are.
SHUFFLE_GROUPS = 2


@dataclass(frozen=True)
class NanoBConfig:
    """Architecture of Nano-B. Defaults are the shipped design; flags switch modules off for ablations."""

    backbone_widths: tuple[int, ...] = MOBILENET_V1_025_WIDTHS
    channels: int = 64  # BiFPN / SSH / head width (V1's, so the teacher's tensors fit)
    cbam_reduction: int = 8
    backbone_cbam: bool = True
    post_cbam: bool = True  # CBAM on P4 / P5 after the BiFPN (P3 has ASSN instead)
    scale_decoupling: bool = True
    scale_decoupling_mid: int = 16
    bifpn_cells: int = 3  # as V1, so every cell is copied from the teacher; 0: a 1x1 projection per level
    semantic_enhancement: bool = True
    semantic_mid: int = 16
    assn: bool = True
    assn_mid: int = 8
    ssh: bool = True
    ssh_groups: int = 2
    shuffle_block: bool = True
    shuffle_folded: bool = True  # False: explicit reshape shuffle (same function, costs a copy)
    num_anchors: int = 2
    same_padding: bool = False  # BiFPN "SAME" padding as V1 (True) or symmetric (export-friendly)

    def __post_init__(self) -> None:
        if len(self.backbone_widths) != 14:
            raise ValueError(f"backbone_widths needs 14 entries, got {len(self.backbone_widths)}")
        if self.channels % 4 or self.channels <= 0:
            raise ValueError(f"channels must be a positive multiple of 4, got {self.channels}")
        if self.ssh_groups < 1 or (self.channels // 4) % self.ssh_groups:
            raise ValueError(f"ssh_groups={self.ssh_groups} must divide channels/4={self.channels // 4}")
        if self.bifpn_cells < 0:
            raise ValueError(f"bifpn_cells must be >= 0, got {self.bifpn_cells}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> NanoBConfig:
        """Build from keyword options (registry / TOML), naming an unknown key in a ConfigError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"nano_b: unknown option {unknown[0]!r} (known: {', '.join(sorted(known))})")
        opts = dict(options)
        if "backbone_widths" in opts:
            opts["backbone_widths"] = tuple(int(w) for w in opts["backbone_widths"])
        try:
            return cls(**opts)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"nano_b: {exc}") from exc


class NanoB(nn.Module):
    """The Nano-B student; see the module docstring for the data flow."""

    def __init__(self, cfg: NanoBConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or NanoBConfig()
        ch = cfg.channels
        self.body = MobileNetV1(cfg.backbone_widths)
        c3, c4, c5 = self.body.out_channels

        self.scale_decoupling = (
            ScaleDecoupling(c3, c4, cfg.scale_decoupling_mid) if cfg.scale_decoupling else None
        )
        self.backbone_cbam = (
            nn.ModuleList(CBAM(c, cfg.cbam_reduction, residual=True) for c in (c3, c4, c5))
            if cfg.backbone_cbam
            else None
        )
        if cfg.bifpn_cells:
            self.bifpn: nn.Module = BiFPN((c3, c4, c5), ch, cfg.bifpn_cells, same_padding=cfg.same_padding)
        else:
            self.bifpn = _Projection((c3, c4, c5), ch)
        self.semantic = (
            nn.ModuleList(SemanticEnhancement(ch, cfg.semantic_mid) for _ in range(3))
            if cfg.semantic_enhancement
            else None
        )
        self.assn = ScaleSequenceAttention(ch, cfg.assn_mid) if cfg.assn else None
        # Index 0 (P3) has no post-CBAM; Identity keeps the indices aligned with V1's bif_cbam_{1,2}.
        self.post_cbam = (
            nn.ModuleList([nn.Identity(), *(CBAM(ch, cfg.cbam_reduction, residual=True) for _ in range(2))])
            if cfg.post_cbam
            else None
        )
        self.ssh = (
            nn.ModuleList(SSH(ch, ch, conv="plain", groups=cfg.ssh_groups) for _ in range(3))
            if cfg.ssh
            else None
        )
        self.ssh_cs = nn.ModuleList(self._shuffle_block(ch) for _ in range(3)) if cfg.shuffle_block else None
        self.ClassHead = make_heads(ClassHead, ch, 3, cfg.num_anchors)
        self.BboxHead = make_heads(BboxHead, ch, 3, cfg.num_anchors)
        self.LandmarkHead = make_heads(LandmarkHead, ch, 3, cfg.num_anchors)
        self._init_face_prior()

    @torch.no_grad()
    def _init_face_prior(self, prior: float = 0.01) -> None:
        """Start the face logits at p(face) = ``prior`` (RetinaNet's prior init): an untrained Nano-B
        detects nothing instead of scoring every anchor near 0.5, so early losses are sane. The
        teacher initialisation overwrites these biases with V1's."""
        for head in self.ClassHead:
            head.conv1x1.bias[1::2] = -math.log((1 - prior) / prior)

    def _shuffle_block(self, ch: int) -> ShuffleBlock:
        block = ShuffleBlock(ch, ch // 2, groups=SHUFFLE_GROUPS, variant="v1")
        if self.cfg.shuffle_folded:
            block[0] = nn.Identity()  # the permutation lives in block[1]'s input columns instead
        return block

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3, c4, c5 = self.body(x)
        if self.scale_decoupling is not None:
            c3 = self.scale_decoupling(c3, c4)
        feats = [c3, c4, c5]
        if self.backbone_cbam is not None:
            feats = [m(f) for m, f in zip(self.backbone_cbam, feats, strict=True)]
        feats = list(self.bifpn(feats))
        if self.semantic is not None:
            feats = [m(f) for m, f in zip(self.semantic, feats, strict=True)]
        p3, p4, p5 = feats
        if self.assn is not None:
            p3 = self.assn(p3, p4, p5)
        if self.post_cbam is not None:
            p4, p5 = self.post_cbam[1](p4), self.post_cbam[2](p5)
        feats = [p3, p4, p5]
        if self.ssh is not None:
            feats = [m(f) for m, f in zip(self.ssh, feats, strict=True)]
        if self.ssh_cs is not None:
            feats = [m(f) for m, f in zip(self.ssh_cs, feats, strict=True)]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats, strict=True)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats, strict=True)], dim=1)
        ldm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats, strict=True)], dim=1)
        return loc, conf, ldm

    def prune_groups(self) -> dict[str, list[nn.Module]]:
        """The six B-FPGM layer groups: convs / linears whose **output** filters may be pruned.

        Depthwise convs follow their producer and are not listed. Producers whose outputs are tied
        (added, multiplied or concatenated together, e.g. every BiFPN node and the residual
        branches writing into it) are each listed; dependency-aware surgery prunes such a set as one.
        Heads' own outputs (anchors x 2/4/10) are fixed; the ``heads`` group is the width of the
        features the heads read (the shuffle block's last 1x1, ``ssh_cs.k.5``).
        """
        groups: dict[str, list[nn.Module]] = {g: [] for g in PRUNE_GROUPS}
        stages = (("backbone_early", self.body.stage1), ("backbone_late", self.body.stage2))
        for name, stage in (*stages, ("backbone_late", self.body.stage3)):
            for block in stage:
                groups[name].extend(_dense_convs(block))
        for cbam in self._cbams():
            groups["cbam"].append(cbam.ChannelGate.mlp[1])
        if self.assn is not None:
            groups["cbam"].append(self.assn.channel[0])
        groups["bifpn"].extend(_dense_convs(self.bifpn))
        if self.scale_decoupling is not None:
            groups["bifpn"].extend(_dense_convs(self.scale_decoupling))
        if self.semantic is not None:
            groups["bifpn"].extend(_dense_convs(self.semantic))
        if self.ssh is not None:
            groups["ssh"].extend(_dense_convs(self.ssh))
        if self.ssh_cs is not None:
            for block in self.ssh_cs:
                groups["ssh"].append(block[1])
                groups["heads"].append(block[5])
        return groups

    def _cbams(self) -> list[CBAM]:
        out: list[CBAM] = []
        for mods in (self.backbone_cbam, self.post_cbam):
            if mods is not None:
                out.extend(m for m in mods if isinstance(m, CBAM))
        return out


class _Projection(nn.Module):
    """``bifpn_cells = 0``: a 1x1 conv + BN per level to ``channels`` (the ablation without a BiFPN)."""

    def __init__(self, in_channels: tuple[int, int, int], channels: int) -> None:
        super().__init__()
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, channels, 1, bias=False), nn.BatchNorm2d(channels))
            for c in in_channels
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [p(f) for p, f in zip(self.proj, feats, strict=True)]


def _dense_convs(module: nn.Module) -> list[nn.Conv2d]:
    """Every Conv2d under ``module`` that is not depthwise (depthwise convs follow their producer)."""
    return [
        m
        for m in module.modules()
        if isinstance(m, nn.Conv2d) and not (m.groups > 1 and m.groups == m.in_channels == m.out_channels)
    ]


@register("nano_b")
def build_nano_b(**options: Any) -> NanoB:
    """Registry builder: ``build_model("nano_b", ssh=False)``; options are :class:`NanoBConfig` fields."""
    return NanoB(NanoBConfig.from_options(options))


# --- Pruned widths are data: rebuild a physically pruned Nano-B from its state dict. ---------------


def channel_spec(model: nn.Module) -> dict[str, list[int]]:
    """``{module name: weight shape}`` for every Conv2d / Linear / BatchNorm2d: the pruned widths."""
    return {
        name: list(m.weight.shape)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear | nn.BatchNorm2d) and m.weight is not None
    }


def apply_channel_spec(model: nn.Module, spec: Mapping[str, list[int]]) -> nn.Module:
    """Resize ``model``'s Conv2d / Linear / BN layers in place to the shapes in ``spec``.

    A depthwise conv stays depthwise at its new width; a grouped conv keeps its group count.
    Values are left uninitialised-but-valid: load the pruned state dict afterwards.
    """
    for name, m in list(model.named_modules()):
        shape = spec.get(name)
        if shape is None or list(m.weight.shape) == list(shape):
            continue
        if isinstance(m, nn.Conv2d):
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            out = shape[0]
            groups = out if depthwise else m.groups
            new: nn.Module = nn.Conv2d(
                shape[1] * groups,
                out,
                m.kernel_size,
                m.stride,
                m.padding,
                m.dilation,
                groups,
                bias=m.bias is not None,
            )
        elif isinstance(m, nn.Linear):
            new = nn.Linear(shape[1], shape[0], bias=m.bias is not None)
        elif isinstance(m, nn.BatchNorm2d):
            new = nn.BatchNorm2d(shape[0], eps=m.eps, momentum=m.momentum)
        else:
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, new)
    return model


def weight_shapes(state: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
    """The channel spec a state dict implies: each module's weight shape, by module name."""
    return {k.removesuffix(".weight"): list(v.shape) for k, v in state.items() if k.endswith(".weight")}


def nano_b_from_state(
    cfg: NanoBConfig, state: Mapping[str, torch.Tensor], spec: Mapping[str, list[int]] | None = None
) -> NanoB:
    """Build a Nano-B of ``cfg`` resized to ``spec`` (default: derived from ``state``) and load ``state``
    strictly. This is how a pruned checkpoint reloads without pickling modules."""
    model = NanoB(cfg)
    if spec is None:
        spec = weight_shapes(state)
    apply_channel_spec(model, spec)
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"pruned Nano-B state does not fit its config: {first}") from exc
    return model
