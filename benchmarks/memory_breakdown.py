"""What each import and each runtime session adds to the daemon's resident memory.

``python -m benchmarks.memory_breakdown [--model FILE] [--size 640x480] [--threads 2]`` runs, for each
runtime, a fresh process that imports what the daemon imports step by step, then loads the model,
runs one warm-up at the model's nominal size (as the daemon does) and 20 frames at ``--size``, and
prints ``VmRSS`` / ``VmHWM`` after each step (MB), as a markdown table. Each runtime is opened exactly
as the daemon opens it (``edge.backends``), and the daemon's malloc settings (``edge.memory``) apply.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.child import ChildFailed, run_module

ROOT = Path(__file__).resolve().parents[1]


def _status() -> tuple[float, float]:
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return round(values["VmRSS"], 1), round(values["VmHWM"], 1)


def child(runtime: str, model: str, size: tuple[int, int], threads: int) -> list[tuple[str, float, float]]:
    rows = [("python", *_status())]
    import numpy as np

    rows.append(("+ numpy", *_status()))
    import cv2  # noqa: F401

    rows.append(("+ opencv", *_status()))
    import paho.mqtt.client  # noqa: F401  (imports ssl)

    rows.append(("+ paho-mqtt (with ssl)", *_status()))
    import edge.daemon  # noqa: F401
    from edge.memory import tune_malloc

    tune_malloc()
    rows.append(("+ edge.daemon (all edge modules)", *_status()))
    if runtime == "onnxruntime":
        import onnxruntime  # noqa: F401
    else:
        import openvino  # noqa: F401
    rows.append((f"+ import {runtime}", *_status()))
    from edge.detector import load_detector

    detector = load_detector(model, backend=runtime, threads=threads)
    rows.append(("+ model loaded, warm-up at its nominal size", *_status()))
    w, h = size
    frame = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    for _ in range(20):
        detector.detect(frame)
    rows.append((f"+ 20 frames at {w}x{h}", *_status()))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "edge" / "models" / "featherface-nano-b.onnx"))
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runtimes", default="onnxruntime,openvino")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.child:
        print(json.dumps(child(args.child, args.model, size, args.threads)))  # type: ignore[arg-type]
        return 0
    for runtime in args.runtimes.split(","):
        child_args = ["--model", args.model, "--size", args.size, "--threads", str(args.threads)]
        try:
            rows = run_module("benchmarks.memory_breakdown", [*child_args, "--child", runtime])
        except ChildFailed as exc:
            print(f"{runtime}: failed\n{exc.tail}", file=sys.stderr)
            continue
        print(f"\n**{runtime}** ({Path(args.model).name}, {args.threads} threads)\n")
        print("| step | RSS MB | added | peak (VmHWM) MB |\n|---|---:|---:|---:|")
        prev = 0.0
        for name, rss, hwm in rows:
            print(f"| {name} | {rss:.1f} | {rss - prev:+.1f} | {hwm:.1f} |")
            prev = rss
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
