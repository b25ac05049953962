"""WIDER FACE in its official layout as a training / validation source (boxes only, no landmarks).

Layout (as distributed, and as ``../shared/data/wider-val-dev``)::

    ROOT/WIDER_val/images/<event>/<name>.jpg
    ROOT/ground_truth/wider_face_val.mat            (+ wider_{easy,medium,hard}_val.mat)
    ROOT/wider_face_split/wider_face_val_bbx_gt.txt

Either ground-truth file gives the same boxes; ``.mat`` is what the evaluation uses, ``.txt`` needs no
SciPy. The evaluator (trainer/eval) owns the easy/medium/hard protocol; here the setting files only
restrict which faces are kept when asked (``setting="hard"`` keeps every face the hard set scores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.errors import DatasetError
from trainer.data.labels import NUM_LANDMARKS, FaceSample, SkipCounter, image_size, validate_boxes

SETTINGS = ("easy", "medium", "hard")


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
    import scipy.io

    gt_dir, images_dir = Path(gt_dir), Path(images_dir)
    mat_path = gt_dir / "wider_face_val.mat"
    try:
        mat = scipy.io.loadmat(str(mat_path))
        events, files, boxes = mat["event_list"], mat["file_list"], mat["face_bbx_list"]
        keep_lists = None
        if setting is not None:
            if setting not in SETTINGS:
                raise DatasetError(f"unknown WIDER setting {setting!r} (use one of {', '.join(SETTINGS)})")
            keep_lists = scipy.io.loadmat(str(gt_dir / f"wider_{setting}_val.mat"))["gt_list"]
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"cannot read WIDER ground truth in {gt_dir}: {exc}") from exc
    skips = SkipCounter(mat_path)
    entries = []
    for e in range(len(events)):
        event = str(events[e][0][0])
        for j in range(len(files[e][0])):
            name = str(files[e][0][j][0][0])
            b = np.asarray(boxes[e][0][j][0], dtype=np.float32).reshape(-1, 4)
            if keep_lists is not None:
                keep = np.asarray(keep_lists[e][0][j][0], dtype=np.int64).reshape(-1) - 1  # 1-based
                b = b[keep[(keep >= 0) & (keep < len(b))]]
            entries.append((f"{event}/{name}.jpg", b))
    return _to_samples(entries, images_dir, skips, str(mat_path))


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
