"""MQTT payloads as plain JSON-ready dicts (DESIGN §5), documented in ``edge/schema/event.schema.json``.

Coordinates follow :mod:`edge.records`: boxes ``[x1, y1, x2, y2]`` and landmarks ``[[x, y], ...]``
normalised to the frame (0..1); ``frame_w``/``frame_h`` turn them into pixels.
One event carries one track transition (``start``/``update``/``end``), so ``duration_s`` on an
``end`` event is that track's lifetime.
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from edge.records import Detection, TrackEvent

SCHEMA_VERSION = 1
STATUS_VALUES = ("online", "offline", "stopped")


def iso_time(ts: float) -> str:
    """Epoch seconds -> ISO-8601 UTC with milliseconds and a ``Z`` suffix."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _unit(value: float) -> float:
    return round(min(1.0, max(0.0, float(value))), 5)


def face_json(track_id: int, det: Detection) -> dict[str, Any]:
    """One face: score 0..1, normalised box and landmarks (clamped, 5 decimals)."""
    return {
        "track_id": int(track_id),
        "score": _unit(det.score),
        "box": [_unit(v) for v in det.box],
        "landmarks": [[_unit(x), _unit(y)] for x, y in det.landmarks],
    }


@dataclass(frozen=True)
class ModelInfo:
    """What every event says about the model that produced it."""

    name: str
    version: str
    sha256: str
    runtime: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "runtime": self.runtime}


def end_of_track(last: dict[str, Any], start_ts: float, seq: int) -> dict[str, Any]:
    """The ``end`` event of a track that a killed run left open, built by the next start.

    ``last`` is the track's last event (``start`` or ``update``) and ``start_ts`` its ``start``
    event's ``ts``: the track ended when it was last reported, so ``duration_s`` runs from start
    to that report. The event keeps the killed run's ``run_id`` with the next ``seq`` of that run;
    its ``event_id`` is derived from run and track, so a recovery that is itself interrupted and
    repeated builds the same event (consumers deduplicate it). It is ``replayed`` (late by definition).
    """
    track = int(last["faces"][0]["track_id"])
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"featherface:{last['run_id']}:{track}:end"))
    doc = dict(last, type="end", event_id=event_id, seq=int(seq), replayed=True)
    doc["duration_s"] = round(max(0.0, float(last["ts"]) - start_ts), 3)
    return doc


class EventBuilder:
    """Builds the payloads of one daemon run: ``seq`` is monotonic per run, ``run_id`` fresh per run."""

    def __init__(self, device_id: str, camera: str, model: ModelInfo, run_id: str | None = None) -> None:
        self.device_id, self.camera, self.model = device_id, camera, model
        self.run_id = run_id or uuid.uuid4().hex
        self._seq = itertools.count(1)

    def _header(self, kind: str, ts: float) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "type": kind,
            "device_id": self.device_id,
            "camera": self.camera,
            "run_id": self.run_id,
            "ts": round(ts, 3),
            "time": iso_time(ts),
        }

    def event(self, ev: TrackEvent, frame_id: int, ts: float, frame_w: int, frame_h: int) -> dict[str, Any]:
        """A face event for one tracker transition on frame ``frame_id`` captured at ``ts`` (epoch s)."""
        doc = self._header(ev.kind, ts)
        doc.update(
            event_id=str(uuid.uuid4()),
            seq=next(self._seq),
            frame_id=int(frame_id),
            frame_w=int(frame_w),
            frame_h=int(frame_h),
            faces=[face_json(ev.track_id, ev.detection)],
            replayed=False,
            model=self.model.to_json(),
        )
        if ev.kind == "end":
            doc["duration_s"] = round(max(0.0, ev.duration_s), 3)
        return doc

    def state(self, faces: int, source_status: str, ts: float | None = None) -> dict[str, Any]:
        """The retained per-camera state: how many faces are tracked now and whether the camera is up."""
        doc = self._header("state", time.time() if ts is None else ts)
        doc.update(faces=int(faces), source_status=source_status)
        return doc

    def stats(self, metrics: dict[str, Any], ts: float | None = None) -> dict[str, Any]:
        """Periodic device statistics; ``metrics`` keys are listed in the schema's ``stats`` definition."""
        doc = self._header("stats", time.time() if ts is None else ts)
        doc.pop("camera")
        doc["cameras"] = [self.camera]
        doc.update(metrics)
        return doc
