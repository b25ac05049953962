"""The MQTT publisher (paho-mqtt >= 2, ``CallbackAPIVersion.VERSION2``): never blocks the frame loop.

Threads: the frame loop writes each event ahead to the :class:`edge.journal.Journal` (one
``write()``, no fsync: it survives the process's death) and puts it on a bounded in-memory queue.
One worker thread owns the delivery state (in-flight QoS 1 messages, the on-disk
:class:`edge.spool.Spool`, the journal's group fsync); paho's network thread only flips connection
flags, so no lock is ever held across a paho call (paho calls ``on_publish`` under its own mutex,
which would deadlock against ours).

Delivery rule, which keeps events in order and loses none within the spool's caps:
- connected, spool empty, in-flight window not full: publish directly (``replayed: false``);
- connected, window full or spool being replayed: events wait in the memory queue (no disk
  writes), unless that queue is 80 % full or the oldest PUBACK is overdue (a keepalive: not
  acknowledged);
- otherwise (disconnected, memory queue nearly full, overdue acks): append to the spool (``replayed: true``)
  -- and first move every unacknowledged direct publish into the spool, so the spool always
  holds the oldest undelivered events;
- spool records are published oldest first once connected (after ``replay_settle_s``, which lets
  clean-session consumers resubscribe after a broker restart) and removed on PUBACK.
An acknowledgement is read from paho's ``MQTTMessageInfo.is_published()``; a message in flight
when the connection drops counts as undelivered. An event leaves the journal (is *settled*) once
acknowledged or fsync'd into the spool; the next start re-delivers what a killed run left there.
Delivery is therefore at-least-once in every phase: consumers deduplicate on ``event_id``.

Status: Last Will ``offline`` (retained); on every CONNACK that succeeds, the retained state,
Home Assistant discovery, then ``online``; ``stopped`` on a clean exit.

Reconnects: each wait is drawn from [1/2, 1] x ``reconnect_min_s`` x 2^attempt, capped at
``reconnect_max_s`` (jitter: devices that lost one broker do not all come back in the same
second), so a broker that returns is tried again within ``reconnect_max_s``. Why a connection
failed is logged in plain words (refused, DNS, time-out, TLS, authentication), once per cause and
then as one summary line a minute, instead of paho's "Client is not connected".
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import queue
import random
import socket
import ssl
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho

from edge import ha
from edge.config import HomeAssistantConfig, MqttConfig
from edge.journal import Journal
from edge.spool import Spool
from edge.tally import Tally

log = logging.getLogger(__name__)


class _NotConnectedFilter(logging.Filter):
    """paho logs "Client is not connected ..." at ERROR after every failed attempt; the publisher
    says why the connection failed instead (:func:`explain_connect_error`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_PAHO_LOG = logging.getLogger("edge.mqtt.paho")
_PAHO_LOG.addFilter(_NotConnectedFilter())


def explain_connect_error(exc: BaseException | None, host: str, port: int) -> str:
    """Why a TCP/TLS connection to the broker failed, in words an operator can act on."""
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the broker host {host!r} ({exc.strerror or exc}): check [mqtt] host and DNS"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused to {where}: no broker listens there (check [mqtt] host and port)"
    if isinstance(exc, TimeoutError):
        return f"connection to {where} timed out: the host is down or a firewall drops the packets"
    if isinstance(exc, ssl.SSLError):
        detail = getattr(exc, "verify_message", None) or exc.reason or exc
        return f"TLS handshake with {where} failed ({detail}): check [mqtt] tls, ca_file, cert_file"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"{where} is unreachable ({exc.strerror}): check the network and [mqtt] host"
    return f"cannot connect to {where}: {exc or 'unknown error'}"


def explain_refusal(reason: Any, host: str, port: int) -> str:
    """Why the broker refused the CONNECT (a CONNACK reason code), in plain words."""
    # MQTT 5 codes 134/135; paho maps MQTT 3.1.1's 4 and 5 onto them.
    if getattr(reason, "value", None) in (134, 135):
        return f"authentication failed at {host}:{port} ({reason}): check [mqtt] username and password"
    return f"the broker at {host}:{port} refused the connection: {reason}"


@dataclass
class _Pending:
    """A QoS 1 message paho has taken; ``spool_key`` is set once a copy is on disk."""

    info: paho.MQTTMessageInfo
    generation: int
    record: dict[str, Any]
    spool_key: int | None = None
    seg: int | None = None  # journal segment of a direct publish, settled on PUBACK or spooling
    sent_at: float = field(default_factory=time.monotonic)


def _spool_record(topic: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A spool record for an event: delivered late, so ``replayed``."""
    return {"topic": topic, "qos": 1, "retain": False, "payload": dict(payload, replayed=True)}


class MqttPublisher:
    """Publishes events/state/stats/snapshots for one device and camera; see the module docstring."""

    def __init__(
        self,
        cfg: MqttConfig,
        device_id: str,
        camera: str,
        spool: Spool,
        homeassistant: HomeAssistantConfig | None = None,
        snapshots: bool | None = None,
    ) -> None:
        self.cfg, self.device_id, self.camera, self.spool = cfg, device_id, camera, spool
        # Whether pictures will come (mqtt.snapshot and the daemon's snapshot_on): the HA camera entity
        # is advertised only then, and removed otherwise.
        self.snapshots = cfg.snapshot if snapshots is None else snapshots
        self.ha = homeassistant if homeassistant and homeassistant.enabled else None
        base = f"{cfg.prefix}/{device_id}"
        self.status_topic = f"{base}/status"
        self.stats_topic = f"{base}/stats"
        self.event_topic = f"{base}/{camera}/event"
        self.state_topic = f"{base}/{camera}/state"
        self.snapshot_topic = f"{base}/{camera}/snapshot"
        self.ha_status_topic = f"{self.ha.discovery_prefix}/status" if self.ha else ""
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=cfg.queue_size)
        self._pending: OrderedDict[int, _Pending] = OrderedDict()  # mid -> pending; worker-only
        self._connected = threading.Event()
        self._generation = 0  # bumped on every successful CONNACK
        self._connected_at = 0.0
        self._state_lock = threading.Lock()
        self._state: dict[str, Any] | None = None
        self._state_dirty = False
        self._resend_discovery = False
        self._stats_provider: Callable[[], dict[str, Any]] | None = None
        self._stop = threading.Event()
        self._next_stats = 0.0
        self._drain_deadline = 0.0
        self._worker: threading.Thread | None = None
        self._attempt = 0  # failed connection attempts in a row (the back-off's exponent)
        self.journal = Journal(spool.directory)
        self.connect_failures = Tally(log, "mqtt: cannot connect")
        self.counters = {
            "published": 0,
            "spooled": 0,
            "replayed": 0,
            "dropped_queue": 0,
            "dropped_snapshots": 0,
        }
        self.client = self._make_client()

    # ---- set-up -------------------------------------------------------------------------------
    def _make_client(self) -> paho.Client:
        cfg = self.cfg
        client_id = cfg.client_id or f"featherface-{self.device_id}-{self.camera}"
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
        client.enable_logger(logging.getLogger("edge.mqtt.paho"))
        client.max_inflight_messages_set(cfg.max_inflight)
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password.reveal() or None)
        if cfg.tls:
            client.tls_set(
                ca_certs=cfg.ca_file or None, certfile=cfg.cert_file or None, keyfile=cfg.key_file or None
            )
            client.tls_insecure_set(cfg.tls_insecure)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def start(self) -> MqttPublisher:
        """Recover what a killed run left in the journal, then start connecting in the background
        and return at once (the broker may be down)."""
        self._recover()
        log.info(
            "mqtt: connecting to %s:%d as %s (tls=%s)",
            self.cfg.host,
            self.cfg.port,
            self.device_id,
            self.cfg.tls,
        )
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()
        self._worker = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._worker.start()
        return self

    # ---- API for the frame loop (never blocks) ------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def publish_event(self, doc: dict[str, Any]) -> bool:
        """Write the event ahead to the journal and queue it for QoS 1 delivery; False when the
        in-memory queue is full (counted, not journaled). The frame loop is the only producer, so
        a queue that is not full now still has room after the journal write."""
        if self._queue.full():
            return self._queue_full()
        seg = self.journal.append(doc)
        return self._put("event", (doc, seg))

    def publish_snapshot(self, jpeg: bytes) -> bool:
        """Queue a JPEG of a new face (QoS 1, retained; dropped while offline or above
        ``snapshot_max_bytes``: pictures are not spooled)."""
        if len(jpeg) > self.cfg.snapshot_max_bytes:
            self.counters["dropped_snapshots"] += 1
            return False
        return self._put("snapshot", jpeg)

    def set_state(self, doc: dict[str, Any]) -> None:
        """Replace the retained state; published now if connected and again after every reconnect."""
        with self._state_lock:
            self._state, self._state_dirty = doc, True

    def set_stats_provider(self, provider: Callable[[], dict[str, Any]]) -> None:
        """``provider()`` returns a full stats payload; called by the worker every ``stats_interval_s``."""
        self._stats_provider = provider

    def drops(self) -> dict[str, int]:
        """Events dropped since start, by reason: the memory queue full, then the spool's reasons."""
        return {"queue_full": self.counters["dropped_queue"], **self.spool.dropped}

    def depth(self) -> dict[str, int]:
        """Messages waiting: in memory, in flight, on disk, and dropped by the spool's caps."""
        return {
            "queue": self._queue.qsize(),
            "inflight": len(self._pending),
            "spool": len(self.spool),
            "spool_dropped": self.spool.dropped_total,
        }

    def _put(self, kind: str, item: Any) -> bool:
        try:
            self._queue.put_nowait((kind, item))
            return True
        except queue.Full:
            return self._queue_full()

    def _queue_full(self) -> bool:
        self.counters["dropped_queue"] += 1
        if self.counters["dropped_queue"] in (1, 10, 100) or self.counters["dropped_queue"] % 1000 == 0:
            log.warning("mqtt: publish queue full, %d message(s) dropped", self.counters["dropped_queue"])
        return False

    def _recover(self) -> None:
        """Queue what a killed run left in the journal behind the spool's own (older) records, with
        an ``end`` event for each track it left open; then start a fresh journal."""
        found = self.journal.recover()
        docs = found.events + found.ends
        if docs:
            have = self.spool.recent_event_ids(len(docs))  # spooled before the kill, or by a cut recovery
            new = [doc for doc in docs if doc.get("event_id") not in have]
            for doc in new:
                self.spool.append(_spool_record(self.event_topic, doc), sync=False)
            self.spool.sync()
            log.warning(
                "journal: the previous run stopped without delivering %d event(s); queued for delivery "
                "(%d of them end the tracks it left open)",
                len(new),
                len(found.ends),
            )
        self.journal.start()

    # ---- paho callbacks (network thread: flags and small publishes only) ----------------------
    def _on_connect(self, client: paho.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self.connect_failures.note(explain_refusal(reason, self.cfg.host, self.cfg.port))
            return  # paho disconnects; _on_disconnect schedules the next attempt
        if self._attempt:
            self.connect_failures.reset()
            log.info("mqtt: connected after %d failed attempt(s)", self._attempt)
        self._attempt = 0
        with self._state_lock:
            state, self._state_dirty = self._state, False
        if state is not None:
            client.publish(self.state_topic, json.dumps(state), qos=1, retain=True)
        self._publish_discovery(client)
        if self.ha_status_topic:
            client.subscribe(self.ha_status_topic, qos=1)
        client.publish(self.status_topic, "online", qos=1, retain=True)
        self._generation += 1
        self._connected_at = time.monotonic()
        self._connected.set()
        log.info(
            "mqtt: connected to %s:%d; %d spooled message(s) to replay",
            self.cfg.host,
            self.cfg.port,
            len(self.spool),
        )

    def _on_connect_fail(self, _c: paho.Client, _ud: Any) -> None:
        # paho calls this inside its `except OSError`, so the exception is still the current one.
        exc = sys.exc_info()[1]
        self.connect_failures.note(explain_connect_error(exc, self.cfg.host, self.cfg.port))
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        """Set paho's next wait, [1/2, 1] x min x 2^attempt capped at ``reconnect_max_s``; paho
        calls exactly one of on_connect_fail / on_disconnect before each wait."""
        base = min(self.cfg.reconnect_max_s, self.cfg.reconnect_min_s * 2 ** min(self._attempt, 30))
        self._attempt += 1
        delay = base * random.uniform(0.5, 1.0)
        # paho stores the delay as given and sleeps on it, so fractions of a second work.
        self.client.reconnect_delay_set(min_delay=delay, max_delay=delay)  # type: ignore[arg-type]

    def _on_disconnect(self, _c: paho.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._schedule_reconnect()
        if was and not self._stop.is_set():
            log.warning(
                "mqtt: disconnected from %s:%d (%s); spooling until it is back",
                self.cfg.host,
                self.cfg.port,
                reason,
            )

    def _on_message(self, _c: paho.Client, _ud: Any, msg: paho.MQTTMessage) -> None:
        try:
            if self.ha_status_topic and msg.topic == self.ha_status_topic:
                if ha.parse_ha_status(msg.topic, bytes(msg.payload), self.cfg.max_message_bytes) == "online":
                    self._resend_discovery = True
            else:
                log.warning("mqtt: ignored a message on unexpected topic %r", msg.topic[:120])
        except Exception:  # a subscriber must never take the network thread down
            log.exception("mqtt: ignored a message on %r that could not be handled", msg.topic[:120])

    def _publish_discovery(self, client: paho.Client) -> None:
        if self.ha:
            for topic, payload in ha.discovery_messages(
                self.ha.discovery_prefix, self.cfg.prefix, self.device_id, self.camera, self.snapshots
            ):
                client.publish(topic, payload, qos=1, retain=True)

    # ---- worker -------------------------------------------------------------------------------
    def _run(self) -> None:
        self._next_stats = time.monotonic() + self.cfg.stats_interval_s
        while True:
            try:
                if self._step():
                    break
            except Exception:  # the worker must outlive any one bad message or disk error
                log.exception("mqtt: publisher worker error; continuing")
                time.sleep(0.5)
        try:
            self._spool_unacked()
            self.journal.close()
            self.spool.drops.flush(force=True)
        except Exception:
            log.exception("mqtt: could not spool the unacknowledged messages at exit")

    def _step(self) -> bool:
        """One round of the worker: acks, side channels, replay, one queued message. True = finished."""
        self._sweep()
        self.journal.maintain()
        self.spool.drops.flush()
        connected = self.connected
        if connected:
            self._publish_side_channels()
            self._replay()
            if self._stats_provider and time.monotonic() >= self._next_stats:
                self._next_stats = time.monotonic() + self.cfg.stats_interval_s
                self._publish_stats()
        if connected and self._backpressure():
            time.sleep(0.005)  # a burst: keep it in memory while PUBACKs come back, not on disk
            return False
        try:
            kind, item = self._queue.get(timeout=0.05)
        except queue.Empty:
            return self._stop.is_set() and self._drained()
        if kind == "event":
            self._handle_event(item)
        elif kind == "snapshot":
            if connected:
                # QoS 1 and retained: the last face stays on the topic for a Home Assistant camera
                # entity or a late subscriber; the JPEG's COM segment names its event_id.
                self.client.publish(self.snapshot_topic, item, qos=1, retain=True)
            else:
                self.counters["dropped_snapshots"] += 1
        return False

    def _stalled(self) -> bool:
        """The oldest in-flight message has waited longer than a keepalive for its PUBACK."""
        oldest = next(iter(self._pending.values()), None)
        return oldest is not None and time.monotonic() - oldest.sent_at > self.cfg.keepalive_s

    def _backpressure(self) -> bool:
        """Connected: should new events wait in memory rather than be taken off the queue now?"""
        if self._stop.is_set() and time.monotonic() >= self._drain_deadline:
            return False
        if self._queue.qsize() >= self.cfg.queue_size * 0.8:
            return False  # memory is running out: spill to disk
        if len(self.spool):
            # Replaying: newer events wait behind the spool in memory instead of being written to
            # disk and read back (an fsync each), which on an SD card can be slower than they arrive.
            return True
        return len(self._pending) >= self.cfg.max_inflight and not self._stalled()

    def _drained(self) -> bool:
        if time.monotonic() >= self._drain_deadline:
            return True
        return not self._pending and (not self.connected or len(self.spool) == 0)

    def _sweep(self) -> None:
        """Retire acknowledged messages; messages of an older connection count as undelivered."""
        for mid, p in list(self._pending.items()):
            try:
                acked = p.info.is_published()
            except (RuntimeError, ValueError):
                acked = False
            if acked:
                del self._pending[mid]
                if p.spool_key is not None:
                    self.spool.remove(p.spool_key)
                    self.counters["replayed"] += 1
                else:
                    self.counters["published"] += 1
                    self.journal.settle(p.seg)
            elif p.generation != self._generation or not self.connected:
                del self._pending[mid]
                self._spool_pending(p)

    def _spool_unacked(self) -> None:
        # Also used on stop: what the broker has not acknowledged survives on disk for the next run.
        self._sweep()
        for mid, p in list(self._pending.items()):
            self._spool_pending(p)
            del self._pending[mid]

    def _spool_pending(self, p: _Pending) -> None:
        """Spool an unacknowledged direct publish (once); on disk it no longer needs the journal."""
        if p.spool_key is None:
            p.spool_key = self._to_spool(p.record)
            self.journal.settle(p.seg)

    def _to_spool(self, record: dict[str, Any]) -> int:
        """Append to the spool (fsync'd); -1 when the spool dropped it (counted and logged there)."""
        key = self.spool.append(_spool_record(record["topic"], record["payload"]))
        if key >= 0:
            self.counters["spooled"] += 1
        return key

    def _handle_event(self, item: tuple[dict[str, Any], int | None]) -> None:
        doc, seg = item
        record = {"topic": self.event_topic, "payload": doc}
        direct = (
            self.connected
            and len(self.spool) == 0
            and len(self._pending) < self.cfg.max_inflight
            and not self._stalled()
        )
        if direct:
            info = self.client.publish(self.event_topic, json.dumps(doc), qos=1)
            if info.rc == paho.MQTT_ERR_SUCCESS:
                self._pending[info.mid] = _Pending(info, self._generation, record, seg=seg)
                return
        # Keep the spool the oldest-first record of everything undelivered: unacknowledged direct
        # publishes go in before this newer event.
        for p in self._pending.values():
            self._spool_pending(p)
        self._to_spool(record)
        self.journal.settle(seg)

    def _replay(self) -> None:
        if time.monotonic() - self._connected_at < self.cfg.replay_settle_s or not len(self.spool):
            return
        room = self.cfg.max_inflight - len(self._pending)
        if room <= 0:
            return
        in_flight = {p.spool_key for p in self._pending.values() if p.spool_key is not None}
        for entry in self.spool.peek(room, skip=in_flight):
            rec = entry.record
            info = self.client.publish(
                rec["topic"],
                json.dumps(rec["payload"]),
                qos=int(rec.get("qos", 1)),
                retain=bool(rec.get("retain", False)),
            )
            if info.rc != paho.MQTT_ERR_SUCCESS:
                return
            self._pending[info.mid] = _Pending(info, self._generation, rec, spool_key=entry.key)

    def _publish_side_channels(self) -> None:
        with self._state_lock:
            state, dirty = self._state, self._state_dirty
            self._state_dirty = False
        if dirty and state is not None:
            self.client.publish(self.state_topic, json.dumps(state), qos=1, retain=True)
        if self._resend_discovery:
            self._resend_discovery = False
            log.info("mqtt: Home Assistant is online; re-sending discovery")
            self._publish_discovery(self.client)

    def _publish_stats(self) -> None:
        try:
            doc = self._stats_provider() if self._stats_provider else None
        except Exception:
            log.exception("mqtt: stats provider failed")
            return
        if doc is not None:
            doc = {**doc, "drops": self.drops()}
            self.client.publish(self.stats_topic, json.dumps(doc), qos=0)

    # ---- shutdown -----------------------------------------------------------------------------
    def stop(self, drain_timeout_s: float = 5.0, final_status: str = "stopped") -> None:
        """Deliver what is queued (up to ``drain_timeout_s``), spool the rest, publish ``final_status``
        (``stopped`` on a clean exit, ``offline`` after a crash), disconnect."""
        self._drain_deadline = time.monotonic() + drain_timeout_s
        self._stop.set()
        if self._worker is not None:
            self._worker.join(drain_timeout_s + 5.0)
        if self.connected:
            self._publish_side_channels()  # the last state (set after the worker's last round)
            info = self.client.publish(self.status_topic, final_status, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # not queued: nothing to wait for
                info.wait_for_publish(timeout=2.0)
        self.client.disconnect()
        self.client.loop_stop()
        log.info("mqtt: stopped (%s; %d message(s) left in the spool)", self.counters, len(self.spool))
