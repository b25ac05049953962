"""Session-wide fixtures: a real MQTT broker on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edge.broker import EmbeddedBroker


def pytest_configure(config: pytest.Config) -> None:
    # Two cores shared by torch, ONNX Runtime, OpenVINO and broker processes: torch's default
    # intra-op pool spin-waits against the others and makes small steps 30-70x slower.
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


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
