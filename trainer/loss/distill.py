"""Knowledge distillation from the V1 teacher into Nano-B (DESIGN §3, phase 1 and phase 3).

    total = (1 - alpha) * task + alpha * KD                                      (alpha 0.7, T 4)
    KD    = sum_i  exp(-s_i) * L_i + s_i        i in {cls, box, landmark}   (uncertainty weighting)

- ``L_cls``: KL(teacher || student) of the temperature-softened class distributions, times T², **mean
  over anchors** (a sum over ~10^4 anchors drowned the task loss in the team's probe); with
  ``level_balance`` the mean is taken per pyramid level and then over levels, because the 256- and
  512-px anchors are under 5 % of all anchors and the pruned student's confident false positives
  gather there while the teacher's do not (docs/nano_b.md, "Where the strays are");
- ``L_box`` / ``L_ldm``: smooth-L1 between the student's and the teacher's raw regressions on the
  anchors the teacher calls faces (softmax face probability > ``positive_threshold``), mean over
  those anchors, targets unclipped; 0 when the teacher sees no face;
- ``s_i`` is a learnable log-variance squashed smoothly into ``[-log_var_bound, +log_var_bound]`` by
  ``bound * tanh(raw / bound)``: each weight ``exp(-s_i)`` stays positive and bounded (in
  ``[e^-b, e^b]``) however long the optimiser pushes, and the ``+ s_i`` term keeps it from collapsing
  to zero. ``weights()`` returns them for the epoch log.

Optional feature distillation (``feature_weight > 0``): the student's head inputs regress the
teacher's through closed-form linear maps, :mod:`trainer.loss.feature_kd`; its value is added here.

Coordinates: every regression tensor is in the raw, variance-scaled prior units the heads produce
(see :func:`edge.anchors.encode_boxes`), so no priors are needed here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

KD_TERMS: tuple[str, ...] = ("cls", "box", "ldm")


@dataclass(frozen=True)
class DistillConfig:
    """KD settings (the ``[distill]`` table)."""

    alpha: float = 0.7
    temperature: float = 4.0
    positive_threshold: float = 0.5  # teacher face probability (T = 1) that makes an anchor "positive"
    log_var_bound: float = 2.0  # |s_i| <= bound, so each weight exp(-s_i) lies in [e^-bound, e^bound]
    learn_weights: bool = True
    feature_weight: float = 0.0  # > 0 switches feature distillation on (trainer/loss/feature_kd.py)
    level_balance: bool = False  # class KD: mean per pyramid level, then over levels

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.positive_threshold < 1.0:
            raise ValueError(f"positive_threshold must be in (0, 1), got {self.positive_threshold}")
        if self.log_var_bound <= 0:
            raise ValueError(f"log_var_bound must be > 0, got {self.log_var_bound}")
        if self.feature_weight < 0:
            raise ValueError(f"feature_weight must be >= 0, got {self.feature_weight}")


Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (loc (N,A,4), conf logits (N,A,2), ldm (N,A,10))


def kd_class_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    anchor_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(teacher_T || student_T) summed over classes, mean over anchors (and images), times T².

    ``anchor_weight`` ``(A,)`` (summing to 1) replaces the plain mean over anchors by a weighted one.
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
    mean = kl.mean() if anchor_weight is None else (kl @ anchor_weight.to(kl.dtype)).mean()
    return mean * t * t


def level_weights(counts: Sequence[int]) -> torch.Tensor:
    """Per-anchor weights ``(sum(counts),)`` that give each pyramid level (``counts[k]`` consecutive
    anchors, the order of :func:`edge.anchors.prior_boxes`) the same total weight, summing to 1."""
    if not counts or min(counts) < 1:
        raise ValueError(f"every level needs at least one anchor, got counts {list(counts)}")
    return torch.cat([torch.full((n,), 1.0 / (n * len(counts))) for n in counts])


def kd_regression_loss(student: torch.Tensor, teacher: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 summed over coordinates, mean over ``positive`` anchors; 0 (with a graph) when none."""
    if not bool(positive.any()):
        return student.sum() * 0.0
    diff = F.smooth_l1_loss(student[positive], teacher[positive], reduction="none")
    return diff.sum(dim=-1).mean()


class DistillLoss(nn.Module):
    """``forward(student_out, teacher_out, task) -> (total, logs)``; ``task`` is the MultiBox loss value.

    ``logs`` holds floats for ``task``, ``kd``, ``kd_cls``/``kd_box``/``kd_ldm`` (unweighted) and the
    current ``w_cls``/``w_box``/``w_ldm``. The learnable weights are this module's parameters: give
    them to the optimiser with the student's.
    """

    def __init__(self, cfg: DistillConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or DistillConfig()
        self.raw_log_var = nn.Parameter(torch.zeros(len(KD_TERMS)), requires_grad=self.cfg.learn_weights)

    def log_var(self) -> torch.Tensor:
        """The bounded log-variances ``s`` (smooth squashing: gradients never vanish at a clamp)."""
        b = self.cfg.log_var_bound
        return b * torch.tanh(self.raw_log_var / b)

    def weights(self) -> dict[str, float]:
        """Current per-term weights ``exp(-s_i)``, for logging."""
        w = torch.exp(-self.log_var().detach())
        return {f"w_{name}": float(v) for name, v in zip(KD_TERMS, w, strict=True)}

    @torch.no_grad()
    def settle(self, terms: dict[str, float]) -> None:
        """Set each weight where training would take it for these mean KD term values.

        ``exp(-s) L + s`` is smallest at ``s = log L``, i.e. weight ``1 / L``, which the learnable
        weights approach over a long run. A run that starts from a finished network without its KD
        state (an imported file) starts there instead of at weight 1, which after a long phase 3 was
        7x too little class KD (docs/nano_b.md, "Fine-tuning a shipped file"). Kept inside 0.95 of the
        bound, where the squashing still passes gradients.
        """
        b = self.cfg.log_var_bound
        limit = 0.95 * b
        s = [math.log(terms[n]) if terms[n] > 0 else -limit for n in KD_TERMS]
        s_t = torch.tensor([max(-limit, min(limit, v)) for v in s])
        self.raw_log_var.copy_(b * torch.atanh(s_t / b))

    def kd_terms(
        self, student: Outputs, teacher: Outputs, anchor_weight: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The three unweighted KD terms; the teacher's outputs are detached here. ``anchor_weight``:
        the class term's per-anchor weights (:func:`level_weights` when ``level_balance`` is set)."""
        s_loc, s_conf, s_ldm = student
        t_loc, t_conf, t_ldm = (t.detach() for t in teacher)
        positive = F.softmax(t_conf, dim=-1)[..., 1] > self.cfg.positive_threshold
        return {
            "cls": kd_class_loss(s_conf, t_conf, self.cfg.temperature, anchor_weight),
            "box": kd_regression_loss(s_loc, t_loc, positive),
            "ldm": kd_regression_loss(s_ldm, t_ldm, positive),
        }

    def forward(
        self,
        student: Outputs,
        teacher: Outputs,
        task: torch.Tensor,
        feature: torch.Tensor | None = None,
        anchor_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        terms = self.kd_terms(student, teacher, anchor_weight)
        s = self.log_var()
        stacked = torch.stack([terms[name] for name in KD_TERMS])
        kd = (torch.exp(-s) * stacked + s).sum() if self.cfg.learn_weights else stacked.sum()
        alpha = self.cfg.alpha
        total = (1.0 - alpha) * task + alpha * kd
        logs = {"task": float(task.detach()), "kd": float(kd.detach())}
        logs.update({f"kd_{name}": float(terms[name].detach()) for name in KD_TERMS})
        if feature is not None and self.cfg.feature_weight > 0:
            total = total + self.cfg.feature_weight * feature
            logs["kd_feat"] = float(feature.detach())
        logs.update(self.weights())
        logs["loss"] = float(total.detach())
        return total, logs
