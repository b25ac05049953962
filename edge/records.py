"""Typed records that cross the daemon's seams, and the Protocols of those seams.

Coordinates: boxes are ``(x1, y1, x2, y2)`` and landmarks ``(x, y)`` pairs, both **normalised**
to the frame (0..1) so they survive any resize; multiply by ``frame_w``/``frame_h`` for pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

if TYPE_CHECKING:  # a type only: records stay below every module that does the work
    from edge.contract import ModelMeta

Box = tuple[float, float, float, float]
Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured image. ``image`` is HxWx3 uint8 **BGR**; ``ts`` is capture time (epoch seconds)."""

    image: np.ndarray
    frame_id: int
    ts: float
    source: str = ""

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True, slots=True)
class Detection:
    """One face found in one frame; ``score`` in 0..1; box and landmarks normalised to the frame."""

    box: Box
    score: float
    landmarks: tuple[Point, ...] = ()


@dataclass(frozen=True, slots=True)
class TrackEvent:
    """What the tracker says about one track on one frame.

    ``kind`` is ``start`` (confirmed after enough hits), ``update`` (rate-limited) or ``end``
    (absent long enough). ``detection`` is the track's latest detection; ``duration_s`` is the
    time since the track's first hit, set on every kind.
    """

    kind: Literal["start", "update", "end"]
    track_id: int
    detection: Detection
    duration_s: float = 0.0


@dataclass(frozen=True, slots=True)
class FrameResult:
    """Everything the pipeline learned from one frame, handed to the publisher."""

    frame_id: int
    ts: float
    frame_w: int
    frame_h: int
    detections: tuple[Detection, ...]
    events: tuple[TrackEvent, ...] = ()
    inference_ms: float = 0.0
    active_tracks: int = 0
    extras: dict[str, float] = field(default_factory=dict)


class FrameSource(Protocol):
    """A camera, stream, file or folder. ``read`` returns ``None`` on timeout or end of stream
    (check ``ended``); it raises :class:`edge.errors.SourceError` when the device is gone."""

    name: str

    def open(self) -> None: ...

    def read(self, timeout_s: float) -> Frame | None: ...

    @property
    def ended(self) -> bool: ...

    def close(self) -> None: ...


class Detector(Protocol):
    """Runs a contract model on a BGR frame and returns NMS-filtered detections; says which model
    (its contract ``meta`` and file ``sha256``) on which ``runtime``, for every event it causes."""

    @property
    def meta(self) -> ModelMeta: ...

    @property
    def sha256(self) -> str: ...

    @property
    def runtime(self) -> str: ...

    def detect(self, image: np.ndarray) -> list[Detection]: ...


class Publisher(Protocol):
    """Where the daemon's messages go (:class:`edge.mqtt.MqttPublisher`, or :class:`NullPublisher`
    with MQTT off). Every call returns at once: delivery, retries and the spool are the publisher's."""

    def start(self) -> object: ...

    def set_state(self, doc: dict[str, Any]) -> None: ...

    def set_stats_provider(self, provider: Callable[[], dict[str, Any]]) -> None: ...

    def publish_event(self, doc: dict[str, Any]) -> bool: ...

    def publish_snapshot(self, jpeg: bytes) -> bool: ...

    def depth(self) -> dict[str, int]: ...

    def stop(self, drain_timeout_s: float = 5.0, final_status: str = "stopped") -> None: ...


class NullPublisher:
    """The :class:`Publisher` of a daemon with ``mqtt.enabled = false``: accepts everything, sends
    nothing (events still reach the log), so the loop never asks whether it has a publisher."""

    def start(self) -> NullPublisher:
        return self

    def set_state(self, doc: dict[str, Any]) -> None:
        pass

    def set_stats_provider(self, provider: Callable[[], dict[str, Any]]) -> None:
        pass

    def publish_event(self, doc: dict[str, Any]) -> bool:
        return True

    def publish_snapshot(self, jpeg: bytes) -> bool:
        return True

    def depth(self) -> dict[str, int]:
        return {"queue": 0, "inflight": 0, "spool": 0, "spool_dropped": 0}

    def stop(self, drain_timeout_s: float = 5.0, final_status: str = "stopped") -> None:
        pass
