"""Peer decoders on literal outputs, and each real peer model finding faces on a real photo."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.peers import RetinaFacePeer, SCRFDPeer, ULFDPeer, YuNetPeer, peers
from benchmarks.subjects import CV2_YUNET, yunet_cv2
from tests.shared_paths import need_shared

W, H = 64, 32  # feature maps 8x4, 4x2, 2x1 on strides 8, 16, 32


def _cells(stride: int) -> int:
    return math.ceil(W / stride) * math.ceil(H / stride)


def test_yunet_decodes_one_cell_to_pixels_and_scores_sqrt_of_cls_times_obj() -> None:
    outs = [np.zeros((1, _cells(s), 1), np.float32) for s in (8, 16, 32)] * 2
    outs = [o.copy() for o in outs] + [np.zeros((1, _cells(s), 4), np.float32) for s in (8, 16, 32)]
    cell = 1 * 8 + 2  # row 1, column 2 of the 8x4 stride-8 map -> point (16, 8)
    outs[0][0, cell, 0], outs[3][0, cell, 0] = 0.81, 1.0
    outs[6][0, cell] = [0.5, 0.5, math.log(2), math.log(4)]
    peer = YuNetPeer("y", Path("unused"), 0.02, 0.45)
    boxes, scores = peer.decode(outs, W, H, W, H)
    assert len(boxes) == sum(_cells(s) for s in (8, 16, 32))
    # centre (16 + 4, 8 + 4), size (16, 32)
    np.testing.assert_allclose(boxes[cell], [12, -4, 28, 28], atol=1e-5)
    assert scores[cell] == pytest.approx(0.9)
    assert np.count_nonzero(scores) == 1


def test_yunet_fixed_size_boxes_map_back_to_the_image() -> None:
    outs = [np.zeros((1, _cells(s), 1), np.float32) for s in (8, 16, 32) for _ in (0,)] * 2
    outs = [o.copy() for o in outs] + [np.zeros((1, _cells(s), 4), np.float32) for s in (8, 16, 32)]
    peer = YuNetPeer("y", Path("unused"), 0.02, 0.45, fixed_size=(W, H))
    boxes, _ = peer.decode(outs, 2 * W, 3 * H, W, H)
    # cell 0 at stride 8: centre (0, 0), size 8x8 -> (-4, -4, 4, 4) scaled by (2, 3)
    np.testing.assert_allclose(boxes[0], [-8, -12, 8, 12], atol=1e-5)


def test_scrfd_decodes_distances_from_two_anchors_per_cell() -> None:
    scores = [np.zeros((1, 2 * _cells(s), 1), np.float32) for s in (8, 16, 32)]
    dists = [np.zeros((1, 2 * _cells(s), 4), np.float32) for s in (8, 16, 32)]
    # stride 16, cell (x=1, y=1) -> point (16, 16); its second anchor is row 2 * (1*4 + 1) + 1
    row = 2 * (1 * 4 + 1) + 1
    scores[1][0, row, 0] = 0.7
    dists[1][0, row] = [0.5, 0.25, 1.0, 2.0]  # left, top, right, bottom in strides
    boxes, sc = SCRFDPeer("s", Path("unused"), 0.02, 0.45).decode(scores + dists, W, H, W, H)
    i = 2 * _cells(8) + row
    np.testing.assert_allclose(boxes[i], [8, 12, 32, 48], atol=1e-5)
    assert sc[i] == pytest.approx(0.7)


def test_retinaface_zero_offsets_decode_to_the_priors() -> None:
    from edge.anchors import prior_boxes

    priors = prior_boxes(W, H)
    loc = np.zeros((1, len(priors), 4), np.float32)
    conf = np.tile(np.array([0.2, 0.8], np.float32), (1, len(priors), 1))
    boxes, sc = RetinaFacePeer("r", Path("unused"), 0.02, 0.4).decode([loc, conf], W, H, W, H)
    cx, cy, w, h = priors[0] * [W, H, W, H]
    np.testing.assert_allclose(boxes[0], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], atol=1e-4)
    assert np.allclose(sc, 0.8)


def test_ulfd_scales_normalised_corners_to_the_image() -> None:
    scores = np.array([[[0.1, 0.9], [0.95, 0.05]]], np.float32)
    boxes = np.array([[[0.25, 0.5, 0.5, 1.0], [0, 0, 1, 1]]], np.float32)
    out, sc = ULFDPeer("u", Path("unused"), 0.1, 0.3).decode([scores, boxes], 640, 480, 320, 240)
    np.testing.assert_allclose(out[0], [160, 240, 320, 480])
    np.testing.assert_allclose(sc, [0.9, 0.05])


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    """detect() = decode -> score threshold -> NMS; run it through a session stub of literal outputs."""
    peer = ULFDPeer("u", Path("unused"), 0.1, 0.3)
    scores = np.array([[[0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.99, 0.01]]], np.float32)
    boxes = np.array([[[0.1, 0.1, 0.3, 0.3], [0.11, 0.1, 0.31, 0.3], [0.6, 0.6, 0.8, 0.8], [0, 0, 1, 1]]])
    peer.session = lambda feed: [scores, boxes.astype(np.float32)]
    out, sc = peer.detect(np.zeros((240, 320, 3), np.uint8))
    np.testing.assert_allclose(sc, [0.9, 0.7])
    np.testing.assert_allclose(out[0], [32, 24, 96, 72], atol=1e-4)


# ----------------------------------------------------------------------------- real models


def _photo() -> np.ndarray:
    image = cv2.imread(str(need_shared("data/photos/1.jpg")))
    assert image is not None
    return image


@pytest.mark.parametrize("name", ["YuNet-n", "SCRFD-0.5GF", "RetinaFace-mnet0.25", "ULFD-RFB-320"])
def test_real_peer_finds_faces_on_a_photo(name: str) -> None:
    root = need_shared("weights/peers")
    found = {p.name: p for p in peers(root)}
    if name not in found:
        pytest.skip(f"{name} weights absent in {root}")
    image = _photo()
    boxes, scores = found[name].open("onnxruntime", 1).detect(image)
    confident = boxes[scores > 0.5]
    assert len(confident) >= 1, f"{name} found no face above 0.5"
    h, w = image.shape[:2]
    # boxes in image pixels, plausible face sizes
    assert (confident[:, 0] > -0.1 * w).all() and (confident[:, 2] < 1.1 * w).all()
    sizes = confident[:, 2:] - confident[:, :2]
    assert (sizes > 4).all() and (sizes < max(w, h)).all()


def test_real_peer_on_openvino_matches_onnxruntime() -> None:
    root = need_shared("weights/peers")
    image = _photo()
    a = next(p for p in peers(root) if p.name == "YuNet-n").open("onnxruntime", 1)
    b = next(p for p in peers(root) if p.name == "YuNet-n").open("openvino", 1)
    ba, sa = a.detect(image)
    bb, sb = b.detect(image)
    top_a, top_b = ba[sa > 0.5], bb[sb > 0.5]
    assert len(top_a) == len(top_b) >= 1
    np.testing.assert_allclose(top_a, top_b, atol=1.0)


def test_yunet_through_opencv_finds_faces() -> None:
    path = need_shared(f"weights/peers/{CV2_YUNET}")
    image = _photo()
    faces = yunet_cv2(path, image.shape[1], image.shape[0]).detect(image)[1]
    assert faces is not None and (faces[:, 14] > 0.5).sum() >= 1
