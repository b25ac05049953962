"""The RetinaFace MultiBox loss with landmarks (what V1 was trained with, and Nano-B's task loss).

For each image the priors are matched to the ground truth (:func:`trainer.loss.match.match`: IoU
0.35, each GT forced onto its best prior). Then:

- box: smooth-L1 on the encoded boxes of positive priors;
- landmarks: smooth-L1 on positives whose GT has landmarks (``label == 1``), normalised by their count;
- class: cross-entropy over positives plus the hardest negatives (OHEM), ``negpos_ratio`` (7) negatives
  per positive per image, ranked by their background loss.

Sums are divided by the number of positives (at least 1). ``total = loc_weight * loc + conf + landm``
(RetinaFace's ``loc_weight`` is 2). Computed in float32 whatever the autocast dtype of the predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from edge.anchors import DEFAULT_VARIANCES
from trainer.loss.match import match_batch


@dataclass(frozen=True)
class LossConfig:
    """The ``[loss]`` table."""

    overlap_threshold: float = 0.35
    force_min_iou: float = 0.2
    negpos_ratio: int = 7
    loc_weight: float = 2.0
    landm_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.overlap_threshold < 1:
            raise ValueError(f"overlap_threshold must be in (0, 1), got {self.overlap_threshold}")
        if self.negpos_ratio < 1:
            raise ValueError(f"negpos_ratio must be >= 1, got {self.negpos_ratio}")


class LossParts(NamedTuple):
    """Weighted total and the three unweighted terms (scalars)."""

    total: torch.Tensor
    loc: torch.Tensor
    conf: torch.Tensor
    landm: torch.Tensor


class MultiBoxLoss(nn.Module):
    """``loss(predictions, targets) -> LossParts``.

    ``predictions`` = ``(loc (B, A, 4), conf (B, A, 2) logits, landm (B, A, 10))`` as the models return
    them; ``targets`` = list of ``(N_i, 15)`` rows from :mod:`trainer.data.dataset`; ``priors`` ``(A, 4)``
    from :func:`edge.anchors.prior_boxes` for the training input size.
    """

    def __init__(
        self,
        priors: torch.Tensor,
        cfg: LossConfig = LossConfig(),
        variances: Sequence[float] = DEFAULT_VARIANCES,
    ) -> None:
        super().__init__()
        self.register_buffer("priors", torch.as_tensor(priors, dtype=torch.float32), persistent=False)
        self.cfg = cfg
        self.variances = tuple(variances)

    def targets(self, targets: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Matched ``(loc_t, conf_t, landm_t)`` for a batch (for distillation on GT positives, too)."""
        with torch.no_grad():
            return match_batch(
                targets, self.priors, self.cfg.overlap_threshold, self.cfg.force_min_iou, self.variances
            )

    def forward(self, predictions: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> LossParts:
        loc_p, conf_p, landm_p = (p.float() for p in predictions)
        if loc_p.shape[1] != self.priors.shape[0]:
            raise ValueError(
                f"model returned {loc_p.shape[1]} anchors but the loss has {self.priors.shape[0]} priors "
                "(input size and prior settings must match)"
            )
        loc_t, conf_t, landm_t = self.targets(targets)

        # Landmarks: only positives whose face has landmarks (label 1).
        pos_landm = conf_t > 0
        n_landm = pos_landm.sum().clamp(min=1).float()
        loss_landm = F.smooth_l1_loss(landm_p[pos_landm], landm_t[pos_landm], reduction="sum") / n_landm

        pos = conf_t != 0
        n_pos = pos.sum().clamp(min=1).float()
        loss_loc = F.smooth_l1_loss(loc_p[pos], loc_t[pos], reduction="sum") / n_pos

        # OHEM: rank each image's negatives by their background loss; keep negpos_ratio per positive.
        cls_t = pos.long()
        with torch.no_grad():
            bg_loss = torch.logsumexp(conf_p, dim=2) - conf_p[..., 0]
            bg_loss[pos] = 0
            rank = bg_loss.argsort(dim=1, descending=True).argsort(dim=1)
            num_neg = (self.cfg.negpos_ratio * pos.sum(dim=1, keepdim=True)).clamp(max=pos.shape[1] - 1)
            neg = rank < num_neg
        chosen = pos | neg
        loss_conf = F.cross_entropy(conf_p[chosen], cls_t[chosen], reduction="sum") / n_pos

        total = self.cfg.loc_weight * loss_loc + loss_conf + self.cfg.landm_weight * loss_landm
        return LossParts(total, loss_loc, loss_conf, loss_landm)
