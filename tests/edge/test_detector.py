"""The detector on real runtimes: preprocessing from metadata, decoding, NMS, ROI, backend parity."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.contract import InputSpec, PriorSpec
from edge.detector import (
    DetectorConfig,
    FaceDetector,
    load_detector,
    network_size,
    normalise_roi,
    points_in_polygon,
    preprocess,
)
from edge.errors import ConfigError, ModelError
from edge.records import Detection
from tests.edge.conftest import bright_squares, tiny_meta

LEFT_HALF = ((0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0))


def centres(dets: list[Detection]) -> np.ndarray:
    return np.array([((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2) for d in dets]).reshape(-1, 2)


@pytest.fixture(scope="module")
def tiny_ort(tiny_onnx: Path) -> FaceDetector:
    return load_detector(tiny_onnx, backend="onnxruntime", threads=1, score_threshold=0.7)


def test_squares_are_found_where_they_are(tiny_ort: FaceDetector) -> None:
    assert tiny_ort.detect(bright_squares([])) == []
    # A 256x256 frame into a 128x96 model: letterboxed with padding, so the mapping back is tested.
    for w, h, square in ((256, 192, (20, 20, 40)), (256, 256, (40, 150, 60)), (400, 100, (300, 30, 50))):
        dets = tiny_ort.detect(bright_squares([square], w, h))
        assert dets, (w, h, square)
        x, y, side = square
        c = centres(dets) * [w, h]
        margin = 0.15 * max(w, h)  # the coarsest (stride-32) anchors sit up to half a cell away
        assert np.all((c[:, 0] > x - margin) & (c[:, 0] < x + side + margin)), c
        assert np.all((c[:, 1] > y - margin) & (c[:, 1] < y + side + margin)), c
        for d in dets:
            assert 0.7 < d.score <= 1.0  # softmax applied (the graph returns raw logits of +-8)
            assert 0.0 <= d.box[0] < d.box[2] <= 1.0 and 0.0 <= d.box[1] < d.box[3] <= 1.0
            assert len(d.landmarks) == 5


def test_ort_and_openvino_agree(tiny_onnx: Path, tiny_ir: Path) -> None:
    image = bright_squares([(20, 20, 40), (180, 100, 48), (120, 10, 24)])
    runs = {
        "ort-onnx": load_detector(tiny_onnx, backend="onnxruntime", score_threshold=0.7),
        "ov-onnx": load_detector(tiny_onnx, backend="openvino", score_threshold=0.7),
        "ov-ir": load_detector(tiny_ir, backend="openvino", score_threshold=0.7),
    }
    assert runs["ov-ir"].runtime == "openvino" and runs["ort-onnx"].runtime == "onnxruntime"
    found = {k: det.detect(image) for k, det in runs.items()}
    ref = found["ort-onnx"]
    assert len(ref) >= 10
    for name, dets in found.items():
        assert len(dets) == len(ref), name
        np.testing.assert_allclose([d.box for d in dets], [d.box for d in ref], atol=1e-4, err_msg=name)
        # Landmark offsets are larger numbers times variances: OpenVINO's CPU kernels differ by ~1e-4.
        np.testing.assert_allclose([d.landmarks for d in dets], [d.landmarks for d in ref], atol=1e-3)


def test_auto_backend_is_onnxruntime_for_onnx_and_openvino_for_ir(tiny_onnx: Path, tiny_ir: Path) -> None:
    det = load_detector(tiny_onnx, backend="auto")
    assert det.runtime == "onnxruntime"  # the measured default (docs/edge.md, "Runtimes")
    assert det.sha256 == det.model.sha256 and len(det.sha256) == 64
    assert load_detector(tiny_ir, backend="auto").runtime == "openvino"


def test_ir_on_onnxruntime_is_refused(tiny_ir: Path) -> None:
    with pytest.raises(ModelError, match=re.escape("onnxruntime runs .onnx files")):
        load_detector(tiny_ir, backend="onnxruntime")


def test_roi_keeps_only_faces_inside(tiny_onnx: Path) -> None:
    image = bright_squares([(20, 60, 48), (190, 60, 48)])
    everywhere = load_detector(tiny_onnx, backend="onnxruntime", score_threshold=0.7).detect(image)
    left = load_detector(tiny_onnx, backend="onnxruntime", score_threshold=0.7, roi=LEFT_HALF).detect(image)
    xs_all, xs_left = centres(everywhere)[:, 0], centres(left)[:, 0]
    assert (xs_all < 0.5).any() and (xs_all > 0.5).any()
    assert len(left) == int((xs_all < 0.5).sum()) > 0
    assert np.all(xs_left < 0.5)


def test_points_in_polygon_literal() -> None:
    # A "U": the notch (0.5, 0.8) is outside although inside the bounding box.
    u_shape = ((0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.7, 0.9), (0.7, 0.5), (0.3, 0.5), (0.3, 0.9), (0.1, 0.9))
    pts = np.array([[0.2, 0.8], [0.5, 0.8], [0.5, 0.3], [0.95, 0.5], [0.8, 0.7]])
    assert points_in_polygon(pts, u_shape).tolist() == [True, False, True, False, True]


def test_roi_validation() -> None:
    assert normalise_roi([[0, 0], [1, 0], [1, 1]]) == ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0))
    with pytest.raises(ConfigError, match="at least 3"):
        normalise_roi([[0, 0], [1, 1]])
    with pytest.raises(ConfigError, match="normalised"):
        DetectorConfig(roi=((0, 0), (640, 0), (640, 480)))
    with pytest.raises(ConfigError, match=re.escape("detector.backend")):
        DetectorConfig(backend="tensorrt")
    with pytest.raises(ConfigError, match="unknown key"):
        DetectorConfig.from_dict({"modle": "x.onnx"})


def test_preprocess_follows_metadata() -> None:
    meta = tiny_meta()  # 128x96, RGB, (x - 127.5) / 127.5, NCHW
    image = np.zeros((100, 100, 3), np.uint8)
    image[..., 0] = 255  # pure blue in BGR
    prep = preprocess(image, meta)
    t = prep.tensor
    assert t.shape == (1, 3, 96, 128) and t.dtype == np.float32
    # Letterbox: 100x100 -> 96x96 at the top-left; RGB order puts blue in channel 2.
    assert np.allclose(t[0, 2, :96, :96], 1.0) and np.allclose(t[0, 0, :96, :96], -1.0)
    assert np.allclose(t[0, :, :, 96:], 0.0)  # padding is the mean colour, zero after normalising
    nhwc = dataclasses.replace(meta, input=dataclasses.replace(meta.input, layout="NHWC", color="BGR"))
    assert preprocess(image, nhwc).tensor.shape == (1, 96, 128, 3)
    # Mean and std are per channel in the model's colour order.
    skew = InputSpec(width=128, height=96, color="RGB", mean=(10.0, 20.0, 30.0), std=(1.0, 2.0, 5.0))
    t = preprocess(image, dataclasses.replace(meta, input=skew)).tensor
    assert t[0, :, 5, 5].tolist() == pytest.approx([(0 - 10) / 1, (0 - 20) / 2, (255 - 30) / 5])
    bgr = dataclasses.replace(skew, color="BGR")
    t = preprocess(image, dataclasses.replace(meta, input=bgr)).tensor
    assert t[0, :, 5, 5].tolist() == pytest.approx([(255 - 10) / 1, (0 - 20) / 2, (0 - 30) / 5])
    assert t[0, :, 5, 120].tolist() == [0.0, 0.0, 0.0]


def test_dynamic_model_keeps_frame_size_rounded_to_stride() -> None:
    meta = tiny_meta(input=InputSpec(width=640, height=480, dynamic=True))
    assert network_size(meta, 720, 478) == (736, 480, 1.0)
    assert network_size(meta, 1920, 1080, max_side=640) == (640, 384, 640 / 1920)
    prep = preprocess(np.full((478, 720, 3), 200, np.uint8), meta)
    assert prep.tensor.shape == (1, 3, 480, 736)
    assert np.allclose(prep.tensor[0, :, 478:, :], 0.0) and np.allclose(prep.tensor[0, :, :, 720:], 0.0)


def test_anchor_count_mismatch_is_a_model_error(tiny_onnx: Path) -> None:
    det = load_detector(tiny_onnx, backend="onnxruntime")
    wrong = dataclasses.replace(det.model.meta, priors=PriorSpec(min_sizes=((16,), (64,), (256,))))
    det.model = dataclasses.replace(det.model, meta=wrong)
    with pytest.raises(ModelError, match="anchors"):
        det.detect(bright_squares([(20, 20, 40)]))


def test_retinaface_finds_real_faces(retinaface_onnx: Path, photos: Path) -> None:
    ort_det = load_detector(retinaface_onnx, backend="onnxruntime", score_threshold=0.6)
    ov_det = load_detector(retinaface_onnx, backend="openvino", score_threshold=0.6)
    image = cv2.imread(str(photos / "1.jpg"))
    faces = ort_det.detect(image)
    assert len(faces) >= 10  # a group photo
    for d in faces[:10]:
        (lx, ly), (rx, _) = d.landmarks[:2]
        # Eyes inside the box, left eye left of the right eye: decoding and frame mapping are right.
        assert d.box[0] <= lx < rx <= d.box[2] and d.box[1] <= ly <= d.box[3]
    # Scores of clear faces tie near 1.0, so the runtimes may order them differently: compare sorted.
    strong = sorted(d.box for d in faces if d.score > 0.9)
    ov_strong = sorted(d.box for d in ov_det.detect(image) if d.score > 0.9)
    assert len(ov_strong) == len(strong)
    np.testing.assert_allclose(ov_strong, strong, atol=5e-3)  # within ~2 px
    # Half the resolution: the big faces are still there, at the same normalised place.
    small = ort_det.detect(cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2)))
    best = max(faces, key=lambda d: d.box[2] - d.box[0])
    near = [d for d in small if np.abs(np.subtract(d.box, best.box)).max() < 0.02]
    assert near


def test_auto_backend_falls_back_to_onnxruntime(tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge import backends

    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    assert load_detector(tiny_onnx, backend="auto").runtime == "onnxruntime"
    with pytest.raises(ModelError, match="unknown backend"):
        backends.open_backend(load_detector(tiny_onnx).model, "tflite")


def test_int8_model_runs(tiny_plain_onnx: Path, tmp_path: Path) -> None:
    """An INT8 (QDQ) export is just another contract model; ``auto`` finds a runtime that runs it."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from tests.edge.conftest import attach_meta

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            images = [bright_squares([(10 + 20 * i, 30, 40)]) for i in range(6)]
            self.batches = iter([{"input": preprocess(im, tiny_meta()).tensor} for im in images])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    q = tmp_path / "q.onnx"
    quantize_static(
        str(tiny_plain_onnx),
        str(q),
        Calibration(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    int8 = attach_meta(q, tmp_path / "tiny-int8.onnx", tiny_meta(name="tiny-int8"))
    image = bright_squares([(20, 20, 40)])
    for backend in ("onnxruntime", "auto"):
        dets = load_detector(int8, backend=backend, score_threshold=0.7).detect(image)
        assert dets, backend
        c = centres(dets) * [256, 192]
        assert np.all((c[:, 0] < 110) & (c[:, 1] < 110)), backend  # all around the one square


def test_onnxruntime_providers_are_named_checked_and_used(tiny_onnx: Path, tiny_ort: FaceDetector) -> None:
    """`providers` picks ONNX Runtime (even under backend auto, which would take OpenVINO), a provider the
    installed build lacks is one clear error, and bad names are refused before any model loads."""
    import onnxruntime as ort

    assert DetectorConfig(providers=("TensorRT", "cuda")).providers == (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
    )
    with pytest.raises(ConfigError, match="unknown onnxruntime provider 'gpu'"):
        DetectorConfig(providers=("gpu",))
    with pytest.raises(ConfigError, match="providers are ONNX Runtime's"):
        DetectorConfig(backend="openvino", providers=("cpu",))
    with pytest.raises(ConfigError, match="cpu must come last"):
        DetectorConfig(providers=("cpu", "cuda"))

    det = load_detector(tiny_onnx, backend="auto", threads=1, score_threshold=0.7, providers="cpu")
    assert det.runtime == "onnxruntime"
    assert det.backend.providers == ["CPUExecutionProvider"]  # type: ignore[attr-defined]
    frame = bright_squares([(40, 150, 60)], 256, 256)
    assert det.detect(frame) == tiny_ort.detect(frame) != []

    absent = next(p for p in ort.get_all_providers() if p not in ort.get_available_providers())
    with pytest.raises(
        ModelError, match=f"provider {absent} is not in this onnxruntime build \\(it has .*CPU"
    ):
        load_detector(tiny_onnx, providers=[absent])


def test_session_providers_keep_the_order_and_end_with_the_cpu() -> None:
    from edge.backends import session_providers

    have = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt = {"trt_engine_cache_enable": "True"}
    assert session_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider"], have, trt) == [
        ("TensorrtExecutionProvider", trt),
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert session_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], have) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",  # listed once
    ]


def test_tensorrt_gets_a_cache_per_model_file_and_a_profile_for_every_frame_size(tmp_path: Path) -> None:
    """Engines are cached per file hash (ORT's cache key ignores the weights), and a dynamic model's
    profile spans every padded input the detector can produce, so no frame size forces a rebuild."""
    from edge.backends import tensorrt_options
    from edge.model import read_model

    model = read_model(None)  # the shipped Nano-B: dynamic H x W, strides up to 32
    assert model.meta.input.dynamic
    name = model.inputs[0].name
    opts = tensorrt_options(model, str(tmp_path), max_side=0)
    assert opts["trt_engine_cache_enable"] == "True"
    assert Path(opts["trt_engine_cache_path"]) == tmp_path / model.sha256[:16]
    assert opts["trt_profile_min_shapes"] == f"{name}:1x3x32x32"
    w, h = model.meta.input.width, model.meta.input.height
    assert opts["trt_profile_opt_shapes"] == f"{name}:1x3x{-(-h // 32) * 32}x{-(-w // 32) * 32}"
    assert opts["trt_profile_max_shapes"] == f"{name}:1x3x1920x1920"
    capped = tensorrt_options(model, "", max_side=600)
    assert "trt_engine_cache_path" not in capped
    assert capped["trt_profile_max_shapes"] == f"{name}:1x3x608x608"
    # The largest frame the detector feeds at that cap fits the profile.
    net_w, net_h, _ = network_size(model.meta, 1920, 1080, max_side=600)
    assert max(net_w, net_h) <= 608
    # A cap below the model's nominal size keeps the profile's optimum inside its range.
    assert tensorrt_options(model, max_side=100)["trt_profile_opt_shapes"] == f"{name}:1x3x128x128"
