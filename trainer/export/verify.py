"""Every exported file runs before it is reported written (STYLE 7: export proves parity).

A file is opened the way the edge opens it (:func:`edge.model.read_model`, then the runtime's
backend) and run on a fixed pseudo-image at two input sizes: the nominal size and an odd size near
half of it (a dynamic graph must follow sizes that are not multiples of the strides); a static graph
at its one size. Every output must be finite and shaped for the priors of that size; an FP32 file's
outputs must also equal PyTorch's within :data:`TOLERANCE` of each output's magnitude (float32
re-association: folded BN, fused kernels; for the class probabilities, of their logits' magnitude:
an untrained network's logits run to hundreds, and the kernels of an AVX2 CPU round them otherwise
than an AVX-512 one's). An INT8 file is checked for running, not for parity.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge.anchors import prior_boxes
from edge.contract import ModelMeta

# |runtime - PyTorch| <= TOLERANCE * max(1, max |PyTorch output|), per output. The official V1's
# FP32 files are within 5e-6 of their outputs' magnitude (2.7e-5 on boxes up to 6.3, ONNX Runtime and
# OpenVINO, 320x240 to 640x640); a wiring mistake is off by the magnitude itself.
TOLERANCE = 1e-4
# A reference entry ``<role>:scale`` replaces an output's own magnitude in the tolerance: the class
# probabilities' error follows their logits' size, not theirs (at most 1).
SCALE_SUFFIX = ":scale"

Reference = Callable[[np.ndarray], dict[str, np.ndarray]]


class VerifyError(Exception):
    """An exported file failed its warm-up (the exporter turns it into an ExportError)."""


def check_sizes(meta: ModelMeta) -> list[tuple[int, int]]:
    """``[(W, H), ...]`` to warm a file up at: the nominal size, and an odd one near half (dynamic)."""
    w, h = meta.input.width, meta.input.height
    if not meta.input.dynamic:
        return [(w, h)]
    return [(w, h), (max(33, w // 2 + 1), max(33, h // 2 + 1))]


def sample_input(width: int, height: int) -> np.ndarray:
    """A fixed pseudo-image ``(1, 3, H, W)`` float32 with a photo's spread after mean subtraction."""
    rng = np.random.default_rng(width * 10_000 + height)
    return rng.normal(0.0, 50.0, (1, 3, height, width)).astype(np.float32)


def _runner(path: Path, runtime: str) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """A callable input -> {output name: array} on ``runtime``, opened as the edge opens it."""
    if runtime == "torchscript":
        import torch

        module = torch.jit.load(str(path)).eval()

        def run(x: np.ndarray) -> dict[str, np.ndarray]:
            with torch.no_grad():
                outs = module(torch.from_numpy(x))
            return {k: v.numpy() for k, v in zip(("loc", "conf", "landmarks"), outs, strict=True)}

        return run
    from edge.backends import OnnxRuntimeBackend, OpenVinoBackend
    from edge.model import read_model

    model = read_model(path)
    backend = OnnxRuntimeBackend(model, 1) if runtime == "onnxruntime" else OpenVinoBackend(model, 1)
    return backend.infer


def verify_file(path: Path, runtime: str, meta: ModelMeta, reference: Reference | None = None) -> None:
    """Open ``path`` on ``runtime`` (onnxruntime, openvino or torchscript) and run it at
    :func:`check_sizes`; :class:`VerifyError` with one line saying what went wrong.

    ``reference(x)`` gives PyTorch's outputs (``loc``, ``conf``, ``landmarks``) for parity; None skips it.
    """
    run = _runner(path, runtime)
    for w, h in check_sizes(meta):
        x = sample_input(w, h)
        try:
            got = run(x)
        except Exception as exc:  # each runtime raises its own types
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise VerifyError(f"{runtime} failed its first inference at {w}x{h}: {reason}") from exc
        anchors = len(prior_boxes(w, h, meta.priors.min_sizes, meta.priors.steps, meta.priors.clip))
        want = reference(x) if reference is not None else None
        for role, name in meta.outputs.items():
            value = got.get(name)
            if value is None or value.ndim != 3 or value.shape[:2] != (1, anchors):
                shape = None if value is None else tuple(value.shape)
                raise VerifyError(
                    f"{runtime} at {w}x{h}: output {name} is {shape}, {anchors} anchors expected"
                )
            if not np.all(np.isfinite(value)):
                raise VerifyError(f"{runtime} at {w}x{h}: output {name} has non-finite values")
            if want is not None:
                ref = want[role]
                err = float(np.abs(value - ref).max())
                scale = want.get(role + SCALE_SUFFIX, np.abs(ref).max())
                allowed = TOLERANCE * max(1.0, float(scale))
                if err > allowed:
                    raise VerifyError(
                        f"{runtime} at {w}x{h}: output {name} is {err:.2g} from PyTorch's "
                        f"(allowed {allowed:.2g})"
                    )
