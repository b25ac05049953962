"""Feature distillation: the student's head inputs regress the teacher's, through linear maps fitted
in closed form (the ``[distill] feature_weight`` term).

Why: the output KD of :mod:`trainer.loss.distill` gives a pruned student a few numbers per anchor,
and on the pool's 1,197 images the pruned Nano-B re-learns what the teacher knew from all of WIDER
and carries it over worse (docs/nano_b.md). The teacher's feature maps are a far denser signal about
every image, background included.

    loss_k = mean((S_k W_k - T_k)^2) / var(T_k)         per level k (P3, P4, P5), averaged over levels
    W_k    = argmin_W |S_k W - T_k|^2 + ridge            S_k = [student features, 1] (pixels x C_s + 1)

Each level's map is the least-squares fit over an exponential moving average of the recent batches'
statistics (``S^T S`` and ``S^T T``), re-solved every step, not a trained 1x1 conv: it needs no
optimiser state (so a run resumed from a checkpoint without it just starts fitting), starts at the
best linear fit instead of a random one, and the loss is scale-free: 1 means the student's features
explain none of the teacher's variance, 0 all of it. The maps and statistics are buffers, saved in the
training checkpoint; they are never exported.

The features are the inputs of the ``ClassHead`` modules (the same tensors feed the box and landmark
heads), read by forward pre-hooks, so neither network's ``forward`` changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.hooks import RemovableHandle

MOMENTUM = 0.99  # the statistics average over about 100 batches: smooth, yet they follow the student
RIDGE = 1e-3  # relative to the mean feature energy: keeps the solve well posed for dead channels


class HeadInputs:
    """The tensors a model feeds its ``ClassHead[k]``, captured on every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        heads = getattr(model, "ClassHead", None)
        if not isinstance(heads, nn.ModuleList):
            raise ValueError(f"{type(model).__name__} has no ClassHead list to read features from")
        self.feats: list[torch.Tensor | None] = [None] * len(heads)
        self.channels = [_in_channels(h) for h in heads]
        self._handles: list[RemovableHandle] = [
            head.register_forward_pre_hook(self._hook(k)) for k, head in enumerate(heads)
        ]

    def _hook(self, k: int):
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            self.feats[k] = args[0]

        return hook

    def take(self) -> list[torch.Tensor]:
        """The last forward's features (cleared, so a stale pass is never read twice)."""
        if any(f is None for f in self.feats):
            raise RuntimeError("no forward pass captured since the last take()")
        feats = [f for f in self.feats if f is not None]
        self.feats = [None] * len(feats)
        return feats

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _in_channels(head: nn.Module) -> int:
    conv = next((m for m in head.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(head).__name__} has no Conv2d to read its input width from")
    return conv.in_channels


class FeatureKD(nn.Module):
    """``forward(student_feats, teacher_feats) -> loss`` (scalar, graph through the student's only).

    Every call also updates the statistics and re-solves the maps from them (without gradients).
    """

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]) -> None:
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError(
                f"{len(student_channels)} student levels against {len(teacher_channels)} teacher levels"
            )
        self.levels = len(student_channels)
        for k, (cs, ct) in enumerate(zip(student_channels, teacher_channels, strict=True)):
            self.register_buffer(f"sxx{k}", torch.zeros(cs + 1, cs + 1, dtype=torch.float64))
            self.register_buffer(f"sxt{k}", torch.zeros(cs + 1, ct, dtype=torch.float64))
            self.register_buffer(f"tvar{k}", torch.zeros((), dtype=torch.float64))
            self.register_buffer(f"map{k}", torch.zeros(cs + 1, ct))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(student) != self.levels or len(teacher) != self.levels:
            raise ValueError(f"expected {self.levels} feature levels, got {len(student)} and {len(teacher)}")
        pairs = zip(student, teacher, strict=True)
        rows = [(_rows(s, ones=True), _rows(t.detach(), ones=False)) for s, t in pairs]
        with torch.no_grad():
            self._update(rows)
        losses = []
        for k, (s, t) in enumerate(rows):
            w = getattr(self, f"map{k}").to(s.dtype)
            var = getattr(self, f"tvar{k}").clamp_min(1e-12).float()  # fp32: fp16 would round it to 0
            losses.append((s @ w - t).float().pow(2).mean() / var)
        return torch.stack(losses).mean()

    def _update(self, rows: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        first = int(self.updates) == 0
        m = 0.0 if first else MOMENTUM  # the first batch fills the averages (no zero bias)
        for k, (s, t) in enumerate(rows):
            s64, t64 = s.detach().double(), t.double()
            n = s64.shape[0]
            for name, value in (
                (f"sxx{k}", s64.T @ s64 / n),
                (f"sxt{k}", s64.T @ t64 / n),
                (f"tvar{k}", t64.var(dim=0, unbiased=False).mean()),
            ):
                buf = getattr(self, name)
                buf.mul_(m).add_(_global_mean(value).to(buf.device), alpha=1.0 - m)
            sxx, sxt = getattr(self, f"sxx{k}"), getattr(self, f"sxt{k}")
            d = sxx.shape[0]
            ridge = torch.full((d,), float(RIDGE * torch.trace(sxx[:-1, :-1]) / (d - 1)), dtype=sxx.dtype)
            ridge[-1] = 0.0  # the bias row: a constant offset costs nothing
            reg = torch.diag(ridge).to(sxx.device)
            getattr(self, f"map{k}").copy_(torch.linalg.solve(sxx + reg, sxt).float())
        self.updates += 1


def _global_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over DDP ranks (the value itself in one process): every rank fits the same maps, on
    the global batch, so rank 0's checkpoint resumes every rank exactly."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def _rows(x: torch.Tensor, ones: bool) -> torch.Tensor:
    """(N, C, H, W) -> (N*H*W, C), with a column of ones appended for the map's bias."""
    r = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    if ones:
        r = torch.cat([r, r.new_ones(r.shape[0], 1)], dim=1)
    return r
