"""Resident memory of the daemon itself, started the way systemd starts it.

``python -m benchmarks.daemon_memory [--model FILE] [--backend onnxruntime] [--size 640x480]
[--fps 30] [--seconds 12]`` starts a broker on a free loopback port, writes a config (a live
synthetic camera at ``--size`` and ``--fps``, the detector, MQTT to that broker), runs
``featherface-edge run -c CONFIG`` (the console entry the service runs) and reads ``VmRSS`` from
``/proc/<pid>/status`` every 50 ms. Sampling for the floor starts when the daemon's first stats
message on the broker counts frames (the model is loaded and the loop runs); ``--seconds`` after that
it reads ``VmHWM`` and stops the daemon.

It prints one markdown row: the floor (the lowest sample while frames flow: the daemon between
frames), the highest sample, the peak (``VmHWM``, or a higher sample: the kernel updates it lazily;
the number the budget is about), and
which runtime and optional libraries the daemon had mapped (``/proc/<pid>/maps``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from edge.broker import EmbeddedBroker

ROOT = Path(__file__).resolve().parents[1]
# Shared libraries that tell which optional imports the daemon made.
STARTUP_S = 120.0  # longest wait for the first frames (a Pi's cold start)
MARKERS = {"ssl": "_ssl.", "openvino": "libopenvino.", "onnxruntime": "onnxruntime_pybind"}


def status_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) / 1024
    return out


def loaded(pid: int) -> list[str]:
    """Which of :data:`MARKERS` the process has mapped (by their shared libraries)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name, marker in MARKERS.items() if marker in maps]


def entry_command() -> list[str]:
    """The installed console script; refused when it predates the daemon's own entry (edge.entry),
    whose numbers would then include the CLI framework."""
    script = Path(sys.executable).with_name("featherface-edge")
    found = str(script) if script.exists() else shutil.which("featherface-edge")
    if found is None:
        raise SystemExit("featherface-edge is not installed in this environment (pip install -e .)")
    if "edge.entry" not in Path(found).read_text(errors="replace"):
        raise SystemExit(f"{found} is an older install (its entry is not edge.entry): pip install -e .")
    return [found]


def config_text(args: argparse.Namespace, port: int, state: str) -> str:
    w, h = (int(v) for v in args.size.lower().split("x"))
    return f"""
[device]
id = "bench"
state_dir = "{state}"
log_level = "WARNING"

[source]
type = "synthetic"
width = {w}
height = {h}
fps = {args.fps}
live = true

[detector]
model = "{args.model}"
backend = "{args.backend}"
threads = {args.threads}

[mqtt]
host = "127.0.0.1"
port = {port}
prefix = "bench"
stats_interval_s = 0.5
"""


@contextlib.contextmanager
def _frames_seen(host: str, port: int) -> Iterator[threading.Event]:
    """An event set once a stats message of the daemon counts frames (a subscriber on the broker)."""
    import paho.mqtt.client as mqtt

    seen = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            if json.loads(msg.payload).get("frames", 0) > 0:
                seen.set()
        except ValueError:
            pass

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = on_message
    client.connect(host, port)
    client.subscribe("bench/+/stats")
    client.loop_start()
    try:
        yield seen
    finally:
        client.loop_stop()
        client.disconnect()


def _sample(pid: int) -> dict[str, float] | None:
    """``VmRSS`` / ``VmHWM`` in MB, or None once the process has gone (a zombie has no Vm lines)."""
    try:
        values = status_mb(pid)
    except OSError:
        return None
    return values if "VmRSS" in values else None


def measure(args: argparse.Namespace) -> dict[str, object]:
    with (
        EmbeddedBroker() as broker,
        tempfile.TemporaryDirectory() as state,
        _frames_seen(broker.host, broker.port) as frames,
    ):
        cfg = Path(state) / "edge.toml"
        cfg.write_text(config_text(args, broker.port, state))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        with (Path(state) / "stderr.log").open("wb") as err:
            proc = subprocess.Popen(
                [*entry_command(), "run", "-c", str(cfg)], env=env, stdout=subprocess.DEVNULL, stderr=err
            )
        samples: list[float] = []  # every sample, start-up included (the peak)
        steady: list[float] = []  # samples while frames flow (the floor)
        try:
            deadline = time.monotonic() + STARTUP_S
            while not frames.is_set():
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
                s = _sample(proc.pid)
                if s:
                    samples.append(s["VmRSS"])
                time.sleep(0.05)
            end = time.monotonic() + args.seconds
            while frames.is_set() and time.monotonic() < end:
                s = _sample(proc.pid)
                if s is None:
                    break
                samples.append(s["VmRSS"])
                steady.append(s["VmRSS"])
                time.sleep(0.05)
            last = _sample(proc.pid)
            try:
                libs = loaded(proc.pid)
            except OSError:  # gone since the last sample
                last, libs = None, []
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not steady or last is None:
            tail = (Path(state) / "stderr.log").read_text(errors="replace").strip()[-600:]
            raise SystemExit(
                f"the daemon never reported frames or stopped early (exit {proc.returncode}): {tail}"
            )
    # The kernel updates VmHWM lazily (when memory is unmapped), so a sample can exceed it.
    return {
        "floor": min(steady),
        "max_sample": max(steady),
        "peak": max(last["VmHWM"], *samples),
        "loaded": libs,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "edge" / "models" / "featherface-nano-b.onnx"))
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=12.0)
    args = ap.parse_args()
    r = measure(args)
    print("| backend | frame | floor MB | highest sample MB | peak MB | loaded |")
    print("|---|---|---:|---:|---:|---|")
    print(
        f"| {args.backend} | {args.size} @ {args.fps:g} fps | "
        f"{r['floor']:.1f} | {r['max_sample']:.1f} | {r['peak']:.1f} | {', '.join(r['loaded'])} |"  # type: ignore[arg-type]
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
