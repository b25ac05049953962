"""``featherface-edge bench``: frames per second and latency of the real detect pipeline.

Frames come from a real source (file, folder, camera, stream or synthetic) and go through
``FaceDetector.detect`` exactly as in the daemon: preprocess, inference, decode, NMS, ROI.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.camera import IMAGE_SUFFIXES, SourceConfig
from edge.detector import FaceDetector
from edge.errors import ConfigError, SourceError
from edge.reconnect import open_source


@dataclass(frozen=True)
class BenchResult:
    """Latencies in milliseconds; ``fps`` counts frames through read + detect (the pipeline),
    ``detect_fps`` is ``1000 / mean detect latency`` (what a faster camera could reach)."""

    model: str
    runtime: str
    threads: int
    source: str
    frame_w: int
    frame_h: int
    frames: int
    fps: float
    detect_fps: float
    latency_ms: dict[str, float]
    infer_ms: dict[str, float]
    faces_per_frame: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def source_config_for(spec: str, width: int = 640, height: int = 480) -> SourceConfig:
    """``--source`` text -> a source config: a folder (images), an image file (synthetic panning
    over it), a video file, a device index or ``/dev/video*``, a URL, or ``synthetic``."""
    if spec == "synthetic":
        return SourceConfig(type="synthetic", path="", width=width, height=height, name="synthetic")
    if "://" in spec:
        return SourceConfig(type="url", path=spec, name="url")
    if spec.isdigit() or spec.startswith("/dev/video"):
        return SourceConfig(type="opencv", path=spec, width=width, height=height)
    path = Path(spec)
    if path.is_dir():
        return SourceConfig(type="images", path=spec, loop=True)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            import cv2

            image = cv2.imread(spec, cv2.IMREAD_COLOR)
            if image is None:
                raise SourceError(f"--source {spec} is not a readable image")
            h, w = image.shape[:2]
            return SourceConfig(type="synthetic", path=spec, width=w, height=h)
        return SourceConfig(type="video", path=spec, loop=True)
    raise ConfigError(
        f"--source {spec!r} is not a folder, image, video file, device index, /dev/video*, URL or 'synthetic'"
    )


def _percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(arr, 50)), 2),
        "p90": round(float(np.percentile(arr, 90)), 2),
        "p99": round(float(np.percentile(arr, 99)), 2),
        "mean": round(float(arr.mean()), 2),
    }


def run_bench(
    detector: FaceDetector,
    source_cfg: SourceConfig,
    frames: int = 100,
    warmup: int = 5,
    threads: int = 0,
    read_timeout_s: float | None = None,
) -> BenchResult:
    """Time ``frames`` frames (after ``warmup`` untimed ones) from ``source_cfg`` through ``detector``.

    A read that waits longer than ``read_timeout_s`` (default: the source's own) is an error.
    """
    read_timeout_s = read_timeout_s or source_cfg.read_timeout_s
    if frames < 1:
        raise ConfigError("--frames must be >= 1")
    source = open_source(source_cfg, reconnect=False)
    latencies, infers, faces = [], [], 0
    width = height = 0
    try:
        done = -warmup
        started = time.perf_counter()
        while done < frames:
            frame = source.read(read_timeout_s)
            if frame is None:
                if source.ended:
                    break
                raise SourceError(f"{source.name}: no frame within {read_timeout_s:g} s")
            t0 = time.perf_counter()
            dets = detector.detect(frame.image)
            t1 = time.perf_counter()
            done += 1
            if done == 0:
                started = time.perf_counter()
            if done > 0:
                latencies.append((t1 - t0) * 1e3)
                infers.append(detector.last_timings_ms.get("infer", 0.0))
                faces += len(dets)
                width, height = frame.width, frame.height
        elapsed = time.perf_counter() - started
    finally:
        source.close()
    if not latencies:
        raise SourceError(f"{source_cfg.name}: ended before any timed frame (warm-up {warmup})")
    lat = _percentiles(latencies)
    return BenchResult(
        model=str(detector.model.path),
        runtime=detector.runtime,
        threads=threads or (os.cpu_count() or 1),
        source=source_cfg.name,
        frame_w=width,
        frame_h=height,
        frames=len(latencies),
        fps=round(len(latencies) / elapsed, 2),
        detect_fps=round(1000.0 / lat["mean"], 2),
        latency_ms=lat,
        infer_ms=_percentiles(infers),
        faces_per_frame=round(faces / len(latencies), 2),
    )
