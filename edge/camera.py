"""Frame sources behind one Protocol (:class:`edge.records.FrameSource`).

Here: ``opencv`` (device index or ``/dev/video*``), ``url`` (RTSP/HTTP through FFmpeg), ``video`` (a
file, optionally looping), ``images`` (a folder), ``synthetic`` (generated frames for tests and demos);
``picamera2`` (the Pi CSI camera) is in :mod:`edge.picamera`, and :mod:`edge.reconnect` maps
``[source] type`` to a class, wraps it in the reconnect policy and opens it (``open_source``).

Every device call (open and grab) runs on a reader thread, so a hung camera or a silent stream can
never block the daemon: ``read(timeout_s)`` returns ``None`` when no frame arrived in time. Live
sources keep only the newest frame (a slow detector sees the present, not a backlog); files and
folders deliver every frame in order.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.errors import ConfigError, SourceError
from edge.records import Frame
from edge.redact import redact_url
from edge.tables import build_table

log = logging.getLogger(__name__)

SOURCE_TYPE_NAMES = ("picamera2", "opencv", "url", "video", "images", "synthetic")  # reconnect.SOURCE_TYPES
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
StatusCallback = Callable[[str, str], None]  # (state "online" | "offline", reason)


@dataclass(frozen=True)
class SourceConfig:
    """The ``[source]`` table (times in seconds).

    ``path``: device index or ``/dev/videoN`` (opencv), camera number (picamera2), URL (url), file
    (video), folder (images), optional background image (synthetic). ``width``/``height``/``fps`` are
    requested from cameras and used by synthetic; ``fps`` also paces video/images/synthetic (0 = as
    fast as they are read). ``stream``: the picamera2 stream the detector sees, ``main`` (RGB888 at
    width x height) or ``lores`` (YUV420 at lores size). ``read_timeout_s`` bounds each read (the
    daemon's loop turns at least that often). ``live`` makes a video, folder or synthetic source a
    stand-in camera (frames at ``fps`` whether read or not, newest kept). ``sequence`` (images): false
    = unrelated photos, each its own scene; true = a frame sequence, tracked like a camera.
    """

    type: str = "opencv"
    path: str = "0"
    name: str = ""
    width: int = 1280
    height: int = 720
    fps: float = 0.0
    loop: bool = False
    sequence: bool = False
    live: bool = False
    frames: int = 0  # synthetic: how many frames before ending (0 = endless)
    stream: str = "main"
    lores_width: int = 320
    lores_height: int = 240
    read_timeout_s: float = 2.0
    open_timeout_s: float = 10.0
    stall_timeout_s: float = 10.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.type not in SOURCE_TYPE_NAMES:
            raise ConfigError(
                f"source.type must be one of {', '.join(sorted(SOURCE_TYPE_NAMES))}, got {self.type!r}"
            )
        if self.width <= 0 or self.height <= 0 or self.lores_width <= 0 or self.lores_height <= 0:
            raise ConfigError("source.width/height/lores_width/lores_height must be positive")
        if self.fps < 0 or self.frames < 0:
            raise ConfigError("source.fps and source.frames must be >= 0")
        if self.stream not in ("main", "lores"):
            raise ConfigError(f"source.stream must be main or lores, got {self.stream!r}")
        for key in ("read_timeout_s", "open_timeout_s", "stall_timeout_s", "reconnect_min_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"source.{key} must be > 0, got {getattr(self, key)}")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ConfigError("source.reconnect_max_s must be >= source.reconnect_min_s")
        # A file or folder is part of the config, not a device that may come back: check it now, so
        # check-config refuses what run would refuse, before anything is published.
        if self.type in ("video", "images") and not Path(self.path).exists():
            raise ConfigError(f"source.path {self.path!r} does not exist (source.type = {self.type!r})")
        if not self.name:  # for logs and status reasons: never with URL credentials in it
            name = f"{self.type}:{redact_url(self.path)}" if self.path else self.type
            object.__setattr__(self, "name", name)

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> SourceConfig:
        return build_table(cls, table, "source")


class ThreadedSource:
    """Base of every source: subclasses implement ``_connect``/``_grab``/``_release``, which run on
    a reader thread with their own handle, so an abandoned (hung) reader never touches a new one.

    ``_grab`` returns a BGR ``HxWx3`` uint8 image, or ``None`` at end of stream; it raises (any
    exception) when the device failed. ``live`` sources keep only the newest frame.
    """

    live = True

    def __init__(self, cfg: SourceConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        # Cameras are live by nature; a file, folder or synthetic source can be made live (cfg.live) to
        # stand in for one, e.g. when measuring capture-to-event latency without a camera.
        self.live = type(self).live or cfg.live
        self._reader: _Reader | None = None
        self._frame_id = 0
        self._ended = False
        self.dropped_frames = 0  # live frames replaced before anyone read them (detector too slow)

    # -- subclass hooks (reader thread) --
    def _connect(self) -> Any:
        raise NotImplementedError

    def _grab(self, handle: Any) -> np.ndarray | None:
        raise NotImplementedError

    def _release(self, handle: Any) -> None:
        """Free the device; default: nothing to free."""

    # -- FrameSource --
    def open(self) -> None:
        """Connect (on the reader thread, bounded by ``open_timeout_s``); no-op when already open."""
        if self._reader is not None:
            return
        self._ended = False
        reader = _Reader(self)
        reader.thread.start()
        if not reader.connected.wait(self.cfg.open_timeout_s):
            reader.stop.set()
            raise SourceError(f"{self.name}: timed out opening after {self.cfg.open_timeout_s:g} s")
        if reader.error is not None:
            raise SourceError(reader.error)
        self._reader = reader

    def read(self, timeout_s: float) -> Frame | None:
        reader = self._reader
        if reader is None:
            raise SourceError(f"{self.name}: read before open (or after close)")
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                # Short slices, so a reader that failed or ended is noticed without waiting it out.
                image, ts = reader.frames.get(timeout=max(0.0, min(0.05, deadline - time.monotonic())))
            except queue.Empty:
                if reader.done.is_set() and reader.frames.empty():
                    if reader.error is not None:
                        raise SourceError(reader.error) from None
                    self._ended = True
                    return None
                if time.monotonic() >= deadline:
                    return None
                continue
            self._frame_id += 1
            return Frame(image=image, frame_id=self._frame_id, ts=ts, source=self.name)

    @property
    def ended(self) -> bool:
        return self._ended

    def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.stop.set()
            # A reader stuck in a driver call cannot be interrupted; it is a daemon thread, abandoned.
            reader.thread.join(timeout=1.0)


class _Reader:
    """One connection's reader thread and its hand-off queue."""

    def __init__(self, source: ThreadedSource) -> None:
        self.source = source
        self.frames: queue.Queue[tuple[np.ndarray, float]] = queue.Queue(maxsize=1 if source.live else 4)
        self.stop = threading.Event()
        self.connected = threading.Event()  # set once connected, or once the attempt failed
        self.done = threading.Event()
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name=f"source {source.name}", daemon=True)

    def _run(self) -> None:
        src, handle = self.source, None
        # Cameras pace themselves; files, folders and synthetic frames are paced to cfg.fps here.
        pacer = _Pacer(0.0 if type(src).live else src.cfg.fps)
        # Recorded frames at a stated rate (a file, folder or synthetic source that is not standing in
        # for a camera) are stamped by their place in the sequence, not by when they were decoded, so
        # what the tracker does with them (update intervals, track ages) is the same on every run.
        period = 1.0 / src.cfg.fps if not src.live and src.cfg.fps > 0 else 0.0
        try:
            handle = src._connect()
            self.connected.set()
            t0, n = time.time(), 0
            while not self.stop.is_set():
                image = src._grab(handle)
                if image is None:
                    break
                pacer.wait(self.stop)
                self._put((image, t0 + n * period if period else time.time()))
                n += 1
        except SourceError as exc:
            self.error = str(exc)
        except Exception as exc:  # a driver error is a lost device, reported through read()
            self.error = f"{src.name}: {type(exc).__name__}: {exc}"
        finally:
            self.connected.set()
            self.done.set()
            if handle is not None:
                try:
                    src._release(handle)
                except Exception as exc:
                    log.debug("%s: release failed: %s", src.name, exc)

    def _put(self, item: tuple[np.ndarray, float]) -> None:
        if self.source.live:
            try:
                self.frames.get_nowait()  # drop the stale frame: live sources show the present
                self.source.dropped_frames += 1
            except queue.Empty:
                pass
            self.frames.put_nowait(item)
            return
        while not self.stop.is_set():
            try:
                self.frames.put(item, timeout=0.1)
                return
            except queue.Full:
                continue


def _bgr(image: np.ndarray) -> np.ndarray:
    """Any OpenCV-decoded image as 3-channel BGR uint8."""
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


class _Pacer:
    """Sleeps so that successive frames are at most ``fps`` per second (0 = no pacing)."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.next = time.monotonic()

    def wait(self, stop: threading.Event) -> None:
        if self.period:
            delay = self.next - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            self.next = max(self.next + self.period, time.monotonic())


class OpenCVSource(ThreadedSource):
    """A V4L2/UVC camera by index (``"0"``) or path (``/dev/video0``) through OpenCV."""

    def _open_capture(self) -> cv2.VideoCapture:
        target: int | str = int(self.cfg.path) if self.cfg.path.isdigit() else self.cfg.path
        if isinstance(target, str) and target.startswith("/dev/") and not Path(target).exists():
            raise SourceError(f"{self.name}: camera device {target} does not exist (unplugged?)")
        cap = cv2.VideoCapture(target)
        if not cap.isOpened():
            raise SourceError(f"{self.name}: OpenCV cannot open camera {self.cfg.path!r}")
        return cap

    def _connect(self) -> cv2.VideoCapture:
        cap = self._open_capture()
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height)
        if self.cfg.fps:
            cap.set(cv2.CAP_PROP_FPS, self.cfg.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # fewer stale frames queued in the driver
        return cap

    def _grab(self, handle: cv2.VideoCapture) -> np.ndarray | None:
        ok, image = handle.read()
        return _bgr(image) if ok and image is not None else None

    def _release(self, handle: cv2.VideoCapture) -> None:
        handle.release()


class UrlSource(OpenCVSource):
    """An RTSP/HTTP(S) stream through OpenCV's FFmpeg backend, with FFmpeg-level timeouts too."""

    def _connect(self) -> cv2.VideoCapture:
        ms = int(self.cfg.open_timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        cap = cv2.VideoCapture(self.cfg.path, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            raise SourceError(f"{self.name}: cannot open stream {redact_url(self.cfg.path)}")
        return cap


class VideoFileSource(OpenCVSource):
    """A video file, every frame in order; ``loop`` rewinds at the end instead of ending."""

    live = False

    def _connect(self) -> cv2.VideoCapture:
        if not Path(self.cfg.path).is_file():
            raise SourceError(f"{self.name}: video file {self.cfg.path} does not exist")
        cap = cv2.VideoCapture(self.cfg.path)
        if not cap.isOpened():
            raise SourceError(f"{self.name}: OpenCV cannot decode video file {self.cfg.path}")
        return cap

    def _grab(self, cap: cv2.VideoCapture) -> np.ndarray | None:
        ok, image = cap.read()
        if not ok and self.cfg.loop:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = cap.read()
            if not ok:  # looping over nothing is an outage to retry, never an end
                raise SourceError(f"{self.name}: no frame could be read, even from the start")
        return _bgr(image) if ok and image is not None else None


class ImageFolderSource(ThreadedSource):
    """Every image in a folder, sorted by name; unreadable files are skipped with a warning."""

    live = False

    def _connect(self) -> dict[str, Any]:
        folder = Path(self.cfg.path)
        if not folder.is_dir():
            raise SourceError(f"{self.name}: image folder {folder} does not exist")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"{self.name}: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
        return {"files": files, "next": 0, "good": 0}

    def _grab(self, state: dict[str, Any]) -> np.ndarray | None:
        files: list[Path] = state["files"]
        while True:
            if state["next"] >= len(files):
                if not self.cfg.loop:
                    return None
                if not state["good"]:  # looping over nothing is an outage to retry, never an end
                    raise SourceError(f"{self.name}: none of the {len(files)} image(s) could be read")
                state["next"] = 0
            path = files[state["next"]]
            state["next"] += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                log.warning("%s: skipping unreadable image %s", self.name, path)
                continue
            state["good"] += 1
            return image


class SyntheticSource(ThreadedSource):
    """Generated frames: a white square gliding over a dark gradient, or ``path`` (an image)
    panning slowly, so a demo without a camera still shows real faces to the detector."""

    live = False

    def _connect(self) -> dict[str, Any]:
        w, h = self.cfg.width, self.cfg.height
        background = None
        if self.cfg.path not in ("", "0"):
            background = cv2.imread(self.cfg.path, cv2.IMREAD_COLOR)
            if background is None:
                raise SourceError(f"{self.name}: cannot read synthetic background image {self.cfg.path}")
            background = cv2.resize(background, (w, h), interpolation=cv2.INTER_AREA)
        return {"n": 0, "background": background}

    def _grab(self, state: dict[str, Any]) -> np.ndarray | None:
        n = state["n"]
        if self.cfg.frames and n >= self.cfg.frames:
            return None
        state["n"] = n + 1
        return synthetic_frame(n, self.cfg.width, self.cfg.height, state["background"])


def synthetic_frame(n: int, width: int, height: int, background: np.ndarray | None = None) -> np.ndarray:
    """Frame ``n`` of the synthetic sequence (deterministic, so tests can predict it)."""
    if background is not None:
        shift = round(8 * math.sin(n / 15.0))  # a gentle pan: faces move, stay in view
        return np.roll(background, shift, axis=1)
    ramp = np.linspace(0, 60, width, dtype=np.float32)[None, :, None]
    image = np.broadcast_to(ramp, (height, width, 3)).astype(np.uint8).copy()
    side = max(8, min(width, height) // 4)
    x = int((width - side) * (0.5 + 0.4 * math.sin(n / 20.0)))
    y = (height - side) // 2
    image[y : y + side, x : x + side] = 255
    return image
