"""Training losses: the RetinaFace MultiBox loss with landmarks and its prior matching."""

from trainer.loss.match import box_iou, encode, encode_landmarks, match, match_batch, point_form
from trainer.loss.multibox import LossConfig, LossParts, MultiBoxLoss

__all__ = [
    "LossConfig",
    "LossParts",
    "MultiBoxLoss",
    "box_iou",
    "encode",
    "encode_landmarks",
    "match",
    "match_batch",
    "point_form",
]
