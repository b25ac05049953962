"""`featherface-edge serve`: DeepStack's face endpoint against a real server process and a real client.

One server (the shipped model, ONNX Runtime, 1 worker + a queue of 1) takes every request of the
module: good photos (answers equal the Python edge's and validate against DeepStack's schema),
hostile uploads (each answered with DeepStack's error shape and a 4xx, the server still serving
afterwards), and a burst over the queue bound (503 + Retry-After, never a 500). A second server
checks the token.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import jsonschema
import numpy as np
import pytest

from edge.config import parse_config
from edge.detector import load_detector
from edge.errors import ConfigError
from edge.serve import predictions
from edge.upload import ImageError, decode_image, image_size
from tests.edge.serve_helpers import REPO, ServeProcess, serving

pytest.importorskip("starlette", reason="serve needs the http extra (starlette, uvicorn, python-multipart)")

SCHEMA = json.loads((REPO / "edge/schema/deepstack-face.schema.json").read_text())
SAMPLE = REPO / "edge/samples/astronaut.png"
CONFIG = """
[detector]
backend = "onnxruntime"
threads = 1
score_threshold = 0.6

[http]
workers = 1
queue_size = 1
max_body_bytes = 10_000_000
read_timeout_s = 2.0
"""


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def sample_640x480() -> np.ndarray:
    """The bundled astronaut photo (one real face) as a 640x480 frame."""
    img = cv2.imread(str(SAMPLE))
    return cv2.resize(img, (640, 480), interpolation=cv2.INTER_AREA)


def post(url: str, files: dict | None = None, data: dict | None = None, **kw: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/vision/face", files=files, data=data, timeout=60, **kw)  # type: ignore[arg-type]


def assert_deepstack(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    jsonschema.validate(body, SCHEMA)
    assert body["success"] is (status == 200)
    return body


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serving(tmp_path_factory.mktemp("serve"), CONFIG) as srv:
        yield srv


@pytest.fixture(scope="module")
def python_edge():  # the same model and runtime, in process
    return load_detector(None, backend="onnxruntime", threads=1, score_threshold=0.6)


def test_health(server: ServeProcess) -> None:
    r = httpx.get(f"{server.url}/healthz")
    doc = r.json()
    assert r.status_code == 200 and doc["status"] == "ok" and doc["runtime"] == "onnxruntime"
    assert doc["model"]["name"] == "nano_b" and doc["queue"] == {"admitted": 0, "capacity": 2, "workers": 1}
    assert r.headers["cross-origin-opener-policy"] == "same-origin"  # WASM threads need isolation
    assert r.headers["cross-origin-embedder-policy"] == "require-corp"


def test_face_answer_equals_python_edge(server: ServeProcess, python_edge) -> None:
    frame = sample_640x480()
    data = jpeg(frame)
    body = assert_deepstack(post(server.url, {"image": ("cam.jpg", data, "image/jpeg")}), 200)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    expected = predictions(python_edge.detect(decoded), 640, 480)
    assert body["predictions"] == expected and len(expected) >= 1
    face = body["predictions"][0]
    assert 0 <= face["x_min"] < face["x_max"] <= 640 and 0 <= face["y_min"] < face["y_max"] <= 480


def test_real_photos_equal_python_edge(server: ServeProcess, python_edge, photos: Path) -> None:
    for name in ("1.jpg", "13.jpg", "2.jpg"):
        data = (photos / name).read_bytes()
        body = assert_deepstack(post(server.url, {"image": (name, data, "image/jpeg")}), 200)
        image = cv2.imread(str(photos / name))
        h, w = image.shape[:2]
        assert body["predictions"] == predictions(python_edge.detect(image), w, h), name
        scores = [p["confidence"] for p in body["predictions"]]
        assert scores == sorted(scores, reverse=True)


def test_min_confidence(server: ServeProcess) -> None:
    files = {"image": ("cam.jpg", jpeg(sample_640x480()), "image/jpeg")}
    low = assert_deepstack(post(server.url, files, {"min_confidence": "0.3"}), 200)["predictions"]
    high = assert_deepstack(post(server.url, files, {"min_confidence": "0.999"}), 200)["predictions"]
    assert all(p["confidence"] > 0.999 for p in high)
    assert [p for p in low if p["confidence"] > 0.999] == high and len(low) >= len(high)
    bad = assert_deepstack(post(server.url, files, {"min_confidence": "abc"}), 400)
    assert bad["error"] == "Invalid value for min_confidence"
    assert assert_deepstack(post(server.url, files, {"min_confidence": "1.5"}), 400)["error"] == (
        "min_confidence cannot be greater than 1"
    )


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels in 60 bytes: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


HOSTILE = {
    "truncated jpeg": (
        lambda good: {"image": ("t.jpg", good[: len(good) // 2], "image/jpeg")},
        400,
        "invalid image",
    ),
    "zero bytes": (lambda good: {"image": ("z.jpg", b"", "image/jpeg")}, 400, "invalid image"),
    "wrong field": (lambda good: {"file": ("w.jpg", good, "image/jpeg")}, 400, "No valid image file found"),
    "text not image": (
        lambda good: {"image": ("a.txt", b"hello " * 100, "text/plain")},
        400,
        "invalid image",
    ),
    "random bytes": (
        lambda good: {"image": ("r.jpg", os.urandom(50_000), "image/jpeg")},
        400,
        "invalid image",
    ),
    "jpeg header, garbage body": (
        lambda good: {"image": ("g.jpg", good[:600] + os.urandom(20_000) + b"\xff\xd9", "image/jpeg")},
        400,
        "invalid image",
    ),
    "pixel bomb": (
        lambda good: {"image": ("b.png", _png_header(60_000, 60_000), "image/png")},
        400,
        "invalid image",
    ),
    "20 MB body": (lambda good: {"image": ("big.jpg", os.urandom(20_000_000), "image/jpeg")}, 413, "exceeds"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_upload_gets_deepstack_error_and_server_keeps_serving(
    server: ServeProcess, case: str
) -> None:
    good = jpeg(sample_640x480())
    make, status, words = HOSTILE[case]
    body = assert_deepstack(post(server.url, make(good)), status)
    assert words in body["error"]
    assert assert_deepstack(post(server.url, {"image": ("ok.jpg", good, "image/jpeg")}), 200)["predictions"]


def test_body_without_length_is_cut_at_the_limit(server: ServeProcess) -> None:
    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length to refuse up front
        boundary = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="c.jpg"\r\n\r\n'
        yield boundary
        for _ in range(20):
            yield os.urandom(1_000_000)
        yield b"\r\n--xyz--\r\n"

    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    r = httpx.post(f"{server.url}/v1/vision/face", content=chunks(), headers=headers, timeout=60)
    assert "exceeds" in assert_deepstack(r, 413)["error"]
    assert httpx.get(f"{server.url}/healthz").json()["queue"]["admitted"] == 0


def _read_reply(sock: socket.socket) -> str:
    """One whole HTTP reply: the headers and the body may arrive in separate segments (they did once
    on a loaded machine), so read until the body's Content-Length is in, or the server closes."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _content_length(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode()


def _content_length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].decode().split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return int(value)
    return 0


def test_stalled_upload_times_out_and_frees_its_slot(server: ServeProcess) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:  # sends 10 of 1000 bytes
        head = "POST /v1/vision/face HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
        sock.sendall(f"{head}Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\nabcd".encode())
        reply = _read_reply(sock)
    assert reply.startswith("HTTP/1.1 408") and "not received within 2 s" in reply
    assert httpx.get(f"{server.url}/healthz").json()["queue"]["admitted"] == 0


def test_not_multipart_and_malformed_multipart(server: ServeProcess) -> None:
    r = httpx.post(f"{server.url}/v1/vision/face", json={"image": "x"})
    assert assert_deepstack(r, 400)["error"] == "No valid image file found"
    headers = {"content-type": "multipart/form-data; boundary=zz"}
    r = httpx.post(f"{server.url}/v1/vision/face", content=b"--zz\r\ngarbage", headers=headers)
    assert assert_deepstack(r, 400)["error"] == "No valid image file found"


def test_burst_over_the_queue_bound_is_shed_with_503(server: ServeProcess) -> None:
    # A 2000x1500 photo keeps the one worker busy long enough that 8 simultaneous uploads overlap;
    # capacity is 1 running + 1 queued, so the rest must be refused at once, not buffered.
    big = jpeg(cv2.resize(cv2.imread(str(SAMPLE)), (2000, 1500)))

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            calls = [
                client.post("/v1/vision/face", files={"image": (f"{i}.jpg", big, "image/jpeg")})
                for i in range(8)
            ]
            return await asyncio.gather(*calls)

    answers = asyncio.run(burst())
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 1, codes
    bodies = [assert_deepstack(r, r.status_code) for r in answers]
    assert len({json.dumps(b["predictions"]) for b in bodies if b["success"]}) == 1  # same answer each time
    for r in answers:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1" and "queue is full" in r.json()["error"]
    health = httpx.get(f"{server.url}/healthz").json()
    assert health["queue"]["admitted"] == 0
    assert assert_deepstack(
        post(server.url, {"image": ("ok.jpg", jpeg(sample_640x480()), "image/jpeg")}), 200
    )


def test_page_route_and_model_file(server: ServeProcess) -> None:
    r = httpx.get(f"{server.url}/")
    assert r.status_code in (200, 404) and r.headers["content-type"].startswith("text/html")
    model = httpx.get(f"{server.url}/model.onnx")
    assert model.status_code == 200
    assert model.content == (REPO / "edge/models/featherface-nano-b.onnx").read_bytes()
    assert httpx.get(f"{server.url}/config.json").json() == {"score_threshold": 0.6, "nms_threshold": 0.4}


def test_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    config = CONFIG.replace("[http]", f'[http]\ntoken_file = "{tmp_path / "token"}"')
    files = {"image": ("cam.jpg", jpeg(sample_640x480()), "image/jpeg")}
    with serving(tmp_path, config) as srv:
        assert httpx.get(f"{srv.url}/healthz").json()["auth"] is True
        assert assert_deepstack(post(srv.url, files), 401)["error"] == "Incorrect api key"
        assert_deepstack(post(srv.url, files, {"api_key": "wrong"}), 401)
        assert_deepstack(post(srv.url, files, headers={"Authorization": "Bearer nope"}), 401)
        assert_deepstack(post(srv.url, files, {"api_key": "s3cret"}), 200)
        assert_deepstack(post(srv.url, files, headers={"Authorization": "Bearer s3cret"}), 200)
        log = (tmp_path / "serve.log").read_text()
    assert "s3cret" not in log


# --- the pieces, without a server ---


def test_http_table_is_validated() -> None:
    cfg = parse_config({"http": {"port": 8080, "queue_size": 0}}, "edge.toml", environ={})
    assert (cfg.http.host, cfg.http.port, cfg.http.queue_size) == ("127.0.0.1", 8080, 0)
    with pytest.raises(ConfigError, match=r"edge.toml: \[http\] unknown key 'bind'"):
        parse_config({"http": {"bind": "0.0.0.0"}}, "edge.toml", environ={})
    with pytest.raises(ConfigError, match="workers must be > 0"):
        parse_config({"http": {"workers": 0}}, "edge.toml", environ={})
    cfg = parse_config({}, "edge.toml", environ={"FEATHERFACE_HTTP__TOKEN": "t0k"})
    assert cfg.http.token.reveal() == "t0k" and cfg.redacted()["http"]["token"] == "***"


def test_image_size_reads_headers_without_decoding() -> None:
    img = np.zeros((30, 50, 3), np.uint8)
    for ext in (".jpg", ".png", ".bmp", ".webp"):
        ok, buf = cv2.imencode(ext, img)
        assert ok
        assert image_size(buf.tobytes())[1:] == (50, 30), ext  # type: ignore[index]
        assert decode_image(buf.tobytes(), 10_000).shape == (30, 50, 3)
    assert image_size(b"GIF89a...") is None and image_size(b"\xff\xd8\xff") is None
    with pytest.raises(ImageError, match="more than the limit"):
        decode_image(_png_header(200, 200), 10_000)
