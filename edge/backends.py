"""Inference runtimes behind one Protocol: ONNX Runtime and OpenVINO.

``open_backend`` picks one by name or automatically (ONNX Runtime for an ``.onnx`` file,
OpenVINO when ONNX Runtime cannot run it or the file is an IR) and proves the choice with a
warm-up inference, so a model the runtime cannot execute fails at start-up, not on the first
face. Both runtimes are imported lazily: a device needs only the one it uses.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from edge.errors import ConfigError, ModelError
from edge.model import ModelFile

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "openvino")

CPU_PROVIDER = "CPUExecutionProvider"
# Short names for the ONNX Runtime execution providers of the devices we target; full names pass too.
PROVIDER_ALIASES = {
    "cpu": CPU_PROVIDER,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
TENSORRT = PROVIDER_ALIASES["tensorrt"]


def provider_name(name: str, where: str = "detector.providers") -> str:
    """The ONNX Runtime name of one configured provider (``cuda`` -> ``CUDAExecutionProvider``)."""
    full = PROVIDER_ALIASES.get(name.strip().lower(), name.strip())
    if not full.endswith("ExecutionProvider"):
        raise ConfigError(
            f"{where}: unknown onnxruntime provider {name!r}; use {', '.join(PROVIDER_ALIASES)} "
            "or a full name such as CUDAExecutionProvider"
        )
    return full


def check_providers(backend: str, providers: str | Sequence[str]) -> tuple[str, ...]:
    """``providers`` as ONNX Runtime names, checked against ``backend`` (the rules of
    ``detector.providers``, for the config and for :func:`open_backend` alike)."""
    names = tuple(provider_name(p) for p in ((providers,) if isinstance(providers, str) else providers))
    if names and backend == "openvino":
        raise ConfigError("detector.providers are ONNX Runtime's; use backend onnxruntime or auto")
    if CPU_PROVIDER in names[:-1]:
        # ORT gives each node to the first provider that can run it: the CPU would take them all.
        raise ConfigError("detector.providers: cpu must come last (it runs every node it is given)")
    return names


def session_providers(
    wanted: Sequence[str], available: Sequence[str], tensorrt: dict[str, str] | None = None
) -> list[str | tuple[str, dict[str, str]]]:
    """The ``providers`` argument of an ORT session: ``wanted`` in order, then the CPU (unless listed)
    as the fallback for nodes the others cannot run; TensorRT gets the ``tensorrt`` options. Refuses a
    provider this onnxruntime build does not have (the plain ``onnxruntime`` wheel has only the CPU;
    a Jetson needs NVIDIA's ``onnxruntime-gpu`` build)."""
    missing = [p for p in wanted if p not in available]
    if missing:
        raise ModelError(
            f"execution provider {missing[0]} is not in this onnxruntime build "
            f"(it has {', '.join(available)})"
        )
    out: list[str | tuple[str, dict[str, str]]] = []
    for name in dict.fromkeys([*wanted, CPU_PROVIDER]):
        out.append((name, tensorrt) if name == TENSORRT and tensorrt else name)
    return out


def tensorrt_options(model: ModelFile, engine_cache: str = "", max_side: int = 0) -> dict[str, str]:
    """TensorRT provider options for ``model``: its own engine cache folder and, for a dynamic model,
    one shape profile covering every input the detector can feed it."""
    opts: dict[str, str] = {}
    if engine_cache:
        # TensorRT builds an engine on first load (minutes on a Jetson); the cache makes later starts
        # load it in seconds. One folder per model file: ORT keys cached engines by file name and graph
        # names, not by weights, so a retrained model of the same name would reuse a stale engine.
        cache = Path(engine_cache) / model.sha256[:16]
        opts |= {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache)}
    spec = model.meta.input
    if spec.dynamic:
        # An engine serves only the shapes of its profile; without one ORT rebuilds it whenever a frame
        # of a new size arrives (e.g. the camera's after the warm-up). Sides are padded to the largest
        # stride by the preprocessing, and capped by max_side (0 = the full frame: 1920 assumed).
        stride = max(model.meta.priors.steps)
        top = math.ceil((max_side or 1920) / stride) * stride
        name = model.inputs[0].name

        def shape(h: int, w: int) -> str:
            dims = (1, 3, h, w) if spec.layout == "NCHW" else (1, h, w, 3)
            return f"{name}:{'x'.join(map(str, dims))}"

        opt_h, opt_w = (min(math.ceil(v / stride) * stride, top) for v in (spec.height, spec.width))
        opts |= {
            "trt_profile_min_shapes": shape(stride, stride),
            "trt_profile_opt_shapes": shape(opt_h, opt_w),
            "trt_profile_max_shapes": shape(top, top),
        }
    return opts


class Backend(Protocol):
    """Runs one preprocessed batch; returns every graph output by name."""

    runtime: str
    input_name: str

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]: ...


class OnnxRuntimeBackend:
    """ONNX Runtime session; ``threads`` sets intra-op parallelism (0 = runtime default).

    ``providers`` (ORT names, in order of preference; empty = the CPU alone) picks the execution
    providers, e.g. TensorRT then CUDA on a Jetson; ``engine_cache`` is TensorRT's engine folder and
    ``max_side`` the detector's cap on the input's longer side (for TensorRT's shape profile).
    """

    runtime = "onnxruntime"

    def __init__(
        self,
        model: ModelFile,
        threads: int = 0,
        providers: Sequence[str] = (),
        engine_cache: str = "",
        max_side: int = 0,
    ) -> None:
        if model.format != "onnx":
            raise ModelError(f"{model.path}: onnxruntime runs .onnx files; use --backend openvino for an IR")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError(
                "onnxruntime is not installed (pip install onnxruntime, or FeatherFace's edge extra)"
            ) from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(0, int(threads))
        # One frame at a time through a small graph: inter-op parallelism only adds thread hand-offs.
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Idle workers spin by default, which burns a core between frames on a Pi running all day
        # (heat, throttling) for a latency gain of well under a millisecond at these model sizes.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # No CPU memory arena: the arena keeps every activation block it ever grew to for the life of
        # the process (a 640x480 frame left 32 MB resident); plain allocations measured no slower here
        # (docs/BENCHMARKS.md, memory). The memory pattern (one planned block per run) stays on.
        opts.enable_cpu_mem_arena = False
        wanted = list(providers) or [CPU_PROVIDER]
        trt = tensorrt_options(model, engine_cache, max_side) if TENSORRT in wanted else None
        chosen = session_providers(wanted, ort.get_available_providers(), trt)
        if trt and "trt_engine_cache_path" in trt:
            _make_dir(trt["trt_engine_cache_path"])
        said = io.StringIO()
        try:
            # When a provider fails to start, ORT's Python wrapper print()s its retry on the CPU to
            # stdout, which would corrupt `detect`'s JSON lines: catch it and log it instead.
            with contextlib.redirect_stdout(said):
                self._session = ort.InferenceSession(str(model.path), sess_options=opts, providers=chosen)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ModelError(
                f"{model.path}: onnxruntime cannot load the model ({_first_line(exc)})"
            ) from None
        self.providers = self._session.get_providers()
        dropped = [p for p in wanted if p not in self.providers]
        printed = said.getvalue().strip()
        if dropped or printed:
            why = _first_line(Exception(printed)) if printed else "libraries missing"
            log.warning(
                "onnxruntime could not start %s (%s); running on %s",
                ", ".join(dropped) or "a provider",
                why,
                ", ".join(self.providers),
            )
        if len(self.providers) > 1:
            # A provider failing mid-run would otherwise switch to the CPU with a print(): raise instead.
            self._session.disable_fallback()
        self.input_name = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        values = self._session.run(self._outputs, {self.input_name: tensor})
        return dict(zip(self._outputs, values, strict=True))


class OpenVinoBackend:
    """OpenVINO CPU compiled model (ONNX or IR); ``threads`` sets INFERENCE_NUM_THREADS (0 = default)."""

    runtime = "openvino"

    def __init__(self, model: ModelFile, threads: int = 0) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise ModelError(
                "openvino is not installed (pip install openvino, or FeatherFace's openvino extra)"
            ) from None
        core = ov.Core()
        # f32 explicitly: OpenVINO otherwise runs FP32 models in bfloat16 on CPUs with AMX/AVX512-BF16
        # and in f16 on ARMv8.2+, which moves scores and boxes away from what was evaluated.
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            ov_model = core.read_model(str(model.path))
            self._compiled = core.compile_model(ov_model, "CPU", config)
        except Exception as exc:
            raise ModelError(f"{model.path}: openvino cannot load the model ({_first_line(exc)})") from None
        self.input_name = self._compiled.inputs[0].get_any_name()
        self._outputs = [(o, o.get_any_name()) for o in self._compiled.outputs]
        self._request = self._compiled.create_infer_request()

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        result = self._request.infer({0: tensor})
        # Copy: the request reuses its output buffers on the next call.
        return {name: np.array(result[port]) for port, name in self._outputs}


def _make_dir(path: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"detector.engine_cache {path}: cannot create it ({exc.strerror})") from None


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def open_backend(
    model: ModelFile,
    backend: str = "auto",
    threads: int = 0,
    warmup: np.ndarray | None = None,
    providers: Sequence[str] = (),
    engine_cache: str = "",
    max_side: int = 0,
) -> Backend:
    """Load ``model`` on the named runtime (or ``auto``) and run ``warmup`` through it once.

    ``auto`` tries ONNX Runtime first and OpenVINO (when installed) if ONNX Runtime cannot load or
    run the model; an IR means OpenVINO, ``providers`` mean ONNX Runtime. ONNX Runtime is the default
    by measurement (docs/edge.md, "Runtimes"): the daemon with it peaks at about two thirds of
    OpenVINO's memory, and OpenVINO recompiles for every new input size, which made ``detect`` on
    photos of mixed sizes slower; OpenVINO's edge at a fixed size (~10 % lower latency) is opt-in.
    Returns a :class:`Backend`.
    """
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    providers = check_providers(backend, providers)
    if providers:
        candidates = ["onnxruntime"]
    elif backend == "auto":
        candidates = ["onnxruntime", "openvino"] if openvino_available() else ["onnxruntime"]
        if model.format == "openvino":
            candidates = ["openvino"]
    else:
        candidates = [backend]
    errors = []
    for name in candidates:
        try:
            be: Backend
            if name == "onnxruntime":
                be = OnnxRuntimeBackend(model, threads, providers, engine_cache, max_side)
            else:
                be = OpenVinoBackend(model, threads)
            if warmup is not None:
                _warm_up(be, warmup, model.path)
            return be
        except ModelError as exc:
            errors.append(str(exc))
            log.info("backend %s unusable for %s: %s", name, model.path.name, exc)
    raise ModelError(errors[-1] if len(errors) == 1 else "; ".join(errors))


def _warm_up(be: Backend, tensor: np.ndarray, path: Path) -> None:
    try:
        outputs = be.infer(tensor)
    except Exception as exc:
        raise ModelError(
            f"{path}: {be.runtime} failed the warm-up inference on a {tuple(tensor.shape)} input "
            f"({_first_line(exc)})"
        ) from None
    bad = [k for k, v in outputs.items() if not np.all(np.isfinite(v))]
    if bad:
        raise ModelError(f"{path}: {be.runtime} warm-up produced non-finite values in {', '.join(bad)}")


def _first_line(exc: BaseException) -> str:
    """The informative line of a runtime's error: OpenVINO prefixes the real cause with lines of
    ``Exception from src/...cpp:N:`` (its call stack), which say nothing to a user."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Exception from ")]
    text = (useful or lines or [type(exc).__name__])[0]
    return text if len(text) <= 300 else text[:297] + "..."
