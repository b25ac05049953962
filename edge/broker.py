"""A real MQTT broker on a loopback port, for `featherface-edge demo` and the tests.

mosquitto when it is on PATH, else the pure-Python amqtt broker (the `broker` extra) in a child
process. Either way it is a separate process speaking MQTT over TCP, so clients exercise the
real network path; ``stop()``/``start()`` on the same port simulate a broker outage.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge.errors import FeatherFaceError

_AMQTT_MAIN = """
import asyncio, sys
from amqtt.broker import Broker

async def main(port):
    cfg = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
           "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
    broker = Broker(cfg)
    await broker.start()
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1])))
"""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _accepting(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """Start/stop a broker process on ``host:port`` (``port=0`` picks a free one, kept across restarts)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, prefer: str = "auto") -> None:
        self.host = host
        self.port = port or free_port(host)
        if prefer not in ("auto", "mosquitto", "amqtt"):
            raise ValueError(f"unknown broker kind {prefer!r}")
        mosquitto = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
        )
        self.kind = "mosquitto" if mosquitto and prefer != "amqtt" else "amqtt"
        self._mosquitto = mosquitto
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="featherface-broker-")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        if self.running:
            return self
        log = open(Path(self._tmp.name) / "broker.log", "ab")  # noqa: SIM115 - lives with the process
        if self.kind == "mosquitto":
            conf = Path(self._tmp.name) / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} {self.host}\nallow_anonymous true\npersistence false\n"
                "max_inflight_messages 0\nmax_queued_messages 100000\n"
            )
            cmd = [str(self._mosquitto), "-c", str(conf)]
        else:
            cmd = [sys.executable, "-c", _AMQTT_MAIN, str(self.port)]
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if _accepting(self.host, self.port):
                return self
            time.sleep(0.05)
        tail = (Path(self._tmp.name) / "broker.log").read_text(errors="replace")[-400:]
        self.stop()
        raise FeatherFaceError(f"{self.kind} broker did not start on {self.host}:{self.port}: {tail.strip()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
