"""TLS with client certificates and username/password, against a real mosquitto configured for both."""

from __future__ import annotations

import logging
import queue
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge.broker import free_port
from edge.config import MqttConfig, Secret
from edge.events import EventBuilder, ModelInfo
from edge.mqtt import MqttPublisher
from edge.records import Detection, TrackEvent
from edge.spool import Spool

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PASSWORD = "pw-Xq83-never-logged"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    if not (Path(MOSQUITTO).exists() and shutil.which("openssl") and shutil.which("mosquitto_passwd")):
        pytest.skip("needs mosquitto, mosquitto_passwd and openssl on PATH")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        cwd=d,
    )
    for name, extra in (("server", ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]), ("client", [])):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        ext = d / f"{name}.ext"
        ext.write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n" if extra else "basicConstraints=CA:FALSE\n"
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            "-extfile",
            ext.name,
            cwd=d,
        )
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(d / "passwd"), "edge", PASSWORD], check=True, capture_output=True
    )
    (d / "passwd").chmod(0o600)
    port = free_port()
    (d / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n"
        f"require_certificate true\npassword_file {d}/passwd\nallow_anonymous false\npersistence false\n"
        # Under root mosquitto would drop to its own user, who cannot read the test's private tmp dir.
        "user root\n"
    )
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(d / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)
    if proc.poll() is not None:
        pytest.skip("mosquitto could not start with the TLS configuration")
    yield port, d
    proc.terminate()
    proc.wait(5)


def _subscriber(port: int, d: Path, inbox: queue.Queue[mqtt.MQTTMessage]) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.tls_set(
        ca_certs=str(d / "ca.crt"),
        certfile=str(d / "client.crt"),
        keyfile=str(d / "client.key"),
        cert_reqs=ssl.CERT_REQUIRED,
    )
    c.username_pw_set("edge", PASSWORD)
    c.on_message = lambda _c, _u, m: inbox.put(m)
    c.connect("127.0.0.1", port)
    c.subscribe("sec/#", qos=1)
    c.loop_start()
    return c


def _publisher(port: int, d: Path, tmp_path: Path, password: str) -> MqttPublisher:
    cfg = MqttConfig(
        host="127.0.0.1",
        port=port,
        prefix="sec",
        username="edge",
        password=Secret(password),
        tls=True,
        ca_file=str(d / "ca.crt"),
        cert_file=str(d / "client.crt"),
        key_file=str(d / "client.key"),
        reconnect_min_s=1,
        reconnect_max_s=1,
        replay_settle_s=0,
    )
    return MqttPublisher(cfg, "dev", "cam", Spool(tmp_path / "spool"))


def test_tls_client_certificate_and_password(
    secure_broker: tuple[int, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port, d = secure_broker
    inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    sub = _subscriber(port, d, inbox)
    pub = _publisher(port, d, tmp_path, PASSWORD)
    caplog.set_level(logging.DEBUG)
    try:
        pub.start()
        doc = EventBuilder("dev", "cam", ModelInfo("m", "1", "", "onnxruntime")).event(
            TrackEvent("start", 1, Detection((0.1, 0.1, 0.2, 0.2), 0.9)), 1, time.time(), 10, 10
        )
        pub.publish_event(doc)
        got = {}
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            try:
                m = inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            got[m.topic] = m.payload
        assert got.get("sec/dev/status") == b"online"
        assert b'"type": "start"' in got.get("sec/dev/cam/event", b"")
    finally:
        pub.stop()
        sub.disconnect()  # wakes the network loop first
        sub.loop_stop()
    assert PASSWORD not in caplog.text


def test_wrong_password_is_refused_and_never_online(
    secure_broker: tuple[int, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port, d = secure_broker
    pub = _publisher(port, d, tmp_path, "wrong-password")
    caplog.set_level(logging.DEBUG)
    try:
        pub.start()
        deadline = time.monotonic() + 5
        while "authentication failed" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"authentication failed at 127.0.0.1:{port}" in caplog.text
        assert not pub.connected
        pub.publish_event({"seq": 1, "type": "start"})
        time.sleep(0.3)
        assert pub.depth()["spool"] == 1  # undeliverable, so kept on disk
    finally:
        pub.stop(drain_timeout_s=0.5)
    assert "wrong-password" not in caplog.text
