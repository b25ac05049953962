"""The WIDER FACE evaluator on hand-built .mat fixtures in the official structure."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from edge.errors import DatasetError
from trainer.data.wider import load_ground_truth, locate_wider_val
from trainer.eval.widerface import (
    box_overlaps,
    evaluate,
    image_eval,
    normalise_scores,
    read_prediction_file,
    read_predictions,
    voc_ap,
    write_predictions,
)

# ----------------------------------------------------------------------------- fixtures


def _cells(items: list) -> np.ndarray:
    """A MATLAB cell column (n, 1) from Python objects."""
    arr = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        arr[i, 0] = item
    return arr


def write_gt(gt_dir: Path, events: dict[str, dict[str, tuple[list, dict[str, list[int]]]]]) -> None:
    """``events[event][name] = (boxes xywh, {setting: 1-based keep indices})`` -> the four .mat files,
    nested exactly as the official ones (event_list, file_list, face_bbx_list, gt_list)."""
    gt_dir.mkdir(parents=True, exist_ok=True)
    names = list(events)
    event_list = _cells([np.array([e]) for e in names])
    file_list = _cells([_cells([np.array([n]) for n in events[e]]) for e in names])
    face_bbx = _cells(
        [_cells([np.array(b, dtype=np.int32).reshape(-1, 4) for b, _ in events[e].values()]) for e in names]
    )
    base = {"event_list": event_list, "file_list": file_list, "face_bbx_list": face_bbx}
    savemat(gt_dir / "wider_face_val.mat", base)
    for setting in ("easy", "medium", "hard"):
        gt_list = _cells(
            [
                _cells([np.array(k[setting], dtype=np.uint8).reshape(-1, 1) for _, k in events[e].values()])
                for e in names
            ]
        )
        savemat(gt_dir / f"wider_{setting}_val.mat", {**base, "gt_list": gt_list})


ONE = {"easy": [1], "medium": [1], "hard": [1]}  # keep the single face everywhere


@pytest.fixture
def two_faces(tmp_path: Path) -> Path:
    """One image, two faces; easy keeps only face 1, medium and hard keep both."""
    gt = tmp_path / "ground_truth"
    write_gt(
        gt,
        {
            "0--Parade": {
                "img_a": (
                    [[10, 10, 40, 50], [200, 50, 60, 60]],
                    {"easy": [1], "medium": [1, 2], "hard": [1, 2]},
                )
            }
        },
    )
    return gt


def dets(*rows: list[float]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


# ----------------------------------------------------------------------------- ground truth


def test_ground_truth_is_read_in_the_official_structure(tmp_path: Path) -> None:
    write_gt(
        tmp_path,
        {
            "0--Parade": {
                "a": ([[1, 2, 3, 4], [5, 6, 7, 8]], {"easy": [2], "medium": [1, 2], "hard": [1, 2]})
            },
            "1--Handshaking": {
                "b": ([[9, 9, 20, 20]], {"easy": [], "medium": [], "hard": [1]}),
                "c": ([[0, 0, 5, 5]], {"easy": [1], "medium": [1], "hard": [1]}),
            },
        },
    )
    gt = load_ground_truth(tmp_path)
    assert [(i.event, i.name) for i in gt.images] == [
        ("0--Parade", "a"),
        ("1--Handshaking", "b"),
        ("1--Handshaking", "c"),
    ]
    np.testing.assert_array_equal(gt.images[0].boxes, [[1, 2, 3, 4], [5, 6, 7, 8]])
    np.testing.assert_array_equal(gt.images[0].keep["easy"], [1])  # 0-based
    assert gt.images[1].keep["easy"].size == 0
    assert {s: gt.faces(s) for s in ("easy", "medium", "hard")} == {"easy": 2, "medium": 3, "hard": 4}
    assert gt.images[2].relpath == "1--Handshaking/c.jpg"
    assert len(gt.head(1)) == 1 and gt.head(1).faces("hard") == 2


def test_missing_or_broken_ground_truth_is_one_line_dataset_error(tmp_path: Path, two_faces: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_ground_truth(tmp_path / "nope")
    (two_faces / "wider_hard_val.mat").unlink()
    with pytest.raises(DatasetError, match=r"wider_hard_val\.mat") as err:
        load_ground_truth(two_faces)
    assert "\n" not in str(err.value)
    (two_faces / "wider_hard_val.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DatasetError, match="cannot read") as err:
        load_ground_truth(two_faces)
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match="WIDER_val/images"):
        locate_wider_val(tmp_path)


# ----------------------------------------------------------------------------- the protocol


def test_perfect_predictions_give_ap_one(two_faces: Path) -> None:
    gt = load_ground_truth(two_faces)
    preds = {("0--Parade", "img_a"): dets([10, 10, 40, 50, 0.9], [200, 50, 60, 60, 0.8])}
    result = evaluate(preds, gt)
    assert result.ap == {"easy": 1.0, "medium": 1.0, "hard": 1.0}
    assert result.summary() == "easy 100.00  medium 100.00  hard 100.00"


def test_detection_on_ignored_face_is_neither_tp_nor_fp(two_faces: Path) -> None:
    gt = load_ground_truth(two_faces)
    # the highest score sits on face 2, which easy ignores: were it an FP, easy AP would be 0.5
    preds = {("0--Parade", "img_a"): dets([200, 50, 60, 60, 0.9], [10, 10, 40, 50, 0.8])}
    assert evaluate(preds, gt).ap["easy"] == 1.0
    recall, proposals = image_eval(
        preds[("0--Parade", "img_a")], gt.images[0].boxes, gt.images[0].keep["easy"]
    )
    np.testing.assert_array_equal(proposals, [-1, 1])
    np.testing.assert_array_equal(recall, [0, 1])


def test_unmatched_detection_is_fp_even_when_the_setting_keeps_no_face(tmp_path: Path) -> None:
    write_gt(
        tmp_path,
        {
            "0--Parade": {
                "a": ([[10, 10, 40, 50]], ONE),
                "b": ([[10, 10, 40, 50]], {"easy": [], "medium": [1], "hard": [1]}),
            }
        },
    )
    gt = load_ground_truth(tmp_path)
    # on image b a stray detection outscores the true face of image a
    preds = {
        ("0--Parade", "a"): dets([10, 10, 40, 50, 0.5]),
        ("0--Parade", "b"): dets([300, 300, 20, 20, 0.9]),
    }
    assert evaluate(preds, gt).ap["easy"] == pytest.approx(0.5)


def test_duplicates_are_false_positives(two_faces: Path) -> None:
    gt = load_ground_truth(two_faces)
    preds = {
        ("0--Parade", "img_a"): dets([10, 10, 40, 50, 0.9], [11, 10, 40, 50, 0.8], [200, 50, 60, 60, 0.7])
    }
    recall, proposals = image_eval(
        normalise_scores(preds)[("0--Parade", "img_a")], gt.images[0].boxes, gt.images[0].keep["hard"]
    )
    np.testing.assert_array_equal(recall, [1, 1, 2])
    np.testing.assert_array_equal(proposals, [1, 1, 1])
    # recall 0.5 at precision 1, then recall 1 at precision 2/3
    assert evaluate(preds, gt).ap["hard"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_iou_threshold_uses_plus_one_pixels() -> None:
    gt = np.array([[0.0, 0.0, 99.0, 99.0]])  # corners: 100 x 100 pixels with the +1 convention
    half = np.array([[0.0, 0.0, 49.0, 99.0]])  # 50 x 100 inside it: IoU exactly 0.5
    under = np.array([[0.0, 0.0, 48.9, 99.0]])
    assert box_overlaps(half, gt)[0, 0] == 0.5
    assert box_overlaps(under, gt)[0, 0] == pytest.approx(0.499)
    assert box_overlaps(np.array([[200.0, 0, 250, 50]]), gt)[0, 0] == 0.0


def test_iou_just_under_half_misses(tmp_path: Path) -> None:
    write_gt(tmp_path, {"0--Parade": {"a": ([[0, 0, 99, 99]], {"easy": [1], "medium": [1], "hard": [1]})}})
    gt = load_ground_truth(tmp_path)
    far = [500, 500, 10, 10, 0.1]  # a second, lower score so that normalisation is defined
    at = evaluate({("0--Parade", "a"): dets([0, 0, 49, 99, 0.9], far)}, gt)
    under = evaluate({("0--Parade", "a"): dets([0, 0, 48.9, 99, 0.9], far)}, gt)
    assert at.ap["hard"] == 1.0
    assert under.ap["hard"] == 0.0


def test_missing_image_predictions_count_as_misses(tmp_path: Path) -> None:
    write_gt(tmp_path, {"0--Parade": {"a": ([[10, 10, 40, 50]], ONE), "b": ([[10, 10, 40, 50]], ONE)}})
    gt = load_ground_truth(tmp_path)
    preds = {("0--Parade", "a"): dets([10, 10, 40, 50, 0.9], [300, 300, 5, 5, 0.1])}
    assert evaluate(preds, gt).ap["hard"] == pytest.approx(0.5)
    assert evaluate(preds, gt.head(1)).ap["hard"] == 1.0


def test_voc_ap_all_point() -> None:
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == pytest.approx(0.75)
    # the envelope lifts a dip: precision 0.4 at recall 0.5 is replaced by the later 0.8
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([0.4, 0.4, 0.8])) == pytest.approx(0.8)


# ----------------------------------------------------------------------------- vs the reference loops


def _reference_eval(preds: dict, gt_images: list, iou_thresh: float = 0.5, thresh_num: int = 1000) -> list:
    """A literal transcription of the reference evaluation.py loops (norm_score, image_eval,
    img_pr_info, dataset_pr_info, voc_ap) on files already in descending score order."""
    max_score, min_score = 0.0, 1.0
    for v in preds.values():
        if len(v):
            max_score, min_score = max(np.max(v[:, -1]), max_score), min(np.min(v[:, -1]), min_score)
    preds = {k: v.copy() for k, v in preds.items()}
    for v in preds.values():
        if len(v):
            v[:, -1] = (v[:, -1] - min_score) / (max_score - min_score)
    aps = []
    for setting in ("easy", "medium", "hard"):
        count_face, pr_curve = 0, np.zeros((thresh_num, 2))
        for img in gt_images:
            pred_info, gt_boxes, keep = preds[(img.event, img.name)], img.boxes, img.keep[setting] + 1
            count_face += len(keep)
            if len(gt_boxes) == 0 or len(pred_info) == 0:
                continue
            ignore = np.zeros(gt_boxes.shape[0])
            if len(keep):
                ignore[keep - 1] = 1
            _pred, _gt = pred_info.copy(), gt_boxes.copy()
            pred_recall, recall_list = np.zeros(len(_pred)), np.zeros(len(_gt))
            proposal_list = np.ones(len(_pred))
            _pred[:, 2:4] += _pred[:, :2]
            _gt[:, 2:4] += _gt[:, :2]
            overlaps = np.zeros((len(_pred), len(_gt)))
            for n in range(len(_pred)):
                for k in range(len(_gt)):
                    iw = min(_pred[n, 2], _gt[k, 2]) - max(_pred[n, 0], _gt[k, 0]) + 1
                    ih = min(_pred[n, 3], _gt[k, 3]) - max(_pred[n, 1], _gt[k, 1]) + 1
                    if iw > 0 and ih > 0:
                        area_n = (_pred[n, 2] - _pred[n, 0] + 1) * (_pred[n, 3] - _pred[n, 1] + 1)
                        area_k = (_gt[k, 2] - _gt[k, 0] + 1) * (_gt[k, 3] - _gt[k, 1] + 1)
                        overlaps[n, k] = iw * ih / (area_n + area_k - iw * ih)
            for h in range(len(_pred)):
                max_overlap, max_idx = overlaps[h].max(), overlaps[h].argmax()
                if max_overlap >= iou_thresh:
                    if ignore[max_idx] == 0:
                        recall_list[max_idx] = -1
                        proposal_list[h] = -1
                    elif recall_list[max_idx] == 0:
                        recall_list[max_idx] = 1
                pred_recall[h] = len(np.where(recall_list == 1)[0])
            for t in range(thresh_num):
                r_index = np.where(pred_info[:, 4] >= 1 - (t + 1) / thresh_num)[0]
                if len(r_index):
                    r = r_index[-1]
                    pr_curve[t] += [len(np.where(proposal_list[: r + 1] == 1)[0]), pred_recall[r]]
        with np.errstate(invalid="ignore"):
            prec, rec = pr_curve[:, 1] / pr_curve[:, 0], pr_curve[:, 1] / count_face
        mrec, mpre = np.concatenate(([0.0], rec, [1.0])), np.concatenate(([0.0], prec, [0.0]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        aps.append(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
    return aps


def test_matches_the_reference_loops_on_random_scenes(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    events: dict = {}
    preds: dict = {}
    for e in range(3):
        event = f"{e}--Event"
        events[event] = {}
        for i in range(4):
            g = int(rng.integers(0, 12))
            xy = rng.uniform(0, 400, (g, 2))
            wh = rng.uniform(4, 80, (g, 2))
            boxes = np.round(np.concatenate([xy, wh], axis=1))
            keep = {
                s: sorted(rng.choice(g, int(rng.integers(0, g + 1)), replace=False) + 1) if g else []
                for s in ("easy", "medium", "hard")
            }
            events[event][f"img{i}"] = (boxes.tolist(), keep)
            # jittered copies of some faces (some under IoU 0.5), duplicates, and strays
            jit = np.concatenate([boxes, boxes[: g // 2] + rng.normal(0, 6, (g // 2, 4))])
            stray = np.concatenate([rng.uniform(0, 400, (3, 2)), rng.uniform(4, 60, (3, 2))], axis=1)
            p = np.concatenate([jit, stray])
            p[:, 2:] = np.abs(p[:, 2:]) + 1
            scores = rng.uniform(0.02, 1.0, len(p))
            order = np.argsort(-scores, kind="stable")
            preds[(event, f"img{i}")] = np.concatenate([p, scores[:, None]], axis=1)[order]
    write_gt(tmp_path, events)
    gt = load_ground_truth(tmp_path)
    expected = _reference_eval(preds, list(gt.images))
    got = evaluate(preds, gt)
    assert [got.ap[s] for s in ("easy", "medium", "hard")] == pytest.approx(expected, abs=1e-12)
    assert 0.05 < got.ap["hard"] < 0.99  # a scene that exercises both hits and misses


# ----------------------------------------------------------------------------- prediction files


def test_prediction_files_round_trip(tmp_path: Path, two_faces: Path) -> None:
    preds = {
        ("0--Parade", "img_a"): dets([10.25, 10.5, 40.125, 50.0, 0.987654321], [1 / 3, 2, 3, 4, 0.02]),
        ("1--Handshaking", "empty"): np.zeros((0, 5)),
    }
    write_predictions(tmp_path / "pred", preds)
    text = (tmp_path / "pred" / "0--Parade" / "img_a.txt").read_text().splitlines()
    assert text[:2] == ["img_a", "2"] and len(text) == 4
    back = read_predictions(tmp_path / "pred")
    assert set(back) == set(preds)
    for key, value in preds.items():
        np.testing.assert_array_equal(back[key], value)  # bit-exact
    gt = load_ground_truth(two_faces)
    assert evaluate(back, gt).ap == evaluate(preds, gt).ap


def test_reads_a_standard_submission_file(tmp_path: Path) -> None:
    # RetinaFace-style output: a path in the name line, integer boxes, a trailing space
    f = tmp_path / "0_Parade_Parade_0_194.txt"
    f.write_text("0--Parade/0_Parade_Parade_0_194.jpg\n2\n111 425 122 127 0.99 \n1 2 3 4 0.5 \n")
    name, rows = read_prediction_file(f)
    assert name == "0_Parade_Parade_0_194"
    np.testing.assert_array_equal(rows, [[111, 425, 122, 127, 0.99], [1, 2, 3, 4, 0.5]])
    f.write_text("x\n1\n1 2 three 4 0.5\n")
    with pytest.raises(DatasetError, match=r"\.txt:3: expected"):
        read_prediction_file(f)
    with pytest.raises(DatasetError, match="no <event>"):
        read_predictions(tmp_path)


# ----------------------------------------------------------------------------- the CLI


def _run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    from trainer import cli

    monkeypatch.setattr(sys, "argv", ["featherface-train", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
        raise SystemExit(0)
    return int(exit_info.value.code or 0)


def test_cli_evaluates_a_prediction_folder(
    tmp_path: Path, two_faces: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "WIDER_val" / "images").mkdir(parents=True)
    write_predictions(
        tmp_path / "pred", {("0--Parade", "img_a"): dets([10, 10, 40, 50, 0.9], [0, 0, 5, 5, 0.1])}
    )
    plots = tmp_path / "plots"
    code = _run_cli(
        ["evaluate", str(tmp_path / "pred"), "--wider-val", str(tmp_path), "--out", str(plots)], monkeypatch
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "easy    AP 100.00" in out and "hard    AP  50.00" in out
    assert sorted(p.name for p in plots.iterdir()) == [
        "pr_all.png",
        "pr_easy.png",
        "pr_hard.png",
        "pr_medium.png",
    ]
    assert (plots / "pr_all.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_missing_dataset_is_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _run_cli(["evaluate", str(tmp_path), "--wider-val", str(tmp_path / "absent")], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "WIDER FACE val folder not found" in err


def test_only_events_keeps_a_held_out_split() -> None:
    from trainer.data.wider import WiderGroundTruth, WiderImage

    def img(event: str, name: str) -> WiderImage:
        return WiderImage(event=event, name=name, boxes=np.zeros((0, 4)), keep={})

    gt = WiderGroundTruth((img("0--Parade", "a"), img("3--Riot", "b"), img("12--Group", "c")))
    assert [i.name for i in gt.only_events([0, 12]).images] == ["a", "c"]
    assert gt.only_events(None) is gt
    assert len(gt.only_events([5])) == 0
