"""Model files: find them, read and validate the DESIGN §1 contract, describe what they hold.

Two formats are accepted: ONNX (``.onnx``; the contract in ``metadata_props`` under
:data:`edge.contract.METADATA_KEY`) and OpenVINO IR (``.xml`` + ``.bin``; the contract in the
XML's ``rt_info`` or in a sidecar ``model.featherface.json`` / ``model.xml.featherface.json``).

Both are read here **without** onnx or openvino: ONNX through a minimal protobuf wire reader that
walks only the fields needed (metadata, inputs/outputs, initializer shapes), the IR through the
XML. So ``model-info`` works on a device with only onnxruntime, a truncated or corrupt file is
refused before any runtime sees it, and every problem is one :class:`ModelError` line.
"""

from __future__ import annotations

import hashlib
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from edge.contract import METADATA_KEY, ModelMeta
from edge.errors import ModelError

DEFAULT_MODEL_NAME = "featherface-nano-b.onnx"

# ONNX TensorProto.DataType codes of weight tensors: floating point (FLOAT, FLOAT16, DOUBLE, BFLOAT16)
# and, for INT8 models, 8- and 4-bit integers (UINT8, INT8, UINT4, INT4). INT32/INT64 initializers are
# shape constants an exporter adds, not parameters. For a float model this is exactly the trainer's
# count (trainer/export/metadata.py imports this set), so the two numbers can be compared. Scalars
# (an epsilon, a divisor) are constants of the graph, not weights, and are not counted either.
ONNX_WEIGHT_TYPES = frozenset({1, 10, 11, 16, 2, 3, 21, 22})
_IR_WEIGHT_TYPES = {"f32", "f16", "f64", "bf16", "u8", "i8", "u4", "i4"}


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output; ``shape`` entries are ints or symbolic names (dynamic axes)."""

    name: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class ModelFile:
    """A validated model file and its contract. ``sha256`` covers the file (IR: XML then BIN)."""

    path: Path
    format: str  # "onnx" or "openvino"
    meta: ModelMeta
    sha256: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    parameters: int  # sum of sizes of the weight tensors (float / 8-bit / 4-bit) stored in the file
    initializer_elements: int  # sum of sizes of every stored tensor (weights + constants)
    weights_path: Path | None = None  # the IR's .bin
    notes: tuple[str, ...] = field(default_factory=tuple)


def default_model_path() -> Path:
    """The Nano-B model shipped inside the package (``edge/models/featherface-nano-b.onnx``)."""
    return Path(__file__).resolve().parent / "models" / DEFAULT_MODEL_NAME


def resolve_model_path(path: str | Path | None) -> Path:
    """``path`` as given, or the bundled default when ``path`` is empty; raises ModelError if absent."""
    if path is None or str(path) == "":
        default = default_model_path()
        if not default.is_file():
            raise ModelError(
                f"no bundled default model yet: {default} is absent; pass --model FILE "
                "(an ONNX or OpenVINO IR export carrying the FeatherFace metadata)"
            )
        return default
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"model file {p} does not exist")
    if not p.is_file():
        raise ModelError(f"model path {p} is not a file")
    return p


def read_model(path: str | Path | None) -> ModelFile:
    """Read and validate a model file (ONNX or IR) without loading a runtime."""
    p = resolve_model_path(path)
    suffix = p.suffix.lower()
    if suffix == ".xml":
        return _read_ir(p)
    if suffix == ".bin":
        raise ModelError(f"{p}: pass the OpenVINO IR's .xml file, not its .bin")
    return _read_onnx(p)


# --- ONNX through the protobuf wire format ------------------------------------------------------
# Field numbers from onnx.proto: ModelProto.graph=7, .metadata_props=14; GraphProto.initializer=5,
# .input=11, .output=12; TensorProto.dims=1, .data_type=2; ValueInfoProto.name=1, .type=2;
# TypeProto.tensor_type=1; Tensor.shape=2; TensorShapeProto.dim=1; Dimension.dim_value=1, .dim_param=2;
# StringStringEntryProto.key=1, .value=2.


class _WireError(Exception):
    pass


def _varint(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _WireError("varint runs past the end")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int = 0, end: int | None = None):
    """Yield ``(field_number, wire_type, value)``; length-delimited values are memoryviews."""
    end = len(buf) if end is None else end
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _WireError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == 1:
            if pos + 8 > end:
                raise _WireError("fixed64 runs past the end")
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _WireError("a length-delimited field runs past the end")
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire == 5:
            if pos + 4 > end:
                raise _WireError("fixed32 runs past the end")
            pos += 4
        else:
            raise _WireError(f"unknown wire type {wire}")


def _packed_or_single(wire: int, value: int | memoryview) -> list[int]:
    if wire == 0:
        return [int(value)]  # type: ignore[arg-type]
    out, pos, buf = [], 0, value
    while pos < len(buf):  # type: ignore[arg-type]
        v, pos = _varint(buf, pos, len(buf))  # type: ignore[arg-type]
        out.append(v)
    return out


def _value_info(buf: memoryview) -> TensorInfo:
    name, shape = "", []
    for num, _, val in _fields(buf):
        if num == 1:
            name = bytes(val).decode("utf-8", "replace")
        elif num == 2:  # TypeProto
            for tnum, _, tval in _fields(val):
                if tnum != 1:  # tensor_type only
                    continue
                for snum, _, sval in _fields(tval):
                    if snum != 2:
                        continue
                    for dnum, _, dval in _fields(sval):
                        if dnum != 1:
                            continue
                        dim: int | str = "?"
                        for xnum, _, xval in _fields(dval):
                            if xnum == 1:
                                dim = int(xval)
                            elif xnum == 2:
                                dim = bytes(xval).decode("utf-8", "replace") or "?"
                        shape.append(dim)
    return TensorInfo(name=name, shape=tuple(shape))


def _read_onnx(p: Path) -> ModelFile:
    data = _read_bytes(p)
    buf = memoryview(data)
    meta_text: str | None = None
    graph: memoryview | None = None
    try:
        for num, wire, val in _fields(buf):
            if num == 7 and wire == 2:
                graph = val  # type: ignore[assignment]
            elif num == 14 and wire == 2:
                key = value = ""
                for enum_, _, eval_ in _fields(val):  # type: ignore[arg-type]
                    if enum_ == 1:
                        key = bytes(eval_).decode("utf-8", "replace")
                    elif enum_ == 2:
                        value = bytes(eval_).decode("utf-8", "replace")
                if key == METADATA_KEY:
                    meta_text = value
        if graph is None:
            raise ModelError(f"{p}: not an ONNX model (no graph found; is the file corrupt or truncated?)")
        inputs, outputs, initializer_names = [], [], set()
        params = elements = 0
        for num, _, val in _fields(graph):
            if num == 5:
                dims, dtype, name = [], 0, ""
                for tnum, twire, tval in _fields(val):  # type: ignore[arg-type]
                    if tnum == 1:
                        dims.extend(_packed_or_single(twire, tval))
                    elif tnum == 2:
                        dtype = int(tval)  # type: ignore[arg-type]
                    elif tnum == 8:
                        name = bytes(tval).decode("utf-8", "replace")  # type: ignore[arg-type]
                size = math.prod(dims)
                elements += size
                params += size if dtype in ONNX_WEIGHT_TYPES and dims else 0
                initializer_names.add(name)
            elif num == 11:
                inputs.append(_value_info(val))  # type: ignore[arg-type]
            elif num == 12:
                outputs.append(_value_info(val))  # type: ignore[arg-type]
    except _WireError as exc:
        raise ModelError(f"{p}: corrupt or truncated ONNX file ({exc})") from None
    # Old exporters list initializers among the inputs too; they are not the image input.
    inputs = [i for i in inputs if i.name not in initializer_names]
    if not inputs or not outputs:
        raise ModelError(f"{p}: ONNX graph has no inputs or no outputs (corrupt or not a detector)")
    if meta_text is None:
        raise ModelError(
            f"{p}: no FeatherFace metadata ('{METADATA_KEY}' in metadata_props); "
            "export it with featherface-train export, which writes the DESIGN §1 contract"
        )
    meta = ModelMeta.from_json(meta_text, source=str(p))
    _check_outputs(p, meta, outputs)
    return ModelFile(
        path=p,
        format="onnx",
        meta=meta,
        sha256=hashlib.sha256(data).hexdigest(),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        parameters=params,
        initializer_elements=elements,
        notes=_param_notes(meta, params),
    )


# --- OpenVINO IR through its XML ------------------------------------------------------------------


def _read_ir(p: Path) -> ModelFile:
    bin_path = p.with_suffix(".bin")
    if not bin_path.is_file():
        raise ModelError(f"{p}: the OpenVINO IR's weights file {bin_path.name} is missing beside it")
    xml_bytes = _read_bytes(p)
    try:
        root = ET.fromstring(xml_bytes)
    except ET.ParseError as exc:
        raise ModelError(f"{p}: corrupt or truncated OpenVINO IR XML ({exc})") from None
    if root.tag != "net":
        raise ModelError(f"{p}: not an OpenVINO IR (root element <{root.tag}>, expected <net>)")
    meta_text, meta_from = None, ""
    node = root.find(f"rt_info/{METADATA_KEY}")
    if node is not None and node.get("value"):
        meta_text, meta_from = node.get("value"), "rt_info"
    if meta_text is None:
        for side in (p.with_suffix(f".{METADATA_KEY}.json"), Path(f"{p}.{METADATA_KEY}.json")):
            if side.is_file():
                meta_text, meta_from = side.read_text(encoding="utf-8"), side.name
                break
    if meta_text is None:
        raise ModelError(
            f"{p}: no FeatherFace metadata (no rt_info '{METADATA_KEY}' and no sidecar "
            f"{p.with_suffix(f'.{METADATA_KEY}.json').name})"
        )
    meta = ModelMeta.from_json(meta_text, source=f"{p} ({meta_from})")
    inputs, outputs, params, elements = [], [], 0, 0
    for layer in root.iterfind("layers/layer"):
        kind, data = layer.get("type", ""), layer.find("data")
        if kind == "Parameter" and data is not None:
            inputs.append(TensorInfo(layer.get("name", ""), _ir_shape(data.get("shape", ""))))
        elif kind == "Const" and data is not None:
            size = math.prod(int(d) for d in _ir_shape(data.get("shape", "")) if isinstance(d, int))
            elements += size
            params += size if data.get("element_type", "") in _IR_WEIGHT_TYPES else 0
        elif kind == "Result":
            port = layer.find("input/port")
            dims = [] if port is None else [_ir_dim(d.text or "?") for d in port.iterfind("dim")]
            outputs.append(TensorInfo(_ir_result_name(root, layer), tuple(dims)))
    digest = hashlib.sha256(xml_bytes)
    digest.update(_read_bytes(bin_path))
    _check_outputs(p, meta, outputs)
    return ModelFile(
        path=p,
        format="openvino",
        meta=meta,
        sha256=digest.hexdigest(),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        parameters=params,
        initializer_elements=elements,
        weights_path=bin_path,
        notes=_param_notes(meta, params),
    )


def _ir_dim(text: str) -> int | str:
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() and int(text) >= 0 else "?"


def _ir_shape(text: str) -> tuple[int | str, ...]:
    return tuple(_ir_dim(d) for d in text.split(",")) if text.strip() else ()


def _ir_result_name(root: ET.Element, result: ET.Element) -> str:
    """A Result's tensor name is on the producer's output port (``names="loc"``), found via edges."""
    rid = result.get("id")
    for edge in root.iterfind("edges/edge"):
        if edge.get("to-layer") == rid:
            src = root.find(f"layers/layer[@id='{edge.get('from-layer')}']")
            if src is not None:
                port = src.find(f"output/port[@id='{edge.get('from-port')}']")
                if port is not None and port.get("names"):
                    return port.get("names", "").split(",")[0]
    return result.get("name", "")


# --- shared checks ----------------------------------------------------------------------------------


def _read_bytes(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model file {p}: {exc.strerror or exc}") from None


def _check_outputs(p: Path, meta: ModelMeta, outputs: list[TensorInfo]) -> None:
    names = {o.name for o in outputs}
    for role, name in meta.outputs.items():
        if name not in names:
            raise ModelError(
                f"{p}: metadata maps output role '{role}' to '{name}', but the graph's outputs are "
                f"{', '.join(sorted(names))}"
            )


def _param_notes(meta: ModelMeta, params: int) -> tuple[str, ...]:
    if meta.parameters and meta.parameters != params:
        return (f"metadata says {meta.parameters} parameters but the file stores {params}",)
    return ()


def describe(model: ModelFile) -> dict[str, object]:
    """A JSON-ready summary for ``featherface-edge model-info``."""
    return {
        "path": str(model.path),
        "format": model.format,
        "sha256": model.sha256,
        "parameters": model.parameters,
        "initializer_elements": model.initializer_elements,
        "inputs": [{"name": t.name, "shape": list(t.shape)} for t in model.inputs],
        "outputs": [{"name": t.name, "shape": list(t.shape)} for t in model.outputs],
        "metadata": json.loads(model.meta.to_json()),
        "notes": list(model.notes),
    }
