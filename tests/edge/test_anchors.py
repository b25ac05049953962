"""Priors, box coding and NMS against literal values."""

from __future__ import annotations

import numpy as np
import pytest

from edge.anchors import decode_boxes, decode_landmarks, encode_boxes, nms, prior_boxes


def test_prior_layout_matches_v1_convention() -> None:
    # 64x32 input: P3 8x4, P4 4x2, P5 2x1 locations, 2 sizes each.
    priors = prior_boxes(64, 32)
    assert priors.shape == ((8 * 4 + 4 * 2 + 2 * 1) * 2, 4)
    # First location of P3: centre (0.5*8/64, 0.5*8/32), sizes 16 then 32 (adjacent).
    np.testing.assert_allclose(priors[0], [4 / 64, 4 / 32, 16 / 64, 16 / 32])
    np.testing.assert_allclose(priors[1], [4 / 64, 4 / 32, 32 / 64, 32 / 32])
    # Row-major: the next location moves along x.
    np.testing.assert_allclose(priors[2, :2], [12 / 64, 4 / 32])
    # Last prior: P5 second column, size 512.
    np.testing.assert_allclose(priors[-1], [48 / 64, 16 / 32, 512 / 64, 512 / 32])


def test_feature_maps_use_ceil() -> None:
    # 641x479 -> P3 ceil(479/8)=60 x ceil(641/8)=81.
    n = sum(2 * -(-479 // s) * -(-641 // s) for s in (8, 16, 32))
    assert prior_boxes(641, 479).shape[0] == n


def test_decode_literal_and_round_trip() -> None:
    priors = np.array([[0.5, 0.5, 0.2, 0.1]], dtype=np.float32)
    loc = np.array([[1.0, -1.0, 0.0, np.log(2) / 0.2]], dtype=np.float32)
    box = decode_boxes(loc, priors)
    # centre = (0.5 + 0.1*0.2, 0.5 - 0.1*0.1) = (0.52, 0.49); size = (0.2, 0.2)
    np.testing.assert_allclose(box, [[0.42, 0.39, 0.62, 0.59]], atol=1e-6)
    np.testing.assert_allclose(encode_boxes(box, priors), loc, atol=1e-5)
    ldm = decode_landmarks(np.array([[1.0, 2.0] * 5], dtype=np.float32), priors)
    np.testing.assert_allclose(ldm[0, :2], [0.5 + 0.1 * 0.2, 0.5 + 0.2 * 0.1], atol=1e-6)


@pytest.mark.parametrize("plus_one", [0.0, 1.0])
def test_nms_suppresses_overlaps_keeps_order(plus_one: float) -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    keep = nms(boxes, scores, 0.4, plus_one=plus_one)
    assert keep.tolist() == [3, 2]


def test_nms_plus_one_changes_iou_of_small_boxes() -> None:
    # Two 2x2 boxes offset by 1: IoU 1/3 without +1, 4/(9+9-4)... with +1 -> (2*3)/(9+9-6)=0.5.
    boxes = np.array([[0, 0, 2, 2], [1, 0, 3, 2]], float)
    scores = np.array([0.9, 0.8])
    assert nms(boxes, scores, 0.4).tolist() == [0, 1]
    assert nms(boxes, scores, 0.4, plus_one=1.0).tolist() == [0]


def test_nms_empty() -> None:
    assert nms(np.zeros((0, 4)), np.zeros((0,)), 0.4).shape == (0,)
