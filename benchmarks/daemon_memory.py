"""Resident memory of the daemon itself, started the way systemd starts it.

``python -m benchmarks.daemon_memory [--model FILE] [--backend onnxruntime] [--size 640x480]
[--fps 30] [--seconds 12]`` starts a broker on a free loopback port, writes a config (a live
synthetic camera at ``--size`` and ``--fps``, the detector, MQTT to that broker), runs
``featherface-edge run -c CONFIG`` (the console entry the service runs) and reads ``VmRSS`` from
``/proc/<pid>/status`` every 50 ms. After ``--seconds`` it reads ``VmHWM`` and stops the daemon.

It prints one markdown row: the floor (the lowest sample after the first frame: the daemon between
frames), the highest sample, the peak (``VmHWM``, or a higher sample: the kernel updates it lazily;
the number the budget is about), and
which runtime and optional libraries the daemon had mapped (``/proc/<pid>/maps``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge.broker import EmbeddedBroker

ROOT = Path(__file__).resolve().parents[1]
# Shared libraries that tell which optional imports the daemon made.
MARKERS = {"ssl": "_ssl.", "openvino": "libopenvino.", "onnxruntime": "onnxruntime_pybind"}


def status_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) / 1024
    return out


def loaded(pid: int) -> list[str]:
    """Which of :data:`MARKERS` the process has mapped (a module's shared library, or a Python file
    of the package for pure-Python ones)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name, marker in MARKERS.items() if marker in maps]


def entry_command() -> list[str]:
    script = Path(sys.executable).with_name("featherface-edge")
    if script.exists():
        return [str(script)]
    found = shutil.which("featherface-edge")
    if found is None:
        raise SystemExit("featherface-edge is not installed in this environment (pip install -e .)")
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
"""


def measure(args: argparse.Namespace) -> dict[str, object]:
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as state:
        cfg = Path(state) / "edge.toml"
        cfg.write_text(config_text(args, broker.port, state))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        proc = subprocess.Popen(
            [*entry_command(), "run", "-c", str(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        samples: list[float] = []
        try:
            start = time.monotonic()
            while time.monotonic() - start < args.seconds:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise SystemExit(f"the daemon exited with {proc.returncode}: {err.strip()[-400:]}")
                samples.append(status_mb(proc.pid)["VmRSS"])
                time.sleep(0.05)
            peak = status_mb(proc.pid)["VmHWM"]
            libs = loaded(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    # The first samples are start-up (imports, model load); frames run in the last two thirds.
    steady = samples[len(samples) // 3 :]
    # The kernel updates VmHWM lazily (when memory is unmapped), so a sample can exceed it.
    return {"floor": min(steady), "max_sample": max(steady), "peak": max(peak, *samples), "loaded": libs}


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
