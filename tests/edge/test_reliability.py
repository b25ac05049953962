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
    code = "from edge.cli import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


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
        second.send_signal(signal.SIGTERM)
        out, _ = second.communicate(timeout=20)
        assert second.returncode == 0, out.decode()[-2000:]
    finally:
        if second.poll() is None:
            second.kill()
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
