"""``featherface-edge demo``: the real daemon pipeline on the bundled sample image, end to end.

The sample (``edge/samples/astronaut.png``) is fed as a slowly panning synthetic camera through the
same :class:`edge.daemon.Daemon` that ``run`` uses, publishing to an embedded broker on loopback
(or the broker of ``--config``). A consumer subscribed like any other prints every event it
receives, and the faces of the last events are drawn onto ``--out``. Nothing is simulated past the
camera: without a real model there are no detections, so without the bundled default model the
demo says so and exits non-zero.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2

from edge.annotate import draw
from edge.broker import EmbeddedBroker
from edge.config import MqttConfig, load_config, parse_config
from edge.daemon import Daemon
from edge.errors import ModelError
from edge.model import default_model_path
from edge.records import Detection

SAMPLE = Path(__file__).resolve().parent / "samples" / "astronaut.png"


def _subscribe(mqtt: MqttConfig, topic: str, inbox: list[tuple[str, bytes]], ready: threading.Event) -> Any:
    """A consumer like any other: same broker, credentials and TLS as the daemon."""
    import paho.mqtt.client as paho

    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    if mqtt.username:
        client.username_pw_set(mqtt.username, mqtt.password.reveal() or None)
    if mqtt.tls:
        client.tls_set(
            ca_certs=mqtt.ca_file or None, certfile=mqtt.cert_file or None, keyfile=mqtt.key_file or None
        )
        client.tls_insecure_set(mqtt.tls_insecure)
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: ready.set()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        inbox.append((msg.topic, msg.payload))
        if msg.topic.endswith("/event"):
            doc = json.loads(msg.payload)
            face = doc["faces"][0]
            print(
                f"{doc['type']:>6}  track {face['track_id']}  score {face['score']:.2f}  "
                f"box {face['box']}  seq {doc['seq']}  frame {doc['frame_id']}",
                flush=True,
            )
        elif msg.topic.endswith("/status"):
            print(f"status  {msg.payload.decode(errors='replace')}", flush=True)

    client.on_message = on_message
    client.connect(mqtt.host, mqtt.port)
    client.loop_start()
    return client


def run_demo(
    model: Path | None = None,
    frames: int = 30,
    out: Path = Path("featherface-demo.jpg"),
    config: Path | None = None,
) -> int:
    """Run the demo; returns the exit code. ``model`` None = the bundled default model."""
    model_path = Path(model) if model else default_model_path()
    if model is None and not model_path.is_file():
        print(
            f"featherface-edge demo: the default model has not been shipped yet ({model_path} is absent); "
            "run it with --model FILE (a FeatherFace-exported .onnx or .xml)"
        )
        return 2
    if not SAMPLE.is_file():
        raise ModelError(f"the bundled sample image {SAMPLE} is missing; reinstall featherface")
    image = cv2.imread(str(SAMPLE), cv2.IMREAD_COLOR)
    if image is None:
        raise ModelError(f"the bundled sample image {SAMPLE} cannot be read")
    h, w = image.shape[:2]
    broker = None
    with tempfile.TemporaryDirectory(prefix="featherface-demo-") as state:
        user_mqtt = load_config(config).mqtt if config is not None else None
        mqtt_table: dict[str, Any] = {}
        if user_mqtt is None:
            broker = EmbeddedBroker().start()
            mqtt_table = {"host": broker.host, "port": broker.port}
            print(f"embedded {broker.kind} broker on {broker.host}:{broker.port}")
        mqtt_table.update(prefix="featherface-demo", replay_settle_s=0.0, stats_interval_s=5.0)
        cfg = parse_config(
            {
                "device": {"id": "demo", "camera": "sample", "state_dir": state},
                "source": {
                    "type": "synthetic",
                    "path": str(SAMPLE),
                    "width": w,
                    "height": h,
                    "frames": frames,
                    # 10 fps: frames are stamped 0.1 s apart, so the tracker's 1-s updates fall on the
                    # same frames on every run (and the demo lasts frames / 10 seconds).
                    "fps": 10.0,
                },
                "detector": {"model": str(model_path)},
                "tracker": {"min_hits": 2, "update_interval_s": 1.0},
                "mqtt": mqtt_table,
                "daemon": {"drain_timeout_s": 5.0},
            },
            origin="demo",
            environ={},
        )
        if user_mqtt is not None:  # the user's broker, credentials and TLS; the demo's own topics
            demo_mqtt = dataclasses.replace(
                user_mqtt, prefix="featherface-demo", client_id="", replay_settle_s=0.0
            )
            cfg = dataclasses.replace(cfg, mqtt=demo_mqtt)
        inbox: list[tuple[str, bytes]] = []
        ready = threading.Event()
        client = _subscribe(cfg.mqtt, f"{cfg.mqtt.prefix}/{cfg.device.id}/#", inbox, ready)
        try:
            ready.wait(10)
            daemon = Daemon(cfg)
            print(
                f"model {daemon.detector.meta.name} {daemon.detector.meta.version} on "
                f"{daemon.detector.runtime}; {frames} frames of {SAMPLE.name} ({w}x{h})"
            )
            code = daemon.run()
            deadline = time.monotonic() + 5
            status_topic = f"{cfg.mqtt.prefix}/{cfg.device.id}/status"
            while time.monotonic() < deadline and (status_topic, b"stopped") not in inbox:
                time.sleep(0.05)  # the retained "stopped" is the last thing the daemon publishes
        finally:
            client.disconnect()  # wakes the network loop first
            client.loop_stop()
            if broker is not None:
                broker.close()
    events = [json.loads(p) for t, p in inbox if t.endswith("/event")]
    last: dict[int, Detection] = {}
    for doc in events:
        for f in doc["faces"]:
            last[f["track_id"]] = Detection(
                tuple(f["box"]), f["score"], tuple(tuple(p) for p in f["landmarks"])
            )
    cv2.imwrite(str(out), draw(image, list(last.values())))
    print(f"{len(events)} event(s) received, {len(last)} track(s); annotated image: {out}")
    return code
