"""Where a model's time goes: per-operator profile on ONNX Runtime and OpenVINO, one thread.

``python -m benchmarks.profile [--model FILE ...] [--size 320x240] [--runs 100]`` runs each model on a
real photo (``../shared/data/photos/1.jpg`` resized, or noise without ../shared) and prints, per
runtime, the operator types that take the most time, with their share, the number of kernels, and
(for convolutions) what kind they are: ``dw`` depthwise, ``grouped``, ``1x1``, ``kxk``, and whether ONNX
Runtime ran them in its blocked NCHWc layout (``nchwc``; needs channel counts in whole SIMD blocks).

- ONNX Runtime: the session profiler (``enable_profiling``) over ``--runs`` runs, kernel times only,
  on the graph as ORT optimised it (so fused and layout-transformed nodes are what is counted);
- OpenVINO: ``PERF_COUNT`` per-layer counters (what ``benchmark_app -pc`` prints), summed by
  layer type over ``--runs`` runs, f32.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from edge.model import default_model_path

ROOT = Path(__file__).resolve().parents[1]


def _input(path: Path, w: int, h: int, shared: Path) -> np.ndarray:
    """The model's own pre-processing of a real photo (contract models) or a YuNet-style raw BGR blob."""
    import cv2

    from edge.detector import preprocess
    from edge.model import read_model

    photo = cv2.imread(str(shared / "data" / "photos" / "1.jpg"))
    image = (
        cv2.resize(photo, (w, h))
        if photo is not None
        else np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)
    )
    try:
        return preprocess(image, read_model(path).meta).tensor
    except Exception:  # a peer without our contract: raw BGR, sides padded to 32 (YuNet / SCRFD)
        ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
        out = np.zeros((1, 3, ph, pw), np.float32)
        out[0, :, :h, :w] = image.transpose(2, 0, 1)
        return out


def _conv_kind(node, inits) -> str:
    import onnx

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    w = inits.get(node.input[1]) if len(node.input) > 1 else None
    group = int(attrs.get("group", 1))
    if w is None:
        return "conv"
    _out_c, in_per_group, kh, kw = list(w.dims)
    kind = "dw" if group > 1 and in_per_group == 1 else "grouped" if group > 1 else f"{kh}x{kw}"
    return f"{kind} nchwc" if node.domain == "com.microsoft.nchwc" else kind


def profile_onnxruntime(path: Path, tensor: np.ndarray, runs: int) -> tuple[dict, float, int]:
    """``({op label: total µs per run}, total µs per run, kernels per run)``."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "prof")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: tensor}
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
        graph = onnx.load(opts.optimized_model_filepath).graph
    inits = {i.name: i for i in graph.initializer}
    label = {}
    for node in graph.node:
        kind = _conv_kind(node, inits) if "Conv" in node.op_type else ""
        label[node.name] = f"{node.op_type} ({kind})" if kind else node.op_type
    totals: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            key = label.get(name, e["args"].get("op_name", name))
            totals[key] += e["dur"] / runs
            counts[key] += 1
    total = sum(totals.values())
    # The first run is profiled too (it is part of every count); kernels per run from the counts.
    return {k: (v, counts[k] // runs) for k, v in totals.items()}, total, sum(counts.values()) // runs


def profile_openvino(path: Path, tensor: np.ndarray, runs: int) -> tuple[dict, float, int]:
    import openvino as ov

    core = ov.Core()
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": 1,
        "PERF_COUNT": True,
    }
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    totals: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.Counter()
    for _ in range(runs):
        request.infer({0: tensor})
        for info in request.profiling_info:
            if info.status != info.Status.EXECUTED:
                continue
            key = f"{info.node_type} ({info.exec_type})"
            totals[key] += info.real_time.total_seconds() * 1e6 / runs
            counts[key] += 1
    return (
        {k: (v, counts[k] // runs) for k, v in totals.items()},
        sum(totals.values()),
        sum(counts.values()) // runs,
    )


def table(title: str, rows: dict, total: float, kernels: int, top: int) -> str:
    out = [
        f"**{title}** — {total / 1000:.2f} ms per run in {kernels} kernels",
        "",
        "| operator | ms | share | kernels |",
        "|---|---:|---:|---:|",
    ]
    for op, (us, n) in sorted(rows.items(), key=lambda kv: -kv[1][0])[:top]:
        out.append(f"| {op} | {us / 1000:.3f} | {100 * us / total:.1f} % | {n} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], help="ONNX file (repeatable); default: shipped")
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--runtimes", default="onnxruntime,openvino")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    shared = Path(args.shared)
    for model in [Path(m) for m in args.model] or [default_model_path()]:
        tensor = _input(model, w, h, shared)
        for runtime in args.runtimes.split(","):
            fn = profile_onnxruntime if runtime == "onnxruntime" else profile_openvino
            rows, total, kernels = fn(model, tensor, args.runs)
            shape = "×".join(map(str, tensor.shape[2:][::-1]))
            print(table(f"{model.name}, {runtime}, 1 thread, input {shape}", rows, total, kernels, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
