"""A real ``featherface-edge serve`` process on a free loopback port, for the endpoint and page tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from edge.broker import free_port

REPO = Path(__file__).resolve().parents[2]


class ServeProcess:
    """``featherface-edge serve --config FILE --port N`` as a child process; ``url`` once healthy."""

    def __init__(self, config: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        entry = "from edge.entry import main; main()"
        cmd = [sys.executable, "-c", entry, "serve", "--config", str(config)]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*cmd, "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT, cwd=REPO
            )

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"serve not healthy after {timeout_s} s:\n{self.log.read_text()}")

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@contextmanager
def serving(tmp: Path, config_text: str) -> Iterator[ServeProcess]:
    """Write ``config_text`` to ``tmp/edge.toml`` and run ``serve`` on it until the block ends."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "edge.toml"
    config.write_text(config_text)
    server = ServeProcess(config, tmp / "serve.log")
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()
