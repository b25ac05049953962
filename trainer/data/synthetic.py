"""Synthetic multi-face scenes: 5-point face crops pasted onto backgrounds, with exact labels.

The crops (``../shared/data/face-crops-5pt/lfw5590_net7876_aflw_80px.tar.gz``) are 80x80 pixels
with generous context around the face, listed as ``path x1..x5 y1..y5`` (crop pixels; left eye,
right eye, nose, left mouth corner, right mouth corner) in ``new_training.txt`` / ``new_testing.txt``.
Members are read straight from the archive (one pass, JPEG bytes kept in memory, ~17 MB); listed
files that are missing are skipped and counted in one warning.

The face **box** of a crop is not the crop itself (that would teach boxes with a shoulder's worth of
margin) but the WIDER-like tight face box implied by the landmarks: the canonical 5-point template
(ArcFace 112x112) is fitted to the points by a similarity transform and its square frame mapped back,
so boxes and landmarks of a pasted face are exact functions of where and how large it was pasted.

Backgrounds carry no faces: gradients, blurred noise, or heavily blurred crops of photos.
"""

from __future__ import annotations

import functools
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import DatasetError
from trainer.data.labels import FaceSample, SkipCounter

# ArcFace 112x112 alignment template (same landmark order); its frame is a tight face box.
_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
# Forehead to chin, cheek to cheek: WIDER boxes are about 1.25x taller than wide.
_TEMPLATE_FRAME = np.array([[14, 4], [98, 4], [98, 114], [14, 114]], dtype=np.float32)
SPLIT_LISTS = {"train": "new_training.txt", "test": "new_testing.txt"}


@dataclass(frozen=True, eq=False)
class FaceCrops:
    """Decoded-on-demand face crops: ``jpegs[i]`` bytes, ``points[i]`` (5, 2), ``boxes[i]`` x1y1x2y2."""

    jpegs: tuple[bytes, ...]
    points: np.ndarray  # (N, 5, 2) crop pixels
    boxes: np.ndarray  # (N, 4) tight face box in crop pixels, clipped to the crop

    def __len__(self) -> int:
        return len(self.jpegs)

    def image(self, i: int) -> np.ndarray:
        img = cv2.imdecode(np.frombuffer(self.jpegs[i], dtype=np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"face crop {i} is not a decodable image")
        return img


def face_box_from_points(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Tight face box ``x1, y1, x2, y2`` implied by 5 landmarks (template fit), clipped to ``size``."""
    m, _ = cv2.estimateAffinePartial2D(_TEMPLATE, points.astype(np.float32), method=cv2.LMEDS)
    if m is None:
        raise ValueError("degenerate landmarks")
    frame = _TEMPLATE_FRAME @ m[:, :2].T + m[:, 2]
    x1, y1 = frame.min(axis=0)
    x2, y2 = frame.max(axis=0)
    return np.array([max(x1, 0), max(y1, 0), min(x2, size[0]), min(y2, size[1])], dtype=np.float32)


@functools.lru_cache(maxsize=4)
def load_face_crops(archive: str | Path, split: str = "train", limit: int | None = None) -> FaceCrops:
    """Read the crops of ``split`` (``train`` or ``test``) from the tar archive (cached per process)."""
    archive = Path(archive)
    if split not in SPLIT_LISTS:
        raise DatasetError(f"unknown face-crop split {split!r} (use train or test)")
    if not archive.is_file():
        raise DatasetError(f"face-crop archive not found: {archive}")
    members: dict[str, bytes] = {}
    listing: str | None = None
    try:
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                name = info.name.lstrip("./")
                if name.lower().endswith((".jpg", ".jpeg", ".png")) or name == SPLIT_LISTS[split]:
                    f = tar.extractfile(info)
                    data = f.read() if f is not None else b""
                    if name == SPLIT_LISTS[split]:
                        listing = data.decode("utf-8", errors="replace")
                    else:
                        members[name] = data
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"cannot read face-crop archive {archive}: {exc}") from exc
    if listing is None:
        raise DatasetError(f"{archive} has no {SPLIT_LISTS[split]}")
    skips = SkipCounter(f"{archive}:{SPLIT_LISTS[split]}")
    jpegs, points, boxes = [], [], []
    for lineno, line in enumerate(listing.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            vals = np.asarray([float(v) for v in parts[1:]], dtype=np.float32)
            if vals.size != 10:
                raise ValueError(f"expected path + 10 numbers, got {vals.size}")
            pts = np.stack([vals[:5], vals[5:]], axis=1)  # x1..x5 then y1..y5
            box = face_box_from_points(pts, (80, 80))
        except ValueError as exc:
            skips.skip("malformed line", f"line {lineno}: {exc}")
            continue
        data = members.get(parts[0].replace("\\", "/"))
        if data is None:
            skips.skip("missing image", f"line {lineno}: {parts[0]} not in the archive")
            continue
        jpegs.append(data)
        points.append(pts)
        boxes.append(box)
        if limit is not None and len(jpegs) >= limit:
            break
    skips.report()
    if not jpegs:
        raise DatasetError(f"{archive}: no usable face crop in {SPLIT_LISTS[split]}")
    return FaceCrops(tuple(jpegs), np.stack(points), np.stack(boxes))


def make_background(
    rng: np.random.Generator, width: int, height: int, photos: Sequence[np.ndarray] = ()
) -> np.ndarray:
    """A face-free BGR background: gradient, blurred noise, or a heavily blurred photo crop."""
    kind = int(rng.integers(3 if photos else 2))
    if kind == 0:  # two-colour linear gradient plus a little noise
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        t = xx * np.cos(angle) / max(width, 1) + yy * np.sin(angle) / max(height, 1)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = c0 + (c1 - c0) * t[..., None]
        img += rng.normal(0, 6, img.shape)
    elif kind == 1:  # low-frequency coloured noise
        small = rng.uniform(0, 255, (max(height // 16, 2), max(width // 16, 2), 3)).astype(np.float32)
        img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        img += rng.normal(0, 8, img.shape)
    else:  # blurred photo crop: real colours and layout, faces blurred beyond recognition
        photo = photos[int(rng.integers(len(photos)))]
        ph, pw = photo.shape[:2]
        s = rng.uniform(0.3, 1.0)
        cw, ch = max(int(pw * s), 8), max(int(ph * s), 8)
        x, y = int(rng.integers(pw - cw + 1)), int(rng.integers(ph - ch + 1))
        img = cv2.resize(photo[y : y + ch, x : x + cw], (width, height)).astype(np.float32)
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=max(width, height) / 40)
    return np.clip(img, 0, 255).astype(np.uint8)


def _feather_mask(size: int) -> np.ndarray:
    """Alpha that fades over the outer ~10% so a paste has no hard square edge."""
    ramp = np.clip(np.minimum(np.arange(size), np.arange(size)[::-1]) / max(size * 0.1, 1.0), 0, 1)
    return np.minimum.outer(ramp, ramp).astype(np.float32)[..., None]


def make_scene(
    crops: FaceCrops,
    rng: np.random.Generator,
    size: tuple[int, int] = (640, 640),
    faces: tuple[int, int] = (1, 12),
    face_px: tuple[float, float] = (12.0, 256.0),
    photos: Sequence[np.ndarray] = (),
    max_tries: int = 40,
) -> FaceSample:
    """One scene of ``size`` (W, H) with ``faces`` (min, max) pasted crops.

    Face widths are log-uniform in ``face_px`` (pixels); pasted crops do not overlap. Returns a
    :class:`FaceSample` with the pixels in memory and pixel boxes / landmarks of every pasted face.
    """
    width, height = size
    img = make_background(rng, width, height, photos).astype(np.float32)
    want = int(rng.integers(faces[0], faces[1] + 1))
    placed: list[np.ndarray] = []
    boxes, ldms = [], []
    for _ in range(max_tries):
        if len(boxes) >= want:
            break
        i = int(rng.integers(len(crops)))
        fbox, pts = crops.boxes[i], crops.points[i]
        face_w = float(np.exp(rng.uniform(np.log(face_px[0]), np.log(face_px[1]))))
        scale = face_w / float(fbox[2] - fbox[0])
        side = round(80 * scale)
        if side < 4 or side > min(width, height):
            continue
        x, y = int(rng.integers(width - side + 1)), int(rng.integers(height - side + 1))
        region = np.array([x, y, x + side, y + side])
        if any(_overlaps(region, p) for p in placed):
            continue
        scale = side / 80.0  # the realised scale after rounding the pasted size
        patch = cv2.resize(crops.image(i), (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
        alpha = _feather_mask(side)
        img[y : y + side, x : x + side] = alpha * patch + (1 - alpha) * img[y : y + side, x : x + side]
        placed.append(region)
        boxes.append(fbox * scale + np.array([x, y, x, y], dtype=np.float32))
        ldms.append((pts * scale + np.array([x, y], dtype=np.float32)).reshape(-1))
    if not boxes:  # e.g. face_px larger than the scene: say so rather than train on nothing
        raise DatasetError(f"cannot place a face of {face_px} px in a {width}x{height} scene")
    return FaceSample(
        image=None,
        boxes=np.stack(boxes).astype(np.float32),
        landmarks=np.stack(ldms).astype(np.float32),
        pixels=np.clip(img, 0, 255).astype(np.uint8),
    )


def _overlaps(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])


def load_photos(folder: str | Path | None, max_side: int = 640) -> list[np.ndarray]:
    """Photos to cut backgrounds from (downscaled to ``max_side``); empty when ``folder`` is None."""
    if folder is None:
        return []
    out = []
    for p in sorted(Path(folder).glob("*")):
        if p.suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp"):
            continue
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            continue
        s = max_side / max(img.shape[:2])
        out.append(cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else img)
    return out
