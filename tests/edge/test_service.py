"""The console entry's daemon path (edge.entry, edge.service): the daemon without the CLI framework."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edge.broker import EmbeddedBroker
from edge.service import run_command
from tests.edge.mqtt_helpers import Consumer

# Runs the console entry and, at exit, prints which of the optional modules the process had loaded.
ENTRY = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('LOADED', sorted(m for m in ('typer', 'click', 'rich') "
    "if sys.modules.get(m)), file=sys.stderr))\n"
    "from edge.entry import main\n"
    "main()\n"
)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run"], Path("/etc/featherface/edge.toml")),
        (["run", "-c", "a.toml"], Path("a.toml")),
        (["run", "--config", "a.toml"], Path("a.toml")),
        (["run", "--config=a.toml"], Path("a.toml")),
        (["run", "--help"], None),  # typer owns help and usage errors
        (["run", "-c"], None),
        (["run", "-c", "a.toml", "extra"], None),
        (["run", "--config="], None),
        (["detect", "x.jpg"], None),
        ([], None),
    ],
)
def test_only_the_plain_daemon_command_skips_the_cli(argv: list[str], expected: Path | None) -> None:
    assert run_command(argv) == expected


def test_the_daemon_runs_without_the_cli_framework(
    mqtt_broker: EmbeddedBroker, tiny_onnx: Path, tmp_path: Path
) -> None:
    """`featherface-edge run -c FILE` (what systemd starts) connects, publishes and stops cleanly on
    SIGTERM with neither typer nor click nor rich loaded (5 MB and more of the 110-MB budget)."""
    prefix = f"svc{tmp_path.name[-8:]}"
    config = tmp_path / "edge.toml"
    config.write_text(
        f"[device]\nid = 'svc'\ncamera = 'cam'\nstate_dir = '{tmp_path / 'state'}'\n"
        "[source]\ntype = 'synthetic'\nwidth = 256\nheight = 192\nfps = 20\nlive = true\n"
        f"[detector]\nmodel = '{tiny_onnx}'\nbackend = 'onnxruntime'\nthreads = 1\n"
        f"[mqtt]\nhost = '{mqtt_broker.host}'\nport = {mqtt_broker.port}\nprefix = '{prefix}'\n"
        "stats_interval_s = 0.5\n"
    )
    consumer = Consumer(mqtt_broker.host, mqtt_broker.port, (f"{prefix}/svc/#",))
    proc = subprocess.Popen(
        [sys.executable, "-c", ENTRY, "run", "-c", str(config)], stderr=subprocess.PIPE, text=True
    )
    try:
        # online, then a stats message counting frames: the loop runs and reaches the broker
        assert consumer.wait_for(lambda c: bool(c.on("/status")) and bool(c.on("/stats")), 30)
        assert proc.poll() is None, "the daemon stopped early"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        consumer.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert consumer.on("/status")[0].payload == b"online"
    assert consumer.on("/stats")[-1].json()["frames"] > 0
    loaded = next(line for line in err.splitlines() if line.startswith("LOADED"))
    assert loaded == "LOADED []", err[-2000:]
    assert "Traceback" not in err, err[-2000:]
