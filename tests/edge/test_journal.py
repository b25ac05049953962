"""The write-ahead journal: settled events leave it, a killed run's events and open tracks survive."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from edge.events import EventBuilder, ModelInfo
from edge.journal import Journal
from edge.records import Detection, TrackEvent
from tests.edge.mqtt_helpers import validate_message

DET = Detection(box=(0.1, 0.1, 0.2, 0.2), score=0.9, landmarks=((0.15, 0.15),) * 5)


def _events(kinds: list[tuple[str, int]]) -> list[dict]:
    b = EventBuilder("dev", "cam", ModelInfo("m", "0", "", "onnxruntime"), run_id="run1")
    return [
        b.event(TrackEvent(kind, track, DET), i, 1000.0 + i, 64, 48) for i, (kind, track) in enumerate(kinds)
    ]  # type: ignore[arg-type]


def _segments(d: Path) -> list[Path]:
    return sorted(d.glob("journal-*.jsonl"))


def test_settled_events_leave_nothing_to_recover(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    assert j.recover().events == []
    j.start()
    segs = [j.append(doc) for doc in _events([("start", 1), ("update", 1), ("end", 1)])]
    assert len(_segments(tmp_path)) == 1
    for seg in segs:
        j.settle(seg)
    j.close()
    assert _segments(tmp_path) == []  # a clean stop leaves no journal
    again = Journal(tmp_path)
    assert again.recover().events == [] and again.recover().ends == []


def test_unsettled_events_and_open_tracks_are_recovered(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.start()
    docs = _events([("start", 1), ("start", 2), ("update", 1), ("end", 2), ("update", 1)])
    segs = [j.append(doc) for doc in docs]
    for seg in segs[:3]:  # the first three were acknowledged: the segment is not all settled
        j.settle(seg)
    # No close(): the process dies here. The page cache holds the lines, no fsync needed for that.
    found = Journal(tmp_path).recover()
    assert [d["seq"] for d in found.events] == [1, 2, 3, 4, 5]  # at-least-once: settled ones again
    (end,) = found.ends
    assert end["type"] == "end" and end["faces"][0]["track_id"] == 1
    assert end["run_id"] == "run1" and end["seq"] == 6 and end["replayed"]
    assert end["duration_s"] == docs[4]["ts"] - docs[0]["ts"]  # from its start to its last report
    validate_message("p/dev/cam/event", json.dumps(end).encode())
    assert Journal(tmp_path).recover().ends[0]["event_id"] == end["event_id"]  # the same on a retry


def test_checkpoint_keeps_open_tracks_after_rotation(tmp_path: Path) -> None:
    """A caught-up segment is replaced by a checkpoint: the track opened before it is still known."""
    j = Journal(tmp_path)
    j.start()
    first = _events([("start", 7), ("update", 7)])
    for doc in first:
        j.settle(j.append(doc))
    assert len(_segments(tmp_path)) == 1
    found = Journal(tmp_path).recover()
    assert found.events == []  # all settled: nothing to send again
    assert [e["faces"][0]["track_id"] for e in found.ends] == [7] and found.ends[0]["seq"] == 3


def test_size_rotation_keeps_unsettled_segments(tmp_path: Path) -> None:
    j = Journal(tmp_path, max_segment_bytes=1500)
    j.start()
    docs = _events([("update", 1)] * 6)
    segs = []
    for doc in docs:
        segs.append(j.append(doc))
        j.maintain()
    assert len(set(segs)) > 1 and len(_segments(tmp_path)) == len(set(segs))
    for seg in segs[:-1]:
        j.settle(seg)
    assert len(_segments(tmp_path)) == 1  # the settled older segments are gone
    in_last = [i + 1 for i, seg in enumerate(segs) if seg == segs[-1]]  # seq 6 and its segment-mates
    assert [d["seq"] for d in Journal(tmp_path).recover().events] == in_last


def test_lines_survive_sigkill_without_fsync(tmp_path: Path) -> None:
    """What append() returned for is recoverable after SIGKILL: the kernel holds it, not the process."""
    code = (
        "import sys, time; from edge.journal import Journal\n"
        "from tests.edge.test_journal import _events\n"
        "j = Journal(sys.argv[1], sync_interval_s=3600); j.start()\n"
        "for doc in _events([('update', 1)] * 500):\n"
        "    j.append(doc); print(doc['seq'], flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    for _ in range(200):
        proc.stdout.readline()
    time.sleep(0.05)
    proc.kill()
    out, _ = proc.communicate()
    printed = 200 + len(out.split())
    got = [d["seq"] for d in Journal(tmp_path).recover().events]
    assert got[:printed] == list(range(1, printed + 1))
