"""Test helpers: a consumer that subscribes as a real one would, and schema validation of payloads."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "edge" / "schema" / "event.schema.json"


@cache
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def validate_message(topic: str, payload: bytes) -> Any:
    """Validate one published message against the schema (by topic); return the decoded payload."""
    if topic.endswith("/snapshot"):
        assert payload[:2] == b"\xff\xd8", "a snapshot is a JPEG"
        return payload
    if topic.endswith("/status") and not topic.startswith("homeassistant"):
        doc: Any = payload.decode()
    elif topic.startswith("homeassistant/"):
        return json.loads(payload)  # HA's own discovery format, not ours
    else:
        doc = json.loads(payload)
    validator().validate(doc)
    kind = {"event": ("start", "update", "end"), "state": ("state",), "stats": ("stats",)}
    for suffix, types in kind.items():
        if topic.endswith("/" + suffix):
            assert doc["type"] in types, (topic, doc["type"])
    return doc


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


class Consumer:
    """A paho client subscribed to ``topics`` that reconnects (and resubscribes) by itself."""

    def __init__(self, host: str, port: int, topics: tuple[str, ...] = ("#",)) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.reconnect_delay_set(1, 1)
        self.topics = topics

        def on_connect(c: mqtt.Client, *_: Any) -> None:
            c.subscribe([(t, 1) for t in topics])

        def on_subscribe(*_: Any) -> None:
            self._subscribed.set()

        def on_disconnect(*_: Any) -> None:
            self._subscribed.clear()

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            with self._lock:
                self.messages.append(Received(msg.topic, msg.payload, bool(msg.retain), time.time()))

        self.client.on_connect, self.client.on_subscribe = on_connect, on_subscribe
        self.client.on_message, self.client.on_disconnect = on_message, on_disconnect
        self.client.connect(host, port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "consumer could not subscribe"

    def wait_subscribed(self, timeout: float = 10) -> bool:
        return self._subscribed.wait(timeout)

    def on(self, suffix: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def wait_for(self, predicate: Callable[[Consumer], bool], timeout: float = 15) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return predicate(self)

    def close(self) -> None:
        self.client.disconnect()  # wakes the network loop, so loop_stop() returns at once
        self.client.loop_stop()
