"""What the comparison measures: our contract model(s), the peers, and YuNet through OpenCV, behind one
shape so that latency, accuracy and memory treat them alike.

A :class:`Subject` knows how to open a ready-to-time inference for a frame size on a runtime, how to
detect faces on an image at its original size (for WIDER), and what its file costs (parameters, MACs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx

from benchmarks.peers import Peer, open_session, peers

CV2_YUNET = "face_detection_yunet_2023mar.onnx"

# A timed call and the network input shape it runs at, or None where the subject cannot run there.
Timed = tuple[Callable[[], object], tuple[int, ...]]


@dataclass
class Subject:
    """One model in the comparison. ``kind``: ``contract`` (a FeatherFace export), ``peer`` (a
    :class:`Peer`) or ``cv2`` (YuNet via ``cv2.FaceDetectorYN``, OpenCV DNN, pre/post included)."""

    label: str
    kind: str
    path: Path
    nms: float
    int8: bool = False
    peer_name: str = ""

    # ------------------------------------------------------------------ latency

    def timed(self, backend: str, threads: int, image: np.ndarray) -> Timed | None:
        """One inference on ``image`` (already at the frame size), ready to time; None if not applicable."""
        h, w = image.shape[:2]
        if self.kind == "cv2":
            if backend != "opencv":
                return None
            det = yunet_cv2(self.path, w, h)
            pad = (1, 3, math.ceil(h / 32) * 32, math.ceil(w / 32) * 32)

            def run_cv2() -> object:
                cv2.setNumThreads(threads if threads else -1)
                return det.detect(image)

            return run_cv2, pad
        if backend == "opencv" or (backend == "onnxruntime" and self.is_ir):
            return None
        if self.kind == "peer":
            peer = self.peer()
            if peer.fixed_size and peer.fixed_size != (w, h):
                return None
            peer.open(backend, threads)
            feed = peer.prepare(image)
            return (lambda: peer.infer(feed)), feed.shape
        run = open_session(self.path, backend, threads, f32=not self.int8)
        tensor = contract_input(self.path, image)
        return (lambda: run(tensor)), tensor.shape

    @property
    def is_ir(self) -> bool:
        """An OpenVINO IR (``.xml``): timed on OpenVINO only, no ONNX-based accuracy or MACs."""
        return self.path.suffix.lower() == ".xml"

    @property
    def file_bytes(self) -> int:
        """Size on disk (an IR counts its ``.bin`` too)."""
        extra = self.path.with_suffix(".bin") if self.is_ir else None
        return self.path.stat().st_size + (extra.stat().st_size if extra and extra.is_file() else 0)

    # ------------------------------------------------------------------ accuracy

    def detector(self) -> Callable[[np.ndarray], np.ndarray]:
        """``image -> (N, 5)`` rows ``x1, y1, x2, y2, score`` at the image's size, per the published
        test setting (dump threshold 0.02, the subject's NMS), on ONNX Runtime / OpenCV, all threads."""
        if self.kind == "peer":
            peer = self.peer().open("onnxruntime", 0)

            def run_peer(image: np.ndarray) -> np.ndarray:
                boxes, scores = peer.detect(image)
                return np.concatenate([boxes, scores[:, None]], axis=1)

            return run_peer
        if self.kind == "cv2":

            def run_cv2(image: np.ndarray) -> np.ndarray:
                h, w = image.shape[:2]
                faces = yunet_cv2(self.path, w, h).detect(image)[1]
                if faces is None:
                    return np.zeros((0, 5))
                xywh = faces[:, :4].astype(np.float64)
                return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:], faces[:, 14:15]], axis=1)

            return run_cv2
        from trainer.eval.predict import detect, onnx_runner

        runner = onnx_runner(self.path)
        return lambda image: detect(runner, image, None, 0.02, self.nms)[:, :5]

    # ------------------------------------------------------------------ cost

    def parameters(self) -> int:
        """Sum of the floating-point initializer sizes in the file (INT8: the float ones left)."""
        from trainer.export.metadata import parameter_count  # lazy: trainer imports torch

        return parameter_count(onnx.load(str(self.path)))

    def macs(self, w: int, h: int) -> tuple[int, tuple[int, int]] | None:
        """MACs of one ``w`` x ``h`` frame at the input size the subject really runs, or None."""
        from trainer.eval.complexity import count_macs

        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        if self.kind == "cv2" or self.is_ir:
            return None  # cv2: the ONNX graph is fixed 640x640; OpenCV reshapes it at run time
        if self.kind == "peer":
            peer = self.peer()
            if peer.fixed_size and peer.fixed_size != (w, h):
                return None
            shape = peer.prepare(image).shape
        else:
            shape = contract_input(self.path, image).shape
        try:
            return count_macs(onnx.load(str(self.path)), shape[3], shape[2]), (shape[3], shape[2])
        except Exception:
            return None

    def peer(self) -> Peer:
        """A fresh :class:`Peer` (its own session) for this subject."""
        found = [p for p in peers(self.path.parent) if p.name == self.peer_name]
        return found[0]


def contract_input(path: Path, image: np.ndarray) -> np.ndarray:
    """The network input the edge builds for ``image`` from the model's metadata (stride-padded)."""
    from edge.detector import preprocess
    from edge.model import read_model

    return preprocess(image, read_model(path).meta).tensor


def yunet_cv2(path: Path, w: int, h: int):
    """``cv2.FaceDetectorYN`` at ``w`` x ``h``, the published test setting (score 0.02, NMS 0.45)."""
    det = cv2.FaceDetectorYN.create(str(path), "", (w, h), 0.02, 0.45, 5000)
    det.setInputSize((w, h))
    return det


def collect(
    model: Path | None, label: str, int8: Path | None, peer_root: Path, also: Sequence[Path] = ()
) -> list[Subject]:
    """Our model (FP32, then INT8), other contract models (``also``, e.g. the previously shipped file,
    labelled by file stem), then the peers found in ``peer_root``, then YuNet via OpenCV."""
    out: list[Subject] = []
    if model is not None:
        out.append(Subject(label, "contract", model, 0.4))
    if int8 is not None:
        out.append(Subject(f"{label} INT8", "contract", int8, 0.4, int8=True))
    out += [Subject(p.stem, "contract", p, 0.4) for p in also]
    if peer_root.is_dir():
        out += [Subject(p.name, "peer", p.path, p.nms_threshold, peer_name=p.name) for p in peers(peer_root)]
        if (peer_root / CV2_YUNET).is_file():
            out.append(Subject("YuNet-2023mar (cv2)", "cv2", peer_root / CV2_YUNET, 0.45))
    return out
