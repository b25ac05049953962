"""What ONNX Runtime's offline optimiser changes in a model, and whether a pre-optimised file is faster.

``python -m benchmarks.ort_offline [--model FILE] [--size 320x240] [--runs 200]``

For each optimisation level (basic, extended, all) ONNX Runtime optimises the file and saves the graph
(``SessionOptions.optimized_model_filepath``). The saved graph is compared with the file node type
by node type and, loaded with optimisations off, run on a real photo against the file as the edge
runs it (``ORT_ENABLE_ALL`` at load): largest output difference, session creation time and inference
time, one thread, the edge's session settings, round-robin rounds so neither side is always first.

The question it answers (issue 13): the edge already optimises at load, so a saved graph can only
win if the saved form runs differently from the one built in memory, or if start-up matters.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.compare import parse_sizes
from benchmarks.profile import _input
from edge.model import default_model_path

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ("basic", "extended", "all")


def _session(path: Path, level: str, save_to: Path | None = None):
    """An ORT session with the edge's settings (edge/backends.py) at ``level`` ("off" = none)."""
    import onnxruntime as ort

    levels = {
        "off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = levels[level]
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = False
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if save_to is not None:
        opts.optimized_model_filepath = str(save_to)
    t0 = time.perf_counter()
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess, (time.perf_counter() - t0) * 1e3


def _ops(path: Path) -> collections.Counter:
    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _diff(before: collections.Counter, after: collections.Counter) -> str:
    changed = sorted(set(before) | set(after), key=lambda op: -(after[op] - before[op]))
    return ", ".join(f"{op} {before[op]}→{after[op]}" for op in changed if before[op] != after[op]) or "none"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=default_model_path())
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = ap.parse_args()
    (w, h) = parse_sizes(args.size)[0]
    tensor = _input(args.model, w, h, args.shared)
    original = _ops(args.model)
    print(f"{args.model}: {sum(original.values())} nodes; input {tuple(tensor.shape)}, 1 thread")
    with tempfile.TemporaryDirectory() as tmp:
        base, base_ms = _session(args.model, "all")
        name = base.get_inputs()[0].name
        ref = base.run(None, {name: tensor})
        subjects = {"file, optimised at load (the edge)": (base, base_ms)}
        for level in LEVELS:
            saved = Path(tmp) / f"{level}.onnx"
            try:
                _session(args.model, level, saved)
                sess, ms = _session(saved, "off")
            except Exception as exc:  # a level whose graph ORT cannot save or reload
                print(f"| {level} | not saved: {str(exc).splitlines()[0]} |")
                continue
            out = sess.run(None, {name: tensor})
            worst = max(float(np.abs(a - b).max()) for a, b in zip(ref, out, strict=True))
            ops = _ops(saved)
            print(
                f"| {level} | {sum(ops.values())} nodes | max |Δ| {worst:.1e} | "
                f"{saved.stat().st_size} bytes | {_diff(original, ops)} |"
            )
            subjects[f"saved at '{level}', loaded with optimisations off"] = (sess, ms)
        times: dict[str, list[float]] = {label: [] for label in subjects}
        order = list(subjects.items())
        for _ in range(10):
            for _, (sess, _) in order:
                sess.run(None, {name: tensor})
        for r in range(args.runs):
            k = r % len(order)
            for label, (sess, _) in order[k:] + order[:k]:
                t0 = time.perf_counter()
                sess.run(None, {name: tensor})
                times[label].append((time.perf_counter() - t0) * 1e3)
    first = statistics.median(times[order[0][0]])
    print("\n| graph | session creation ms | inference ms (median) | ratio |")
    print("|---|---:|---:|---:|")
    for label, (_, ms) in order:
        med = statistics.median(times[label])
        print(f"| {label} | {ms:.0f} | {med:.2f} | {med / first:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
