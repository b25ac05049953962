"""Measure the page and `serve` (numbers for docs/web.md and docs/BENCHMARKS.md).

    .venv/bin/python web/bench.py --photo ../shared/data/photos/1.jpg [--screenshot docs/web-screenshot.png]

- page: bytes loaded (WASM path), session creation, first inference and per-frame time in headless
  Chromium (Debian's) with 1 WASM thread and with every core, beside the Python edge (ONNX Runtime,
  1 and all threads) on the same photo;
- serve: requests/s and latency p50/p99 of POST /v1/vision/face on a 640x480 JPEG with 1 and 4
  concurrent clients, and the server's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.detector import load_detector  # noqa: E402
from tests.edge.serve_helpers import serving  # noqa: E402

CORES = os.cpu_count() or 1


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def python_edge(photo: Path, threads: int, frames: int) -> dict:
    image = cv2.imread(str(photo))
    det = load_detector(None, backend="onnxruntime", threads=threads)
    t0 = time.perf_counter()
    det.detect(image)
    first = (time.perf_counter() - t0) * 1e3
    times = []
    for _ in range(frames):
        t0 = time.perf_counter()
        det.detect(image)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"first_ms": first, "frame_ms": statistics.median(times), "infer_ms": det.last_timings_ms["infer"]}


def page(browser, url: str, photo: Path, threads: int, frames: int, screenshot: Path | None) -> dict:
    pg = browser.new_page(viewport={"width": 1000, "height": 780})
    pg.goto(f"{url}/?ep=wasm&threads={threads}&repeat={frames + 1}")
    pg.wait_for_function("window.featherface.ready || window.featherface.error", timeout=120_000)
    assert pg.evaluate("featherface.error") is None, pg.evaluate("featherface.error")
    pg.set_input_files("#file", str(photo))
    pg.wait_for_function(f"featherface.last && featherface.last.name === {photo.name!r}", timeout=600_000)
    last = pg.evaluate("featherface.last")
    loaded = pg.evaluate(
        "performance.getEntriesByType('resource').concat(performance.getEntriesByType('navigation'))"
        ".reduce((n, e) => n + (e.encodedBodySize || 0), 0)"
    )
    session_ms = pg.evaluate("featherface.sessionMs")
    if screenshot is not None:  # the page at 3/4 size: small enough to commit
        shot = cv2.imdecode(np.frombuffer(pg.screenshot(), np.uint8), cv2.IMREAD_COLOR)
        shot = cv2.resize(shot, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(screenshot), shot, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    pg.close()
    frames_ms = last["times"][1:]
    return {
        "threads": threads,
        "loaded_bytes": loaded,
        "session_ms": session_ms,
        "first_infer_ms": last["times"][0]["inferMs"],
        "first_frame_ms": last["times"][0]["totalMs"],
        "infer_ms": statistics.median(t["inferMs"] for t in frames_ms),
        "frame_ms": statistics.median(t["totalMs"] for t in frames_ms),
        "faces": len(last["faces"]),
    }


async def load(url: str, body: bytes, clients: int, requests: int) -> dict:
    latencies: list[float] = []
    codes: dict[int, int] = {}

    async def client(c: httpx.AsyncClient, n: int) -> None:
        for _ in range(n):
            t0 = time.perf_counter()
            r = await c.post("/v1/vision/face", files={"image": ("cam.jpg", body, "image/jpeg")})
            latencies.append((time.perf_counter() - t0) * 1e3)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1

    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        await c.post("/v1/vision/face", files={"image": ("cam.jpg", body, "image/jpeg")})  # warm
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, requests // clients) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "requests": len(latencies),
        "rps": len(latencies) / wall,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "codes": codes,
    }


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photo", type=Path, default=REPO / "edge/samples/astronaut.png")
    ap.add_argument("--frames", type=int, default=20, help="timed frames per page/edge run after the first")
    ap.add_argument("--requests", type=int, default=200, help="requests per serve load run")
    ap.add_argument("--screenshot", type=Path, default=None)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    out: dict = {"photo": str(args.photo), "cores": CORES}
    out["python_edge"] = {t: python_edge(args.photo, t, args.frames) for t in (1, CORES)}
    photo = cv2.imread(str(args.photo))
    jpeg = cv2.imencode(".jpg", cv2.resize(photo, (640, 480), interpolation=cv2.INTER_AREA))[1].tobytes()
    config = f'[detector]\nbackend = "onnxruntime"\n\n[http]\nweb_dir = "{REPO / "web/dist"}"\n'
    with tempfile.TemporaryDirectory() as tmp, serving(Path(tmp), config) as srv, sync_playwright() as pw:
        chromium = shutil.which("chromium") or "chromium"
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        out["page"] = [
            page(browser, srv.url, args.photo, t, args.frames, args.screenshot if t == CORES else None)
            for t in (1, CORES)
        ]
        browser.close()
    # A fresh server for the load, so that its peak RSS is the endpoint's, not the page download's.
    with tempfile.TemporaryDirectory() as tmp, serving(Path(tmp), config) as srv:
        out["serve_idle_rss_mib"] = vm_hwm_kib(srv.proc.pid) / 1024
        out["serve"] = [asyncio.run(load(srv.url, jpeg, c, args.requests)) for c in (1, 4)]
        out["serve_peak_rss_mib"] = vm_hwm_kib(srv.proc.pid) / 1024
        out["jpeg_bytes"] = len(jpeg)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
