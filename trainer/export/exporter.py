"""One entry point that writes every deployment format of a network with the same contract.

The ONNX file is made first; its weights give the parameter count and sha256 that every other
format's metadata repeats, so all files of one export describe the same network.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edge.contract import METADATA_KEY, ModelMeta
from edge.errors import FeatherFaceError
from trainer.export import metadata
from trainer.export.openvino_ir import save_ir, sidecar_path
from trainer.export.rewrite import merge_parallel_convs, split_grouped_convs
from trainer.export.verify import SCALE_SUFFIX, verify_file

log = logging.getLogger(__name__)

FORMATS = ("onnx", "openvino", "torchscript")
OUTPUT_NAMES = ["loc", "conf", "landmarks"]


class ExportError(FeatherFaceError):
    """A model could not be exported (the message says which format and why)."""


class InferenceHead(nn.Module):
    """What ships: the raw network plus the class softmax, so ``conf`` is a probability (index 1 = face).

    Decoding stays out of the graph on purpose: priors depend on the input size, and the edge
    decodes in NumPy for any size from the metadata.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loc, conf, ldm = self.net(x)
        return loc, torch.softmax(conf, dim=-1), ldm


@dataclass
class ExportResult:
    meta: ModelMeta
    files: dict[str, Path] = field(default_factory=dict)


def _onnx_bytes(head: nn.Module, example: torch.Tensor, dynamic: bool) -> bytes:
    """ONNX at the exporter's current opset (torch.export); falls back to the TorchScript exporter
    when torch.export cannot capture the network (data-dependent shapes in an older layer)."""
    try:
        dims = {2: torch.export.Dim("height", min=32), 3: torch.export.Dim("width", min=32)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                head,
                (example,),
                None,
                dynamo=True,
                input_names=["input"],
                output_names=OUTPUT_NAMES,
                dynamic_shapes=(dims,) if dynamic else None,
                verbose=False,
            )
        buf = io.BytesIO()
        program.save(buf)
        return buf.getvalue()
    except Exception as exc:
        log.warning("torch.export could not capture the network (%s); using the TorchScript exporter", exc)
    buf = io.BytesIO()
    axes = {"input": {2: "height", 3: "width"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            head,
            (example,),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=OUTPUT_NAMES,
            dynamic_axes=axes,
        )
    return buf.getvalue()


def onnx_graph(
    head: nn.Module, example: torch.Tensor, dynamic: bool = True, rewrite: bool = True
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """``(graph as the file holds it, graph before the rewrites)`` of an :class:`InferenceHead`: the
    export without metadata or checks (:mod:`trainer.export.from_onnx` reads it backwards)."""
    with torch.no_grad():
        model = _strip_debug_info(onnx.load_from_string(_onnx_bytes(head, example, dynamic)))
    grouped = onnx.ModelProto()
    grouped.CopyFrom(model)  # what OpenVINO gets: its grouped kernel beats the split form
    if rewrite:
        model, n_split = split_grouped_convs(model)
        model, n_merged = merge_parallel_convs(model)
        log.info("rewrites: %d grouped convs split per group, %d parallel convs merged", n_split, n_merged)
    return model, grouped


def _strip_debug_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's per-node stack traces and intermediate shapes: they are a third of the
    file for a small network, and a device has no use for them."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.value_info[:]
    return model


class _Steps:
    """The export steps: a step's files count as written only once its model passed
    :func:`~trainer.export.verify.verify_file`; a failing step leaves none of its files behind."""

    def __init__(self, head: nn.Module) -> None:
        self.head = head
        self.kept: list[Path] = []
        self._refs: dict[tuple[int, ...], dict[str, np.ndarray]] = {}

    def reference(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """PyTorch's outputs for a warm-up input (computed once per size, shared by the formats)."""
        if x.shape not in self._refs:
            with torch.no_grad():
                loc, logits, ldm = self.head.net(torch.from_numpy(x))
            outs = (loc, torch.softmax(logits, dim=-1), ldm)  # what InferenceHead returns
            self._refs[x.shape] = {k: t.numpy() for k, t in zip(OUTPUT_NAMES, outs, strict=True)}
            # The class scores' rounding follows their logits: a 2-way softmax moves by at most half
            # of what its logits move, and float32 re-association moves those in proportion to their size.
            self._refs[x.shape]["conf" + SCALE_SUFFIX] = np.asarray(float(logits.abs().max()) / 2)
        return self._refs[x.shape]

    @contextmanager
    def step(self, name: str, files: Sequence[Path]) -> Iterator[None]:
        """Around writing and verifying ``files`` (the model first): on any failure remove them and
        raise one :class:`ExportError` line naming the step and what was kept."""
        try:
            yield
        except Exception as exc:
            for f in files:
                f.unlink(missing_ok=True)
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            kept = f"; verified and kept: {', '.join(p.name for p in self.kept)}" if self.kept else ""
            raise ExportError(
                f"export step {name!r} failed, {files[0].name} not written: {reason}{kept}"
            ) from exc
        self.kept.append(files[0])

    def verify(self, path: Path, runtime: str, meta: ModelMeta, parity: bool = True) -> Path:
        verify_file(path, runtime, meta, self.reference if parity else None)
        return path


def export_model(
    net: nn.Module,
    out_dir: str | Path,
    name: str,
    version: str = "0.1.0",
    formats: Sequence[str] = ("onnx",),
    width: int = 640,
    height: int = 480,
    dynamic: bool = True,
    int8: bool = False,
    calib_images: Sequence[str | Path] | str | Path = (),
    provenance: dict[str, Any] | None = None,
    rewrite: bool = True,
) -> ExportResult:
    """Write ``out_dir/<name>.onnx`` (always), and the IR / TorchScript / INT8 files asked for.

    ``width``/``height`` are the nominal input size stored in the metadata (and the fixed size when
    ``dynamic`` is false). INT8 needs ``calib_images`` (real photos; 50–300 is plenty).
    ``rewrite``: the ONNX file gets the graph rewrites of :mod:`trainer.export.rewrite` (grouped convs
    split per group, parallel convs merged: same function and weights, faster on ONNX Runtime); the
    OpenVINO IR is written from the graph before them.

    Each file is run by its runtime at two input sizes before it counts as written (FP32 files must
    match PyTorch, :mod:`trainer.export.verify`); a step that fails removes its files and raises one
    :class:`ExportError` line naming the step. Files of earlier, verified steps stay.
    """
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ExportError(f"unknown export format(s) {sorted(unknown)}; choose from {', '.join(FORMATS)}")
    if int8 and not calib_images:
        raise ExportError("--int8 needs calibration images (--calib DIR with .jpg/.png files)")
    if int8:
        from trainer.export.quantize import calibration_files, quantize_onnx, quantize_openvino

        calibration_files(calib_images)  # a missing or empty folder fails before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    head = InferenceHead(net.cpu().eval()).eval()
    example = torch.zeros(1, 3, height, width)
    cfg = getattr(net, "cfg", None)
    if dataclasses.is_dataclass(cfg):  # the architecture, so the file alone can be rebuilt for training
        from trainer.config import to_dict

        provenance = {"model": to_dict(cfg), **(provenance or {})}
    steps = _Steps(head)

    onnx_path = out / f"{name}.onnx"
    with steps.step("onnx", [onnx_path]):
        model, grouped = onnx_graph(head, example, dynamic, rewrite)
        meta = metadata.build_meta(name, version, width, height, dynamic, model, provenance)
        metadata.attach(model, meta)
        onnx.save(model, onnx_path)
        steps.verify(onnx_path, "onnxruntime", meta)
    result = ExportResult(meta=meta, files={"onnx": onnx_path})

    if "torchscript" in formats:
        ts_path = out / f"{name}.torchscript.pt"
        with steps.step("torchscript", [ts_path]):
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(head, example)
            torch.jit.save(traced, str(ts_path), _extra_files={f"{METADATA_KEY}.json": meta.to_json()})
            result.files["torchscript"] = steps.verify(ts_path, "torchscript", meta)
    if "openvino" in formats:
        import openvino as ov

        xml = out / f"{name}.xml"
        with steps.step("openvino", _ir_files(xml)):
            with tempfile.TemporaryDirectory() as tmp:
                onnx.save(grouped, Path(tmp) / "grouped.onnx")
                ov_model = ov.convert_model(str(Path(tmp) / "grouped.onnx"))
            save_ir(onnx_path, xml, meta, ov_model)
            result.files["openvino"] = steps.verify(xml, "openvino", meta)
    if int8:
        # INT8 files are checked for running and for their output shapes, not for parity.
        q_onnx = out / f"{name}.int8.onnx"
        with steps.step("onnx int8", [q_onnx]):
            quantize_onnx(onnx_path, q_onnx, meta, calib_images)
            result.files["onnx_int8"] = steps.verify(q_onnx, "onnxruntime", meta, parity=False)
        if "openvino" in formats:
            q_xml = out / f"{name}.int8.xml"
            with steps.step("openvino int8", _ir_files(q_xml)):
                quantize_openvino(onnx_path, q_xml, meta, calib_images)
                result.files["openvino_int8"] = steps.verify(q_xml, "openvino", meta, parity=False)
    return result


def _ir_files(xml: Path) -> list[Path]:
    """The files of one OpenVINO IR: the XML (first), its weights and the contract sidecar."""
    return [xml, xml.with_suffix(".bin"), sidecar_path(xml)]
