"""Session-wide fixtures: a real MQTT broker on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edge.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[EmbeddedBroker]:
    """A broker shared by the session (mosquitto if on PATH, else amqtt); do not stop it in tests."""
    broker = EmbeddedBroker().start()
    yield broker
    broker.close()


@pytest.fixture
def fresh_broker() -> Iterator[EmbeddedBroker]:
    """A broker of the test's own, which the test may stop() and start() again on the same port."""
    broker = EmbeddedBroker().start()
    yield broker
    broker.close()
