"""Build the DESIGN §1 metadata document and measure what the exported file really holds."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edge.contract import METADATA_KEY, InputSpec, ModelMeta, PriorSpec
from edge.model import ONNX_WEIGHT_TYPES


def weight_tensors(model: onnx.ModelProto) -> list[np.ndarray]:
    """The graph's weight initializers in file order: floating point, or 8/4-bit integers in an INT8
    model; not int32/int64 shape constants, not scalars. The edge counts by the same rule."""
    return [
        numpy_helper.to_array(t)
        for t in model.graph.initializer
        if t.data_type in ONNX_WEIGHT_TYPES and len(t.dims) > 0
    ]


def parameter_count(model: onnx.ModelProto) -> int:
    """Sum of tensor sizes of the weights stored in the exported file (after BN folding etc.)."""
    return int(sum(t.size for t in weight_tensors(model)))


def weights_sha256(model: onnx.ModelProto) -> str:
    digest = hashlib.sha256()
    for tensor in weight_tensors(model):
        digest.update(np.ascontiguousarray(tensor).tobytes())
    return digest.hexdigest()


def git_commit() -> str:
    """The trainer checkout's commit, or "" outside a git checkout (provenance only)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def build_meta(
    name: str,
    version: str,
    width: int,
    height: int,
    dynamic: bool,
    onnx_model: onnx.ModelProto,
    provenance: dict[str, Any] | None = None,
) -> ModelMeta:
    """The contract for a FeatherFace-family export: BGR minus (104,117,123), RetinaFace priors,
    outputs loc / conf (softmax inside the graph) / landmarks."""
    prov = {"commit": git_commit(), **(provenance or {})}
    return ModelMeta(
        name=name,
        version=version,
        input=InputSpec(width=width, height=height, dynamic=dynamic),
        priors=PriorSpec(),
        outputs={"loc": "loc", "conf": "conf", "landmarks": "landmarks"},
        conf_softmax=True,
        num_landmarks=5,
        parameters=parameter_count(onnx_model),
        weights_sha256=weights_sha256(onnx_model),
        provenance=prov,
    )


def attach(onnx_model: onnx.ModelProto, meta: ModelMeta) -> None:
    """Write the document into ``metadata_props`` (replacing an older one)."""
    keep = [p for p in onnx_model.metadata_props if p.key != METADATA_KEY]
    del onnx_model.metadata_props[:]
    onnx_model.metadata_props.extend(keep)
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta.to_json()
