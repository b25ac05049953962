"""Frame sources behind one Protocol (:class:`edge.records.FrameSource`), and the reconnect wrapper.

Implementations: ``picamera2`` (Pi CSI camera), ``opencv`` (device index or ``/dev/video*``),
``url`` (RTSP/HTTP through FFmpeg), ``video`` (a file, optionally looping), ``images`` (a folder),
``synthetic`` (generated frames for tests and demos). ``[source] type`` picks one from
:data:`SOURCE_TYPES`; :func:`open_source` builds, wraps and opens it.

Every device call (open and grab) runs on a reader thread, so a hung camera or a silent stream can
never block the daemon: ``read(timeout_s)`` returns ``None`` when no frame arrived in time. Live
sources keep only the newest frame (a slow detector sees the present, not a backlog); files and
folders deliver every frame in order. :class:`ReconnectingSource` turns "unplugged", "stalled" and
"stream ended" into close + reopen with exponential back-off, and reports online/offline changes.
"""

from __future__ import annotations

import dataclasses
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

from edge.config import redact_url
from edge.errors import ConfigError, SourceError
from edge.records import Frame, FrameSource

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
StatusCallback = Callable[[str, str], None]  # (state "online" | "offline", reason)


@dataclass(frozen=True)
class SourceConfig:
    """The ``[source]`` table.

    ``path``: device index or ``/dev/videoN`` (opencv), camera number (picamera2), URL (url), file
    (video), folder (images), optional background image (synthetic). ``width``/``height``/``fps``
    are requested from cameras and used by synthetic; ``fps`` also paces video/images/synthetic
    (0 = as fast as they are read). Times in seconds. ``stream`` picks the picamera2 stream the
    detector sees: ``main`` (RGB888 at width x height) or ``lores`` (YUV420 at lores size, cheaper).
    ``read_timeout_s`` is the per-read wait for callers without their own (``bench``; the daemon
    uses ``[daemon] read_timeout_s``). ``live`` makes a video, folder or synthetic source behave like a
    camera: frames arrive at ``fps`` whether or not anyone reads them, and only the newest is kept
    (cameras are always live).
    """

    type: str = "opencv"
    path: str = "0"
    name: str = ""
    width: int = 1280
    height: int = 720
    fps: float = 0.0
    loop: bool = False
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
        if self.type not in SOURCE_TYPES:
            raise ConfigError(
                f"source.type must be one of {', '.join(sorted(SOURCE_TYPES))}, got {self.type!r}"
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
        unknown = sorted(set(table) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"[source] has unknown key(s) {', '.join(unknown)}")
        return cls(**table)


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
        config = cam.create_video_configuration(
            main={"size": (cfg.width, cfg.height), "format": "RGB888"},
            lores={"size": (cfg.lores_width, cfg.lores_height), "format": "YUV420"},
            buffer_count=4,
            controls=controls,
        )
        cam.configure(config)
        cam.start()
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


SOURCE_TYPES: dict[str, type[ThreadedSource]] = {
    "picamera2": Picamera2Source,
    "opencv": OpenCVSource,
    "url": UrlSource,
    "video": VideoFileSource,
    "images": ImageFolderSource,
    "synthetic": SyntheticSource,
}
# Where "the stream ended" means "the device went away" (reopen), not "the file is done" (stop).
LIVE_TYPES = frozenset({"picamera2", "opencv", "url"})


class ReconnectingSource:
    """Wraps a source: failures, stalls (no frame for ``stall_timeout_s``) and, for live sources,
    end of stream close it and reopen after ``reconnect_min_s``, doubling up to ``reconnect_max_s``.

    ``on_status(state, reason)`` is called on every change between ``online`` (frames flowing) and
    ``offline``. ``read`` never raises for a lost device; it waits at most its timeout, except on the
    call that reopens, which the source's ``open_timeout_s`` bounds. Frame ids keep increasing
    across reopens.
    """

    def __init__(
        self,
        source: FrameSource,
        on_status: StatusCallback | None = None,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        stall_timeout_s: float = 10.0,
        reopen_on_end: bool = True,
    ) -> None:
        if isinstance(source, ReconnectingSource):  # never double-wrap: the outer would see nothing
            source = source.inner
        self.inner: FrameSource = source
        self.name = source.name
        self.on_status = on_status
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self.stall_timeout_s = stall_timeout_s
        self.reopen_on_end = reopen_on_end
        self.state: str | None = None
        self.reason = ""
        self.attempts = 0  # open attempts so far (for stats and tests)
        self._is_open = False
        self._ended = False
        self._backoff = reconnect_min_s
        self._next_attempt = 0.0
        self._last_frame = 0.0
        self._frame_id = 0

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def dropped_frames(self) -> int:
        return int(getattr(self.inner, "dropped_frames", 0))

    def open(self) -> None:
        """Try once now; a failure only schedules the next attempt (start-up never blocks)."""
        if not self._is_open and not self._ended:
            self._try_open()

    def read(self, timeout_s: float) -> Frame | None:
        deadline = time.monotonic() + timeout_s
        if self._ended:
            return None
        if not self._is_open:
            wait = self._next_attempt - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, timeout_s))
                if self._next_attempt > time.monotonic():
                    return None
            if not self._try_open():
                return None
        try:
            frame = self.inner.read(max(0.01, deadline - time.monotonic()))
        except SourceError as exc:
            self._lost(str(exc))
            return None
        now = time.monotonic()
        if frame is None:
            if self.inner.ended:
                if self.reopen_on_end:
                    self._lost(f"{self.name}: stream ended")
                else:
                    self._ended = True
                    self.inner.close()
            elif now - self._last_frame > self.stall_timeout_s:
                self._lost(f"{self.name}: no frame for {self.stall_timeout_s:g} s (stalled)")
            return None
        self._last_frame = now
        self._backoff = self.reconnect_min_s  # reset only once frames flow, so flapping backs off
        self._set_state("online", "frames flowing")
        self._frame_id += 1
        return dataclasses.replace(frame, frame_id=self._frame_id)

    def close(self) -> None:
        if self._is_open:
            self.inner.close()
        self._is_open = False

    def _try_open(self) -> bool:
        self.attempts += 1
        try:
            self.inner.open()
        except SourceError as exc:
            self._schedule_retry(str(exc))
            return False
        self._is_open = True
        self._last_frame = time.monotonic()  # the stall clock starts at open
        return True

    def _lost(self, reason: str) -> None:
        log.warning("%s", reason)
        try:
            self.inner.close()
        finally:
            self._is_open = False
        self._schedule_retry(reason)

    def _schedule_retry(self, reason: str) -> None:
        self._next_attempt = time.monotonic() + self._backoff
        log.info("%s: reopening in %.1f s", self.name, self._backoff)
        self._backoff = min(self._backoff * 2, self.reconnect_max_s)
        self._set_state("offline", reason)

    def _set_state(self, state: str, reason: str) -> None:
        if state == self.state:
            return
        self.state, self.reason = state, reason
        if self.on_status is not None:
            try:
                self.on_status(state, reason)
            except Exception:  # a broken callback must not take the camera down with it
                log.exception("%s: status callback failed", self.name)


def make_source(cfg: SourceConfig | dict[str, Any]) -> ThreadedSource:
    """The bare source ``cfg.type`` names (not opened, not wrapped)."""
    if isinstance(cfg, dict):
        cfg = SourceConfig.from_dict(cfg)
    return SOURCE_TYPES[cfg.type](cfg)


def open_source(
    cfg: SourceConfig | dict[str, Any],
    on_status: StatusCallback | None = None,
    reconnect: bool = True,
) -> FrameSource:
    """Build the source ``cfg`` describes and open it.

    With ``reconnect`` (the daemon) it is wrapped in :class:`ReconnectingSource` and opening never
    raises for a missing device: it retries with back-off. Without it (``bench``, tests) an open
    failure raises :class:`SourceError`.
    """
    if isinstance(cfg, dict):
        cfg = SourceConfig.from_dict(cfg)
    source: FrameSource = make_source(cfg)
    if reconnect:
        source = ReconnectingSource(
            source,
            on_status=on_status,
            reconnect_min_s=cfg.reconnect_min_s,
            reconnect_max_s=cfg.reconnect_max_s,
            stall_timeout_s=cfg.stall_timeout_s,
            reopen_on_end=cfg.type in LIVE_TYPES,
        )
    source.open()
    return source
