"""The MQTT publisher against a real broker: status lifecycle, QoS 1 events, spool, HA discovery."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge.broker import EmbeddedBroker
from edge.config import HomeAssistantConfig, MqttConfig
from edge.events import EventBuilder, ModelInfo
from edge.mqtt import MqttPublisher
from edge.records import Detection, TrackEvent
from edge.spool import Spool
from tests.edge.mqtt_helpers import Consumer, validate_message

MODEL = ModelInfo("tiny", "0", "", "onnxruntime")
DET = Detection(box=(0.1, 0.1, 0.2, 0.2), score=0.9, landmarks=((0.15, 0.15),) * 5)


def _publisher(
    broker: EmbeddedBroker, tmp_path: Path, ha: bool = False, **kw: object
) -> tuple[MqttPublisher, EventBuilder]:
    prefix = f"ff{uuid.uuid4().hex[:8]}"
    cfg = MqttConfig(
        host=broker.host,
        port=broker.port,
        prefix=prefix,
        reconnect_min_s=1,
        reconnect_max_s=1,
        replay_settle_s=0.3,
        stats_interval_s=0.3,
        **kw,
    )  # type: ignore[arg-type]
    pub = MqttPublisher(cfg, "dev1", "cam0", Spool(tmp_path / "spool"), HomeAssistantConfig(enabled=ha))
    return pub, EventBuilder("dev1", "cam0", MODEL)


def _events(b: EventBuilder, n: int) -> list[dict]:
    return [b.event(TrackEvent("start", i, DET), i, time.time(), 64, 48) for i in range(n)]


def _seqs(consumer: Consumer) -> list[int]:
    return [m.json()["seq"] for m in consumer.on("/event")]


def test_online_events_state_stats_then_stopped(mqtt_broker: EmbeddedBroker, tmp_path: Path) -> None:
    pub, b = _publisher(mqtt_broker, tmp_path)
    consumer = Consumer(mqtt_broker.host, mqtt_broker.port, (f"{pub.cfg.prefix}/#",))
    try:
        pub.set_stats_provider(
            lambda: b.stats(
                {
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
            )
        )
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
        assert consumer.wait_for(lambda c: len(c.on("/config")) == 2 and c.on("/status"))
        configs = [m.json() for m in consumer.on("/config")]
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
        assert len(consumer.on("/config")) == 2  # junk did not trigger a re-send
        other.publish("homeassistant/status", b"online", qos=1).wait_for_publish(5)
        assert consumer.wait_for(lambda c: len(c.on("/config")) == 4, 5)
        pub.publish_event(_events(b, 1)[0])  # still publishing after the junk
        assert consumer.wait_for(lambda c: len(c.on("/event")) == 1, 5)
    finally:
        pub.stop()
        other.disconnect()  # wakes the network loop first
        other.loop_stop()
        consumer.close()
        # Clear retained discovery so it does not leak into other tests' subscriptions.
        for topic in {m.topic for m in consumer.on("/config")}:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            c.connect(mqtt_broker.host, mqtt_broker.port)
            c.publish(topic, b"", retain=True)
            c.disconnect()


def test_snapshot_size_cap_and_full_queue(mqtt_broker: EmbeddedBroker, tmp_path: Path) -> None:
    pub, _ = _publisher(mqtt_broker, tmp_path, snapshot_max_bytes=100, queue_size=2)
    assert not pub.publish_snapshot(b"\xff\xd8" + b"\0" * 200)
    assert pub.counters["dropped_snapshots"] == 1
    # Not started: nothing drains the queue, so the third message is refused instead of blocking.
    assert pub.publish_event({"seq": 1}) and pub.publish_event({"seq": 2})
    t0 = time.monotonic()
    assert not pub.publish_event({"seq": 3})
    assert time.monotonic() - t0 < 0.05 and pub.counters["dropped_queue"] == 1
