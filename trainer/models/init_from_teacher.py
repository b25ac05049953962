"""Initialise Nano-B from the V1 teacher's WIDER-trained state dict, tensor by tensor.

The team measured that Nano-B's neck and heads do not learn from scratch on the data a CPU budget
allows; copied teacher tensors do. Nano-B keeps V1's widths wherever it can, so most tensors are
**copied** as they are; the rest are **sliced** or re-laid out, and only the genuinely new modules
(ScaleDecoupling, SemanticEnhancement, ASSN, whose residual branches start at zero) stay **fresh**:

- ``body.*``                       <- ``body.*`` (copied; same MobileNetV1-0.25)
- ``backbone_cbam.k.*``            <- ``bacbkbone_k_cbam.*``; the MLP is wider (reduction 8 vs 16):
  the teacher's hidden units fill the first rows of ``mlp.1`` and the first columns of ``mlp.3``,
  the extra columns of ``mlp.3`` are zeroed, so the gate computes exactly the teacher's
- ``post_cbam.{1,2}.*``            <- ``bif_cbam_{1,2}.*`` (same zero-padded widening)
- ``bifpn.j.*``                    <- ``bifpn.j.*`` for the first cells, the last student cell from
  the teacher's last cell (the one whose outputs the teacher's CBAM / SSH were trained on); a
  one-cell student's input projections from the teacher's first cell
- ``ssh.k.<branch>.0.weight``      <- ``ssh{k+1}.<branch>.0.regular_conv.weight`` sliced to groups:
  output filter o of group g keeps the teacher's input channels of group g (offsets / modulators of
  the deformable conv have no counterpart and are dropped); BNs copied
- ``ssh_cs.k.*``                   <- ``ssh{k+1}_cs.*``; with the shuffle folded, ``ssh_cs.k.1``'s input
  columns are permuted by V1's shuffle so that the block computes what shuffle + conv computed
- ``{Class,Bbox,Landmark}Head.k``  <- same names (copied)

Anything whose shape still does not fit (a pruned or re-sized student) is sliced along every axis
from the leading entries when the teacher's is larger, else left fresh. :class:`InitReport` lists
each student tensor under exactly one of copied / sliced / fresh.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.layers.mobilenet import load_imagenet_backbone
from trainer.layers.state import drop_profiler_keys, read_state_dict
from trainer.models.nano_b import SHUFFLE_GROUPS, NanoB


@dataclass
class InitReport:
    """Student state-dict keys by how they were initialised; ``params(...)`` counts their elements."""

    copied: list[str] = field(default_factory=list)
    sliced: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    source: str = ""
    numel: dict[str, int] = field(default_factory=dict)

    def params(self, kind: str) -> int:
        return sum(self.numel[k] for k in getattr(self, kind))

    def summary(self) -> str:
        parts = [
            f"{kind} {len(getattr(self, kind))} tensors / {self.params(kind):,} values"
            for kind in ("copied", "sliced", "fresh")
        ]
        return f"init from {self.source}: " + ", ".join(parts)


def teacher_key(student_key: str, bifpn_map: Mapping[int, int]) -> str | None:
    """The V1 key a Nano-B key is initialised from, or None for a module V1 does not have."""
    k = student_key
    if k.startswith("body.") or re.match(r"(ClassHead|BboxHead|LandmarkHead)\.", k):
        return k
    if m := re.match(r"backbone_cbam\.(\d)\.(.*)", k):
        return f"bacbkbone_{m[1]}_cbam.{m[2]}"
    if m := re.match(r"post_cbam\.(\d)\.(.*)", k):
        return f"bif_cbam_{m[1]}.{m[2]}"
    if m := re.match(r"bifpn\.(\d+)\.(.*)", k):
        cell = bifpn_map.get(int(m[1]))
        return None if cell is None else f"bifpn.{cell}.{m[2]}"
    if m := re.match(r"ssh\.(\d)\.(\w+)\.0\.weight$", k):
        return f"ssh{int(m[1]) + 1}.{m[2]}.0.regular_conv.weight"
    if m := re.match(r"ssh\.(\d)\.(.*)", k):
        return f"ssh{int(m[1]) + 1}.{m[2]}"
    if m := re.match(r"ssh_cs\.(\d)\.(.*)", k):
        return f"ssh{int(m[1]) + 1}_cs.{m[2]}"
    return None


def _v1_shuffle_perm(channels: int, groups: int) -> torch.Tensor:
    """perm with shuffle(x)[i] = x[perm[i]] for V1's shuffle (view (C/g, g), swap): 0, g, 2g, ..., 1, ..."""
    return torch.arange(channels).view(channels // groups, groups).t().reshape(-1)


def _group_slice(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A dense conv weight (O, I, k, k) cut to a grouped conv's (O, I/groups, k, k): each output
    filter keeps the input channels of its own group."""
    out, cin = weight.shape[:2]
    per_out, per_in = out // groups, cin // groups
    parts = [weight[g * per_out : (g + 1) * per_out, g * per_in : (g + 1) * per_in] for g in range(groups)]
    return torch.cat(parts, dim=0)


def _slice_into(src: torch.Tensor, dst: torch.Tensor, zero_rest: bool) -> torch.Tensor | None:
    """Leading block of ``src`` written into a copy of ``dst`` (rest kept, or zeroed); None if it cannot."""
    if src.dim() != dst.dim():
        return None
    out = torch.zeros_like(dst) if zero_rest else dst.clone()
    idx = tuple(slice(0, min(a, b)) for a, b in zip(src.shape, dst.shape, strict=True))
    out[idx] = src[idx]
    return out


def init_from_teacher(
    student: NanoB, teacher: Mapping[str, torch.Tensor] | torch.nn.Module | str | Path
) -> InitReport:
    """Fill ``student`` in place from the V1 teacher (a state dict, a module, or a ``.pth`` path)."""
    if isinstance(teacher, str | Path):
        source = str(teacher)
        tstate = drop_profiler_keys(read_state_dict(teacher, "teacher weights"))
    elif isinstance(teacher, torch.nn.Module):
        source, tstate = type(teacher).__name__, teacher.state_dict()
    else:
        source, tstate = "teacher state dict", dict(teacher)

    cfg = student.cfg
    t_cells = sorted({int(k.split(".")[1]) for k in tstate if k.startswith("bifpn.")})
    n = cfg.bifpn_cells
    bifpn_map = {j: t_cells[j] for j in range(min(n - 1, len(t_cells)))}
    if n and t_cells:
        bifpn_map[n - 1] = t_cells[-1]

    sstate = student.state_dict()
    report = InitReport(source=source, numel={k: v.numel() for k, v in sstate.items()})
    new_state: dict[str, torch.Tensor] = {}
    for key, dst in sstate.items():
        tkey = teacher_key(key, bifpn_map)
        src = tstate.get(tkey) if tkey else None
        if src is None and key.startswith("bifpn.0.") and t_cells:
            # A one-cell student takes V1's last cell, which has no input projections (only a stack's
            # first cell does): those come from V1's first cell, so the whole BiFPN starts trained.
            src = tstate.get(f"bifpn.{t_cells[0]}.{key.split('.', 2)[2]}")
        if src is None:
            report.fresh.append(key)
            continue
        kind = "copied"
        if re.match(r"ssh\.\d\.\w+\.0\.weight$", key) and src.shape[1] != dst.shape[1]:
            src, kind = _group_slice(src, src.shape[1] // dst.shape[1]), "sliced"
        if re.match(r"ssh_cs\.\d\.1\.weight$", key) and cfg.shuffle_folded and src.shape == dst.shape:
            perm = _v1_shuffle_perm(src.shape[1], SHUFFLE_GROUPS)
            folded = torch.empty_like(src)
            folded[:, perm] = src  # W_s[:, perm[i]] = W_t[:, i]  =>  W_s x = W_t shuffle(x)
            src, kind = folded, "sliced"
        if src.shape != dst.shape:
            # A widened CBAM MLP: extra hidden units must not change the gate -> zero mlp.3 columns.
            zero_rest = key.endswith("mlp.3.weight")
            fitted = _slice_into(src, dst, zero_rest)
            if fitted is None:
                report.fresh.append(key)
                continue
            src, kind = fitted, "sliced"
        new_state[key] = src.to(dst.dtype)
        getattr(report, kind).append(key)
    student.load_state_dict({**sstate, **new_state}, strict=True)
    return report


def init_backbone_imagenet(student: NanoB, path: str | Path) -> InitReport:
    """Fallback without a teacher: only ``body.*`` from the ImageNet MobileNetV1-0.25 file."""
    load_imagenet_backbone(student.body, path)
    sstate = student.state_dict()
    report = InitReport(source=str(path), numel={k: v.numel() for k, v in sstate.items()})
    for key in sstate:
        (report.copied if key.startswith("body.") else report.fresh).append(key)
    return report
