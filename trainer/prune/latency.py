"""Measured single-thread latency of a (pruned) network, for the B-FPGM search's latency term.

Multiply-adds and parameter counts do not predict CPU time here: a pruned Nano-B with 43 % fewer
MACs than the unpruned one ran *slower* under ONNX Runtime, because odd channel counts fall off its
blocked (NCHWc) kernels (docs/BENCHMARKS.md). So a trial's cost is measured on the real runtime: the
physically pruned network is exported to ONNX in memory and timed by ONNX Runtime on one thread.
The minimum over repeated runs is taken: it is what the network costs when nothing else interferes,
and it moves far less than a mean or median while other work shares the machine.
"""

from __future__ import annotations

import copy
import io
import time
import warnings

import numpy as np
import torch
from torch import nn


def onnx_latency_ms(model: nn.Module, size: tuple[int, int] = (320, 240), runs: int = 30) -> float:
    """Minimum wall time (ms) of one ONNX Runtime CPU inference, 1 thread, at ``size`` = (W, H)."""
    import onnxruntime as ort

    w, h = size
    net = copy.deepcopy(model).cpu().eval()
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter: a second or two, where torch.export takes ten times that per trial.
        torch.onnx.export(net, (torch.zeros(1, 3, h, w),), buf, dynamo=False, opset_version=17)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    feed = {
        session.get_inputs()[0].name: np.random.default_rng(0).uniform(0, 255, (1, 3, h, w)).astype("float32")
    }
    for _ in range(5):
        session.run(None, feed)
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - t)
    return 1000.0 * best
