"""Model files: the contract is read, validated and refused with one clear line when absent or broken."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge import model as model_mod
from edge.contract import METADATA_KEY
from edge.detector import load_detector
from edge.errors import ModelError
from edge.model import describe, read_model, resolve_model_path
from tests.edge.conftest import attach_meta, tiny_meta


def _one_line(exc: pytest.ExceptionInfo[ModelError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_onnx_contract_and_parameter_count(tiny_onnx: Path) -> None:
    import onnx
    from onnx import numpy_helper

    info = read_model(tiny_onnx)
    assert info.format == "onnx"
    assert info.meta == tiny_meta()
    assert [t.name for t in info.inputs] == ["input"]
    assert [t.name for t in info.outputs] == ["loc", "conf", "landmarks"]
    assert info.inputs[0].shape == (1, 3, 96, 128)
    # The protobuf walker must agree with the onnx library's own view of the initializers.
    graph = onnx.load(str(tiny_onnx)).graph
    floats = sum(
        numpy_helper.to_array(t).size for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT
    )
    assert info.parameters == floats > 0
    doc = describe(info)
    assert json.loads(json.dumps(doc))["metadata"]["name"] == "tiny-test"


def test_openvino_ir_from_rt_info_and_sidecar(tiny_ir: Path, tiny_plain_onnx: Path, tmp_path: Path) -> None:
    import openvino as ov

    info = read_model(tiny_ir)
    assert info.format == "openvino" and info.meta == tiny_meta()
    assert [t.name for t in info.outputs] == ["loc", "conf", "landmarks"]
    assert info.weights_path == tiny_ir.with_suffix(".bin")

    bare = tmp_path / "bare.xml"
    ov.save_model(ov.convert_model(str(tiny_plain_onnx)), str(bare), compress_to_fp16=False)
    with pytest.raises(ModelError) as exc:
        read_model(bare)
    assert "no FeatherFace metadata" in _one_line(exc) and "bare.featherface.json" in str(exc.value)
    (tmp_path / "bare.featherface.json").write_text(tiny_meta(name="from-sidecar").to_json())
    assert read_model(bare).meta.name == "from-sidecar"

    bare.with_suffix(".bin").unlink()
    with pytest.raises(ModelError, match=re.escape("bare.bin is missing")):
        read_model(bare)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as exc:
        read_model(tmp_path / "nope.onnx")
    assert "does not exist" in _one_line(exc)


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.9])
def test_truncated_onnx_is_refused(tiny_onnx: Path, tmp_path: Path, fraction: float) -> None:
    data = tiny_onnx.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelError) as exc:
        read_model(cut)
    assert str(cut) in _one_line(exc)
    with pytest.raises(ModelError):
        load_detector(cut, backend="onnxruntime")


def test_garbage_and_empty_files_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelError) as exc:
        read_model(junk)
    _one_line(exc)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="not an ONNX model"):
        read_model(empty)
    bad_xml = tmp_path / "bad.xml"
    bad_xml.write_text("<net><layers>")
    bad_xml.with_suffix(".bin").write_bytes(b"")
    with pytest.raises(ModelError, match="corrupt or truncated OpenVINO IR"):
        read_model(bad_xml)


def test_contract_less_onnx_is_refused(tiny_plain_onnx: Path) -> None:
    with pytest.raises(ModelError) as exc:
        read_model(tiny_plain_onnx)
    assert f"no FeatherFace metadata ('{METADATA_KEY}'" in _one_line(exc)
    with pytest.raises(ModelError, match="no FeatherFace metadata"):
        load_detector(tiny_plain_onnx, backend="onnxruntime")


def test_bad_metadata_names_the_field(tiny_plain_onnx: Path, tmp_path: Path) -> None:
    wrong_output = attach_meta(
        tiny_plain_onnx, tmp_path / "w.onnx", tiny_meta(outputs={"loc": "loc", "conf": "scores"})
    )
    with pytest.raises(ModelError, match="maps output role 'conf' to 'scores'"):
        read_model(wrong_output)

    import onnx

    model = onnx.load(str(tiny_plain_onnx))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({"format_version": 1, "name": "x", "version": "1"})
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ModelError, match="'input' is missing"):
        read_model(tmp_path / "m.onnx")


def test_default_model_absent_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(model_mod, "default_model_path", lambda: tmp_path / "featherface-nano-b.onnx")
    with pytest.raises(ModelError, match="no bundled default model yet: "):
        resolve_model_path(None)
    assert model_mod.default_model_path().name == "featherface-nano-b.onnx"


def test_default_model_path_points_into_package() -> None:
    path = model_mod.DEFAULT_MODEL_NAME
    assert model_mod.default_model_path().parent.name == "models"
    assert model_mod.default_model_path().name == path


def test_bin_instead_of_xml(tiny_ir: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_ir.with_suffix(".bin"), tmp_path / "m.bin")
    with pytest.raises(ModelError, match=re.escape("pass the OpenVINO IR's .xml")):
        read_model(tmp_path / "m.bin")
