"""The daemon loop end to end: real model, synthetic camera, real broker, sd_notify, exit codes."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from edge.broker import EmbeddedBroker
from edge.camera import SourceConfig, SyntheticSource
from edge.cli import app
from edge.config import Config, parse_config
from edge.daemon import Daemon, cpu_temperature_c, snapshot_jpeg
from edge.notify import Notifier
from tests.edge.mqtt_helpers import Consumer, validate_message


def daemon_config(
    tmp_path: Path, broker: EmbeddedBroker | None, model: Path, **tables: dict[str, Any]
) -> Config:
    doc: dict[str, Any] = {
        "device": {"id": "dev", "camera": "cam", "state_dir": str(tmp_path / "state")},
        "source": {
            "type": "synthetic",
            "width": 256,
            "height": 192,
            "frames": 40,
            "reconnect_min_s": 0.1,
            "read_timeout_s": 0.2,
        },
        "detector": {"model": str(model), "backend": "onnxruntime", "threads": 1, "score_threshold": 0.5},
        "tracker": {"min_hits": 2, "max_age_s": 0.5, "update_interval_s": 0.2},
        "mqtt": {
            "host": broker.host if broker else "127.0.0.1",
            "port": broker.port if broker else 1,
            "prefix": f"t{tmp_path.name[-12:]}",
            "replay_settle_s": 0.2,
            "stats_interval_s": 0.2,
            "reconnect_min_s": 1,
            "reconnect_max_s": 1,
            "snapshot": True,
        },
    }
    for name, table in tables.items():
        doc.setdefault(name, {}).update(table)
    return parse_config(doc, "test", environ={})


def _collect(sock: socket.socket, out: list[str]) -> None:
    sock.settimeout(30.0)
    while not (out and out[-1].startswith("STOPPING=1")):
        try:
            out.append(sock.recv(4096).decode())
        except (TimeoutError, OSError):
            return


def test_run_publishes_valid_messages_and_stops_cleanly(
    mqtt_broker: EmbeddedBroker, tiny_onnx: Path, tmp_path: Path
) -> None:
    # Paced at 40 fps: the broker connection (asynchronous, never awaited) is normally up before the
    # first track starts; if not, those first events legitimately arrive replayed from the spool.
    cfg = daemon_config(tmp_path, mqtt_broker, tiny_onnx, source={"fps": 40})
    consumer = Consumer(mqtt_broker.host, mqtt_broker.port, (f"{cfg.mqtt.prefix}/#",))
    sock_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    datagrams: list[str] = []
    reader = threading.Thread(target=lambda: _collect(notify, datagrams), daemon=True)
    reader.start()
    try:
        daemon = Daemon(cfg, notifier=Notifier({"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1"}))
        assert daemon.run() == 0
        assert consumer.wait_for(lambda c: c.on("/status") and c.on("/status")[-1].payload == b"stopped", 10)
    finally:
        consumer.close()
    for m in consumer.messages:
        validate_message(m.topic, m.payload)
    events = [m.json() for m in consumer.on("/event")]
    assert events and [e["seq"] for e in events] == list(range(1, len(events) + 1))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end"  # the square is tracked, flushed at the end
    started = {e["faces"][0]["track_id"] for e in events if e["type"] == "start"}
    assert started == {e["faces"][0]["track_id"] for e in events if e["type"] == "end"}
    e0 = events[0]
    assert (e0["device_id"], e0["camera"], e0["frame_w"], e0["frame_h"]) == ("dev", "cam", 256, 192)
    assert e0["model"]["name"] == "tiny-test" and e0["model"]["runtime"] == "onnxruntime"
    assert len(e0["model"]["sha256"]) == 64 and not events[-1]["replayed"]
    # The synthetic square is at the frame's vertical centre: the box must be there too.
    x1, y1, x2, y2 = e0["faces"][0]["box"]
    assert y1 < 0.5 < y2 and x1 < x2
    if any(e["type"] == "start" and not e["replayed"] for e in events):  # snapshots are online-only
        jpeg = consumer.on("/snapshot")[0].payload
        assert jpeg[:2] == b"\xff\xd8"
        # The picture names its event (JPEG COM segment) and shows the face with its surroundings.
        starts = {e["event_id"] for e in events if e["type"] == "start"}
        assert any(f"event_id={eid}".encode() in jpeg[:200] for eid in starts)
        picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert picture.shape[:2] == (192, 192)  # the square context crop, as large as this frame allows
    states = [m.json() for m in consumer.on("/state")]
    assert max(s["faces"] for s in states) >= 1 and states[-1]["faces"] == 0
    assert consumer.on("/status")[0].payload == b"online"
    reader.join(5)
    notify.close()
    assert datagrams[0].startswith("READY=1") and datagrams[-1].startswith("STOPPING=1")
    assert any(d == "WATCHDOG=1" for d in datagrams)


def test_signal_handler_stops_the_loop(tiny_onnx: Path, tmp_path: Path) -> None:
    """A SIGTERM becomes an event on the loop: flush, exit 0 (MQTT off: the loop alone)."""
    cfg = daemon_config(tmp_path, None, tiny_onnx, source={"frames": 0, "fps": 50}, mqtt={"enabled": False})
    daemon = Daemon(cfg)
    timer = threading.Timer(1.0, lambda: daemon._on_signal(15, None))
    timer.start()
    assert daemon.run() == 0
    assert daemon.stop_reason == "SIGTERM" and daemon.metrics.frames > 5


class FlakySynthetic(SyntheticSource):
    """Unplugged after 10 frames on the first connection only; the reconnect must bring it back."""

    opens = 0

    def _connect(self) -> dict[str, Any]:
        FlakySynthetic.opens += 1
        state = super()._connect()
        state["first"] = FlakySynthetic.opens == 1
        return state

    def _grab(self, state: dict[str, Any]) -> np.ndarray | None:
        if state["first"] and state["n"] == 10:
            raise OSError("camera unplugged")
        return super()._grab(state)


def test_failing_source_is_reopened(mqtt_broker: EmbeddedBroker, tiny_onnx: Path, tmp_path: Path) -> None:
    cfg = daemon_config(tmp_path, mqtt_broker, tiny_onnx, source={"frames": 30})
    consumer = Consumer(mqtt_broker.host, mqtt_broker.port, (f"{cfg.mqtt.prefix}/dev/cam/state",))
    FlakySynthetic.opens = 0
    try:
        daemon = Daemon(
            cfg, source=FlakySynthetic(SourceConfig(type="synthetic", width=256, height=192, frames=30))
        )
        assert daemon.run() == 0
        assert FlakySynthetic.opens == 2
        assert daemon.metrics.frames == 10 + 30  # every frame of the second connection went through
        statuses = [m.json()["source_status"] for m in consumer.on("/state")]
        assert consumer.wait_for(
            lambda c: "offline" in [m.json()["source_status"] for m in c.on("/state")], 5
        )
        statuses = [m.json()["source_status"] for m in consumer.on("/state")]
        assert statuses.index("offline") < len(statuses) - 1 - statuses[::-1].index("online")
    finally:
        consumer.close()


@pytest.mark.parametrize("kind", ["missing", "corrupt", "no-contract"])
def test_bad_model_exits_2_with_one_line(kind: str, tiny_plain_onnx: Path, tmp_path: Path) -> None:
    model = {
        "missing": tmp_path / "absent.onnx",
        "corrupt": tmp_path / "corrupt.onnx",
        "no-contract": tiny_plain_onnx,
    }[kind]
    if kind == "corrupt":
        model.write_bytes(tiny_plain_onnx.read_bytes()[:300])
    config = tmp_path / "edge.toml"
    config.write_text(
        f"[device]\nstate_dir = '{tmp_path / 'state'}'\n[detector]\nmodel = '{model}'\n"
        "[mqtt]\nhost = '127.0.0.1'\nport = 1\n[source]\ntype = 'synthetic'\n"
    )
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featherface-edge: error:") and str(model) in lines[0]


def test_snapshot_respects_the_size_cap() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)
    jpeg = snapshot_jpeg(noise, (0.1, 0.1, 0.9, 0.9), 8000)
    assert jpeg is not None and len(jpeg) <= 8000 and jpeg[:2] == b"\xff\xd8"
    assert snapshot_jpeg(noise, (0.5, 0.5, 0.5, 0.5), 8000) is None  # empty box
    small = snapshot_jpeg(noise, (0.5, 0.5, 0.55, 0.56), 200_000, comment="featherface event_id=e1")
    assert small is not None and b"featherface event_id=e1" in small[:64]
    picture = cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape[:2] == (192, 192)  # a 20-px face gets its surroundings, not a 24-px crop


def test_cpu_temperature_reads_thermal_zones(tmp_path: Path) -> None:
    zone = tmp_path / "thermal_zone0"
    zone.mkdir()
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("48312\n")
    assert cpu_temperature_c(tmp_path) == 48.3
    assert cpu_temperature_c(tmp_path / "none") is None


def test_notifier_is_a_no_op_outside_systemd() -> None:
    n = Notifier({})
    assert not n.active and not n.send("READY=1")
    n.ready()
    n.watchdog()
    n.stopping()
    inherited = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert inherited.watchdog_period_s == 0.0  # meant for another process
    inherited.close()


class HangingCamera(SyntheticSource):
    """Delivers 5 frames, then hangs inside the driver call; every reopen finds no device."""

    opens = 0
    release = threading.Event()

    def _connect(self) -> dict[str, Any]:
        HangingCamera.opens += 1
        if HangingCamera.opens > 1:
            raise OSError("no such device")
        return super()._connect()

    def _grab(self, state: dict[str, Any]) -> np.ndarray | None:
        if state["n"] == 5:
            HangingCamera.release.wait(60)  # a USB camera pulled mid-read: the call never returns
        return super()._grab(state)


def test_watchdog_is_fed_through_a_camera_outage(tiny_onnx: Path, tmp_path: Path) -> None:
    """Issue 16: pings come from the loop, not from frames, so a long outage never trips the watchdog;
    the outage shows in stats instead. A hung detector is a different story (the loop stops)."""
    fast = {"stall_timeout_s": 0.4, "read_timeout_s": 0.1, "reconnect_min_s": 0.1, "reconnect_max_s": 0.2}
    cfg = daemon_config(tmp_path, None, tiny_onnx, source=fast, mqtt={"enabled": False})
    sock_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    notify.settimeout(0.05)
    HangingCamera.opens = 0
    HangingCamera.release.clear()
    daemon = Daemon(
        cfg,
        source=HangingCamera(SourceConfig(type="synthetic", width=256, height=192, **fast)),
        notifier=Notifier({"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "200000"}),
    )
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    pings: list[float] = []
    stats: dict[str, Any] = {}
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            try:
                if notify.recv(4096) == b"WATCHDOG=1":
                    pings.append(time.monotonic())
            except TimeoutError:
                pass
            stats = daemon._stats()
            if stats["source_offline_s"] >= 2.0:
                break
        outage_began = time.monotonic() - stats["source_offline_s"]
    finally:
        daemon.request_stop("test")
        HangingCamera.release.set()
        runner.join(10)
        notify.close()
    assert not runner.is_alive()
    assert daemon.metrics.frames == 5 and HangingCamera.opens >= 3  # it kept trying to reopen
    assert stats["source_status"] == "offline" and stats["source_outages"] == 1
    late = [t for t in pings if t > outage_began + 0.5]
    assert len(late) >= 5, f"{len(late)} watchdog pings during a 2 s outage (every 0.1 s expected)"


def test_unreadable_looping_folder_is_an_outage_not_an_end(tiny_onnx: Path, tmp_path: Path) -> None:
    """Issue 17: a looping folder of only unreadable images used to 'end' and exit 0 at once."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        (folder / name).write_bytes(b"not an image")
    source = {"type": "images", "path": str(folder), "loop": True, "reconnect_min_s": 0.1}
    cfg = daemon_config(tmp_path, None, tiny_onnx, source=source, mqtt={"enabled": False})
    daemon = Daemon(cfg)
    timer = threading.Timer(1.5, lambda: daemon.request_stop("test"))
    timer.start()
    assert daemon.run() == 0
    assert daemon.stop_reason == "test"  # still running when asked to stop: it never "ended"
    assert daemon.source_status == "offline" and daemon.source_outages == 0  # never came online
    assert daemon.source is not None and daemon.source.attempts >= 3  # retried with back-off


def test_opencv_warnings_stay_out_of_the_daemon_log(tiny_onnx: Path, tmp_path: Path) -> None:
    """Issue 16: OpenCV's own '[ WARN:' lines (here: a camera index that does not exist) leaked into
    the journal beside the daemon's own, clearer report of the same outage."""
    import os
    import signal
    import subprocess
    import sys

    config = tmp_path / "edge.toml"
    config.write_text(
        f"[device]\nstate_dir = '{tmp_path / 'state'}'\n[detector]\nmodel = '{tiny_onnx}'\n"
        "backend = 'onnxruntime'\n[mqtt]\nenabled = false\n"
        "[source]\ntype = 'opencv'\npath = '97'\nreconnect_min_s = 0.2\nreconnect_max_s = 0.2\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from edge.entry import main; main()", "run", "-c", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "camera" in err and "offline" in err  # the daemon's own report of the outage
    assert "[ WARN" not in err, err


@pytest.mark.parametrize("sequence", [False, True])
def test_folder_of_photos_is_not_tracked_across_photos(
    sequence: bool, mqtt_broker: EmbeddedBroker, tiny_onnx: Path, tmp_path: Path
) -> None:
    """Issue 16: a folder source ran the tracker across unrelated photos. Photos (the default) give
    each face its own start and end; a frame sequence (``sequence = true``) is tracked as before."""
    from tests.edge.conftest import bright_squares

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, squares in enumerate([[(20, 20, 40)], [(30, 25, 40), (150, 80, 48)], [(150, 80, 48)]]):
        cv2.imwrite(str(folder / f"{i}.png"), bright_squares(squares))
    source = {"type": "images", "path": str(folder), "sequence": sequence, "fps": 20.0}
    cfg = daemon_config(tmp_path, mqtt_broker, tiny_onnx, source=source, mqtt={"snapshot": False})
    consumer = Consumer(mqtt_broker.host, mqtt_broker.port, (f"{cfg.mqtt.prefix}/+/+/event",))
    try:
        assert Daemon(cfg).run() == 0
        assert consumer.wait_for(lambda c: c.on("/event") and c.on("/event")[-1].json()["type"] == "end", 10)
    finally:
        consumer.close()
    events = [m.json() for m in consumer.on("/event")]
    by_frame: dict[int, list[tuple[str, int]]] = {}
    for e in events:
        by_frame.setdefault(e["frame_id"], []).append((e["type"], e["faces"][0]["track_id"]))
    if not sequence:  # every face starts and ends on its own photo; no track reaches another photo
        assert sorted(by_frame) == [1, 2, 3]
        seen: set[int] = set()
        for frame_events in by_frame.values():
            starts = {t for kind, t in frame_events if kind == "start"}
            assert starts and starts == {t for kind, t in frame_events if kind == "end"}
            assert not starts & seen
            seen |= starts
    else:  # tracked: min_hits 2, so nothing starts on the first photo, and a track spans photos
        assert 1 not in by_frame and any(kind == "start" for kind, _ in by_frame.get(2, []))


def test_daemon_warns_when_a_camera_reopen_could_outlast_the_watchdog(
    tiny_onnx: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    slow = {"open_timeout_s": 10.0, "read_timeout_s": 2.0}
    cfg = daemon_config(tmp_path, None, tiny_onnx, source=slow, mqtt={"enabled": False})
    for usec, warned in (("20000000", True), ("30000000", False)):  # half periods 10 s and 15 s
        caplog.clear()
        with caplog.at_level("WARNING", logger="edge.daemon"):
            Daemon(
                cfg, notifier=Notifier({"NOTIFY_SOCKET": str(tmp_path / "x"), "WATCHDOG_USEC": usec})
            )._check_watchdog_bound()
        assert ("watchdog period" in caplog.text) is warned
