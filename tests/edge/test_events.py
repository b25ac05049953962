"""Event payloads: built per DESIGN §5 and valid against edge/schema/event.schema.json."""

from __future__ import annotations

import uuid
from datetime import datetime

import jsonschema
import pytest

from edge.events import EventBuilder, ModelInfo, iso_time
from edge.records import Detection, TrackEvent
from tests.edge.mqtt_helpers import validator

MODEL = ModelInfo("nano-b", "1.0", "ab" * 32, "onnxruntime")
DET = Detection(
    box=(0.1, 0.2, 0.3, 0.4), score=0.93, landmarks=tuple((0.1 + i / 100, 0.25) for i in range(5))
)


def test_event_fields_and_schema() -> None:
    b = EventBuilder("pi4", "door", MODEL)
    start = b.event(TrackEvent("start", 7, DET), frame_id=12, ts=1_700_000_000.25, frame_w=640, frame_h=480)
    end = b.event(
        TrackEvent("end", 7, DET, duration_s=3.5), frame_id=40, ts=1_700_000_004.0, frame_w=640, frame_h=480
    )
    for doc in (start, end):
        validator().validate(doc)
    assert (start["seq"], end["seq"]) == (1, 2)
    assert start["run_id"] == end["run_id"] and start["event_id"] != end["event_id"]
    uuid.UUID(start["event_id"])
    assert start["faces"] == [
        {
            "track_id": 7,
            "score": 0.93,
            "box": [0.1, 0.2, 0.3, 0.4],
            "landmarks": [[round(0.1 + i / 100, 5), 0.25] for i in range(5)],
        }
    ]
    assert "duration_s" not in start and end["duration_s"] == 3.5
    assert start["time"] == "2023-11-14T22:13:20.250Z"
    assert datetime.fromisoformat(start["time"]).timestamp() == pytest.approx(start["ts"])
    assert start["model"] == {
        "name": "nano-b",
        "version": "1.0",
        "sha256": "ab" * 32,
        "runtime": "onnxruntime",
    }
    assert start["replayed"] is False and start["schema_version"] == 1


def test_values_are_clamped_to_unit_range() -> None:
    wild = Detection(box=(-0.2, 0.0, 1.3, 0.5), score=1.0000001, landmarks=((1.2, -0.1),) * 5)
    doc = EventBuilder("d", "c", MODEL).event(TrackEvent("update", 1, wild), 0, 0.0, 10, 10)
    validator().validate(doc)
    assert doc["faces"][0]["box"] == [0.0, 0.0, 1.0, 0.5]


def test_fresh_run_ids_per_builder() -> None:
    assert EventBuilder("d", "c", MODEL).run_id != EventBuilder("d", "c", MODEL).run_id


def test_state_and_stats_validate() -> None:
    b = EventBuilder("d", "c", MODEL)
    validator().validate(b.state(2, "online"))
    stats = b.stats(
        {
            "fps": 9.5,
            "inference_ms": 12.0,
            "queue_depth": 0,
            "spool_depth": 3,
            "spool_dropped": 0,
            "dropped_frames": 1,
            "frames": 100,
            "events": 4,
            "uptime_s": 10.0,
            "cpu_temp_c": None,
        }
    )
    validator().validate(stats)
    for status in ("online", "offline", "stopped"):
        validator().validate(status)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("event_id"),
        lambda d: d["faces"][0].update(score=1.5),
        lambda d: d.update(type="wave"),
        lambda d: d.update(duration_s=1.0),  # only end events carry a duration
        lambda d: d.update(extra=1),
        lambda d: d["faces"][0]["box"].append(0.5),
    ],
)
def test_schema_rejects_malformed_events(mutate) -> None:
    doc = EventBuilder("d", "c", MODEL).event(TrackEvent("start", 1, DET), 0, 0.0, 10, 10)
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError):
        validator().validate(doc)


def test_schema_rejects_unknown_status() -> None:
    with pytest.raises(jsonschema.ValidationError):
        validator().validate("sleeping")


def test_iso_time_is_utc() -> None:
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"
