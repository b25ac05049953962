"""Post-training INT8 quantisation with real calibration images.

ONNX Runtime static quantisation (QDQ, per-channel weights) for the ONNX file, NNCF for the OpenVINO
IR. Both see the same calibration tensors, prepared exactly as the edge prepares frames.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnx

from edge.contract import ModelMeta
from edge.errors import DatasetError
from trainer.export import metadata

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def calibration_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files from a folder (recursively) or an explicit list; empty is an error."""
    if isinstance(source, str | Path):
        root = Path(source)
        if not root.is_dir():
            raise DatasetError(f"calibration folder {root} does not exist")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = [Path(p) for p in source]
    if not files:
        raise DatasetError(f"no calibration images (.jpg/.png) in {source}")
    return files


def calibration_tensors(files: Sequence[Path], meta: ModelMeta) -> Iterator[np.ndarray]:
    """NCHW float32 tensors at the metadata's input size, normalised per the metadata."""
    from edge.detector import preprocess

    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            continue  # unreadable calibration file: skip, the rest still calibrate
        # Dynamic models calibrate at their nominal size, the size the edge feeds by default.
        yield preprocess(image, meta, max_side=max(meta.input.width, meta.input.height)).tensor


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over our tensors."""

    def __init__(self, tensors: list[np.ndarray], input_name: str) -> None:
        self._it = iter(tensors)
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        tensor = next(self._it, None)
        return None if tensor is None else {self._name: tensor}


def quantize_onnx(fp32: Path, out: Path, meta: ModelMeta, calib: Sequence[str | Path] | str | Path) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    tensors = list(calibration_tensors(calibration_files(calib), meta))
    if not tensors:
        raise DatasetError(f"none of the calibration images in {calib} could be read")
    quantize_static(
        str(fp32),
        str(out),
        _Reader(tensors, "input"),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    model = onnx.load(out)
    int8_meta = _int8_meta(meta, "onnxruntime-static-qdq", len(tensors))
    # The file now stores int8 weights (+ scales): state what it holds, not the FP32 network's count.
    int8_meta = replace(
        int8_meta, parameters=metadata.parameter_count(model), weights_sha256=metadata.weights_sha256(model)
    )
    metadata.attach(model, int8_meta)
    onnx.save(model, out)
    return out


def quantize_openvino(
    fp32: Path, xml: Path, meta: ModelMeta, calib: Sequence[str | Path] | str | Path
) -> Path:
    import nncf
    import openvino as ov

    from trainer.export.openvino_ir import save_ir

    tensors = list(calibration_tensors(calibration_files(calib), meta))
    if not tensors:
        raise DatasetError(f"none of the calibration images in {calib} could be read")
    from edge.model import read_model

    model = ov.convert_model(str(fp32))
    quantized = nncf.quantize(model, nncf.Dataset(tensors), subset_size=len(tensors))
    int8_meta = _int8_meta(meta, "nncf-ptq", len(tensors))
    save_ir(fp32, xml, int8_meta, ov_model=quantized)
    # Count what the IR stores the way the edge does, then state it (the weights are int8 now).
    stored = read_model(xml).parameters
    return save_ir(fp32, xml, replace(int8_meta, parameters=stored, weights_sha256=""), ov_model=quantized)


def _int8_meta(meta: ModelMeta, method: str, images: int) -> ModelMeta:
    prov = {**meta.provenance, "quantization": {"method": method, "calibration_images": images}}
    return replace(meta, version=f"{meta.version}+int8", provenance=prov)
