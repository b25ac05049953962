"""Peer face detectors, each fed and decoded the way its authors do (facts from ../shared/README.md).

Every peer exposes the same two calls so the comparison treats them alike:
- ``detect(image_bgr) -> (boxes_px (N,4) x1y1x2y2, scores (N,))`` at the image's own size (accuracy);
- ``session_input(w, h) -> dict`` a ready feed for one inference at w x h, and ``infer(feed)`` (latency).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx

from edge.anchors import decode_boxes, nms, prior_boxes

STRIDES = (8, 16, 32)


def _pad32(image: np.ndarray) -> np.ndarray:
    """Zero-pad bottom/right to multiples of 32 (boxes are unaffected)."""
    h, w = image.shape[:2]
    ph, pw = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
    if (ph, pw) == (h, w):
        return image
    out = np.zeros((ph, pw, 3), dtype=image.dtype)
    out[:h, :w] = image
    return out


def _nchw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)


def _grid(h: int, w: int, stride: int, per_cell: int) -> np.ndarray:
    """Cell origins (x*s, y*s), row-major, each repeated ``per_cell`` times."""
    ys, xs = np.mgrid[0 : math.ceil(h / stride), 0 : math.ceil(w / stride)]
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32) * stride
    return np.repeat(pts, per_cell, axis=0)


@dataclass
class Peer:
    name: str
    path: Path
    score_threshold: float
    nms_threshold: float
    fixed_size: tuple[int, int] | None = None  # (w, h) when the graph takes one size only
    plus_one: float = 1.0  # NMS area convention: +1 pixel (insightface, RetinaFace) or 0 (OpenCV)
    session: object | None = None

    @property
    def parameters(self) -> int:
        # lazy: the trainer package pulls in torch, which an inference (memory) probe must not pay for
        from trainer.export.metadata import parameter_count

        return parameter_count(onnx.load(str(self.path)))

    def open(self, backend: str = "onnxruntime", threads: int = 0) -> Peer:
        self.session = open_session(self.path, backend, threads, f32=True)
        return self

    def infer(self, feed: np.ndarray) -> list[np.ndarray]:
        return self.session(feed)  # type: ignore[misc]

    def prepare(self, image: np.ndarray) -> np.ndarray:  # pragma: no cover - per peer
        raise NotImplementedError

    def decode(
        self, outs: list[np.ndarray], w: int, h: int, in_w: int, in_h: int
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def session_input(self, w: int, h: int) -> np.ndarray:
        rng = np.random.default_rng(0)
        return self.prepare(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        feed = self.prepare(image)
        boxes, scores = self.decode(self.infer(feed), w, h, feed.shape[3], feed.shape[2])
        keep = scores > self.score_threshold
        boxes, scores = boxes[keep], scores[keep]
        idx = nms(boxes, scores, self.nms_threshold, plus_one=self.plus_one)
        return boxes[idx], scores[idx]


class RetinaFacePeer(Peer):
    def prepare(self, image: np.ndarray) -> np.ndarray:
        return _nchw(image.astype(np.float32) - np.array([104, 117, 123], np.float32))

    def decode(self, outs, w, h, in_w, in_h):
        loc, conf = outs[0][0], outs[1][0]
        boxes = decode_boxes(loc, prior_boxes(in_w, in_h)) * np.array([in_w, in_h, in_w, in_h])
        return boxes, conf[:, 1]


class YuNetPeer(Peer):
    def prepare(self, image: np.ndarray) -> np.ndarray:
        if self.fixed_size:
            image = cv2.resize(image, self.fixed_size)
        return _nchw(_pad32(image))

    def decode(self, outs, w, h, in_w, in_h):
        n = len(STRIDES)
        boxes, scores = [], []
        for i, s in enumerate(STRIDES):
            cls, obj, bbox = outs[i][0, :, 0], outs[n + i][0, :, 0], outs[2 * n + i][0]
            pts = _grid(in_h, in_w, s, 1)
            centre = pts + bbox[:, :2] * s
            size = np.exp(bbox[:, 2:]) * s
            boxes.append(np.concatenate([centre - size / 2, centre + size / 2], axis=1))
            # OpenCV's FaceDetectorYN (the reference decoder) scores sqrt(cls * obj), thresholds that
            # and runs NMSBoxes without the +1: this reproduces the reference AP to 0.02.
            scores.append(np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1)))
        out = np.concatenate(boxes)
        if self.fixed_size:  # back from the resized input to the image
            out = out * np.array([w / self.fixed_size[0], h / self.fixed_size[1]] * 2)
        return out, np.concatenate(scores)


class SCRFDPeer(Peer):
    def prepare(self, image: np.ndarray) -> np.ndarray:
        rgb = cv2.cvtColor(_pad32(image), cv2.COLOR_BGR2RGB).astype(np.float32)
        return _nchw((rgb - 127.5) / 128.0)

    def decode(self, outs, w, h, in_w, in_h):
        n = len(STRIDES)
        boxes, scores = [], []
        for i, s in enumerate(STRIDES):
            score, dist = outs[i][0, :, 0], outs[n + i][0] * s
            centre = _grid(in_h, in_w, s, 2)
            boxes.append(np.concatenate([centre - dist[:, :2], centre + dist[:, 2:]], axis=1))
            scores.append(score)
        return np.concatenate(boxes), np.concatenate(scores)


class ULFDPeer(Peer):
    def prepare(self, image: np.ndarray) -> np.ndarray:
        rgb = cv2.cvtColor(cv2.resize(image, (320, 240)), cv2.COLOR_BGR2RGB).astype(np.float32)
        return _nchw((rgb - 127.0) / 128.0)

    def session_input(self, w: int, h: int) -> np.ndarray:
        return super().session_input(320, 240)  # the graph takes 320x240 only

    def decode(self, outs, w, h, in_w, in_h):
        scores, boxes = outs[0][0, :, 1], outs[1][0]
        return boxes * np.array([w, h, w, h]), scores

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes, scores = super().detect(image)
        return boxes[:400], scores[:400]  # published setting: top 400 after NMS


def open_session(path: Path, backend: str, threads: int, f32: bool = True):
    """A callable ``feed -> outputs`` on ONNX Runtime or OpenVINO with a fixed thread count (0 = all).

    The settings are the edge's (``edge/backends.py``) so that every model is timed the way the device
    runs Nano-B: ORT sequential, one inter-op thread, no spinning; OpenVINO with the LATENCY hint.
    ``f32`` pins OpenVINO's INFERENCE_PRECISION_HINT to f32: on CPUs with bf16 (AMX/AVX-512 BF16)
    OpenVINO otherwise runs FP32 models in bf16, which is faster but no longer the model that was
    evaluated.
    """
    if backend == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = max(0, threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda feed: sess.run(None, {name: feed})
    if backend != "openvino":
        raise ValueError(f"unknown backend {backend!r}; choose onnxruntime or openvino")
    import openvino as ov

    core = ov.Core()
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = core.compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()

    def run(feed: np.ndarray) -> list[np.ndarray]:
        res = request.infer({0: feed})
        return [res[o] for o in compiled.outputs]

    return run


def peers(root: Path) -> list[Peer]:
    """The peers in ``root`` (../shared/weights/peers), with their published test settings."""
    table = [
        YuNetPeer("YuNet-n", root / "yunet_n_dynamic.onnx", 0.02, 0.45, plus_one=0.0),
        SCRFDPeer("SCRFD-0.5GF", root / "scrfd_500m_bnkps.onnx", 0.02, 0.45),
        RetinaFacePeer("RetinaFace-mnet0.25", root / "retinaface_mbnet0.25.onnx", 0.02, 0.4),
        ULFDPeer("ULFD-RFB-320", root / "version-RFB-320.onnx", 0.1, 0.3, fixed_size=(320, 240)),
    ]
    return [p for p in table if p.path.exists()]
