"""Recall by face size and unmatched detections: where a detector loses faces, in pixels.

WIDER's easy / medium / hard AP mixes face size with false positives; this splits them. For each face
of the ground truth, its size is ``sqrt(w * h)`` in original pixels; a face counts as found at score
threshold ``t`` when a detection scoring at least ``t`` overlaps it with IoU >= 0.5. Detections that
overlap no face with IoU >= 0.3 are counted as unmatched (false positives, or faces WIDER left
unlabelled), binned by their own size: a pruned network's confident strays sit at the sizes whose
anchors it learned worst, which tells which training input lacks background. The command that runs
models on the pipeline's held-out images is :mod:`trainer.pipeline.held_out`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trainer.eval.widerface import box_overlaps

BINS = (0, 10, 16, 24, 32, 48, 64, 128, 256)  # lower edges in pixels; the last bin is open
THRESHOLDS = (0.3, 0.5, 0.7)


@dataclass
class SizeRecall:
    """Counts over images: faces per size bin, faces found per threshold and bin, unmatched detections
    per threshold and bin of their own size."""

    bins: tuple[int, ...] = BINS
    thresholds: tuple[float, ...] = THRESHOLDS
    faces: np.ndarray = field(init=False)
    found: np.ndarray = field(init=False)
    unmatched: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.faces = np.zeros(len(self.bins), dtype=np.int64)
        self.found = np.zeros((len(self.thresholds), len(self.bins)), dtype=np.int64)
        self.unmatched = np.zeros((len(self.thresholds), len(self.bins)), dtype=np.int64)

    def add(self, gt: np.ndarray, dets: np.ndarray) -> None:
        """One image: ``gt`` ``(N, 4)`` corner boxes, ``dets`` ``(M, >=5)`` corner boxes and score."""
        gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
        dets = np.asarray(dets, dtype=np.float64).reshape(len(dets), -1)
        which = self._bin(gt)
        np.add.at(self.faces, which, 1)
        for k, t in enumerate(self.thresholds):
            kept = dets[dets[:, 4] >= t, :4] if len(dets) else np.zeros((0, 4))
            if len(kept) == 0:
                continue
            stray = np.ones(len(kept), dtype=bool)
            if len(gt):
                iou = box_overlaps(gt, kept)
                np.add.at(self.found[k], which[iou.max(axis=1) >= 0.5], 1)
                stray = iou.max(axis=0) < 0.3
            np.add.at(self.unmatched[k], self._bin(kept[stray]), 1)

    def _bin(self, boxes: np.ndarray) -> np.ndarray:
        """Size bin of each corner box (``sqrt(w * h)``, at least one pixel a side)."""
        wh = np.maximum(boxes[:, 2:4] - boxes[:, 0:2], 1.0)
        size = np.sqrt(wh[:, 0] * wh[:, 1])
        return np.clip(np.searchsorted(self.bins, size, side="right") - 1, 0, len(self.bins) - 1)

    def recall(self) -> np.ndarray:
        """``(thresholds, bins)`` recall in percent (NaN where a bin has no face)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100.0 * self.found / self.faces

    def markdown(self, title: str) -> str:
        heads = [f"{lo}–{hi}" for lo, hi in zip(self.bins[:-1], self.bins[1:], strict=True)]
        heads.append(f"≥{self.bins[-1]}")
        lines = [
            f"**{title}**",
            "",
            "| face size px | " + " | ".join(heads) + " | unmatched detections |",
            "|---|" + "---:|" * (len(heads) + 1),
            "| faces | " + " | ".join(str(int(n)) for n in self.faces) + " | |",
        ]
        for k, t in enumerate(self.thresholds):
            row = " | ".join("–" if np.isnan(r) else f"{r:.1f}" for r in self.recall()[k])
            lines.append(f"| recall at score ≥ {t:g} | {row} | {int(self.unmatched[k].sum())} |")
        for k, t in enumerate(self.thresholds):
            row = " | ".join(str(int(n)) for n in self.unmatched[k])
            lines.append(f"| unmatched at score ≥ {t:g}, by their size | {row} | |")
        return "\n".join(lines)
