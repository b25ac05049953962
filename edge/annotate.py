"""Detections for people: pixel-coordinate JSON and annotated images (``featherface-edge detect``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.detector import FaceDetector
from edge.errors import SourceError
from edge.records import Detection

# Left eye, right eye, nose, left and right mouth corners (the 5-point order of the training data).
LANDMARK_COLOURS = ((255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255))


def to_pixels(detections: list[Detection], width: int, height: int) -> list[dict[str, Any]]:
    """Normalised detections -> ``[{"box": [x1,y1,x2,y2], "score", "landmarks": [[x,y],...]}]`` in pixels."""
    out = []
    for d in detections:
        x1, y1, x2, y2 = d.box
        out.append(
            {
                "box": [
                    round(x1 * width, 1),
                    round(y1 * height, 1),
                    round(x2 * width, 1),
                    round(y2 * height, 1),
                ],
                "score": round(d.score, 4),
                "landmarks": [[round(x * width, 1), round(y * height, 1)] for x, y in d.landmarks],
            }
        )
    return out


def draw(image_bgr: np.ndarray, detections: list[Detection]) -> np.ndarray:
    """A copy of the image with boxes, scores and landmarks drawn."""
    out = image_bgr.copy()
    h, w = out.shape[:2]
    thick = max(1, round(min(w, h) / 400))
    for d in detections:
        x1, y1, x2, y2 = (round(v) for v in (d.box[0] * w, d.box[1] * h, d.box[2] * w, d.box[3] * h))
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 255, 0), thick)
        cv2.putText(
            out,
            f"{d.score:.2f}",
            (x1, max(0, y1 - 3)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4 * thick,
            (0, 255, 0),
            thick,
        )
        for i, (x, y) in enumerate(d.landmarks):
            colour = LANDMARK_COLOURS[i % len(LANDMARK_COLOURS)]
            cv2.circle(out, (round(x * w), round(y * h)), thick + 1, colour, -1)
    return out


def annotate_target(out: Path, image: Path, many: bool) -> Path:
    """Where the annotated copy of ``image`` goes: ``out`` itself for one image given a file name
    with an image suffix, else ``out/<image name>`` (the folder is created)."""
    if not many and out.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp"):
        out.parent.mkdir(parents=True, exist_ok=True)
        return out
    out.mkdir(parents=True, exist_ok=True)
    return out / image.name


def expand_images(paths: list[Path]) -> list[Path]:
    """The files ``detect`` runs on: files as given, folders as their images sorted by name."""
    from edge.camera import IMAGE_SUFFIXES

    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise SourceError(f"{path} is a folder with no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        else:
            out.append(path)
    return out


def detect_file(
    detector: FaceDetector, image: Path, annotate: Path | None = None, many: bool = False
) -> dict:
    """Detect faces in one image file; returns the JSON object ``detect`` prints for it."""
    if not image.is_file():
        raise SourceError(f"{image} does not exist")
    pixels = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if pixels is None:
        raise SourceError(f"{image} is not a readable image (unsupported or corrupt)")
    detections = detector.detect(pixels)
    h, w = pixels.shape[:2]
    result: dict[str, Any] = {
        "image": str(image),
        "width": w,
        "height": h,
        "faces": to_pixels(detections, w, h),
    }
    if annotate is not None:
        target = annotate_target(annotate, image, many)
        if not cv2.imwrite(str(target), draw(pixels, detections)):
            raise SourceError(f"cannot write annotated image {target}")
        result["annotated"] = str(target)
    return result
