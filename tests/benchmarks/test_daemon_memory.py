"""benchmarks.daemon_memory measures the daemon it started: the installed entry, the chosen runtime."""

from __future__ import annotations

import argparse

from benchmarks.daemon_memory import ROOT, measure


def test_samples_the_running_daemon() -> None:
    model = ROOT / "edge" / "models" / "featherface-nano-b.onnx"  # the shipped model, in the repository
    args = argparse.Namespace(
        model=str(model), backend="onnxruntime", size="320x240", fps=20.0, threads=1, seconds=4.0
    )
    r = measure(args)
    # the daemon was sampled while running: RSS of a Python process with numpy, OpenCV and ORT
    assert 40 < r["floor"] <= r["max_sample"] <= r["peak"]  # type: ignore[operator]
    assert "onnxruntime" in r["loaded"] and "openvino" not in r["loaded"]  # type: ignore[operator]
