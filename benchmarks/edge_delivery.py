"""What the edge's delivery guarantee costs, and how soon a returning broker gets the spool.

``python -m benchmarks.edge_delivery [--events 1500] [--rate 100] [--outage 20] [--runs 3]`` prints:

- ``publish_event``: the frame loop's time per call (p50/p99/max, µs) against a real broker on
  loopback (``edge.broker.EmbeddedBroker``), ``--events`` events at ``--rate`` per second; with the
  worker's fdatasync count and mean (the journal's group commit);
- ``journal``: ``Journal.append`` alone (the frame loop's share), ``settle`` (the worker, with the
  segment rotation that follows a caught-up journal) and ``sync`` (fdatasync of ~5 events);
- ``recovery``: start-up time to move 1,000 journaled events of a killed run into the spool;
- ``reconnect`` (``--outage`` > 0): seconds from the broker's return after ``--outage`` seconds away
  to the first delivered event, default ``[mqtt]`` settings, ``--runs`` times.

Files go to a temporary folder under ``--dir`` (default: the system's), so point it at the file system
the spool will live on.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from edge.broker import EmbeddedBroker
from edge.config import MqttConfig
from edge.events import EventBuilder, ModelInfo
from edge.journal import Journal
from edge.mqtt import MqttPublisher
from edge.records import Detection, TrackEvent
from edge.spool import Spool

DET = Detection((0.1, 0.1, 0.2, 0.2), 0.9, ((0.15, 0.15),) * 5)
BUILDER = EventBuilder("dev", "cam", ModelInfo("featherface-nano-b", "1", "0" * 64, "onnxruntime"))


def _event(i: int) -> dict:
    return BUILDER.event(TrackEvent("update", 1, DET), i, time.time(), 640, 480)


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[int(q * (len(values) - 1))]


def publish_cost(root: Path, events: int, rate: float) -> str:
    with EmbeddedBroker() as broker:
        cfg = MqttConfig(host=broker.host, port=broker.port)
        pub = MqttPublisher(cfg, "dev", "cam", Spool(root / "publish")).start()
        while not pub.connected:
            time.sleep(0.05)
        cost = []
        for i in range(events):
            doc = _event(i)
            t0 = time.perf_counter()
            pub.publish_event(doc)
            cost.append((time.perf_counter() - t0) * 1e6)
            time.sleep(1 / rate)
        time.sleep(1)
        pub.stop(2)
    j = pub.journal
    return (
        f"publish_event, {events} events at {rate:g}/s: p50 {_pct(cost, 0.5):.0f} us, "
        f"p99 {_pct(cost, 0.99):.0f} us, max {max(cost):.0f} us; {pub.counters['published']} acknowledged; "
        f"worker: {j.syncs} fdatasync, mean {j.sync_s / max(1, j.syncs) * 1e3:.2f} ms"
    )


def journal_cost(root: Path, events: int = 2000) -> str:
    j = Journal(root / "journal")
    j.directory.mkdir()
    j.start()
    append, settle, sync = [], [], []
    for i in range(events):
        doc = _event(i)
        t0 = time.perf_counter()
        seg = j.append(doc)
        append.append((time.perf_counter() - t0) * 1e6)
        if i % 5 == 4:  # 25 events/s and a 0.2 s group commit: one fdatasync per 5 events
            t0 = time.perf_counter()
            j.sync()
            sync.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        j.settle(seg)  # acknowledged at once: the journal is caught up and rotates
        settle.append((time.perf_counter() - t0) * 1e6)
    j.close()
    return (
        f"journal, {events} events: append p50 {_pct(append, 0.5):.0f} us p99 {_pct(append, 0.99):.0f} us; "
        f"settle p50 {_pct(settle, 0.5):.0f} us p99 {_pct(settle, 0.99):.0f} us; "
        f"fdatasync p50 {_pct(sync, 0.5):.2f} ms p99 {_pct(sync, 0.99):.2f} ms"
    )


def recovery_cost(root: Path, events: int = 1000) -> str:
    d = root / "recovery"
    d.mkdir()
    j = Journal(d)
    j.start()
    for i in range(events):
        j.append(_event(i))
    pub = MqttPublisher(MqttConfig(host="127.0.0.1", port=1), "dev", "cam", Spool(d))
    t0 = time.perf_counter()
    pub._recover()
    took = time.perf_counter() - t0
    return f"recovery: {len(pub.spool)} events (incl. end events) into the spool in {took:.2f} s"


def reconnect_bound(root: Path, outage: float, runs: int) -> str:
    from tests.edge.mqtt_helpers import Consumer

    waits = []
    for run in range(runs):
        with EmbeddedBroker() as broker:
            broker.stop()
            cfg = MqttConfig(host=broker.host, port=broker.port, prefix=f"m{uuid.uuid4().hex[:6]}")
            pub = MqttPublisher(cfg, "dev", "cam", Spool(root / f"reconnect{run}")).start()
            pub.publish_event(_event(1))
            time.sleep(outage)
            broker.start()
            back = time.time()
            consumer = Consumer(broker.host, broker.port, (f"{cfg.prefix}/+/+/event",))
            consumer.wait_for(lambda c: bool(c.messages), 30)
            waits.append(consumer.messages[0].at - back)
            consumer.close()
            pub.stop(1)
    return f"reconnect after {outage:g} s away: broker back -> first event " + ", ".join(
        f"{w:.1f} s" for w in waits
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1500)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--outage", type=float, default=20.0, help="0 = skip the reconnect runs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        print(publish_cost(root, args.events, args.rate), flush=True)
        print(journal_cost(root), flush=True)
        print(recovery_cost(root), flush=True)
        if args.outage > 0:
            print(reconnect_bound(root, args.outage, args.runs), flush=True)


if __name__ == "__main__":
    main()
