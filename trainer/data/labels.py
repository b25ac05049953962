"""Face annotations: the :class:`FaceSample` record and the RetinaFace ``label.txt`` reader / writer.

``label.txt`` (RetinaFace train format) is a sequence of blocks::

    # 0--Parade/0_Parade_marchingband_1_849.jpg
    449 330 122 149 488.9 373.6 0.0 542.1 376.4 0.0 515.0 412.8 0.0 485.1 434.6 0.0 538.4 431.2 0.0 0.82
    x y w h

a ``# path`` line (relative to the image root) followed by one line per face: ``x y w h`` in pixels
(top-left corner and size), then optionally five landmarks ``lx ly flag`` (left eye, right eye,
nose, left mouth corner, right mouth corner; ``-1`` when missing) and a blur/score value. The
boxes-only variant (4 numbers a face, e.g. ``../shared/data/wider-val-dev/label.txt``) is read too.

Bad entries (malformed line, missing image, box with no area inside the image) are skipped and
reported in a single warning; a file that yields no usable image raises :class:`DatasetError`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import DatasetError

log = logging.getLogger(__name__)

NUM_LANDMARKS = 5
# Where RetinaFace-style layouts keep the images, relative to the label file's folder.
_IMAGE_ROOT_CANDIDATES = ("images", "WIDER_train/images", "WIDER_val/images", ".")


@dataclass(frozen=True, eq=False)
class FaceSample:
    """One annotated image.

    ``boxes``: ``(N, 4)`` float32 ``(x1, y1, x2, y2)`` in pixels. ``landmarks``: ``(N, 10)`` float32
    ``x0, y0, ..., x4, y4`` in pixels, all ``-1`` for a face without landmarks (see :attr:`has_landmarks`).
    ``image`` is a file path, or ``None`` when ``pixels`` holds the BGR image itself (synthetic data).
    """

    image: Path | None
    boxes: np.ndarray
    landmarks: np.ndarray
    pixels: np.ndarray | None = field(default=None, repr=False)

    @property
    def has_landmarks(self) -> np.ndarray:
        """``(N,)`` bool: which faces carry landmarks (the loss trains landmarks only on those)."""
        return self.landmarks[:, 0] >= 0

    def load_bgr(self) -> np.ndarray:
        """The image as an ``(H, W, 3)`` uint8 BGR array; :class:`DatasetError` when unreadable."""
        if self.pixels is not None:
            return self.pixels
        import cv2

        img = cv2.imread(str(self.image), cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"cannot read image {self.image}")
        return img


class SkipCounter:
    """Counts skipped entries by reason and emits one summary warning (not one per bad line)."""

    def __init__(self, source: str | Path) -> None:
        self.source = str(source)
        self.reasons: Counter[str] = Counter()
        self.first: str | None = None

    def skip(self, reason: str, detail: str) -> None:
        self.reasons[reason] += 1
        if self.first is None:
            self.first = detail

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def report(self) -> None:
        if not self.total:
            return
        parts = ", ".join(f"{n} {r}" for r, n in self.reasons.most_common())
        log.warning("%s: skipped %d bad entries (%s); first: %s", self.source, self.total, parts, self.first)


def image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the image header only (fast), or ``None`` if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        return None


def validate_boxes(boxes: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Clip ``(N, 4)`` pixel boxes to a ``(W, H)`` image; return ``(clipped, keep_mask)``.

    A box is dropped when it has no area inside the image (wholly outside, or degenerate).
    """
    w, h = size
    clipped = boxes.copy()
    clipped[:, 0::2] = np.clip(clipped[:, 0::2], 0, w)
    clipped[:, 1::2] = np.clip(clipped[:, 1::2], 0, h)
    keep = (clipped[:, 2] - clipped[:, 0] >= 1) & (clipped[:, 3] - clipped[:, 1] >= 1)
    return clipped, keep


def parse_face_line(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """One face line -> ``(box x1y1x2y2, landmarks (10,))``; ``ValueError`` if malformed."""
    n = len(values)
    if n not in (4, 5, 19, 20):
        raise ValueError(f"expected 4 (box) or 20 (box, 5 landmarks, blur) numbers, got {n}")
    x, y, w, h = values[:4]
    if w <= 0 or h <= 0:
        raise ValueError(f"box width/height must be positive, got {w} x {h}")
    box = np.array([x, y, x + w, y + h], dtype=np.float32)
    ldm = np.full(2 * NUM_LANDMARKS, -1.0, dtype=np.float32)
    if n >= 19:
        pts = np.asarray(values[4:19], dtype=np.float32).reshape(NUM_LANDMARKS, 3)[:, :2]
        # RetinaFace marks missing landmarks with -1; a face counts as landmarked only if all 5 are there.
        if (pts >= 0).all():
            ldm = pts.reshape(-1)
    return box, ldm


def find_image_root(label_file: Path, first_image: str) -> Path:
    """The folder the ``# path`` lines are relative to: ``images/`` beside the file, or similar."""
    base = label_file.parent
    for cand in _IMAGE_ROOT_CANDIDATES:
        if (base / cand / first_image).is_file():
            return (base / cand).resolve()
    return (base / "images") if (base / "images").is_dir() else base


def read_label_txt(
    label_file: str | Path, image_root: str | Path | None = None, check_images: bool = True
) -> list[FaceSample]:
    """Read a RetinaFace ``label.txt`` (boxes + landmarks, or boxes only) into samples.

    ``image_root`` defaults to ``images/`` (or ``WIDER_*/images/``) beside the file. With
    ``check_images`` each image header is read to skip missing images and clip boxes to the image.
    """
    label_file = Path(label_file)
    try:
        lines = label_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise DatasetError(f"label file not found: {label_file}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read label file {label_file}: {exc}") from exc
    skips = SkipCounter(label_file)
    blocks = list(_blocks(lines, skips))
    if not blocks:
        raise DatasetError(f"label file {label_file} holds no '# image' entries")
    root = Path(image_root) if image_root is not None else find_image_root(label_file, blocks[0][1])
    samples = []
    for lineno, rel, faces in blocks:
        sample = _make_sample(root / rel, faces, check_images, skips, f"line {lineno}: {rel}")
        if sample is not None:
            samples.append(sample)
    skips.report()
    if not samples:
        raise DatasetError(f"label file {label_file} yields no usable image (image root {root})")
    return samples


def _blocks(lines: list[str], skips: SkipCounter) -> Iterable[tuple[int, str, list]]:
    """Yield ``(line number, image path, [(box, ldm), ...])`` per ``# path`` block."""
    current: tuple[int, str, list] | None = None
    for i, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if current is not None:
                yield current
            current = (i, line[1:].strip(), [])
            continue
        if current is None:
            skips.skip("malformed line", f"line {i}: face line before any '# path' line")
            continue
        try:
            values = [float(v) for v in line.split()]
            if values and not any(values):
                continue  # "0 0 0 0": the placeholder WIDER writes for an image without faces
            current[2].append(parse_face_line(values))
        except ValueError as exc:
            skips.skip("malformed line", f"line {i}: {exc}")
    if current is not None:
        yield current


def _make_sample(
    path: Path, faces: list, check_images: bool, skips: SkipCounter, where: str
) -> FaceSample | None:
    if not faces:
        skips.skip("image without faces", where)
        return None
    boxes = np.stack([b for b, _ in faces]).astype(np.float32)
    ldms = np.stack([lm for _, lm in faces]).astype(np.float32)
    if check_images:
        size = image_size(path)
        if size is None:
            skips.skip("missing image", f"{where}: cannot open {path}")
            return None
        boxes, keep = validate_boxes(boxes, size)
        for _ in range(int((~keep).sum())):
            skips.skip("box outside the image", f"{where}: box outside the {size[0]}x{size[1]} image")
        if not keep.any():
            return None
        boxes, ldms = boxes[keep], ldms[keep]
    return FaceSample(image=path, boxes=boxes, landmarks=ldms)


def write_label_txt(samples: Sequence[FaceSample], label_file: str | Path, image_root: str | Path) -> Path:
    """Write samples as a RetinaFace ``label.txt`` (paths relative to ``image_root``; 20 numbers a face)."""
    label_file, image_root = Path(label_file), Path(image_root)
    out = []
    for s in samples:
        if s.image is None:
            raise DatasetError("cannot write an in-memory (synthetic) sample to label.txt")
        out.append(f"# {Path(s.image).resolve().relative_to(image_root.resolve()).as_posix()}")
        for box, ldm in zip(s.boxes, s.landmarks, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            pts = " ".join(f"{ldm[2 * k]:.3f} {ldm[2 * k + 1]:.3f} 0.0" for k in range(NUM_LANDMARKS))
            out.append(f"{x1:.3f} {y1:.3f} {x2 - x1:.3f} {y2 - y1:.3f} {pts} 1.0")
    label_file.parent.mkdir(parents=True, exist_ok=True)
    label_file.write_text("\n".join(out) + "\n", encoding="utf-8")
    return label_file
