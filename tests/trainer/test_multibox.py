"""Prior matching, box / landmark encoding (against edge.anchors) and the MultiBox loss."""

from __future__ import annotations

import numpy as np
import torch

from edge.anchors import decode_boxes, decode_landmarks, encode_boxes, prior_boxes
from trainer.loss import LossConfig, MultiBoxLoss, encode, encode_landmarks, match, point_form

PRIORS = torch.from_numpy(prior_boxes(160, 160))  # 800 + 200 + 50 = 1050 anchors


def _target(boxes, ldm=None, label=1.0) -> torch.Tensor:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    lm = torch.full((len(b), 10), -1.0) if ldm is None else torch.tensor(ldm, dtype=torch.float32)
    lab = torch.full((len(b), 1), float(label))
    return torch.cat([b, lm, lab], dim=1)


def test_torch_encode_matches_edge_numpy_and_inverts_decode() -> None:
    rng = np.random.default_rng(0)
    priors = prior_boxes(160, 160)
    idx = rng.integers(len(priors), size=50)
    p = priors[idx]
    centre = rng.uniform(0.1, 0.9, (50, 2))
    size = rng.uniform(0.02, 0.5, (50, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1).astype(np.float32)
    ours = encode(torch.from_numpy(boxes), torch.from_numpy(p)).numpy()
    np.testing.assert_allclose(ours, encode_boxes(boxes, p), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(decode_boxes(ours, p), boxes, atol=1e-5)
    pts = rng.uniform(0, 1, (50, 10)).astype(np.float32)
    enc = encode_landmarks(torch.from_numpy(pts), torch.from_numpy(p)).numpy()
    np.testing.assert_allclose(decode_landmarks(enc, p), pts, atol=1e-5)


def test_match_positive_on_exact_prior_and_forced_best_prior() -> None:
    corners = point_form(PRIORS)
    exact = corners[100]  # a 16-px prior at stride 8
    # A face smaller than any prior: IoU with its best prior is < 0.35 but >= 0.2, so it is forced.
    cx, cy = PRIORS[700, :2].tolist()
    small = torch.tensor([cx - 0.025, cy - 0.025, cx + 0.025, cy + 0.025])  # 8 px vs 16 px prior
    truths = torch.stack([exact, small])
    ldm = torch.rand(2, 10)
    loc, conf, landm = match(truths, ldm, torch.tensor([1.0, -1.0]), PRIORS)
    assert conf[100] == 1 and torch.allclose(loc[100], torch.zeros(4), atol=1e-5)
    iou_small = (0.05**2) / 0.1**2  # the 16 px prior (0.1 normalised) fully contains the face
    assert 0.2 <= iou_small < 0.35
    assert conf[700] == -1  # forced, and keeps its "no landmarks" label
    assert (conf != 0).sum() >= 2
    np.testing.assert_allclose(landm[100], encode_landmarks(ldm[:1], PRIORS[100:101])[0], rtol=1e-5)


def test_match_leaves_unrepresentable_face_unmatched_and_empty_image_background() -> None:
    tiny = torch.tensor([[0.5, 0.5, 0.51, 0.51]])  # 1.6 px: IoU < 0.2 with every prior
    _, conf, _ = match(tiny, torch.full((1, 10), -1.0), torch.tensor([1.0]), PRIORS)
    assert (conf == 0).all()
    loc, conf, landm = match(torch.zeros(0, 4), torch.zeros(0, 10), torch.zeros(0), PRIORS)
    assert (conf == 0).all() and loc.shape == (len(PRIORS), 4) and landm.shape == (len(PRIORS), 10)


def _perfect_predictions(loss: MultiBoxLoss, targets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    loc_t, conf_t, landm_t = loss.targets(targets)
    conf = torch.full((*conf_t.shape, 2), 0.0)
    conf[..., 0] = torch.where(conf_t != 0, -20.0, 20.0)
    conf[..., 1] = -conf[..., 0]
    return loc_t.clone(), conf, landm_t.clone()


def test_loss_is_near_zero_for_perfect_predictions_and_positive_otherwise() -> None:
    loss = MultiBoxLoss(PRIORS)
    face = point_form(PRIORS)[500].tolist()
    lm = [face[0] + 0.01 * k for k in range(10)]
    targets = [_target([face], [lm]), _target([[0.6, 0.6, 0.9, 0.9]])]
    parts = loss(_perfect_predictions(loss, targets), targets)
    assert float(parts.total) < 1e-6
    loc, conf, landm = _perfect_predictions(loss, targets)
    noisy = (loc + 0.5 * torch.randn_like(loc), torch.zeros_like(conf), landm + 0.5 * torch.randn_like(landm))
    parts = loss(noisy, targets)
    assert parts.loc > 0 and parts.conf > 0 and parts.landm > 0
    expected = 2.0 * parts.loc + parts.conf + parts.landm
    assert torch.isclose(parts.total, expected)


def test_landmark_loss_only_on_positives_with_landmarks() -> None:
    loss = MultiBoxLoss(PRIORS)
    targets = [_target([[0.2, 0.2, 0.5, 0.5]], label=-1.0)]  # a face without landmarks
    loc, conf, landm = _perfect_predictions(loss, targets)
    landm = (landm + 3.0).requires_grad_(True)  # wildly wrong landmarks
    parts = loss((loc, conf, landm), targets)
    assert float(parts.landm.detach()) == 0.0
    parts.total.backward()
    assert landm.grad is not None and float(landm.grad.abs().sum()) == 0.0


def test_ohem_keeps_seven_negatives_per_positive() -> None:
    cfg = LossConfig(negpos_ratio=7)
    loss = MultiBoxLoss(PRIORS, cfg)
    targets = [_target([point_form(PRIORS)[900].tolist()])]
    loc, conf, landm = _perfect_predictions(loss, targets)
    n_pos = int((loss.targets(targets)[1] != 0).sum())
    # Make every negative equally and confidently wrong: each chosen one adds the same CE.
    conf[..., 0], conf[..., 1] = 0.0, 0.0
    conf = conf.clone()
    pos = loss.targets(targets)[1][0] != 0
    conf[0, pos, 1] = 20.0  # positives right (loss ~0)
    parts = loss((loc, conf, landm), targets)
    per_negative = float(torch.log(torch.tensor(2.0)))  # CE of logits (0, 0)
    n_neg = round(float(parts.conf) * n_pos / per_negative)
    assert n_neg == 7 * n_pos


def test_loss_rejects_wrong_anchor_count() -> None:
    loss = MultiBoxLoss(PRIORS)
    bad = (torch.zeros(1, 10, 4), torch.zeros(1, 10, 2), torch.zeros(1, 10, 10))
    try:
        loss(bad, [_target([[0.1, 0.1, 0.3, 0.3]])])
    except ValueError as exc:
        assert "anchors" in str(exc)
    else:
        raise AssertionError("expected ValueError")
