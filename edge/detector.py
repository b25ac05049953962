"""The face detector: contract model + runtime -> NMS-filtered :class:`Detection` records.

Everything about the input comes from the model's metadata (DESIGN §1): size, layout, colour
order, mean/std, priors, output names, whether the graph already applies softmax. A fixed-size
model gets the frame letterboxed (aspect kept, padded bottom/right with the mean colour, which is
zero after normalisation); a dynamic model gets the frame at its own size (optionally capped by
``max_side``), padded up to a multiple of the largest prior stride so every feature map divides
evenly. Boxes and landmarks come back normalised to the **original** frame (0..1).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.anchors import decode_boxes, decode_landmarks, nms, prior_boxes
from edge.backends import BACKENDS, Backend, check_providers, open_backend
from edge.contract import ModelMeta
from edge.errors import ConfigError, ModelError
from edge.model import ModelFile, read_model
from edge.records import Detection
from edge.tables import build_table

Polygon = tuple[tuple[float, float], ...]

# Keep at most this many candidates (by score) before NMS: a low threshold on a large frame can pass
# tens of thousands of anchors, and greedy NMS is quadratic in what it is given.
PRE_NMS_TOP_K = 2000


@dataclass(frozen=True)
class DetectorConfig:
    """The ``[detector]`` table. ``model`` empty = the bundled default; ``threads`` 0 = runtime default.

    ``roi`` is a polygon of ``[x, y]`` points normalised to the frame (0..1); a detection is kept
    when its box centre lies inside. ``max_side`` caps the longer side of the frame fed to a dynamic
    model (0 = full frame size); fixed-size models ignore it. ``providers`` are ONNX Runtime execution
    providers in order of preference (``["tensorrt", "cuda"]`` on a Jetson; empty = the CPU), and
    ``engine_cache`` is where TensorRT keeps its built engines (the daemon's default:
    ``<device.state_dir>/trt-engines``).
    """

    model: str = ""
    backend: str = "auto"
    threads: int = 2
    score_threshold: float = 0.6
    nms_threshold: float = 0.4
    roi: Polygon = ()
    max_side: int = 0
    providers: tuple[str, ...] = ()
    engine_cache: str = ""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"detector.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        object.__setattr__(self, "providers", check_providers(self.backend, self.providers))
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ConfigError(f"detector.score_threshold must be in 0..1, got {self.score_threshold}")
        if not 0.0 < self.nms_threshold <= 1.0:
            raise ConfigError(f"detector.nms_threshold must be in (0, 1], got {self.nms_threshold}")
        if self.threads < 0:
            raise ConfigError(f"detector.threads must be >= 0, got {self.threads}")
        if self.max_side < 0:
            raise ConfigError(f"detector.max_side must be >= 0, got {self.max_side}")
        object.__setattr__(self, "roi", normalise_roi(self.roi, "detector.roi"))
        if self.model and not Path(self.model).exists():
            raise ConfigError(f"detector.model: file {self.model} does not exist")

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> DetectorConfig:
        return build_table(cls, table, "detector")


def normalise_roi(roi: Sequence[Sequence[float]] | None, key: str = "roi") -> Polygon:
    """Validate a polygon of normalised ``(x, y)`` points (>= 3, each in 0..1); ``()`` = no ROI."""
    if not roi:
        return ()
    try:
        pts = tuple((float(p[0]), float(p[1])) for p in roi if len(p) == 2) if roi else ()
    except (TypeError, ValueError, IndexError):
        raise ConfigError(f"{key} must be a list of [x, y] pairs") from None
    if len(pts) != len(roi) or len(pts) < 3:
        raise ConfigError(
            f"{key} must be a list of at least 3 [x, y] pairs, got {json.dumps(roi, default=str)}"
        )
    if any(not (0.0 <= v <= 1.0) for p in pts for v in p):
        raise ConfigError(f"{key} points must be normalised to the frame (0..1)")
    return pts


def points_in_polygon(points: np.ndarray, polygon: Polygon) -> np.ndarray:
    """Even-odd rule for ``(N, 2)`` points against a polygon; returns an ``(N,)`` bool mask."""
    x, y = points[:, 0], points[:, 1]
    inside = np.zeros(len(points), dtype=bool)
    n = len(polygon)
    for i in range(n):
        (x1, y1), (x2, y2) = polygon[i], polygon[(i - 1) % n]
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = (x2 - x1) * (y - y1) / (y2 - y1) + x1
        inside ^= crosses & (x < x_at)
    return inside


@dataclass
class _Prepared:
    tensor: np.ndarray
    net_w: int  # the size the priors are built for (the padded network input)
    net_h: int
    scale_x: float  # network pixels per original pixel
    scale_y: float


@dataclass
class FaceDetector:
    """A loaded model on one runtime. ``detect`` is not thread-safe (one request object per detector)."""

    model: ModelFile
    backend: Backend
    score_threshold: float = 0.6
    nms_threshold: float = 0.4
    roi: Polygon = ()
    max_side: int = 0
    last_timings_ms: dict[str, float] = field(default_factory=dict)
    _priors: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def meta(self) -> ModelMeta:
        return self.model.meta

    @property
    def runtime(self) -> str:
        return self.backend.runtime

    @property
    def sha256(self) -> str:
        return self.model.sha256

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """Faces in an ``HxWx3`` uint8 BGR image, highest score first, normalised to the image."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.size == 0:
            raise ValueError(f"expected an HxWx3 BGR image, got shape {image_bgr.shape}")
        t0 = time.perf_counter()
        prep = preprocess(image_bgr, self.meta, self.max_side)
        t1 = time.perf_counter()
        outputs = self.backend.infer(prep.tensor)
        t2 = time.perf_counter()
        dets = self._postprocess(outputs, prep, image_bgr.shape[1], image_bgr.shape[0])
        t3 = time.perf_counter()
        self.last_timings_ms = {
            "preprocess": (t1 - t0) * 1e3,
            "infer": (t2 - t1) * 1e3,
            "postprocess": (t3 - t2) * 1e3,
        }
        return dets

    def _postprocess(
        self, outputs: dict[str, np.ndarray], prep: _Prepared, w: int, h: int
    ) -> list[Detection]:
        meta = self.meta
        key = (prep.net_w, prep.net_h)
        if key not in self._priors:
            p = meta.priors
            self._priors[key] = prior_boxes(prep.net_w, prep.net_h, p.min_sizes, p.steps, p.clip)
        priors = self._priors[key]
        loc = outputs[meta.outputs["loc"]].reshape(-1, 4)
        conf = outputs[meta.outputs["conf"]]
        conf = conf.reshape(-1, conf.shape[-1])
        if len(loc) != len(priors) or len(conf) != len(priors):
            raise ModelError(
                f"{self.model.path}: the model produced {len(loc)} anchors for a {prep.net_w}x{prep.net_h} "
                f"input but its metadata priors give {len(priors)}"
            )
        if not meta.conf_softmax:
            z = conf - conf.max(axis=1, keepdims=True)
            e = np.exp(z)
            conf = e / e.sum(axis=1, keepdims=True)
        scores = conf[:, 1] if conf.shape[1] > 1 else conf[:, 0]
        idx = np.flatnonzero(scores > self.score_threshold)
        if len(idx) > PRE_NMS_TOP_K:
            idx = idx[np.argsort(-scores[idx], kind="stable")[:PRE_NMS_TOP_K]]
        if len(idx) == 0:
            return []
        v = meta.priors.variances
        # Normalised-to-network -> normalised-to-frame (undo letterbox/stride padding and scaling).
        sx, sy = prep.net_w / prep.scale_x / w, prep.net_h / prep.scale_y / h
        boxes = decode_boxes(loc[idx], priors[idx], v) * np.array([sx, sy, sx, sy], dtype=np.float32)
        boxes = np.clip(boxes, 0.0, 1.0)
        # Drop boxes that lie in the padding (empty once clipped) and, before NMS so that a face
        # outside the region can never suppress one inside it, boxes centred outside the ROI.
        keep_mask = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if self.roi:
            keep_mask &= points_in_polygon((boxes[:, :2] + boxes[:, 2:]) / 2, self.roi)
        idx, boxes = idx[keep_mask], boxes[keep_mask]
        # IoU is invariant under per-axis scaling, so NMS in frame coordinates equals NMS in network ones.
        local = nms(boxes, scores[idx], self.nms_threshold)
        keep, boxes = idx[local], boxes[local]
        kept_scores = scores[keep]
        ldm_name = meta.outputs.get("landmarks")
        lms = None
        if ldm_name and ldm_name in outputs and meta.num_landmarks > 0 and len(keep):
            raw = outputs[ldm_name].reshape(len(priors), -1)[keep]
            lms = decode_landmarks(raw, priors[keep], v).reshape(len(keep), -1, 2)
            # Clipped like the boxes: a half-visible face's eye off-frame is reported at the edge.
            lms = np.clip(lms * np.array([sx, sy], dtype=np.float32), 0.0, 1.0)
        dets = []
        for i in range(len(boxes)):
            b = boxes[i]
            pts = tuple((float(x), float(y)) for x, y in lms[i]) if lms is not None else ()
            dets.append(
                Detection(
                    box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                    score=float(kept_scores[i]),
                    landmarks=pts,
                )
            )
        return dets


def network_size(meta: ModelMeta, width: int, height: int, max_side: int = 0) -> tuple[int, int, float]:
    """``(net_w, net_h, scale)`` for a ``width`` x ``height`` frame: the padded input size the
    priors are built for, and network pixels per frame pixel."""
    if not meta.input.dynamic:
        scale = min(meta.input.width / width, meta.input.height / height)
        return meta.input.width, meta.input.height, scale
    scale = 1.0
    if max_side and max(width, height) > max_side:
        scale = max_side / max(width, height)
    stride = max(meta.priors.steps)
    sw, sh = max(1, round(width * scale)), max(1, round(height * scale))
    return math.ceil(sw / stride) * stride, math.ceil(sh / stride) * stride, scale


def preprocess(image_bgr: np.ndarray, meta: ModelMeta, max_side: int = 0) -> _Prepared:
    """Resize/letterbox, colour order, ``(x - mean) / std``, layout: the network input batch of one."""
    h, w = image_bgr.shape[:2]
    net_w, net_h, scale = network_size(meta, w, h, max_side)
    if meta.input.dynamic:
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    else:
        sw, sh = min(net_w, max(1, round(w * scale))), min(net_h, max(1, round(h * scale)))
    img = image_bgr if (sw, sh) == (w, h) else cv2.resize(image_bgr, (sw, sh), interpolation=cv2.INTER_LINEAR)
    layout = meta.input.layout.upper()
    if layout not in ("NCHW", "NHWC"):
        raise ModelError(f"model input layout {meta.input.layout!r} is not NCHW or NHWC")
    std = meta.input.std
    # blobFromImage does swap, mean subtraction, scaling and HWC->CHW in one optimised pass (3x
    # faster than NumPy on a Pi-sized frame); its mean is in the order *after* the swap, i.e. the
    # model's, which is how the contract states it.
    blob: np.ndarray = np.asarray(
        cv2.dnn.blobFromImage(
            img,
            scalefactor=1.0 / std[0] if len(set(std)) == 1 else 1.0,
            mean=tuple(meta.input.mean),
            swapRB=meta.input.color == "RGB",
            crop=False,
        ),
        dtype=np.float32,
    )
    if len(set(std)) > 1:
        blob = blob / np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    if (sw, sh) == (net_w, net_h):
        tensor = blob
    else:  # letterbox / stride padding at bottom-right: zeros, i.e. the mean colour, normalised
        tensor = np.zeros((1, 3, net_h, net_w), dtype=np.float32)
        tensor[:, :, :sh, :sw] = blob
    if layout == "NHWC":
        tensor = np.ascontiguousarray(tensor.transpose(0, 2, 3, 1))
    # Rounding to whole pixels makes the two axes' scales differ slightly; keep both exact.
    return _Prepared(tensor, net_w, net_h, sw / w, sh / h)


def load_detector(
    path: str | Path | None = None,
    backend: str = "auto",
    threads: int = 2,
    score_threshold: float = 0.6,
    nms_threshold: float = 0.4,
    roi: Sequence[Sequence[float]] | None = None,
    max_side: int = 0,
    providers: Sequence[str] = (),
    engine_cache: str = "",
) -> FaceDetector:
    """Read + validate ``path`` (empty = bundled default), load it on ``backend`` and warm it up."""
    cfg = DetectorConfig(
        model=str(path or ""),
        backend=backend,
        threads=threads,
        score_threshold=score_threshold,
        nms_threshold=nms_threshold,
        roi=normalise_roi(roi, "roi"),
        max_side=max_side,
        providers=(providers,) if isinstance(providers, str) else tuple(providers),
        engine_cache=engine_cache,
    )
    return detector_from_config(cfg)


def detector_from_config(cfg: DetectorConfig) -> FaceDetector:
    """Build a warmed-up :class:`FaceDetector` from the ``[detector]`` table."""
    model = read_model(cfg.model or None)
    meta = model.meta
    warm = preprocess(np.zeros((meta.input.height, meta.input.width, 3), np.uint8), meta, cfg.max_side)
    be = open_backend(
        model, cfg.backend, cfg.threads, warm.tensor, cfg.providers, cfg.engine_cache, cfg.max_side
    )
    return FaceDetector(
        model=model,
        backend=be,
        score_threshold=cfg.score_threshold,
        nms_threshold=cfg.nms_threshold,
        roi=cfg.roi,
        max_side=cfg.max_side,
    )
