"""Reliability against a real broker and real processes: outages, SIGKILL, Last Will.

These are the daemon's promises: while the broker is away nothing produced is lost (within the
spool's caps), everything arrives afterwards in order flagged ``replayed``, the daemon never exits;
a SIGKILL'd daemon's spool is replayed by the next start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edge.broker import EmbeddedBroker
from edge.daemon import Daemon
from tests.edge.mqtt_helpers import Consumer, validate_message
from tests.edge.test_daemon import daemon_config


def _wait(predicate: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def _first_arrivals(consumer: Consumer) -> list[dict[str, Any]]:
    """One consumer's events in arrival order, duplicates (at-least-once) removed by event_id."""
    seen: set[str] = set()
    out = []
    for m in consumer.on("/event"):
        validate_message(m.topic, m.payload)
        doc = m.json()
        if doc["event_id"] not in seen:
            seen.add(doc["event_id"])
            out.append(doc)
    return out


def test_broker_outage_loses_nothing_and_replays_in_order(
    fresh_broker: EmbeddedBroker, tiny_onnx: Path, tmp_path: Path
) -> None:
    # Endless camera at 25 fps; updates every 0.2 s keep events flowing through the outage.
    cfg = daemon_config(
        tmp_path,
        fresh_broker,
        tiny_onnx,
        source={"frames": 0, "fps": 25},
        detector={"score_threshold": 0.9},  # the bright square, not the gradient: a steady trickle
        mqtt={"snapshot": False, "replay_settle_s": 0.5},
    )
    topic = f"{cfg.mqtt.prefix}/#"
    before = Consumer(fresh_broker.host, fresh_broker.port, (topic,))
    daemon = Daemon(cfg)
    codes: list[int] = []
    loop = threading.Thread(target=lambda: codes.append(daemon.run()), daemon=True)
    loop.start()
    after = None
    try:
        assert _wait(lambda: len(before.on("/event")) >= 3), "no events before the outage"
        fresh_broker.stop()
        assert daemon.publisher is not None
        assert _wait(lambda: not daemon.publisher.connected, 5)
        t_down = time.time()
        time.sleep(3.0)  # several seconds without a broker, the camera keeps producing
        assert daemon.publisher.depth()["spool"] >= 5 and loop.is_alive()
        t_up = time.time()
        fresh_broker.start()
        after = Consumer(
            fresh_broker.host, fresh_broker.port, (topic,)
        )  # resubscribes within the settle time
        assert _wait(lambda: daemon.publisher.connected and daemon.publisher.depth()["spool"] == 0, 20)
        assert loop.is_alive()
        daemon.request_stop("test")
        loop.join(15)
        assert codes == [0]
        assert _wait(lambda: after.on("/status") and after.on("/status")[-1].payload == b"stopped", 5)
    finally:
        daemon.request_stop("test")
        before.close()
        if after is not None:
            after.close()
    # The first consumer resubscribes by itself after the restart, so each consumer holds part of
    # the story: each must see its events in order, and together they must hold every event.
    got_before, got_after = _first_arrivals(before), _first_arrivals(after)
    for got in (got_before, got_after):
        seqs = [e["seq"] for e in got]
        assert seqs == sorted(set(seqs)), "events arrived out of order"
    union = {e["seq"]: e for e in got_before + got_after}
    assert sorted(union) == list(range(1, daemon.metrics.events + 1)), "an event was lost"
    during = [e for e in union.values() if t_down <= e["ts"] <= t_up]
    assert len(during) >= 5 and all(e["replayed"] for e in during)
    assert {e["seq"] for e in during} <= {e["seq"] for e in got_after}  # all arrived afterwards
    assert not got_after[-1]["replayed"]  # once the spool has drained, events go straight out again
    statuses = [m.payload for m in after.on("/status")]
    assert statuses[0] == b"online" and statuses[-1] == b"stopped"


def _spawn(config: Path) -> subprocess.Popen[bytes]:
    code = "from edge.entry import main; main()"  # the console entry, as systemd starts it
    return subprocess.Popen(
        [sys.executable, "-c", code, "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a daemon and require its clean exit (code 0); killed if it hangs."""
    try:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out.decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()


def _config_file(tmp_path: Path, broker: EmbeddedBroker, model: Path, frames: int = 0) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(
        f"[device]\nid = 'killme'\ncamera = 'cam'\nstate_dir = '{tmp_path / 'state'}'\n"
        f"[source]\ntype = 'synthetic'\nwidth = 256\nheight = 192\nfps = 25\nframes = {frames}\n"
        f"[detector]\nmodel = '{model}'\nbackend = 'onnxruntime'\nthreads = 1\nscore_threshold = 0.5\n"
        "[tracker]\nmin_hits = 2\nupdate_interval_s = 0.2\n"
        f"[mqtt]\nhost = '{broker.host}'\nport = {broker.port}\nprefix = 'rel'\nreplay_settle_s = 0.2\n"
        "reconnect_min_s = 1\nreconnect_max_s = 1\n"
    )
    return path


def test_sigkill_while_spooling_then_replay_on_next_start(
    fresh_broker: EmbeddedBroker, tiny_onnx: Path, tmp_path: Path
) -> None:
    fresh_broker.stop()
    config = _config_file(tmp_path, fresh_broker, tiny_onnx)
    spool = tmp_path / "state" / "spool"
    first = _spawn(config)
    try:
        assert _wait(lambda: spool.is_dir() and len(list(spool.glob("*.json"))) >= 8, 30), "nothing spooled"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    kept = sorted(spool.glob("*.json"))  # a write cut by the kill may leave a *.tmp: never acknowledged
    assert len(kept) >= 8
    fresh_broker.start()
    consumer = Consumer(fresh_broker.host, fresh_broker.port, ("rel/#",))
    second = _spawn(config)
    try:
        assert _wait(lambda: len(consumer.on("/event")) >= len(kept), 30)
    finally:
        _terminate(second)
        consumer.close()
    events = _first_arrivals(consumer)
    runs = list(dict.fromkeys(e["run_id"] for e in events))
    assert len(runs) == 2  # the killed run's events first, then the new run's
    old = [e for e in events if e["run_id"] == runs[0]]
    assert len(old) >= len(kept) and all(e["replayed"] for e in old)
    assert [e["seq"] for e in old] == list(range(1, len(old) + 1))
    assert events[: len(old)] == old  # replayed before anything new
    assert not list(spool.glob("*.json")) and not list(spool.glob("*.tmp"))  # delivered, so removed


def test_last_will_says_offline_when_killed(
    fresh_broker: EmbeddedBroker, tiny_onnx: Path, tmp_path: Path
) -> None:
    config = _config_file(tmp_path, fresh_broker, tiny_onnx)
    consumer = Consumer(fresh_broker.host, fresh_broker.port, ("rel/killme/status",))
    proc = _spawn(config)
    try:
        assert _wait(lambda: [m.payload for m in consumer.on("/status")][-1:] == [b"online"], 30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert _wait(lambda: [m.payload for m in consumer.on("/status")][-1:] == [b"offline"], 10)
    finally:
        if proc.poll() is None:
            proc.kill()
        consumer.close()
    late = Consumer(fresh_broker.host, fresh_broker.port, ("rel/killme/status",))
    try:
        assert (
            _wait(lambda: late.messages, 5)
            and late.messages[-1].payload == b"offline"
            and late.messages[-1].retain
        )
    finally:
        late.close()


_PRODUCER = """
import sys, time
from pathlib import Path
from edge.config import MqttConfig
from edge.events import EventBuilder, ModelInfo
from edge.mqtt import MqttPublisher
from edge.records import Detection, TrackEvent
from edge.spool import Spool

port, state, count, settle = int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
cfg = MqttConfig(host="127.0.0.1", port=port, prefix="wal", reconnect_min_s=0.2, reconnect_max_s=0.5,
                 replay_settle_s=settle)
pub = MqttPublisher(cfg, "dev", "cam", Spool(state / "spool")).start()
builder = EventBuilder("dev", "cam", ModelInfo("m", "0", "", "onnxruntime"))
det = Detection((0.1, 0.1, 0.2, 0.2), 0.9, ((0.15, 0.15),) * 5)
for i in range(count):
    doc = builder.event(TrackEvent("start" if i == 0 else "update", 1, det), i, time.time(), 64, 48)
    pub.publish_event(doc)
    print(doc["run_id"], doc["seq"], flush=True)  # handed over: the frame loop forgets it now
    time.sleep(0.01)
time.sleep(3600)
"""


def _producer(port: int, state: Path, count: int, settle: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _PRODUCER, str(port), str(state), str(count), str(settle)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _kill(proc: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL ``proc``; the seqs it said it had handed over."""
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=10)
    return [int(line.split()[1]) for line in out.decode().splitlines()]


def test_sigkill_in_any_phase_loses_no_handed_over_event(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """An event is on disk before publish_event returns: SIGKILL while events wait in memory behind
    a replay (the issue's 53 lost events) and while streaming directly; the next start sends them."""
    state = tmp_path / "state"
    fresh_broker.stop()
    first = _producer(fresh_broker.port, state, 100_000, settle=5.0)
    try:
        assert _wait(lambda: len(list((state / "spool").glob("*.json"))) >= 30, 30), "nothing spooled"
        fresh_broker.start()
        consumer = Consumer(fresh_broker.host, fresh_broker.port, ("wal/#",))
        assert consumer.wait_for(lambda c: [m.payload for m in c.on("/status")][-1:] == [b"online"], 10)
        time.sleep(1.5)  # connected, replay not yet begun (settle 5 s): new events wait in memory
    finally:
        handed_replay = _kill(first)
    assert not consumer.on("/event")  # nothing replayed yet: all of it was in the spool or memory
    second = _producer(fresh_broker.port, state, 150, settle=0.2)  # streams directly after the replay
    try:
        assert consumer.wait_for(lambda c: len(c.on("/event")) >= len(handed_replay) + 60, 30)
    finally:
        handed_stream = _kill(second)
    third = _producer(fresh_broker.port, state, 0, settle=0.2)
    try:
        expected = len(handed_replay) + len(handed_stream) + 2  # and an end for each run's open track
        assert consumer.wait_for(
            lambda c: len({m.json()["event_id"] for m in c.on("/event")}) >= expected, 30
        )
        time.sleep(0.5)
    finally:
        _kill(third)
        consumer.close()
    events = _first_arrivals(consumer)
    runs = list(dict.fromkeys(e["run_id"] for e in events))
    for run, handed in zip(runs, (handed_replay, handed_stream), strict=False):
        got = [e["seq"] for e in events if e["run_id"] == run and e["type"] != "end"]
        assert set(handed) <= set(got), f"lost {sorted(set(handed) - set(got))[:10]}"
        assert got == sorted(got)  # in order
        (end,) = [e for e in events if e["run_id"] == run and e["type"] == "end"]  # its open track
        assert end["seq"] == max(got) + 1 and end["replayed"]
    assert len(runs) == 2 and len(handed_replay) > 100  # the first run was killed with plenty in memory


def test_sigkill_with_a_face_in_view_is_closed_by_the_next_start(
    fresh_broker: EmbeddedBroker, tiny_onnx: Path, tmp_path: Path
) -> None:
    """Retained messages stay true: after SIGKILL the next start says faces 0 and ends the open
    track; after its clean stop the state says the camera is offline."""
    config = _config_file(tmp_path, fresh_broker, tiny_onnx)
    consumer = Consumer(fresh_broker.host, fresh_broker.port, ("rel/#",))
    first = _spawn(config)
    try:
        assert consumer.wait_for(lambda c: any(m.json()["type"] == "start" for m in c.on("/event")), 30)
        assert consumer.wait_for(lambda c: c.on("/state") and c.on("/state")[-1].json()["faces"] >= 1, 10)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    started = [m.json() for m in consumer.on("/event") if m.json()["type"] == "start"]
    killed_run = started[0]["run_id"]
    open_tracks = {e["faces"][0]["track_id"] for e in started} - {
        m.json()["faces"][0]["track_id"] for m in consumer.on("/event") if m.json()["type"] == "end"
    }
    assert open_tracks
    second = _spawn(config)
    try:
        assert consumer.wait_for(
            lambda c: (
                {
                    m.json()["faces"][0]["track_id"]
                    for m in c.on("/event")
                    if m.json()["type"] == "end" and m.json()["run_id"] == killed_run
                }
                >= open_tracks
            ),
            30,
        ), "the killed run's open track never ended"
    finally:
        _terminate(second)
        consumer.close()
    for m in consumer.messages:
        validate_message(m.topic, m.payload)
    new_states = [m.json() for m in consumer.on("/state") if m.json()["run_id"] != killed_run]
    assert new_states[0]["faces"] == 0  # the stale "faces: 1" is replaced at once
    late = Consumer(fresh_broker.host, fresh_broker.port, ("rel/killme/#",))
    try:
        assert late.wait_for(lambda c: c.on("/state") and c.on("/status"), 5)
        assert late.on("/status")[-1].payload == b"stopped"
        final = late.on("/state")[-1].json()
        assert (final["faces"], final["source_status"]) == (0, "offline")
    finally:
        late.close()
