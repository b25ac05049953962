"""The Raspberry Pi CSI camera (picamera2), the one source behind a hardware-only library."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from edge.camera import ThreadedSource
from edge.errors import SourceError


class Picamera2Source(ThreadedSource):
    """The Raspberry Pi CSI camera through picamera2 (imported on open: only Pis have it).

    Configures a ``main`` stream (RGB888 at width x height; picamera2's "RGB888" is B,G,R in memory,
    i.e. what OpenCV calls BGR) and a ``lores`` stream (YUV420, converted to BGR here). ``path`` is
    the camera number.
    """

    def _connect(self) -> Any:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise SourceError(
                f"{self.name}: picamera2 is not importable (on Raspberry Pi OS: apt install "
                "python3-picamera2, and create the venv with --system-site-packages)"
            ) from None
        cfg = self.cfg
        try:
            cam = Picamera2(int(cfg.path) if cfg.path.isdigit() else 0)
        except (IndexError, RuntimeError) as exc:
            raise SourceError(f"{self.name}: no Pi camera {cfg.path} ({exc})") from None
        controls = {"FrameRate": float(cfg.fps)} if cfg.fps else {}
        try:
            config = cam.create_video_configuration(
                main={"size": (cfg.width, cfg.height), "format": "RGB888"},
                lores={"size": (cfg.lores_width, cfg.lores_height), "format": "YUV420"},
                buffer_count=4,
                controls=controls,
            )
            cam.configure(config)
            cam.start()
        except Exception:
            cam.close()  # else every reopen finds the camera still held by this attempt
            raise
        return cam

    def _grab(self, cam: Any) -> np.ndarray | None:
        array = cam.capture_array(self.cfg.stream)
        return picamera_to_bgr(array, self.cfg.lores_width, self.cfg.lores_height)

    def _release(self, cam: Any) -> None:
        try:
            cam.stop()
        finally:
            cam.close()


def picamera_to_bgr(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """A picamera2 array as BGR: YUV420 planes (2-D, ``height * 1.5`` rows, maybe stride-padded),
    XBGR8888/XRGB8888 (4 channels, B,G,R,X in memory) or RGB888 (already B,G,R)."""
    if array.ndim == 2:
        bgr = cv2.cvtColor(array, cv2.COLOR_YUV2BGR_I420)
        return np.ascontiguousarray(bgr[:height, :width])
    if array.shape[2] == 4:
        return np.ascontiguousarray(array[:, :, :3])
    return array
