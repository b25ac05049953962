"""The reconnect policy: a lost, stalled or ended camera is closed and reopened with back-off.

:class:`ReconnectingSource` wraps any :class:`edge.records.FrameSource` (the sources of
:mod:`edge.camera`) and reports ``online`` / ``offline`` changes; :func:`open_source` builds the source
a ``[source]`` table names and wraps it, which is how the daemon opens its camera.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from edge.camera import (
    ImageFolderSource,
    OpenCVSource,
    SourceConfig,
    StatusCallback,
    SyntheticSource,
    ThreadedSource,
    UrlSource,
    VideoFileSource,
)
from edge.errors import SourceError
from edge.picamera import Picamera2Source
from edge.records import Frame, FrameSource

log = logging.getLogger(__name__)

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


SOURCE_TYPES: dict[str, type[ThreadedSource]] = {
    "picamera2": Picamera2Source,
    "opencv": OpenCVSource,
    "url": UrlSource,
    "video": VideoFileSource,
    "images": ImageFolderSource,
    "synthetic": SyntheticSource,
}


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
