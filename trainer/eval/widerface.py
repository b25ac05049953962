"""The official WIDER FACE evaluation (easy / medium / hard AP), vectorised with NumPy.

Semantics are those of the official MATLAB tool and its widely used Python port
(``evaluation.py`` of WiderFace-Evaluation: ``image_eval``, ``img_pr_info``, ``dataset_pr_info``,
``voc_ap``), reproduced exactly:

- ground truth comes from ``wider_face_val.mat`` (every face box) and the setting's keep-lists in
  ``wider_{easy,medium,hard}_val.mat``; a face outside the keep-list is *ignored*: a detection whose
  best match is an ignored face is neither a true nor a false positive;
- scores are min-max normalised once over all predictions of the dataset (the reference seeds the
  minimum with 1 and the maximum with 0), and each image's detections are taken in descending score;
- a detection matches the face of highest IoU (``+1``-pixel areas, boxes ``x, y, w, h`` with
  ``x2 = x + w``) when that IoU is >= 0.5; a second detection on an already found face is a false
  positive; recall after each detection counts the distinct kept faces found so far;
- 1,000 score thresholds ``1 - (t + 1) / 1000``; precision and recall summed over images; VOC
  all-point AP.

Predictions are ``{(event, name): (N, 5) float array}`` with rows ``x, y, w, h, score`` in pixels of
the original image; ``name`` is the image file name without ``.jpg``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import DatasetError
from trainer.data.wider import SETTINGS, WiderGroundTruth, WiderImage

THRESH_NUM = 1000

Predictions = dict[tuple[str, str], np.ndarray]


@dataclass(frozen=True)
class SettingResult:
    """AP of one setting and its PR curve (``THRESH_NUM`` points, threshold descending)."""

    setting: str
    ap: float
    precision: np.ndarray
    recall: np.ndarray
    faces: int


@dataclass(frozen=True)
class WiderResult:
    """Easy / medium / hard results; ``ap`` maps setting -> AP in [0, 1]."""

    settings: dict[str, SettingResult] = field(default_factory=dict)

    @property
    def ap(self) -> dict[str, float]:
        return {k: v.ap for k, v in self.settings.items()}

    def summary(self) -> str:
        """``easy 85.81  medium 83.06  hard 69.10`` (AP in percent)."""
        return "  ".join(f"{k} {100 * v:.2f}" for k, v in self.ap.items())


# ----------------------------------------------------------------------------- ground truth


# Face heights (pixels) from which each setting keeps a face, for ground truth that has no official
# setting files (a validation split of training images). Read off the official lists of the 200
# wider-val-eval images: easy keeps 94 % of faces 50-64 px high and none below 50, medium 94 % of
# 30-40 px and none below 30, hard 74 % of 10-12 px and none below 10; above those, all of them.
SIZE_SETTINGS: dict[str, float] = {"easy": 50.0, "medium": 30.0, "hard": 10.0}


def ground_truth_from_boxes(
    images: Iterable[tuple[str, str, np.ndarray]], min_height: Mapping[str, float] = SIZE_SETTINGS
) -> WiderGroundTruth:
    """Ground truth for ``(event, name, boxes x1 y1 x2 y2)`` images without official setting lists:
    a setting keeps the faces at least ``min_height[setting]`` pixels high and ignores the rest, as the
    official lists do with the faces they leave out (a detection on one is neither right nor wrong)."""
    out = []
    for event, name, xyxy in images:
        xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
        xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        keep = {s: np.flatnonzero(xywh[:, 3] >= min_height[s]) for s in SETTINGS}
        out.append(WiderImage(event, name, xywh, keep))
    return WiderGroundTruth(tuple(out))


# ----------------------------------------------------------------------------- prediction files


def write_predictions(out_dir: str | Path, predictions: Mapping[tuple[str, str], np.ndarray]) -> None:
    """Write ``out_dir/<event>/<name>.txt`` in the standard WIDER submission format:
    the image name, the count, then one ``x y w h score`` line per detection."""
    out_dir = Path(out_dir)
    for (event, name), dets in predictions.items():
        folder = out_dir / event
        folder.mkdir(parents=True, exist_ok=True)
        dets = np.asarray(dets, dtype=np.float64).reshape(-1, 5)
        lines = [name, str(len(dets))]
        # repr round-trips floats exactly, so evaluating the folder equals evaluating in memory
        lines += [" ".join(repr(float(v)) for v in row) for row in dets]
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")


def read_prediction_file(path: str | Path) -> tuple[str, np.ndarray]:
    """One WIDER prediction file -> (image name without ``.jpg``, ``(N, 5)`` array)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read prediction file {path}: {exc}") from exc
    if len(lines) < 2:
        raise DatasetError(f"prediction file {path} needs a name line and a count line")
    name = lines[0].strip().split("/")[-1].removesuffix(".jpg")
    rows = []
    for n, line in enumerate(lines[2:], start=3):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split()[:5]]
        except ValueError:
            values = []
        if len(values) != 5:
            raise DatasetError(f"{path}:{n}: expected 'x y w h score', got {line.strip()!r}")
        rows.append(values)
    return name, np.asarray(rows, dtype=np.float64).reshape(-1, 5)


def read_predictions(pred_dir: str | Path) -> Predictions:
    """Read a folder written by :func:`write_predictions` (or any standard WIDER submission)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DatasetError(f"predictions folder not found: {pred_dir}")
    preds: Predictions = {}
    for event_dir in sorted(p for p in pred_dir.iterdir() if p.is_dir()):
        for txt in sorted(event_dir.glob("*.txt")):
            name, dets = read_prediction_file(txt)
            preds[(event_dir.name, name)] = dets
    if not preds:
        raise DatasetError(f"{pred_dir}: no <event>/<name>.txt prediction files")
    return preds


# ----------------------------------------------------------------------------- the protocol


def box_overlaps(boxes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """IoU matrix ``(N, K)`` of corner boxes ``x1, y1, x2, y2`` with ``+1``-pixel widths and heights
    (the reference ``bbox_overlaps``)."""
    iw = (
        np.minimum(boxes[:, None, 2], query[None, :, 2])
        - np.maximum(boxes[:, None, 0], query[None, :, 0])
        + 1
    )
    ih = (
        np.minimum(boxes[:, None, 3], query[None, :, 3])
        - np.maximum(boxes[:, None, 1], query[None, :, 1])
        + 1
    )
    area_b = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    area_q = (query[:, 2] - query[:, 0] + 1) * (query[:, 3] - query[:, 1] + 1)
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = area_b[:, None] + area_q[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def normalise_scores(predictions: Mapping[tuple[str, str], np.ndarray]) -> Predictions:
    """Global min-max score normalisation, as the reference (min seeded with 1, max with 0)."""
    lo, hi = 1.0, 0.0
    for dets in predictions.values():
        if len(dets):
            lo, hi = min(lo, float(dets[:, 4].min())), max(hi, float(dets[:, 4].max()))
    diff = hi - lo
    out: Predictions = {}
    for key, dets in predictions.items():
        dets = np.array(dets, dtype=np.float64).reshape(-1, 5)
        if len(dets):
            # the reference divides by zero here when every score is equal; keep them at 1 instead
            dets[:, 4] = (dets[:, 4] - lo) / diff if diff > 0 else 1.0
        out[key] = dets
    return out


def image_eval(
    pred: np.ndarray, gt: np.ndarray, keep: np.ndarray, iou_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """One image, predictions in the order given -> (``pred_recall``, ``proposal_list``).

    ``pred_recall[h]``: distinct kept faces found by detections ``0..h``; ``proposal_list[h]`` is -1
    when detection ``h``'s best match (IoU >= threshold) is an ignored face, else 1.
    """
    n = len(pred)
    if n == 0 or len(gt) == 0:
        return np.zeros(n), np.ones(n)
    p = pred[:, :4].astype(np.float64)
    g = gt.astype(np.float64)
    p = np.concatenate([p[:, :2], p[:, :2] + p[:, 2:4]], axis=1)
    g = np.concatenate([g[:, :2], g[:, :2] + g[:, 2:4]], axis=1)
    overlaps = box_overlaps(p, g)
    best = overlaps.argmax(axis=1)  # first maximum, as ndarray.argmax in the reference
    matched = overlaps[np.arange(n), best] >= iou_threshold
    kept = np.zeros(len(g), dtype=bool)
    kept[keep] = True
    proposal_list = np.where(matched & ~kept[best], -1.0, 1.0)
    # a kept face counts once: at the first detection that matches it
    hits = np.flatnonzero(matched & kept[best])
    _, first = np.unique(best[hits], return_index=True)
    found = np.zeros(n)
    found[hits[first]] = 1
    return np.cumsum(found), proposal_list


def thresholds(thresh_num: int = THRESH_NUM) -> np.ndarray:
    """``1 - (t + 1) / thresh_num`` for ``t = 0..thresh_num-1``, computed as the reference does."""
    return np.array([1 - (t + 1) / thresh_num for t in range(thresh_num)], dtype=np.float64)


def img_pr_info(
    scores: np.ndarray, proposal_list: np.ndarray, pred_recall: np.ndarray, thresh: np.ndarray
) -> np.ndarray:
    """``(T, 2)``: per threshold, proposals counted and faces recalled among detections scoring
    >= threshold (``scores`` descending)."""
    # detections in descending score: the last one >= thresh is at index count-1
    count = np.searchsorted(-scores, -thresh, side="right")
    last = np.maximum(count - 1, 0)
    proposals = np.cumsum(proposal_list == 1)
    info = np.zeros((len(thresh), 2))
    if len(scores):
        info[:, 0] = np.where(count > 0, proposals[last], 0)
        info[:, 1] = np.where(count > 0, pred_recall[last], 0)
    return info


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC all-point AP: area under the monotone precision envelope."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def evaluate(
    predictions: Mapping[tuple[str, str], np.ndarray],
    gt: WiderGroundTruth,
    iou_threshold: float = 0.5,
    thresh_num: int = THRESH_NUM,
    settings: Iterable[str] = SETTINGS,
) -> WiderResult:
    """Easy / medium / hard AP of ``predictions`` against ``gt``.

    An image of ``gt`` without predictions counts as no detections (its faces are missed);
    predictions for images outside ``gt`` still take part in score normalisation, as in the
    reference, but not in matching.
    """
    preds = normalise_scores(predictions)
    thresh = thresholds(thresh_num)
    # matching does not depend on the setting's threshold curve: sort each image once
    ordered: dict[tuple[str, str], np.ndarray] = {}
    for img in gt.images:
        dets = preds.get((img.event, img.name), np.zeros((0, 5)))
        ordered[(img.event, img.name)] = dets[np.argsort(-dets[:, 4], kind="stable")]
    results: dict[str, SettingResult] = {}
    for setting in settings:
        pr_curve = np.zeros((thresh_num, 2))
        count_face = 0
        for img in gt.images:
            keep = img.keep[setting]
            count_face += len(keep)
            dets = ordered[(img.event, img.name)]
            if len(img.boxes) == 0 or len(dets) == 0:
                continue
            pred_recall, proposal_list = image_eval(dets, img.boxes, keep, iou_threshold)
            pr_curve += img_pr_info(dets[:, 4], proposal_list, pred_recall, thresh)
        # 0/0 only where nothing is proposed, i.e. at recall 0, which never enters the AP sum
        precision = np.divide(
            pr_curve[:, 1], pr_curve[:, 0], out=np.zeros(thresh_num), where=pr_curve[:, 0] > 0
        )
        recall = pr_curve[:, 1] / count_face if count_face else np.zeros(thresh_num)
        results[setting] = SettingResult(setting, voc_ap(recall, precision), precision, recall, count_face)
    return WiderResult(results)
