"""The page's detections equal the Python edge's on the same photo (IoU >= 0.95, scores within 1e-3).

The page runs the shipped model with onnxruntime-web (WASM) and the JavaScript port of the pre-
and post-processing (web/src/featherface.js); the Python edge runs the same file with ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.detector import load_detector
from tests.edge.serve_helpers import REPO, ServeProcess
from tests.shared_paths import need_shared

SAMPLE = REPO / "edge/samples/astronaut.png"


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def open_page(browser, server: ServeProcess, query: str = ""):
    page = browser.new_page()
    page.goto(f"{server.url}/{query}")
    page.wait_for_function("window.featherface && (window.featherface.ready || window.featherface.error)")
    assert page.evaluate("window.featherface.error") is None
    return page


def detect_in_page(page, photo: Path) -> dict:
    page.set_input_files("#file", str(photo))
    done = f"featherface.last && featherface.last.name === {photo.name!r} || featherface.error"
    page.wait_for_function(done, timeout=60_000)
    assert page.evaluate("window.featherface.error") is None
    return page.evaluate("window.featherface.last")


@pytest.fixture(scope="module")
def python_edge():
    return load_detector(None, backend="onnxruntime", threads=1, score_threshold=0.6, nms_threshold=0.4)


def photos() -> list:
    shared = [pytest.param(name, marks=pytest.mark.shared) for name in ("1.jpg", "13.jpg", "2.jpg")]
    return ["astronaut.png", *shared]


@pytest.mark.parametrize("name", photos())
def test_page_detections_equal_python_edge(
    browser, page_server: ServeProcess, python_edge, name: str
) -> None:
    photo = SAMPLE if name == "astronaut.png" else need_shared(f"data/photos/{name}")
    page = open_page(browser, page_server)
    state = page.evaluate(
        "({backend: featherface.backend, meta: featherface.meta, t: featherface.thresholds})"
    )
    assert state["backend"] == "wasm"  # headless Chromium has no WebGPU adapter
    assert state["meta"]["name"] == python_edge.meta.name  # read from the ONNX file itself
    assert state["t"] == {"score_threshold": 0.6, "nms_threshold": 0.4}
    got = detect_in_page(page, photo)
    image = cv2.imread(str(photo))
    assert (got["width"], got["height"]) == (image.shape[1], image.shape[0])
    want = python_edge.detect(image)
    assert len(got["faces"]) == len(want) and want, (len(got["faces"]), len(want))
    for det in want:
        best = max(got["faces"], key=lambda f: iou(f["box"], det.box))
        assert iou(best["box"], det.box) >= 0.95, (best, det)
        assert abs(best["score"] - det.score) <= 1e-3, (best["score"], det.score)
        assert np.allclose(best["landmarks"], det.landmarks, atol=0.01)
    drawn = page.locator("#view").screenshot()
    assert len(drawn) > 1000  # the canvas has the photo and the boxes on it
    assert f"{len(want)} face(s)" in page.text_content("#timing")
    page.close()


def test_page_shows_the_model_metadata(browser, page_server: ServeProcess) -> None:
    page = open_page(browser, page_server)
    table = page.text_content("#meta")
    assert "nano_b" in table and "104, 117, 123" in table and "8/16/32" in table
    assert page.evaluate("self.crossOriginIsolated")  # serve's headers: WASM threads available
    page.close()
