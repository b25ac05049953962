"""Home Assistant MQTT discovery: retained config messages under ``<discovery_prefix>/...``.

Two entities per camera: a sensor with the number of faces tracked now and a binary sensor
"face present", both reading the retained ``state`` topic, and with snapshots on a camera entity
showing the last face's picture. All are marked unavailable through the device's ``status`` topic:
anything but ``online`` (``offline``, ``stopped``) means unavailable. Home Assistant announces its
own restarts on ``<discovery_prefix>/status``; the publisher re-sends discovery when that says
``online``.
"""

from __future__ import annotations

import json
import logging

from edge import __version__

log = logging.getLogger(__name__)

AVAILABILITY_TEMPLATE = "{{ 'online' if value == 'online' else 'offline' }}"


def discovery_messages(
    discovery_prefix: str, topic_prefix: str, device_id: str, camera: str, snapshot: bool = False
) -> list[tuple[str, str]]:
    """``(topic, JSON payload)`` pairs to publish retained; the same input always gives the same output.
    With ``snapshot`` (pictures on) a camera entity shows the last face's picture; without, an empty
    payload for its topic removes one a previous run advertised."""
    base = f"{topic_prefix}/{device_id}"
    device = {
        "identifiers": [f"featherface_{device_id}"],
        "name": f"FeatherFace {device_id}",
        "manufacturer": "FeatherFace",
        "model": "featherface-edge",
        "sw_version": __version__,
    }
    common = {
        "state_topic": f"{base}/{camera}/state",
        "availability_topic": f"{base}/status",
        # The status is online, offline (Last Will) or stopped (clean exit); HA compares the
        # template's result with the two payloads, so a stopped device is unavailable too.
        "availability_template": AVAILABILITY_TEMPLATE,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
    }
    uid = f"featherface_{device_id}_{camera}"
    sensor = {
        **common,
        "name": f"{camera} faces",
        "unique_id": f"{uid}_faces",
        "value_template": "{{ value_json.faces }}",
        "state_class": "measurement",
        "icon": "mdi:face-recognition",
    }
    present = {
        **common,
        "name": f"{camera} face present",
        "unique_id": f"{uid}_present",
        "value_template": "{{ 'ON' if value_json.faces > 0 else 'OFF' }}",
        "device_class": "occupancy",
    }
    out = [
        (f"{discovery_prefix}/sensor/{uid}/faces/config", json.dumps(sensor, sort_keys=True)),
        (f"{discovery_prefix}/binary_sensor/{uid}/present/config", json.dumps(present, sort_keys=True)),
    ]
    camera_topic = f"{discovery_prefix}/camera/{uid}/last_face/config"
    if snapshot:
        picture = {k: v for k, v in common.items() if k != "state_topic"}  # a camera reads `topic`
        picture.update(
            name=f"{camera} last face", unique_id=f"{uid}_last_face", topic=f"{base}/{camera}/snapshot"
        )
        out.append((camera_topic, json.dumps(picture, sort_keys=True)))
    else:  # an empty retained config removes the entity a run with snapshots on left behind
        out.append((camera_topic, ""))
    return out


def parse_ha_status(topic: str, payload: bytes, max_bytes: int) -> str | None:
    """``online``/``offline`` from Home Assistant's birth/will message; anything else is logged and ``None``.

    The topic is subscribed, so anyone on the broker can write to it: oversized or malformed
    payloads must not crash or stall the daemon.
    """
    if len(payload) > max_bytes:
        log.warning("ignored a %d-byte message on %s (limit %d bytes)", len(payload), topic, max_bytes)
        return None
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        log.warning("ignored a message on %s that is not UTF-8", topic)
        return None
    if text not in ("online", "offline"):
        log.warning("ignored a message on %s: expected online/offline, got %r", topic, text[:40])
        return None
    return text
