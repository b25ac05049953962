"""OpenVINO IR files carrying the contract in ``rt_info`` and in a sidecar JSON beside the XML."""

from __future__ import annotations

from pathlib import Path

from edge.contract import METADATA_KEY, ModelMeta


def sidecar_path(xml: Path) -> Path:
    """``model.xml`` -> ``model.featherface.json`` (read by the edge when rt_info is stripped)."""
    return xml.with_suffix(f".{METADATA_KEY}.json")


def save_ir(onnx_path: Path, xml: Path, meta: ModelMeta, ov_model: object | None = None) -> Path:
    """Convert (unless ``ov_model`` is given), tag and save an IR at FP32 (no silent FP16 compression)."""
    import openvino as ov

    model = ov_model if ov_model is not None else ov.convert_model(str(onnx_path))
    model.set_rt_info(meta.to_json(), METADATA_KEY)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    sidecar_path(xml).write_text(meta.to_json() + "\n")
    return xml
