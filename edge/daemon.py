"""The daemon: ONE loop, camera -> detector -> tracker -> publisher, until a signal or the source ends.

Order at start: load + warm up the detector (a bad model fails here, exit 2, before anything is
published), open the spool, start the publisher (never waits for the broker), open the source
(never waits for the camera), then READY. SIGTERM/SIGINT only set an event the loop checks, so a
stop always happens between frames: the tracker is flushed (``end`` events for every live track),
the publisher drains what it can, spools the rest and publishes ``stopped``; the exit code is 0.
The watchdog is pinged from the loop's liveness: every turn of the loop, frame or not (a read waits
at most ``read_timeout_s``, and the source's reader threads keep a hung camera off the loop). A camera
outage therefore never gets the service killed; the source reconnects with back-off and the outage
shows in ``state``/``stats`` and the systemd status line. A hung detector or runtime stops the turns,
so the pings, and systemd restarts the service.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import cv2
import numpy as np

from edge.config import Config
from edge.events import EventBuilder, ModelInfo
from edge.memory import tune_malloc
from edge.mqtt import MqttPublisher
from edge.notify import Notifier
from edge.records import Detector, Frame, FrameSource, NullPublisher, Publisher, TrackEvent
from edge.spool import Spool

log = logging.getLogger(__name__)

THERMAL_ROOT = Path("/sys/class/thermal")


def cpu_temperature_c(root: Path = THERMAL_ROOT) -> float | None:
    """The CPU temperature in °C from the first readable thermal zone (a ``cpu``-like one first)."""
    zones = sorted(root.glob("thermal_zone*"))
    zones.sort(
        key=lambda z: "cpu" not in _read(z / "type").lower() and "soc" not in _read(z / "type").lower()
    )
    for zone in zones:
        raw = _read(zone / "temp")
        if raw.lstrip("-").isdigit():
            return round(int(raw) / 1000.0, 1)
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


SNAPSHOT_MIN_SIDE = 192  # px: a 30-px face alone is no picture; show it with its surroundings


def snapshot_jpeg(
    image: np.ndarray, box: tuple[float, float, float, float], max_bytes: int, comment: str = ""
) -> bytes | None:
    """A JPEG of the face in ``box`` (normalised) with its surroundings, no larger than ``max_bytes``,
    or None. The crop is square, centred on the face, twice its longer side and at least
    :data:`SNAPSHOT_MIN_SIDE` pixels (within the frame); ``comment`` goes into the JPEG's COM segment,
    so the picture itself says which event it belongs to."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    side = min(max(2.0 * max(x2 - x1, y2 - y1), SNAPSHOT_MIN_SIDE), w, h)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = int(min(max(cx - side / 2, 0), w - side))
    top = int(min(max(cy - side / 2, 0), h - side))
    crop = image[top : top + int(side), left : left + int(side)]
    for _ in range(4):  # lower quality first, then halve the size
        for quality in (85, 65, 45):
            ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, quality])
            jpeg = _with_comment(buf.tobytes(), comment) if ok else b""
            if ok and len(jpeg) <= max_bytes:
                return jpeg
        if min(crop.shape[:2]) < 16:
            break
        crop = cv2.resize(crop, (crop.shape[1] // 2, crop.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return None


def _with_comment(jpeg: bytes, comment: str) -> bytes:
    """``jpeg`` with a COM (0xFFFE) segment right after its SOI marker holding ``comment``."""
    if not comment:
        return jpeg
    text = comment.encode("ascii", "replace")[:65533]
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


class Metrics:
    """Loop statistics for the ``stats`` topic: fps over the last ~10 s, mean inference time."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.frames = 0
        self.events = 0
        self.first_at = self.last_at = 0.0  # monotonic times of the first and latest processed frame
        self._stamps: deque[float] = deque(maxlen=300)
        self._infer: deque[float] = deque(maxlen=100)

    def frame(self, infer_ms: float) -> None:
        now = time.monotonic()
        self.frames += 1
        self.first_at = self.first_at or now
        self.last_at = now
        self._stamps.append(now)
        self._infer.append(infer_ms)

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        recent = [t for t in self._stamps if now - t <= 10.0]
        fps = (
            (len(recent) - 1) / (recent[-1] - recent[0])
            if len(recent) > 1 and recent[-1] > recent[0]
            else 0.0
        )
        infer = sum(self._infer) / len(self._infer) if self._infer else 0.0
        return {
            "fps": round(fps, 2),
            "inference_ms": round(infer, 2),
            "frames": self.frames,
            "events": self.events,
            "uptime_s": round(now - self.started, 1),
        }


class Daemon:
    """The pipeline of one camera. ``detector``/``source`` may be injected (tests); else built from config."""

    def __init__(
        self,
        config: Config,
        detector: Detector | None = None,
        source: FrameSource | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        tune_malloc()  # before the detector and the frame loop allocate anything large
        self.config = config
        self.stop_event = threading.Event()
        self.stop_reason = ""
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.source_status = "offline"
        self._offline_since: float | None = time.monotonic()  # None while frames flow
        self.source_outages = 0
        if detector is None:
            from edge.detector import detector_from_config  # loads + warms up; ModelError -> exit 2

            self.detector: Detector = detector_from_config(config.detector)
        else:
            self.detector = detector
        d = self.detector
        model = ModelInfo(d.meta.name, d.meta.version, d.sha256, d.runtime)
        self.builder = EventBuilder(config.device.id, config.device.camera, model)
        self.spool = Spool(
            config.spool_dir, config.spool.max_events, config.spool.max_bytes, config.spool.max_age_s
        )
        self.publisher: Publisher = (
            MqttPublisher(
                config.mqtt,
                config.device.id,
                config.device.camera,
                self.spool,
                config.homeassistant,
                snapshots=config.mqtt.snapshot and config.daemon.snapshot_on == "start",
            )
            if config.mqtt.enabled
            else NullPublisher()
        )
        self._injected_source = source
        self.source: FrameSource | None = None
        from edge.tracker import Tracker

        tc = config.tracker
        # A folder of unrelated photos: each photo is a scene of its own, so every face in it is a
        # track that starts and ends there (min_hits 1, flushed after the photo) instead of a track
        # "moving" from one stranger's face to the next photo's.
        self._photos = config.source.type == "images" and not config.source.sequence
        if self._photos:
            tc = dataclasses.replace(tc, min_hits=1)
        self.tracker = Tracker.from_config(tc)
        self._faces = -1
        self._last_frame = (0, 1, 1)  # frame_id, width, height of the latest processed frame

    # ---- signals ------------------------------------------------------------------------------
    def request_stop(self, reason: str = "requested") -> None:
        """Ask the loop to stop after the current frame (thread- and signal-safe)."""
        self.stop_reason = self.stop_reason or reason
        self.stop_event.set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.request_stop(signal.Signals(signum).name)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped; returns the exit code (0 on a clean stop or the end of a finite source)."""
        restore: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                restore[sig] = signal.signal(sig, self._on_signal)
        status = "stopped"
        try:
            self._start()
            self._loop()
            self._flush()
            return 0
        except BaseException:
            status = "offline"
            raise
        finally:
            self._shutdown(status)
            for sig, handler in restore.items():
                signal.signal(sig, handler)

    def _start(self) -> None:
        from edge.reconnect import open_source

        self.publisher.set_state(self.builder.state(0, self.source_status))
        self.publisher.set_stats_provider(self._stats)
        self.publisher.start()
        if self._injected_source is not None:  # a bare source (tests, demo): same reconnect policy
            from edge.reconnect import ReconnectingSource

            sc = self.config.source
            self.source = ReconnectingSource(
                self._injected_source,
                on_status=self._on_source_status,
                reconnect_min_s=sc.reconnect_min_s,
                reconnect_max_s=sc.reconnect_max_s,
                stall_timeout_s=sc.stall_timeout_s,
                reopen_on_end=False,
            )
            self.source.open()
        else:
            self.source = open_source(self.config.source, on_status=self._on_source_status)
        desc = f"{self.detector.meta.name} {self.detector.meta.version} on {self.detector.runtime}"
        log.info(
            "running: device %s camera %s, model %s, run %s",
            self.config.device.id,
            self.config.device.camera,
            desc,
            self.builder.run_id,
        )
        self._check_watchdog_bound()
        self.notifier.ready(f"running {desc}")

    def _check_watchdog_bound(self) -> None:
        """Warn when one turn of the loop may outlast the watchdog: the turn that reopens a camera waits
        up to read_timeout_s, opens for up to open_timeout_s, then reads for up to read_timeout_s, and
        pings go out at most every half period, so such a turn must stay under half of WatchdogSec."""
        half = self.notifier.watchdog_period_s / 2
        sc = self.config.source
        turn = sc.open_timeout_s + 2 * sc.read_timeout_s
        if half and turn >= half:
            log.warning(
                "[source] open_timeout_s + 2 x read_timeout_s = %.1f s is not under half the watchdog "
                "period (%.1f s): a camera reopen could get the service killed; lower them or raise "
                "WatchdogSec",
                turn,
                half,
            )

    def _on_source_status(self, state: str, reason: str) -> None:
        if state == "offline" and self._offline_since is None:
            self._offline_since = time.monotonic()
            self.source_outages += 1
        elif state == "online":
            self._offline_since = None
        self.source_status = state
        log.info("camera %s: %s (%s)", self.config.device.camera, state, reason)
        self.notifier.status(f"camera {state}: {reason}")
        self._publish_state(force=True)

    def _loop(self) -> None:
        assert self.source is not None
        max_frames = self.config.daemon.max_frames
        while not self.stop_event.is_set():
            # [source] read_timeout_s also bounds how long a stop request waits for the loop.
            frame = self.source.read(self.config.source.read_timeout_s)
            self.notifier.watchdog()  # the loop turned: alive, whether or not the camera is
            if frame is None:
                if self.source.ended:
                    log.info("source ended")
                    self.stop_reason = self.stop_reason or "source ended"
                    return
                continue
            self.process(frame)
            if max_frames and self.metrics.frames >= max_frames:
                self.stop_reason = self.stop_reason or f"max_frames={max_frames}"
                return
        log.info("stopping: %s", self.stop_reason)

    def process(self, frame: Frame) -> list[TrackEvent]:
        """One frame through detector and tracker; events go to the publisher (never blocks)."""
        t0 = time.perf_counter()
        detections = self.detector.detect(frame.image)
        self.metrics.frame((time.perf_counter() - t0) * 1e3)
        events = self.tracker.update(detections, frame.ts)
        if self._photos:
            events += self.tracker.flush(frame.ts)
        self._last_frame = (frame.frame_id, frame.width, frame.height)
        self._emit(events, frame.frame_id, frame.width, frame.height, ts=frame.ts, image=frame.image)
        return events

    def _emit(
        self,
        events: list[TrackEvent],
        frame_id: int,
        w: int,
        h: int,
        *,
        ts: float,
        image: np.ndarray | None = None,
    ) -> None:
        for ev in events:
            doc = self.builder.event(ev, frame_id, ts, w, h)
            self.metrics.events += 1
            log.debug("event %s track %d seq %d", ev.kind, ev.track_id, doc["seq"])
            self.publisher.publish_event(doc)
            if (
                ev.kind == "start"
                and image is not None
                and self.config.mqtt.snapshot
                and self.config.daemon.snapshot_on == "start"
            ):
                jpeg = snapshot_jpeg(
                    image,
                    ev.detection.box,
                    self.config.mqtt.snapshot_max_bytes,
                    comment=f"featherface event_id={doc['event_id']} track_id={ev.track_id}",
                )
                if jpeg is not None:
                    self.publisher.publish_snapshot(jpeg)
        self._publish_state()

    def _publish_state(self, force: bool = False) -> None:
        faces = self.tracker.active_tracks
        if force or faces != self._faces:
            self._faces = faces
            self.publisher.set_state(self.builder.state(faces, self.source_status))

    def _stats(self) -> dict[str, Any]:
        depth = self.publisher.depth()
        dropped = int(getattr(self.source, "dropped_frames", 0) or 0)
        since = self._offline_since  # read once: the frame loop may clear it meanwhile
        return self.builder.stats(
            {
                **self.metrics.snapshot(),
                "queue_depth": depth["queue"] + depth["inflight"],
                "spool_depth": depth["spool"],
                "spool_dropped": depth["spool_dropped"],
                "dropped_frames": dropped,
                "source_status": self.source_status,
                "source_offline_s": round(time.monotonic() - since, 1) if since is not None else 0.0,
                "source_outages": self.source_outages,
                "cpu_temp_c": cpu_temperature_c(),
            }
        )

    def _flush(self) -> None:
        now = time.time()
        events = self.tracker.flush(now)
        if events:
            log.info("flushing %d live track(s)", len(events))
        # End events describe the track's last detection, so they carry the last frame's identity.
        self._emit(events, *self._last_frame, ts=now)

    def _shutdown(self, status: str) -> None:
        self.notifier.stopping(f"stopping: {self.stop_reason or status}")
        if self.source is not None:
            try:
                self.source.close()
            except Exception:
                log.exception("closing the source failed")
        # The retained state must stay true after we are gone: no faces, camera not read.
        self.publisher.set_state(self.builder.state(0, "offline"))
        self.publisher.stop(self.config.daemon.drain_timeout_s, final_status=status)
        self.notifier.close()
        log.info(
            "stopped (%s): %d frame(s), %d event(s)",
            self.stop_reason or status,
            self.metrics.frames,
            self.metrics.events,
        )


def run(
    config: Config,
    *,
    detector: Detector | None = None,
    source: FrameSource | None = None,
    on_ready: Callable[[Daemon], None] | None = None,
) -> int:
    """Run the daemon until SIGTERM/SIGINT or the end of a finite source; returns the exit code.

    Start-up problems (bad model, unwritable state directory) raise a FeatherFaceError, which the
    CLI turns into one line and its exit code (2 for config and model errors).
    """
    daemon = Daemon(config, detector=detector, source=source)
    if on_ready is not None:
        on_ready(daemon)
    return daemon.run()


def configure_logging(level: str = "INFO") -> None:
    """journald-friendly logs on stderr: no timestamps under systemd (journald adds its own)."""
    root = logging.getLogger()
    if root.handlers:
        root.setLevel(level.upper())
        return
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt)
    logging.getLogger("edge.mqtt.paho").setLevel(logging.WARNING)
