"""Tracker timing with literal detections and literal timestamps."""

from __future__ import annotations

import re

import pytest

from edge.errors import ConfigError
from edge.records import Detection
from edge.tracker import Tracker, TrackerConfig, iou_matrix


def face(x: float, y: float, w: float = 0.1, h: float = 0.1, score: float = 0.9) -> Detection:
    return Detection(box=(x, y, x + w, y + h), score=score)


def kinds(events: list) -> list[tuple[str, int]]:
    return [(e.kind, e.track_id) for e in events]


def make(**kw: float) -> Tracker:
    args = {
        "min_hits": 3,
        "max_age_s": 1.0,
        "update_interval_s": 5.0,
        "iou_threshold": 0.3,
        "material_change": 0.25,
    }
    args.update(kw)
    return Tracker(**args)  # type: ignore[arg-type]


def test_start_after_min_hits_then_rate_limited_updates_then_end() -> None:
    tr = make()
    assert tr.update([face(0.1, 0.1)], 100.0) == []
    assert tr.update([face(0.101, 0.1)], 100.1) == []
    start = tr.update([face(0.102, 0.1)], 100.2)
    assert kinds(start) == [("start", 1)]
    assert start[0].duration_s == pytest.approx(0.2)
    assert start[0].detection.box[0] == pytest.approx(0.102)
    assert tr.active_tracks == 1
    # Small jitter: no update until update_interval_s after the start event.
    for i in range(1, 50):
        assert tr.update([face(0.102 + 0.001 * (i % 3), 0.1)], 100.2 + 0.1 * i) == []
    upd = tr.update([face(0.102, 0.1)], 105.2)
    assert kinds(upd) == [("update", 1)] and upd[0].duration_s == pytest.approx(5.2)
    assert tr.update([face(0.102, 0.1)], 105.3) == []
    # Absent: still alive at exactly max_age_s, ended just after; duration = first to last seen.
    assert tr.update([], 106.3) == []
    end = tr.update([], 106.31)
    assert kinds(end) == [("end", 1)]
    assert end[0].duration_s == pytest.approx(5.3)
    assert tr.active_tracks == 0


def test_material_change_triggers_an_early_update() -> None:
    tr = make(min_hits=1)
    assert kinds(tr.update([face(0.2, 0.2)], 0.0)) == [("start", 1)]
    assert tr.update([face(0.21, 0.2)], 0.1) == []  # moved 10% of its width: not material
    moved = tr.update([face(0.24, 0.2)], 0.2)  # 40% of its width from the last reported box
    assert kinds(moved) == [("update", 1)]
    assert tr.update([face(0.24, 0.2, w=0.11, h=0.11)], 0.3) == []  # resized 10%
    grown = tr.update([face(0.24, 0.2, w=0.14, h=0.14)], 0.4)  # resized 40%
    assert kinds(grown) == [("update", 1)]


def test_one_frame_false_positive_never_reported() -> None:
    tr = make()
    assert tr.update([face(0.5, 0.5)], 0.0) == []
    assert tr.update([], 0.5) == []
    assert tr.update([], 2.0) == []  # dropped silently: no end for a track that never started
    assert tr.flush(3.0) == []


def test_two_faces_keep_their_ids_whatever_the_order() -> None:
    tr = make(min_hits=2)
    a, b = face(0.1, 0.1), face(0.6, 0.6)
    assert tr.update([a, b], 0.0) == []
    assert sorted(kinds(tr.update([b, a], 0.1))) == [("start", 1), ("start", 2)]
    events = tr.update([face(0.65, 0.6), face(0.1, 0.1)], 0.2)  # b moved 50%: update for id 2 only
    assert kinds(events) == [("update", 2)]
    assert events[0].detection.box[0] == pytest.approx(0.65)
    # A third face far away is a new tentative track, not a re-match of an old id.
    assert tr.update([face(0.1, 0.1), face(0.65, 0.6), face(0.35, 0.8)], 0.3) == []
    assert kinds(tr.update([face(0.1, 0.1), face(0.65, 0.6), face(0.35, 0.8)], 0.4)) == [("start", 3)]


def test_flush_ends_every_started_track() -> None:
    tr = make(min_hits=1)
    tr.update([face(0.1, 0.1), face(0.5, 0.5)], 10.0)
    tr.update([face(0.1, 0.1)], 10.5)
    events = tr.flush(11.0)
    assert sorted(kinds(events)) == [("end", 1), ("end", 2)]
    durations = {e.track_id: e.duration_s for e in events}
    assert durations == {1: pytest.approx(0.5), 2: pytest.approx(0.0)}
    assert tr.active_tracks == 0 and tr.update([], 12.0) == []


def test_iou_matrix_literal() -> None:
    import numpy as np

    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1]], dtype=float)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]], dtype=float)
    np.testing.assert_allclose(iou_matrix(a, b), [[1 / 7, 1, 0], [0, 0.25, 0]])


def test_config_validation() -> None:
    assert TrackerConfig.from_dict({"min_hits": 2}).min_hits == 2
    with pytest.raises(ConfigError, match=re.escape("tracker.min_hits")):
        TrackerConfig(min_hits=0)
    with pytest.raises(ConfigError, match="unknown key"):
        TrackerConfig.from_dict({"max_age": 3})
    assert Tracker.from_config(TrackerConfig(min_hits=5)).config.min_hits == 5
