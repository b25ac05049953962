"""The MQTT publisher against a real broker: status lifecycle, QoS 1 events, spool, HA discovery."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge.broker import EmbeddedBroker, free_port
from edge.config import HomeAssistantConfig, MqttConfig, Secret
from edge.events import STATUS_VALUES, EventBuilder, ModelInfo
from edge.mqtt import MqttPublisher
from edge.records import Detection, TrackEvent
from edge.spool import Spool
from tests.edge.mqtt_helpers import Consumer, validate_message

MODEL = ModelInfo("tiny", "0", "", "onnxruntime")
DET = Detection(box=(0.1, 0.1, 0.2, 0.2), score=0.9, landmarks=((0.15, 0.15),) * 5)


def _publisher(
    broker: EmbeddedBroker, tmp_path: Path, ha: bool = False, spool: Spool | None = None, **kw: object
) -> tuple[MqttPublisher, EventBuilder]:
    """A publisher with a fresh topic prefix and short timings; ``kw`` overrides [mqtt] keys."""
    settings: dict[str, object] = {
        "host": broker.host,
        "port": broker.port,
        "prefix": f"ff{uuid.uuid4().hex[:8]}",
        "reconnect_min_s": 1,
        "reconnect_max_s": 1,
        "replay_settle_s": 0.3,
        "stats_interval_s": 0.3,
        **kw,
    }
    cfg = MqttConfig(**settings)  # type: ignore[arg-type]
    pub = MqttPublisher(
        cfg,
        "dev1",
        "cam0",
        spool if spool is not None else Spool(tmp_path / "spool"),
        HomeAssistantConfig(enabled=ha),
    )
    return pub, EventBuilder("dev1", "cam0", MODEL)


_STATS = {
    "fps": 1.0,
    "inference_ms": 2.0,
    "queue_depth": 0,
    "spool_depth": 0,
    "spool_dropped": 0,
    "dropped_frames": 0,
    "frames": 1,
    "uptime_s": 1.0,
    "cpu_temp_c": None,
}


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _events(b: EventBuilder, n: int) -> list[dict]:
    return [b.event(TrackEvent("start", i, DET), i, time.time(), 64, 48) for i in range(n)]


def _seqs(consumer: Consumer) -> list[int]:
    return [m.json()["seq"] for m in consumer.on("/event")]


def test_online_events_state_stats_then_stopped(mqtt_broker: EmbeddedBroker, tmp_path: Path) -> None:
    pub, b = _publisher(mqtt_broker, tmp_path)
    consumer = Consumer(mqtt_broker.host, mqtt_broker.port, (f"{pub.cfg.prefix}/#",))
    try:
        pub.set_stats_provider(lambda: b.stats(_STATS))
        pub.set_state(b.state(0, "online"))
        pub.start()
        assert consumer.wait_for(lambda c: [m.payload for m in c.on("/status")] == [b"online"])
        for doc in _events(b, 20):
            assert pub.publish_event(doc)
        pub.set_state(b.state(3, "online"))
        assert consumer.wait_for(lambda c: len(c.on("/event")) == 20 and len(c.on("/stats")) >= 1)
        assert _seqs(consumer) == list(range(1, 21))
        assert not any(m.json()["replayed"] for m in consumer.on("/event"))
        assert consumer.wait_for(lambda c: c.on("/state") and c.on("/state")[-1].json()["faces"] == 3)
        assert pub.depth()["spool"] == 0
    finally:
        pub.stop()
        consumer.wait_for(lambda c: c.on("/status")[-1].payload == b"stopped", 5)
        consumer.close()
    for m in consumer.messages:
        validate_message(m.topic, m.payload)
    assert consumer.on("/status")[-1].payload == b"stopped"
    late = Consumer(mqtt_broker.host, mqtt_broker.port, (pub.status_topic, pub.state_topic))
    try:  # retained: what a consumer that connects later sees
        assert late.wait_for(lambda c: len(c.messages) == 2, 5)
        assert {m.topic: m.payload for m in late.messages}[pub.status_topic] == b"stopped"
        assert all(m.retain for m in late.messages)
    finally:
        late.close()


def test_start_never_blocks_on_a_dead_broker_then_replays(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    fresh_broker.stop()
    pub, b = _publisher(fresh_broker, tmp_path)
    t0 = time.monotonic()
    pub.start()
    assert time.monotonic() - t0 < 0.5
    docs = _events(b, 15)
    t0 = time.monotonic()
    for doc in docs:
        pub.publish_event(doc)
    assert time.monotonic() - t0 < 0.1  # the frame loop never waits for the broker or the disk
    deadline = time.monotonic() + 5
    while pub.depth()["spool"] < 15 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pub.depth()["spool"] == 15 and not pub.connected
    fresh_broker.start()
    consumer = Consumer(fresh_broker.host, fresh_broker.port, (f"{pub.cfg.prefix}/#",))
    try:
        assert consumer.wait_for(lambda c: len(c.on("/event")) >= 15)
        events = [m.json() for m in consumer.on("/event")]
        assert [e["seq"] for e in events] == list(range(1, 16))
        assert all(e["replayed"] for e in events)
        assert [e["event_id"] for e in events] == [d["event_id"] for d in docs]
        assert consumer.wait_for(lambda _c: pub.depth()["spool"] == 0, 5)
        assert list((tmp_path / "spool").glob("*.json")) == []
    finally:
        pub.stop()
        consumer.close()


def _clear_discovery(broker: EmbeddedBroker, consumer: Consumer) -> None:
    """Clear retained discovery so it does not leak into other tests' subscriptions."""
    for topic in {m.topic for m in consumer.on("/config")}:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.connect(broker.host, broker.port)
        c.publish(topic, b"", retain=True)
        c.disconnect()


def test_discovery_adds_a_camera_entity_for_snapshots() -> None:
    from edge.ha import discovery_messages

    plain = discovery_messages("homeassistant", "ff", "dev1", "cam0")
    with_pictures = discovery_messages("homeassistant", "ff", "dev1", "cam0", snapshot=True)
    assert with_pictures[:2] == plain[:2] and len(with_pictures) == len(plain) == 3
    assert plain[2] == (with_pictures[2][0], "")  # pictures off: the camera entity is removed
    topic, payload = with_pictures[2]
    camera = json.loads(payload)
    assert topic == "homeassistant/camera/featherface_dev1_cam0/last_face/config"
    assert camera["topic"] == "ff/dev1/cam0/snapshot" and "state_topic" not in camera
    assert camera["availability_topic"] == "ff/dev1/status"


def test_home_assistant_discovery_and_hostile_messages(
    mqtt_broker: EmbeddedBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pub, b = _publisher(mqtt_broker, tmp_path, ha=True, max_message_bytes=64)
    # HA discovery is global (homeassistant/...), so watch only this device's entities.
    ha_topics = "homeassistant/+/featherface_dev1_cam0/+/config"
    consumer = Consumer(mqtt_broker.host, mqtt_broker.port, (ha_topics, f"{pub.cfg.prefix}/#"))
    other = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    other.connect(mqtt_broker.host, mqtt_broker.port)
    other.loop_start()
    try:
        pub.start()
        # Two entities, and an empty retained config that removes the camera entity (no pictures).
        assert consumer.wait_for(lambda c: len(c.on("/config")) == 3 and c.on("/status"))
        configs = [m.json() for m in consumer.on("/config") if m.payload]
        assert {c["state_topic"] for c in configs} == {pub.state_topic}
        assert {c["availability_topic"] for c in configs} == {pub.status_topic}
        with caplog.at_level(logging.WARNING, logger="edge.ha"):
            for junk in (b"x" * 5000, b"\xff\xfe", b"maybe"):
                other.publish("homeassistant/status", junk, qos=1).wait_for_publish(5)
            assert consumer.wait_for(
                lambda _c: len([r for r in caplog.records if "ignored" in r.message]) >= 3, 5
            )
        assert "5000-byte" in caplog.text and "not UTF-8" in caplog.text
        time.sleep(0.3)
        assert len(consumer.on("/config")) == 3  # junk did not trigger a re-send
        other.publish("homeassistant/status", b"online", qos=1).wait_for_publish(5)
        assert consumer.wait_for(lambda c: len(c.on("/config")) == 6, 5)
        pub.publish_event(_events(b, 1)[0])  # still publishing after the junk
        assert consumer.wait_for(lambda c: len(c.on("/event")) == 1, 5)
    finally:
        pub.stop()
        other.disconnect()  # wakes the network loop first
        other.loop_stop()
        consumer.close()
        _clear_discovery(mqtt_broker, consumer)


def test_snapshot_size_cap_and_full_queue(mqtt_broker: EmbeddedBroker, tmp_path: Path) -> None:
    pub, _ = _publisher(mqtt_broker, tmp_path, snapshot_max_bytes=100, queue_size=2)
    assert not pub.publish_snapshot(b"\xff\xd8" + b"\0" * 200)
    assert pub.counters["dropped_snapshots"] == 1
    # Not started: nothing drains the queue, so the third message is refused instead of blocking.
    assert pub.publish_event({"seq": 1}) and pub.publish_event({"seq": 2})
    t0 = time.monotonic()
    assert not pub.publish_event({"seq": 3})
    assert time.monotonic() - t0 < 0.05 and pub.counters["dropped_queue"] == 1


def _quiet_publisher(host: str, port: int, tmp_path: Path, **kw: object) -> MqttPublisher:
    cfg = MqttConfig(host=host, port=port, reconnect_min_s=0.1, reconnect_max_s=0.3, **kw)  # type: ignore[arg-type]
    return MqttPublisher(cfg, "dev1", "cam0", Spool(tmp_path / "spool"))


def _connect_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("edge.mqtt")]


def test_unreachable_broker_is_explained_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing listens on the port: one plain line, not paho's "Client is not connected" each try."""
    port = free_port()
    pub = _quiet_publisher("127.0.0.1", port, tmp_path)
    with caplog.at_level(logging.DEBUG, logger="edge.mqtt"):
        pub.start()
        time.sleep(2.0)  # ~10 attempts at 0.1-0.3 s
        pub.stop(0.2)
    lines = _connect_lines(caplog)
    assert not any("Client is not connected" in line for line in lines)
    refused = [line for line in lines if f"connection refused to 127.0.0.1:{port}" in line]
    assert len(refused) == 1, lines
    assert pub.connect_failures.total >= 5  # it kept trying; the repeats wait for the summary


def test_unknown_host_is_explained(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pub = _quiet_publisher("broker.invalid", 1883, tmp_path)  # .invalid never resolves (RFC 2606)
    with caplog.at_level(logging.INFO, logger="edge.mqtt"):
        pub.start()
        assert _wait(lambda: pub.connect_failures.total >= 1, 20)
        pub.stop(0.2)
    lines = _connect_lines(caplog)
    assert any("cannot resolve the broker host 'broker.invalid'" in line for line in lines), lines
    assert not any("Client is not connected" in line for line in lines)


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[int]:
    """A mosquitto that wants user ``edge`` with password ``right``."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not (shutil.which("mosquitto_passwd") and Path(mosquitto).exists()):
        pytest.skip("needs mosquitto and mosquitto_passwd")
    d = tmp_path / "broker"
    d.mkdir()
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(d / "passwd"), "edge", "right"], check=True)
    (d / "passwd").chmod(0o600)
    port = free_port()
    (d / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\npassword_file {d}/passwd\nallow_anonymous false\npersistence false\n"
        "user root\n"  # under root mosquitto would drop to a user who cannot read the test's tmp dir
    )
    proc = subprocess.Popen([mosquitto, "-c", str(d / "mosquitto.conf")], stderr=subprocess.DEVNULL)
    try:
        assert _wait(lambda: _accepting(port), 10), "mosquitto did not start"
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


def test_wrong_password_is_explained(
    password_broker: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pub = _quiet_publisher("127.0.0.1", password_broker, tmp_path, username="edge", password=Secret("wrong"))
    with caplog.at_level(logging.INFO, logger="edge.mqtt"):
        pub.start()
        assert _wait(lambda: pub.connect_failures.total >= 3, 10)
        pub.stop(0.2)
    lines = _connect_lines(caplog)
    auth = [line for line in lines if f"authentication failed at 127.0.0.1:{password_broker}" in line]
    assert len(auth) == 1 and "wrong" not in "".join(lines), lines
    assert not pub.connected


def test_broker_return_to_first_delivery_is_bounded(fresh_broker: EmbeddedBroker, tmp_path: Path) -> None:
    """With the default back-off, a broker that was away for 20 s gets the spool within the bound
    (the old doubling to 60 s made it wait 11 s here)."""
    fresh_broker.stop()
    cfg = MqttConfig(host=fresh_broker.host, port=fresh_broker.port, prefix=f"ff{uuid.uuid4().hex[:8]}")
    pub = MqttPublisher(cfg, "dev1", "cam0", Spool(tmp_path / "spool"))
    b = EventBuilder("dev1", "cam0", MODEL)
    pub.start()
    consumer = None
    try:
        for doc in _events(b, 3):
            pub.publish_event(doc)
        time.sleep(20.0)  # long enough for the old doubling back-off to wait 16 s, then 32 s
        fresh_broker.start()
        t_back = time.monotonic()
        consumer = Consumer(fresh_broker.host, fresh_broker.port, (f"{cfg.prefix}/#",))
        assert consumer.wait_for(lambda c: len(c.on("/event")) >= 1, 30)
        waited = consumer.on("/event")[0].at - (time.time() - (time.monotonic() - t_back))
        # The defaults' bound, as docs/edge.md states it: reconnect_max_s 5 s + replay_settle_s 1 s.
        assert waited <= 5.0 + 1.0 + 1.0, waited  # + 1 s for this loaded machine
        assert (cfg.reconnect_max_s, cfg.replay_settle_s) == (5.0, 1.0)
    finally:
        pub.stop(1.0)
        if consumer is not None:
            consumer.close()


def test_disk_full_and_cap_drops_are_counted_in_stats(
    fresh_broker: EmbeddedBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Broker away, spool capped at 5 records: the drops are one log line and appear in stats."""
    fresh_broker.stop()
    spool = Spool(tmp_path / "spool", max_count=5)
    pub, b = _publisher(fresh_broker, tmp_path, spool=spool, reconnect_min_s=0.2, reconnect_max_s=0.5)
    prefix = pub.cfg.prefix
    pub.set_stats_provider(lambda: b.stats(_STATS))
    consumer = None
    with caplog.at_level(logging.WARNING, logger="edge.spool"):
        pub.start()
        try:
            for doc in _events(b, 40):
                pub.publish_event(doc)
            assert _wait(lambda: pub.spool.dropped["count"] == 35, 10), pub.spool.dropped
            assert len([r for r in caplog.records if r.name == "edge.spool"]) == 1
            fresh_broker.start()
            consumer = Consumer(fresh_broker.host, fresh_broker.port, (f"{prefix}/#",))
            assert consumer.wait_for(lambda c: len(c.on("/stats")) >= 1, 15)
            stats = validate_message(f"{prefix}/dev1/stats", consumer.on("/stats")[-1].payload)
            assert stats["drops"]["count"] == 35 and stats["drops"]["disk_full"] == 0
            assert consumer.wait_for(lambda c: len(c.on("/event")) == 5, 10)
            assert _seqs(consumer) == list(range(36, 41))  # the oldest went first
        finally:
            pub.stop(1.0)
            if consumer is not None:
                consumer.close()


def test_home_assistant_sees_every_stop_as_unavailable(mqtt_broker: EmbeddedBroker, tmp_path: Path) -> None:
    """Discovery's availability template maps each status the device can leave retained onto
    payload_available / payload_not_available: stopped (clean exit) and offline (Last Will) alike."""
    jinja2 = pytest.importorskip("jinja2")
    pub, b = _publisher(mqtt_broker, tmp_path, ha=True)
    ha_topics = "homeassistant/+/featherface_dev1_cam0/+/config"
    consumer = Consumer(mqtt_broker.host, mqtt_broker.port, (ha_topics, f"{pub.cfg.prefix}/#"))
    try:
        pub.set_state(b.state(1, "online"))
        pub.start()
        assert consumer.wait_for(lambda c: len(c.on("/config")) == 3 and c.on("/status"))
    finally:
        pub.set_state(b.state(0, "offline"))  # what the daemon hands over at its stop
        pub.stop()
        consumer.wait_for(lambda c: c.on("/status")[-1].payload == b"stopped", 5)
        consumer.close()
        _clear_discovery(mqtt_broker, consumer)
    for config in (m.json() for m in consumer.on("/config") if m.payload):
        template = jinja2.Template(config["availability_template"])
        seen = {status: template.render(value=status) for status in STATUS_VALUES}
        assert seen == {
            "online": config["payload_available"],
            "offline": config["payload_not_available"],
            "stopped": config["payload_not_available"],
        }
    late = Consumer(mqtt_broker.host, mqtt_broker.port, (pub.state_topic,))
    try:  # the retained state a consumer finds afterwards is true: nobody there, camera not read
        assert late.wait_for(lambda c: len(c.messages) == 1, 5)
        assert {k: late.messages[0].json()[k] for k in ("faces", "source_status")} == {
            "faces": 0,
            "source_status": "offline",
        }
    finally:
        late.close()
