"""Benchmark the whole edge pipeline: synthetic 640x480 camera -> detector -> tracker -> MQTT.

For each backend (ONNX Runtime, OpenVINO) a child process runs the real :class:`edge.daemon.Daemon`
against an embedded broker on loopback, with a consumer subscribed like any other, and reports:

- ``fps``: frames through the whole loop per second (detector + tracker + publish), after warm-up;
- ``infer_ms_mean``: the detector's share per frame;
- ``capture_to_consumer_ms`` p50/p99: from a frame's capture timestamp to the consumer receiving
  the event built from it (an upper bound of capture-to-publish: it includes the loopback hop
  through the broker). The tracker is set to emit an update for every frame so every frame is timed;
- ``peak_rss_mb``: the child's peak resident memory (``VmHWM``: model, runtime, buffers, paho, spool).

Two camera models (``--fps``):

- ``--fps 30`` (default): the synthetic source stands in for a 30-fps camera (``source.live``): frames
  arrive at that rate whether or not the loop is ready, and only the newest is kept, as with a real
  camera. Latency is then what a user sees: capture to event, never a backlog.
- ``--fps 0``: frames as fast as the loop takes them, each one processed (a file source): the
  pipeline's throughput. Latency here includes the wait in the source's 4-frame queue.

Usage::

    python -m benchmarks.edge_pipeline --model edge/models/featherface-nano-b.onnx --frames 300 --threads 2
    python -m benchmarks.edge_pipeline --model model.onnx --fps 0 --backends onnxruntime   # throughput

Prints one JSON object per backend and a summary table; state the machine when quoting numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.child import ChildFailed, run_module
from benchmarks.memprobe import peak_rss_kib

SAMPLE = Path(__file__).resolve().parents[1] / "edge" / "samples" / "astronaut.png"


def _percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if values else float("nan")


def run_child(
    model: str, backend: str, frames: int, threads: int, width: int, height: int, fps: float = 30.0
) -> dict[str, Any]:
    """One backend, in this process: returns the measurements as a dict."""
    import paho.mqtt.client as paho

    from edge.broker import EmbeddedBroker
    from edge.config import parse_config
    from edge.daemon import Daemon

    received: list[tuple[float, float]] = []  # (event capture ts, receive time)
    ready = threading.Event()
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as state:
        cfg = parse_config(
            {
                "device": {"id": "bench", "camera": "cam", "state_dir": state},
                "source": {
                    "type": "synthetic",
                    "path": str(SAMPLE),
                    "width": width,
                    "height": height,
                    "frames": frames,
                    "fps": fps,
                    "live": fps > 0,
                },
                "detector": {"model": model, "backend": backend, "threads": threads},
                # An update per frame per face (material_change tiny), so every frame is timed.
                "tracker": {"min_hits": 1, "update_interval_s": 0.001, "material_change": 1e-6},
                "mqtt": {
                    "host": broker.host,
                    "port": broker.port,
                    "prefix": "bench",
                    "replay_settle_s": 0.0,
                    "queue_size": 100000,
                    "max_inflight": 200,
                },
            },
            origin="benchmark",
            environ={},
        )
        client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        client.on_connect = lambda c, *_: c.subscribe("bench/bench/cam/event", qos=1)
        client.on_subscribe = lambda *_: ready.set()
        client.on_message = lambda _c, _u, m: received.append((json.loads(m.payload)["ts"], time.time()))
        client.connect(broker.host, broker.port)
        client.loop_start()
        ready.wait(10)
        daemon = Daemon(cfg)
        code = daemon.run()
        time.sleep(1.0)  # the last deliveries
        client.disconnect()  # wakes the network loop first
        client.loop_stop()
    lat = [(rx - ts) * 1e3 for ts, rx in received[len(received) // 10 :]]  # skip warm-up tenth
    m = daemon.metrics
    stats = m.snapshot()
    return {
        "backend": daemon.detector.runtime,
        "model": f"{daemon.detector.meta.name} {daemon.detector.meta.version}",
        "frames": daemon.metrics.frames,
        "frame_size": f"{width}x{height}",
        "camera_fps": fps,
        "dropped_frames": getattr(getattr(daemon.source, "inner", daemon.source), "dropped_frames", None),
        "threads": threads,
        "exit_code": code,
        # Steady state: first to last processed frame, so start-up and the shutdown drain do not count.
        "fps": round((m.frames - 1) / max(1e-9, m.last_at - m.first_at), 2),
        "infer_ms_mean": stats["inference_ms"],
        "events": daemon.metrics.events,
        "events_received": len(received),
        "capture_to_consumer_ms": {"p50": _percentile(lat, 50), "p99": _percentile(lat, 99)},
        "peak_rss_mb": round(peak_rss_kib() / 1024, 1),
        "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", required=True, help="ONNX (or OpenVINO .xml) model with the FeatherFace contract"
    )
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument(
        "--fps", type=float, default=30.0, help="camera rate (live source); 0: every frame, flat out"
    )
    ap.add_argument("--backends", default="onnxruntime,openvino")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(
            json.dumps(
                run_child(
                    args.model, args.child, args.frames, args.threads, args.width, args.height, args.fps
                )
            )
        )
        return 0
    results = []
    for backend in args.backends.split(","):
        # A child per backend: peak RSS and runtime thread pools must not mix.
        child_args = ["--model", args.model, "--frames", str(args.frames), "--threads", str(args.threads)]
        child_args += ["--width", str(args.width), "--height", str(args.height), "--fps", str(args.fps)]
        try:
            result = run_module("benchmarks.edge_pipeline", [*child_args, "--child", backend])
        except ChildFailed as exc:
            print(f"{backend}: failed\n{exc.tail}", file=sys.stderr)
            continue
        results.append(result)
        print(json.dumps(result))
    print(f"\n{'backend':<12} {'fps':>8} {'infer ms':>9} {'p50 ms':>8} {'p99 ms':>8} {'RSS MB':>8}")
    for r in results:
        lat = r["capture_to_consumer_ms"]
        print(
            f"{r['backend']:<12} {r['fps']:>8} {r['infer_ms_mean']:>9} {lat['p50']:>8} {lat['p99']:>8} "
            f"{r['peak_rss_mb']:>8}"
        )
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
