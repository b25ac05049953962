"""`featherface-edge detect / model-info / bench` through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from edge import model as model_mod
from edge.cli import app
from tests.edge.conftest import bright_squares

runner = CliRunner()


def _squares(tmp_path: Path) -> list[Path]:
    paths = []
    for i, squares in enumerate([[(20, 20, 40)], [(150, 80, 48), (30, 120, 40)], []]):
        path = tmp_path / f"img{i}.png"
        cv2.imwrite(str(path), bright_squares(squares))
        paths.append(path)
    return paths


def test_detect_prints_one_json_object_per_image(tiny_onnx: Path, tmp_path: Path) -> None:
    images = _squares(tmp_path)
    out = tmp_path / "annotated"
    args = ["detect", *map(str, images), "--model", str(tiny_onnx), "--annotate", str(out)]
    result = runner.invoke(
        app, [*args, "--backend", "onnxruntime", "--threads", "1", "--score-threshold", "0.7"]
    )
    assert result.exit_code == 0, result.output
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["image"] for d in docs] == [str(p) for p in images]
    assert [(d["width"], d["height"]) for d in docs] == [(256, 192)] * 3
    assert docs[0]["faces"] and docs[1]["faces"] and docs[2]["faces"] == []
    for face in docs[0]["faces"]:
        x1, y1, x2, y2 = face["box"]
        assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 192  # pixels, not normalised
        assert x2 > 2 and len(face["landmarks"]) == 5 and 0.7 < face["score"] <= 1.0
    for image in images:
        drawn = cv2.imread(str(out / image.name))
        assert drawn is not None and drawn.shape == (192, 256, 3)
    assert (cv2.imread(str(out / images[0].name)) != cv2.imread(str(images[0]))).any()  # boxes drawn


def test_detect_a_folder_runs_on_its_images_in_name_order(tiny_onnx: Path, tmp_path: Path) -> None:
    images = _squares(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    args = ["detect", str(tmp_path), "--model", str(tiny_onnx), "--backend", "onnxruntime"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [str(p) for p in images]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["detect", str(empty), "--model", str(tiny_onnx)])
    assert result.exit_code == 3 and "is a folder with no images" in result.output


def test_detect_real_faces_with_annotated_file(retinaface_onnx: Path, photos: Path, tmp_path: Path) -> None:
    target = tmp_path / "faces.jpg"
    result = runner.invoke(
        app, ["detect", str(photos / "1.jpg"), "--model", str(retinaface_onnx), "--annotate", str(target)]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert len(doc["faces"]) >= 10 and doc["annotated"] == str(target) and target.is_file()


def test_detect_bad_image_reported_and_others_still_done(tiny_onnx: Path, tmp_path: Path) -> None:
    good = _squares(tmp_path)[0]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00garbage")
    result = runner.invoke(app, ["detect", str(bad), str(good), "--model", str(tiny_onnx)])
    assert result.exit_code == 3
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert "not a readable image" in lines[0]["error"] and "faces" in lines[1]


def test_detect_without_model_or_bundled_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(model_mod, "default_model_path", lambda: tmp_path / "featherface-nano-b.onnx")
    result = runner.invoke(app, ["detect", str(_squares(tmp_path)[0])])
    assert result.exit_code == 2
    assert "no bundled default model yet" in result.stderr and "--model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_model_info(tiny_onnx: Path, tiny_ir: Path) -> None:
    for path in (tiny_onnx, tiny_ir):
        result = runner.invoke(app, ["model-info", str(path)])
        assert result.exit_code == 0, result.output
        info = json.loads(result.stdout)
        assert info["metadata"]["name"] == "tiny-test" and info["parameters"] > 500
        assert [o["name"] for o in info["outputs"]] == ["loc", "conf", "landmarks"]
    assert json.loads(runner.invoke(app, ["model-info", str(tiny_onnx)]).stdout)["format"] == "onnx"


def test_model_info_refuses_contract_less_file(tiny_plain_onnx: Path) -> None:
    result = runner.invoke(app, ["model-info", str(tiny_plain_onnx)])
    assert result.exit_code == 2
    assert "no FeatherFace metadata" in result.stderr and result.stdout == ""


def test_bench_reports_fps_and_percentiles(tiny_onnx: Path) -> None:
    result = runner.invoke(
        app,
        ["bench", "--model", str(tiny_onnx), "--frames", "30", "--backend", "onnxruntime", "--threads", "1"],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["frames"] == 30 and doc["runtime"] == "onnxruntime" and doc["fps"] > 0
    lat = doc["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert doc["faces_per_frame"] > 0  # the synthetic source's white square is a "face" to the tiny net
    assert (doc["frame_w"], doc["frame_h"]) == (640, 480)


def test_detect_provider_option(tiny_onnx: Path, tmp_path: Path) -> None:
    image = _squares(tmp_path)[0]
    args = ["detect", str(image), "--model", str(tiny_onnx), "--score-threshold", "0.7"]
    ok = runner.invoke(app, [*args, "--provider", "cpu"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["faces"]
    for provider, needle in (
        ("gpu", "unknown onnxruntime provider 'gpu'"),
        ("cuda", "CUDAExecutionProvider is not"),
    ):
        bad = runner.invoke(app, [*args, "--provider", provider])
        assert bad.exit_code == 2 and bad.stdout == ""
        assert needle in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
