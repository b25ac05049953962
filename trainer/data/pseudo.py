"""Pseudo-labels: a teacher detector labels unlabelled images (e.g. ``../shared/data/photos``).

The teacher is any callable ``detect(image_bgr) -> (boxes_px (N, 4) x1y1x2y2, scores (N,),
landmarks_px (N, 10) or None)``, so V1 in PyTorch, an exported ONNX model, or a peer detector all
fit. Detections at or above ``score_threshold`` become ground truth; images where the teacher finds
nothing are skipped (counted in the one warning). The result can be written as a RetinaFace
``label.txt`` (:func:`trainer.data.labels.write_label_txt`) and reused without the teacher.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from edge.errors import DatasetError
from trainer.data.labels import NUM_LANDMARKS, FaceSample, SkipCounter, validate_boxes

Detect = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray | None]]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` (sorted); :class:`DatasetError` when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return paths


def pseudo_label(
    images: Iterable[str | Path], detect: Detect, score_threshold: float = 0.8, min_face_px: float = 4.0
) -> list[FaceSample]:
    """Run ``detect`` on each image and keep detections with ``score >= score_threshold``.

    Boxes are clipped to the image; faces narrower than ``min_face_px`` are dropped (too small to
    trust). Landmarks are kept when the teacher returns them, else marked missing (``-1``).
    """
    import cv2

    images = [Path(p) for p in images]
    skips = SkipCounter("pseudo-labels")
    samples = []
    for path in images:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            skips.skip("missing image", f"cannot read {path}")
            continue
        boxes, scores, ldms = detect(img)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        if ldms is None:
            ldms = np.full((len(boxes), 2 * NUM_LANDMARKS), -1.0, dtype=np.float32)
        ldms = np.asarray(ldms, dtype=np.float32).reshape(-1, 2 * NUM_LANDMARKS)
        if not (len(boxes) == len(scores) == len(ldms)):
            raise DatasetError(
                f"teacher returned {len(boxes)} boxes, {len(scores)} scores, {len(ldms)} landmark rows "
                f"for {path}"
            )
        keep = scores >= score_threshold
        boxes, keep_in = validate_boxes(boxes, (img.shape[1], img.shape[0]))
        keep &= keep_in & (boxes[:, 2] - boxes[:, 0] >= min_face_px)
        if not keep.any():
            skips.skip("image without confident faces", f"{path.name}: nothing >= {score_threshold}")
            continue
        samples.append(FaceSample(image=path, boxes=boxes[keep], landmarks=ldms[keep]))
    skips.report()
    if not samples:
        raise DatasetError(
            f"the teacher found no face with score >= {score_threshold} in {len(images)} images"
        )
    return samples
