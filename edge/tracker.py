"""IoU tracking: per-frame detections -> face tracks with start / update / end events.

A track is born on an unmatched detection and **starts** (is reported) once it has been matched on
``min_hits`` frames; a started track sends an **update** at most every ``update_interval_s`` seconds,
or sooner when its box moved or resized by more than ``material_change`` (a fraction of the last
reported box size); it **ends** once unseen for more than ``max_age_s``. Unconfirmed tracks that
vanish are dropped silently, so a one-frame false positive never reaches MQTT.

Association is greedy by IoU (highest pair first), which for the handful of faces in a camera view
is as good as the Hungarian method and needs no SciPy on the device. Timestamps are epoch seconds
from the frames, so tests drive the tracker with literal times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.errors import ConfigError
from edge.records import Detection, TrackEvent
from edge.tables import build_table


@dataclass(frozen=True)
class TrackerConfig:
    """The ``[tracker]`` table (times in seconds, fractions 0..1)."""

    min_hits: int = 3
    max_age_s: float = 2.0
    update_interval_s: float = 5.0
    iou_threshold: float = 0.3
    material_change: float = 0.25

    def __post_init__(self) -> None:
        if self.min_hits < 1:
            raise ConfigError(f"tracker.min_hits must be >= 1, got {self.min_hits}")
        if self.max_age_s < 0:
            raise ConfigError(f"tracker.max_age_s must be >= 0, got {self.max_age_s}")
        if self.update_interval_s <= 0:
            raise ConfigError(f"tracker.update_interval_s must be > 0, got {self.update_interval_s}")
        if not 0.0 < self.iou_threshold < 1.0:
            raise ConfigError(f"tracker.iou_threshold must be in (0, 1), got {self.iou_threshold}")
        if self.material_change <= 0:
            raise ConfigError(f"tracker.material_change must be > 0, got {self.material_change}")

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> TrackerConfig:
        return build_table(cls, table, "tracker")


@dataclass
class _Track:
    track_id: int
    detection: Detection
    first_ts: float
    last_seen_ts: float
    hits: int = 1
    started: bool = False
    last_event_ts: float = 0.0
    reported_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between ``(N, 4)`` and ``(M, 4)`` corner boxes -> ``(N, M)``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


class Tracker:
    """Turns detections into :class:`TrackEvent` s; feed every processed frame, in time order."""

    def __init__(
        self,
        min_hits: int = 3,
        max_age_s: float = 2.0,
        update_interval_s: float = 5.0,
        iou_threshold: float = 0.3,
        material_change: float = 0.25,
    ) -> None:
        self.config = TrackerConfig(min_hits, max_age_s, update_interval_s, iou_threshold, material_change)
        self._tracks: list[_Track] = []
        self._next_id = 1

    @classmethod
    def from_config(cls, cfg: TrackerConfig) -> Tracker:
        return cls(cfg.min_hits, cfg.max_age_s, cfg.update_interval_s, cfg.iou_threshold, cfg.material_change)

    @property
    def active_tracks(self) -> int:
        """Started (reported) tracks that have not ended: the face count to publish."""
        return sum(t.started for t in self._tracks)

    def update(self, detections: list[Detection] | tuple[Detection, ...], ts: float) -> list[TrackEvent]:
        """Associate ``detections`` seen at ``ts`` with tracks; return the events this frame causes."""
        cfg = self.config
        events: list[TrackEvent] = []
        boxes_t = np.array([t.detection.box for t in self._tracks], dtype=np.float64).reshape(-1, 4)
        boxes_d = np.array([d.box for d in detections], dtype=np.float64).reshape(-1, 4)
        ious = iou_matrix(boxes_t, boxes_d)
        matched_t: set[int] = set()
        matched_d: set[int] = set()
        if ious.size:
            for flat in np.argsort(-ious, axis=None, kind="stable"):
                ti, di = divmod(int(flat), ious.shape[1])
                if ious[ti, di] < cfg.iou_threshold:
                    break
                if ti in matched_t or di in matched_d:
                    continue
                matched_t.add(ti)
                matched_d.add(di)
                events.extend(self._hit(self._tracks[ti], detections[di], ts))
        for di, det in enumerate(detections):
            if di not in matched_d:
                track = _Track(self._next_id, det, first_ts=ts, last_seen_ts=ts)
                self._next_id += 1
                self._tracks.append(track)
                events.extend(self._maybe_start(track, ts))
        survivors = []
        for track in self._tracks:
            if ts - track.last_seen_ts > cfg.max_age_s:
                if track.started:
                    events.append(self._end(track))
            else:
                survivors.append(track)
        self._tracks = survivors
        return events

    def flush(self, ts: float) -> list[TrackEvent]:
        """End every started track (at shutdown); ``ts`` is the shutdown time, unused for duration."""
        del ts  # an ended track lasted until it was last seen, not until we stopped looking
        events = [self._end(t) for t in self._tracks if t.started]
        self._tracks = []
        return events

    def _hit(self, track: _Track, det: Detection, ts: float) -> list[TrackEvent]:
        track.detection, track.last_seen_ts = det, ts
        track.hits += 1
        if not track.started:
            return self._maybe_start(track, ts)
        due = ts - track.last_event_ts >= self.config.update_interval_s
        if due or self._materially_changed(track.reported_box, det.box):
            track.last_event_ts, track.reported_box = ts, det.box
            return [TrackEvent("update", track.track_id, det, duration_s=ts - track.first_ts)]
        return []

    def _maybe_start(self, track: _Track, ts: float) -> list[TrackEvent]:
        if track.hits < self.config.min_hits:
            return []
        track.started, track.last_event_ts, track.reported_box = True, ts, track.detection.box
        return [TrackEvent("start", track.track_id, track.detection, duration_s=ts - track.first_ts)]

    def _end(self, track: _Track) -> TrackEvent:
        return TrackEvent(
            "end", track.track_id, track.detection, duration_s=track.last_seen_ts - track.first_ts
        )

    def _materially_changed(self, old: tuple[float, ...], new: tuple[float, ...]) -> bool:
        ow, oh = max(old[2] - old[0], 1e-9), max(old[3] - old[1], 1e-9)
        nw, nh = new[2] - new[0], new[3] - new[1]
        dx = abs((new[0] + new[2]) - (old[0] + old[2])) / 2 / ow
        dy = abs((new[1] + new[3]) - (old[1] + old[3])) / 2 / oh
        resized = max(abs(nw - ow) / ow, abs(nh - oh) / oh)
        return max(dx, dy, resized) > self.config.material_change
