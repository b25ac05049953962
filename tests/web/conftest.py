"""The web page in a real headless Chromium (Debian's `chromium`, driven by Playwright through its
executable path: no browser download), loaded from a real `featherface-edge serve` process.

The page is built into web/dist once per session when it is missing or older than its sources
(`npm ci` + `node web/build.mjs`, what `make web` runs). Skipped with the reason when Chromium,
Playwright, Node or the http extra is absent.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.edge.serve_helpers import REPO, ServeProcess, serving

WEB = REPO / "web"
DIST = WEB / "dist"


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def build_page() -> Path:
    sources = [*(WEB / "src").iterdir(), WEB / "build.mjs", WEB / "package-lock.json"]
    index = DIST / "index.html"
    if index.is_file() and index.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
        return DIST
    npm, node = shutil.which("npm"), shutil.which("node")
    if not (npm and node):
        pytest.skip("building web/dist needs node and npm (apt-get install nodejs npm), or run make web")
    if not (WEB / "node_modules" / "onnxruntime-web").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True, capture_output=True)
    subprocess.run([node, "build.mjs"], cwd=WEB, check=True, capture_output=True)
    return DIST


@pytest.fixture(scope="session")
def chromium_path() -> str:
    pytest.importorskip("starlette", reason="serve needs the http extra")
    pytest.importorskip("playwright", reason="the page tests drive Chromium with playwright (dev extra)")
    path = find_chromium()
    if path is None:
        pytest.skip("Chromium is absent (apt-get install chromium; .ci/run installs it)")
    return path


@pytest.fixture(scope="session")
def page_server(chromium_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    dist = build_page()
    config = f"""
[detector]
backend = "onnxruntime"
threads = 1

[http]
web_dir = "{dist}"
"""
    with serving(tmp_path_factory.mktemp("serve-web"), config) as srv:
        yield srv


@pytest.fixture(scope="session")
def browser(chromium_path: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        b = pw.chromium.launch(executable_path=chromium_path, headless=True, args=["--no-sandbox"])
        yield b
        b.close()
