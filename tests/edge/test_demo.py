"""`featherface-edge demo`: the real pipeline on the bundled sample, through an embedded broker."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from edge.broker import EmbeddedBroker
from edge.cli import app
from edge.demo import SAMPLE
from edge.model import default_model_path


def test_sample_is_bundled_with_provenance() -> None:
    assert hashlib.sha256(SAMPLE.read_bytes()).hexdigest().startswith("88431cd9")
    readme = (SAMPLE.parent / "README.md").read_text()
    assert "public domain" in readme and "scikit-image" in readme and "NASA" in readme


def test_demo_with_the_shipped_model_is_the_same_on_every_run(tmp_path: Path) -> None:
    """Issue 16: the demo gave 2 or 3 events from run to run (updates fell on wall-clock time)."""
    if not default_model_path().is_file():
        pytest.skip("no shipped model in edge/models")
    runs = []
    for i in range(2):
        result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / f"{i}.jpg")])
        assert result.exit_code == 0, result.output
        runs.append(
            [ln.split()[0] + " " + ln.split()[-1] for ln in result.output.splitlines() if "  track " in ln]
        )
    assert runs[0] == runs[1] == ["start 2", "update 12", "update 22", "end 30"]


def test_demo_runs_the_pipeline_with_a_model(tiny_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo.jpg"
    result = CliRunner().invoke(app, ["demo", "--model", str(tiny_onnx), "--frames", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "embedded" in result.output and "status  online" in result.output
    # The tiny model sees bright regions of the sample as faces: events travel through the broker.
    assert " start  track" in result.output and "event(s) received" in result.output
    assert "status  stopped" in result.output
    image = cv2.imread(str(out))
    assert image is not None and image.shape[:2] == (512, 512)


def test_demo_uses_the_configured_broker(
    tiny_onnx: Path, tmp_path: Path, mqtt_broker: EmbeddedBroker
) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(f"[mqtt]\nhost = '{mqtt_broker.host}'\nport = {mqtt_broker.port}\n")
    out = tmp_path / "demo.jpg"
    result = CliRunner().invoke(
        app, ["demo", "--model", str(tiny_onnx), "--frames", "4", "--out", str(out), "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert "embedded" not in result.output and "status  stopped" in result.output and out.is_file()
