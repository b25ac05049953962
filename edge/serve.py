"""``featherface-edge serve``: DeepStack's face endpoint and the web page, over HTTP (Starlette + uvicorn).

Home-camera tools (Double Take, Blue Iris, Agent DVR) post snapshots to DeepStack / CodeProject.AI's
``POST /v1/vision/face``; this answers it the way DeepStack does:

- multipart form, the image in the file field ``image``, optional ``min_confidence`` (0..1; default:
  ``[detector] score_threshold``, the model's operating point) and ``api_key``;
- 200 ``{"success": true, "predictions": [{"confidence", "x_min", "y_min", "x_max", "y_max"}],
  "duration": 0}``, boxes in integer pixels of the uploaded image, highest confidence first;
- anything wrong: ``{"success": false, "error": "...", "duration": 0}`` with a 4xx — 400 for a missing
  or non-file ``image`` field ("No valid image file found", DeepStack's words), an empty, truncated,
  corrupt or non-image file ("invalid image: ..."), a bad ``min_confidence``; 401 for a wrong token
  ("Incorrect api key"); 408 for a body that does not arrive within ``read_timeout_s``; 413 for a body
  over ``max_body_bytes``; and 503 with ``Retry-After`` when the worker queue is full.

Memory is bounded up front: at most ``workers + queue_size`` detection requests are admitted at a
time (each holds at most ``max_body_bytes`` of upload), a request beyond that is refused before its
body is read, and only the ``workers`` threads decode images (each at most ``max_pixels``). Each
worker owns its own detector, so inference never shares a runtime session between threads.

``GET /healthz`` reports the model and the queue; ``GET /`` serves the built web page (``make web``,
web/), ``GET /model.onnx`` the very model file this server runs, which the page loads, and
``GET /config.json`` the ``[detector]`` thresholds the page applies. Responses
carry the cross-origin isolation headers that multi-threaded WebAssembly needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import mimetypes
import os
import queue
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.config import Config, HttpConfig
from edge.detector import FaceDetector, detector_from_config
from edge.errors import ConfigError
from edge.records import Detection
from edge.upload import ImageError, decode_image

log = logging.getLogger(__name__)

NO_IMAGE = "No valid image file found"  # DeepStack's message for a missing or wrong form field
WEB_DIST = Path(__file__).resolve().parent.parent / "web" / "dist"  # a source checkout's built page
ISOLATION_HEADERS = [
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-embedder-policy", b"require-corp"),
    (b"cross-origin-resource-policy", b"same-origin"),
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Rejected(Exception):
    """A request answered with DeepStack's error shape: ``status`` and the ``error`` text."""

    def __init__(self, status: int, error: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.headers = status, error, headers or {}


def predictions(detections: list[Detection], width: int, height: int) -> list[dict[str, Any]]:
    """Detections (normalised, highest score first) -> DeepStack predictions in integer pixels."""
    out = []
    for d in detections:
        x1, y1, x2, y2 = d.box
        out.append(
            {
                "confidence": round(d.score, 6),
                "x_min": round(x1 * width),
                "y_min": round(y1 * height),
                "x_max": round(x2 * width),
                "y_max": round(y2 * height),
            }
        )
    return out


@dataclass
class WorkerPool:
    """``len(detectors)`` worker threads, one detector each, and an admission count for the queue.

    ``admit``/``release`` run on the event loop only, so the count needs no lock.
    """

    detectors: list[FaceDetector]
    queue_size: int
    max_pixels: int

    def __post_init__(self) -> None:
        self.capacity = len(self.detectors) + self.queue_size
        self.admitted = 0
        self._free: queue.SimpleQueue[FaceDetector] = queue.SimpleQueue()
        for det in self.detectors:
            self._free.put(det)
        self._executor = ThreadPoolExecutor(len(self.detectors), thread_name_prefix="detect")

    @property
    def meta(self) -> Any:
        return self.detectors[0].meta

    def admit(self) -> bool:
        if self.admitted >= self.capacity:
            return False
        self.admitted += 1
        return True

    def release(self) -> None:
        self.admitted -= 1

    def _detect(self, data: bytes, min_confidence: float | None) -> tuple[list[dict[str, Any]], float]:
        image = decode_image(data, self.max_pixels)
        det = self._free.get()  # never waits: one thread per detector
        default = det.score_threshold
        try:
            # A lower pre-NMS threshold cannot change which higher-scoring boxes NMS keeps.
            det.score_threshold = default if min_confidence is None else min_confidence
            t0 = time.perf_counter()
            found = det.detect(image)
            infer_ms = (time.perf_counter() - t0) * 1e3
        finally:  # even after a failed request, the next one starts from the configured threshold
            det.score_threshold = default
            self._free.put(det)
        return predictions(found, image.shape[1], image.shape[0]), infer_ms

    async def detect(self, data: bytes, min_confidence: float | None) -> tuple[list[dict[str, Any]], float]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._detect, data, min_confidence)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class _BodyLimit:
    """``receive`` that counts body bytes and raises :class:`Rejected` (413) past ``limit``."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive, self.limit, self.seen = receive, limit, 0

    async def __call__(self) -> Message:
        message = await self.receive()
        self.seen += len(message.get("body", b""))
        if self.seen > self.limit:
            raise Rejected(413, f"request body exceeds the limit of {self.limit} bytes")
        return message


def _parse_confidence(raw: Any) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise Rejected(400, "Invalid value for min_confidence") from None
    if value != value or value > 1.0:  # NaN too
        raise Rejected(400, "min_confidence cannot be greater than 1")
    return max(0.0, value)


def create_app(pool: WorkerPool, http: HttpConfig, token: str = "", web_dir: Path | None = None) -> Any:
    """The Starlette app: the face endpoint, health, the page and the model file."""
    from starlette.applications import Starlette
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    def error(status: int, text: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"success": False, "error": text, "duration": 0}, status, headers)

    def check_token(given: str) -> None:
        if token and not hmac.compare_digest(given.encode(), token.encode()):
            raise Rejected(401, "Incorrect api key")

    async def read_form(request: Request) -> Any:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > http.max_body_bytes:
            raise Rejected(413, f"request body exceeds the limit of {http.max_body_bytes} bytes")
        limited = Request(request.scope, _BodyLimit(request.receive, http.max_body_bytes))
        try:
            return await asyncio.wait_for(limited.form(max_files=4, max_fields=16), http.read_timeout_s)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise Rejected(408, f"request body not received within {http.read_timeout_s:g} s") from None
        except HTTPException:  # malformed multipart: Starlette's 400, in DeepStack's words
            raise Rejected(400, NO_IMAGE) from None

    async def face(request: Request) -> Response:
        bearer = request.headers.get("authorization", "")
        try:
            if bearer:  # refused before it can take a queue slot
                check_token(bearer.removeprefix("Bearer ").strip())
            if not pool.admit():
                raise Rejected(503, "server busy: the detection queue is full", {"Retry-After": "1"})
        except Rejected as exc:
            return error(exc.status, exc.error, exc.headers)
        form = None
        try:
            form = await read_form(request)
            if not bearer:
                key = form.get("api_key")
                check_token(key if isinstance(key, str) else "")
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise Rejected(400, NO_IMAGE)
            min_confidence = _parse_confidence(form.get("min_confidence"))
            data = await upload.read()
            preds, infer_ms = await pool.detect(data, min_confidence)
        except Rejected as exc:
            return error(exc.status, exc.error, exc.headers)
        except ImageError as exc:
            return error(400, f"invalid image: {exc}")
        finally:
            pool.release()
            if form is not None:
                await form.close()
        body = {"success": True, "predictions": preds, "duration": 0}
        return JSONResponse(body, headers={"Server-Timing": f"infer;dur={infer_ms:.1f}"})

    async def healthz(request: Request) -> Response:
        det = pool.detectors[0]
        return JSONResponse(
            {
                "status": "ok",
                "model": {"name": det.meta.name, "version": det.meta.version, "sha256": det.sha256},
                "runtime": det.runtime,
                "queue": {
                    "admitted": pool.admitted,
                    "capacity": pool.capacity,
                    "workers": len(pool.detectors),
                },
                "auth": bool(token),
            }
        )

    model_path = Path(pool.detectors[0].model.path)

    async def model_file(request: Request) -> Response:
        if model_path.suffix.lower() != ".onnx":
            return error(404, f"the served model {model_path.name} is not ONNX; the page needs an ONNX model")
        return FileResponse(model_path, media_type="application/octet-stream")

    async def page_config(request: Request) -> Response:
        # The contract carries no thresholds: the page uses this edge's [detector] ones, so that it
        # finds what the Python edge finds.
        det = pool.detectors[0]
        return JSONResponse({"score_threshold": det.score_threshold, "nms_threshold": det.nms_threshold})

    async def no_page(request: Request) -> Response:
        return HTMLResponse(
            "<!doctype html><title>FeatherFace</title><p>The web page is not built: run "
            "<code>make web</code> (or set <code>[http] web_dir</code>). The face endpoint is "
            "<code>POST /v1/vision/face</code>.",
            404,
        )

    routes: list[Any] = [
        Route("/v1/vision/face", face, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/model.onnx", model_file, methods=["GET"]),
        Route("/config.json", page_config, methods=["GET"]),
    ]
    for suffix, kind in ((".mjs", "text/javascript"), (".wasm", "application/wasm")):
        mimetypes.add_type(kind, suffix)  # module scripts and streaming WASM compilation need these
    if web_dir is not None and (web_dir / "index.html").is_file():
        routes.append(Mount("/", StaticFiles(directory=web_dir, html=True)))
    else:
        routes.append(Route("/", no_page, methods=["GET"]))
    return _Isolated(Starlette(routes=routes))


class _Isolated:
    """ASGI wrapper adding the cross-origin isolation headers (SharedArrayBuffer for WASM threads)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_isolated(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *ISOLATION_HEADERS]
            await send(message)

        await self.app(scope, receive, send_isolated if scope["type"] == "http" else send)


def resolve_token(http: HttpConfig, environ: MutableMapping[str, str] | None = None) -> str:
    """The API token: ``http.token``, ``http.token_file``, or ``$CREDENTIALS_DIRECTORY/http_token``."""
    environ = os.environ if environ is None else environ
    if http.token:
        return http.token.reveal()
    path = Path(http.token_file) if http.token_file else None
    if path is None and environ.get("CREDENTIALS_DIRECTORY"):
        cred = Path(environ["CREDENTIALS_DIRECTORY"]) / "http_token"
        path = cred if cred.is_file() else None
    if path is None:
        return ""
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"[http] token_file {path}: {exc.strerror}") from None


def web_root(http: HttpConfig) -> Path | None:
    """The built page's folder: ``http.web_dir``, else a source checkout's web/dist when it is built."""
    if http.web_dir:
        root = Path(http.web_dir)
        if not (root / "index.html").is_file():
            raise ConfigError(f"[http] web_dir {root} has no index.html (build it with make web)")
        return root
    return WEB_DIST if (WEB_DIST / "index.html").is_file() else None


def serve(config: Config, host: str | None = None, port: int | None = None) -> int:
    """Load ``workers`` detectors from ``[detector]`` and serve ``[http]`` until SIGINT/SIGTERM."""
    try:
        import uvicorn
    except ImportError:
        raise ConfigError(
            "featherface-edge serve needs the http extra: pip install starlette uvicorn python-multipart, "
            "or reinstall FeatherFace with [edge,http] (README, Install)"
        ) from None
    http = config.http
    host = http.host if host is None else host
    port = http.port if port is None else port
    token = resolve_token(http)
    web_dir = web_root(http)
    pool = WorkerPool(
        [detector_from_config(config.detector) for _ in range(http.workers)], http.queue_size, http.max_pixels
    )
    if not token and not _is_loopback(host):
        log.warning("serving on %s without a token: anyone who can reach it can use it", host)
    log.info(
        "model %s %s on %s; %d worker(s), queue %d; page: %s",
        pool.meta.name,
        pool.meta.version,
        pool.detectors[0].runtime,
        http.workers,
        http.queue_size,
        web_dir or "not built",
    )
    app = create_app(pool, http, token, web_dir)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="info",
            access_log=False,
            # Connections beyond this get uvicorn's plain 503 before any body is read; the
            # admission count above is the finer limit, in DeepStack's error shape.
            limit_concurrency=max(32, 4 * pool.capacity),
            timeout_keep_alive=5,
        )
    )
    try:
        server.run()
    finally:
        pool.close()
    return 0 if server.started else 1


def _is_loopback(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return host == "localhost"
