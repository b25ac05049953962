"""The broker fixture is a real broker: a paho client publishes and another receives over TCP."""

from __future__ import annotations

import queue

import paho.mqtt.client as mqtt
import pytest

from edge.broker import EmbeddedBroker


def _client(broker: EmbeddedBroker, inbox: queue.Queue[mqtt.MQTTMessage] | None = None) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if inbox is not None:
        client.on_message = lambda _c, _u, msg: inbox.put(msg)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def test_publish_subscribe_round_trip(mqtt_broker: EmbeddedBroker) -> None:
    inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    sub = _client(mqtt_broker, inbox)
    sub.subscribe("ff/test/#", qos=1)
    pub = _client(mqtt_broker)
    try:
        # Retained: arrives even though the subscription may settle after the publish.
        pub.publish("ff/test/a", b"hello", qos=1, retain=True).wait_for_publish(5)
        msg = inbox.get(timeout=5)
        assert (msg.topic, msg.payload) == ("ff/test/a", b"hello")
    finally:
        for c in (sub, pub):
            c.loop_stop()
            c.disconnect()


def test_broker_restart_keeps_port(fresh_broker: EmbeddedBroker) -> None:
    port = fresh_broker.port
    fresh_broker.stop()
    assert not fresh_broker.running
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    with pytest.raises(OSError):
        client.connect(fresh_broker.host, port)
    fresh_broker.start()
    assert fresh_broker.port == port
    assert client.connect(fresh_broker.host, port) == mqtt.MQTT_ERR_SUCCESS
    client.disconnect()
