"""Export writes self-describing files whose runtimes agree with PyTorch (DESIGN §1, STYLE 7)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edge.contract import METADATA_KEY, ModelMeta
from edge.detector import load_detector, preprocess
from edge.errors import ModelError
from edge.model import read_model
from trainer.export import export_model
from trainer.export.exporter import ExportError, InferenceHead
from trainer.export.metadata import parameter_count
from trainer.models import build_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, dict[str, Path], ModelMeta]:
    torch.manual_seed(0)
    net = build_model("nano_b").eval()
    # Random BN statistics so the folded graph differs from an identity BN.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    out = tmp_path_factory.mktemp("export")
    result = export_model(
        net, out, "nano-b-test", formats=("onnx", "openvino", "torchscript"), width=128, height=96
    )
    return net, result.files, result.meta


def _torch_outputs(net: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in InferenceHead(net).eval()(torch.from_numpy(x))]


def test_onnx_carries_contract_and_true_parameter_count(exported) -> None:
    _, files, meta = exported
    model = onnx.load(files["onnx"])
    props = {p.key: p.value for p in model.metadata_props}
    doc = ModelMeta.from_json(props[METADATA_KEY])
    assert doc == meta
    assert doc.parameters == parameter_count(model) > 0
    assert len(doc.weights_sha256) == 64
    # The edge reads the same document and counts the same tensors.
    info = read_model(files["onnx"])
    assert info.meta == meta


@pytest.mark.parametrize(("w", "h"), [(128, 96), (200, 152)])
def test_onnxruntime_and_openvino_match_pytorch(exported, w: int, h: int) -> None:
    import onnxruntime as ort
    import openvino as ov

    net, files, _ = exported
    x = np.random.default_rng(w).normal(0, 40, (1, 3, h, w)).astype(np.float32)
    ref = _torch_outputs(net, x)
    ort_out = ort.InferenceSession(str(files["onnx"])).run(None, {"input": x})
    # f32 explicitly: on CPUs with AMX/AVX512-BF16 OpenVINO otherwise runs in bfloat16.
    compiled = ov.Core().compile_model(str(files["openvino"]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ov_res = compiled({0: x})
    ov_out = [ov_res[o] for o in compiled.outputs]
    for got in (ort_out, ov_out):
        assert [g.shape for g in got] == [r.shape for r in ref]
        for g, r in zip(got, ref, strict=True):
            # float32 re-association (BN folded into convs, fused kernels): errors scale with the
            # outputs' magnitude; a wiring mistake is off by the whole magnitude.
            np.testing.assert_allclose(g, r, atol=1e-3 * float(np.abs(r).max()) + 1e-5, rtol=1e-3)


def test_openvino_ir_has_rt_info_and_sidecar(exported) -> None:
    _, files, meta = exported
    xml = files["openvino"]
    assert ModelMeta.from_json(xml.with_suffix(".featherface.json").read_text()) == meta
    assert read_model(xml).meta == meta


def test_torchscript_archive_holds_metadata(exported) -> None:
    net, files, meta = exported
    with zipfile.ZipFile(files["torchscript"]) as archive:
        name = next(n for n in archive.namelist() if n.endswith(f"extra/{METADATA_KEY}.json"))
        assert ModelMeta.from_json(archive.read(name).decode()) == meta
    loaded = torch.jit.load(str(files["torchscript"]))
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x)[0].numpy(), _torch_outputs(net, x.numpy())[0], atol=1e-5)


def test_truncated_export_is_refused_with_one_line(exported, tmp_path: Path) -> None:
    _, files, _ = exported
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(files["onnx"].read_bytes()[:5000])
    with pytest.raises(ModelError) as err:
        read_model(broken)
    assert "broken.onnx" in str(err.value) and "\n" not in str(err.value)


def test_bad_requests_are_clear(tmp_path: Path) -> None:
    net = build_model("nano_b")
    with pytest.raises(ExportError, match="unknown export format"):
        export_model(net, tmp_path, "x", formats=("tflite",))
    with pytest.raises(ExportError, match="calibration images"):
        export_model(net, tmp_path, "x", int8=True)


def test_detector_parity_onnxruntime_vs_openvino_on_real_photo(exported) -> None:
    """Decoded, NMS-filtered detections agree across runtimes on a real image."""
    import cv2

    from tests.shared_paths import need_shared

    image = cv2.imread(str(need_shared("data/photos/1.jpg")))
    _, files, meta = exported
    dets = {}
    for be, f in (("onnxruntime", files["onnx"]), ("openvino", files["openvino"])):
        dets[be] = load_detector(f, backend=be, threads=1, score_threshold=0.3).detect(image)
    a, b = dets["onnxruntime"], dets["openvino"]
    assert len(a) == len(b)
    for da, db in zip(a, b, strict=True):
        np.testing.assert_allclose(da.box, db.box, atol=1e-3)
        assert abs(da.score - db.score) < 1e-3
    assert preprocess(image, meta).tensor.shape[1] == 3
