"""WIDER FACE in its official layout as a training / validation source (boxes only, no landmarks).

Layout (as distributed, and as ``../shared/data/wider-val-dev``)::

    ROOT/WIDER_val/images/<event>/<name>.jpg
    ROOT/ground_truth/wider_face_val.mat            (+ wider_{easy,medium,hard}_val.mat)
    ROOT/wider_face_split/wider_face_val_bbx_gt.txt

Either ground-truth file gives the same boxes; ``.mat`` is what the evaluation uses, ``.txt`` needs no
SciPy. This module is the one place that reads the layout and the ``.mat`` files: training samples
(:func:`read_wider`) and the evaluation's ground truth (:func:`load_ground_truth`, with each setting's
keep-list) both come from here; the evaluator (trainer/eval/widerface.py) owns only the protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import DatasetError
from trainer.data.labels import NUM_LANDMARKS, FaceSample, SkipCounter, image_size, validate_boxes

SETTINGS: tuple[str, ...] = ("easy", "medium", "hard")
GT_FILES: dict[str, str] = {
    "face": "wider_face_val.mat",
    "easy": "wider_easy_val.mat",
    "medium": "wider_medium_val.mat",
    "hard": "wider_hard_val.mat",
}


def find_wider_images(root: Path, split: str = "val") -> Path:
    """``ROOT/WIDER_<split>/images`` (or ``ROOT/images``); :class:`DatasetError` when neither exists."""
    for cand in (root / f"WIDER_{split}" / "images", root / "images"):
        if cand.is_dir():
            return cand
    raise DatasetError(f"no WIDER_{split}/images folder under {root}")


def read_wider_bbx_txt(
    gt_file: str | Path, images_dir: str | Path, skip_invalid: bool = True
) -> list[FaceSample]:
    """Read ``wider_face_<split>_bbx_gt.txt``: path, count, then per face
    ``x y w h blur expression illumination invalid occlusion pose`` (invalid faces dropped by default)."""
    gt_file, images_dir = Path(gt_file), Path(images_dir)
    try:
        tokens = gt_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read WIDER ground truth {gt_file}: {exc}") from exc
    skips = SkipCounter(gt_file)
    entries: list[tuple[str, np.ndarray]] = []
    i = 0
    while i < len(tokens):
        name = tokens[i].strip()
        i += 1
        if not name:
            continue
        try:
            count = int(tokens[i])
        except (IndexError, ValueError):
            skips.skip("malformed line", f"line {i + 1}: expected a face count after {name}")
            break  # the block structure is lost; nothing after this line can be trusted
        i += 1
        rows = []
        # A count of 0 is followed by one all-zero placeholder line.
        for line in tokens[i : i + max(count, 1)]:
            vals = line.split()
            try:
                nums = [float(v) for v in vals[:10]]
                if len(nums) < 4:
                    raise ValueError
            except ValueError:
                skips.skip("malformed line", f"{name}: bad face line {line!r}")
                continue
            if count and not (skip_invalid and len(nums) >= 8 and nums[7] == 1):
                rows.append(nums[:4])
        i += max(count, 1)
        entries.append((name, np.asarray(rows, dtype=np.float32).reshape(-1, 4)))
    return _to_samples(entries, images_dir, skips, str(gt_file))


def read_wider_mat(
    gt_dir: str | Path, images_dir: str | Path, setting: str | None = None
) -> list[FaceSample]:
    """Read ``wider_face_val.mat`` from ``gt_dir`` (optionally only the faces of one setting)."""
    if setting is not None and setting not in SETTINGS:
        raise DatasetError(f"unknown WIDER setting {setting!r} (use one of {', '.join(SETTINGS)})")
    gt = read_mats(gt_dir, (setting,) if setting else ())
    entries = [
        (img.relpath, (img.boxes[img.keep[setting]] if setting else img.boxes).astype(np.float32))
        for img in gt.images
    ]
    return _to_samples(entries, Path(images_dir), SkipCounter(Path(gt_dir) / GT_FILES["face"]), str(gt_dir))


def read_wider(root: str | Path, split: str = "val") -> list[FaceSample]:
    """The WIDER ``split`` under ``root``: ``.mat`` ground truth if present, else the bbx_gt ``.txt``."""
    root = Path(root)
    images = find_wider_images(root, split)
    if split == "val" and (root / "ground_truth" / "wider_face_val.mat").is_file():
        return read_wider_mat(root / "ground_truth", images)
    txt = root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
    if txt.is_file():
        return read_wider_bbx_txt(txt, images)
    raise DatasetError(f"no WIDER ground truth (ground_truth/*.mat or {txt.relative_to(root)}) under {root}")


def _to_samples(
    entries: list[tuple[str, np.ndarray]], images_dir: Path, skips: SkipCounter, source: str
) -> list[FaceSample]:
    samples = []
    for rel, xywh in entries:
        if len(xywh) == 0:
            continue  # images without (valid) faces carry nothing to match; not an error
        path = images_dir / rel
        size = image_size(path)
        if size is None:
            skips.skip("missing image", f"cannot open {path}")
            continue
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        positive = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
        xyxy, keep = validate_boxes(xyxy, size)
        for _ in range(int((~positive).sum())):
            skips.skip("empty box", f"{rel}: box with zero width or height")
        for _ in range(int((positive & ~keep).sum())):
            skips.skip("box outside the image", f"{rel}: box outside the {size[0]}x{size[1]} image")
        keep &= positive
        if keep.any():
            ldm = np.full((int(keep.sum()), 2 * NUM_LANDMARKS), -1.0, dtype=np.float32)
            samples.append(FaceSample(image=path, boxes=xyxy[keep].astype(np.float32), landmarks=ldm))
    skips.report()
    if not samples:
        raise DatasetError(f"{source} yields no usable image under {images_dir}")
    return samples


# ----------------------------------------------------------------------------- the official .mat files


@dataclass(frozen=True)
class WiderImage:
    """One val image: its face boxes ``(G, 4)`` as ``x, y, w, h`` pixels and, per setting, the
    0-based indices of the faces that setting keeps (the others are ignored)."""

    event: str
    name: str
    boxes: np.ndarray
    keep: Mapping[str, np.ndarray]

    @property
    def relpath(self) -> str:
        """``<event>/<name>.jpg``, relative to ``WIDER_val/images``."""
        return f"{self.event}/{self.name}.jpg"


def event_number(event: str) -> int:
    """``"3--Riot"`` -> 3."""
    head = event.split("--", 1)[0]
    if not head.isdigit():
        raise DatasetError(f"WIDER event folder {event!r} does not start with '<number>--'")
    return int(head)


@dataclass(frozen=True)
class WiderGroundTruth:
    """The official val ground truth, images in ``.mat`` order (event by event)."""

    images: tuple[WiderImage, ...]

    def __len__(self) -> int:
        return len(self.images)

    def head(self, count: int | None) -> WiderGroundTruth:
        """The first ``count`` images (all when ``None``): evaluation then counts only their faces."""
        return self if count is None else WiderGroundTruth(self.images[: max(count, 0)])

    def only_events(self, events: Iterable[int] | None) -> WiderGroundTruth:
        """The images of the given event numbers (``0`` = ``0--Parade``); all when ``None``.

        How a held-out split is scored without the images a model was trained on."""
        if events is None:
            return self
        wanted = {int(e) for e in events}
        return WiderGroundTruth(tuple(i for i in self.images if event_number(i.event) in wanted))

    def faces(self, setting: str) -> int:
        return sum(len(img.keep[setting]) for img in self.images)


def _mat_cells(mat: dict, key: str, path: Path) -> np.ndarray:
    if key not in mat:
        raise DatasetError(f"{path}: no '{key}' entry (not an official WIDER FACE evaluation .mat)")
    return mat[key]


def _load_mat(path: Path) -> dict:
    from scipy.io import loadmat  # scipy is a trainer dependency; import late to keep start-up fast

    if not path.is_file():
        raise DatasetError(f"WIDER FACE ground truth file not found: {path}")
    try:
        return loadmat(str(path))
    except Exception as exc:  # scipy raises ValueError, MatReadError, OSError... with long messages
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatasetError(f"cannot read WIDER FACE ground truth {path}: {reason}") from exc


def load_ground_truth(gt_dir: str | Path) -> WiderGroundTruth:
    """Read the four official ``.mat`` files from ``gt_dir`` (what the evaluation scores against).

    Raises :class:`DatasetError` (one line) when a file is missing, unreadable or malformed.
    """
    return read_mats(gt_dir, SETTINGS)


def read_mats(gt_dir: str | Path, settings: tuple[str, ...]) -> WiderGroundTruth:
    """``wider_face_val.mat`` (every face box) and the keep-lists of ``settings`` from ``gt_dir``."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise DatasetError(f"WIDER FACE ground-truth folder not found: {gt_dir}")
    face_path = gt_dir / GT_FILES["face"]
    face = _load_mat(face_path)
    events = _mat_cells(face, "event_list", face_path)
    files = _mat_cells(face, "file_list", face_path)
    boxes = _mat_cells(face, "face_bbx_list", face_path)
    keeps = {
        s: _mat_cells(_load_mat(gt_dir / GT_FILES[s]), "gt_list", gt_dir / GT_FILES[s]) for s in settings
    }
    if not (len(events) == len(files) == len(boxes)) or any(len(k) != len(events) for k in keeps.values()):
        raise DatasetError(f"{gt_dir}: the .mat files disagree on the number of events")
    images: list[WiderImage] = []
    try:
        for i in range(len(events)):
            event = str(events[i][0][0])
            names = files[i][0]
            for j in range(len(names)):
                face_boxes = np.asarray(boxes[i][0][j][0], dtype=np.float64).reshape(-1, 4)
                keep = {
                    # 1-based indices in the files; uint8 there, so widen before subtracting
                    s: np.asarray(keeps[s][i][0][j][0], dtype=np.int64).reshape(-1) - 1
                    for s in settings
                }
                for s, k in keep.items():
                    if k.size and (k.min() < 0 or k.max() >= len(face_boxes)):
                        raise DatasetError(
                            f"{gt_dir}: {GT_FILES[s]} keeps a face index out of range for "
                            f"{event}/{names[j][0][0]}"
                        )
                images.append(WiderImage(event, str(names[j][0][0]), face_boxes, keep))
    except (IndexError, TypeError, ValueError) as exc:
        raise DatasetError(f"{gt_dir}: malformed WIDER FACE ground truth ({exc})") from exc
    return WiderGroundTruth(tuple(images))


def locate_wider_val(root: str | Path) -> tuple[Path, Path]:
    """``root`` -> (``root/WIDER_val/images``, ``root/ground_truth``), checked to exist."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"WIDER FACE val folder not found: {root}")
    images, gt = root / "WIDER_val" / "images", root / "ground_truth"
    for p in (images, gt):
        if not p.is_dir():
            raise DatasetError(
                f"{root}: expected WIDER_val/images/<event>/<name>.jpg and ground_truth/*.mat, missing {p}"
            )
    return images, gt
