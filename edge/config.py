"""The daemon's configuration: one TOML file + ``FEATHERFACE_<TABLE>__<KEY>`` environment overrides.

Every table becomes a frozen dataclass, validated once at start: unknown tables and keys are
refused, values are type-checked, and every error names the file, the table and the key. The
``[source]``, ``[detector]`` and ``[tracker]`` tables build the perception side's own dataclasses
(:mod:`edge.camera`, :mod:`edge.detector`, :mod:`edge.tracker`) with the same checks.

Secrets: the MQTT password comes from ``mqtt.password``, ``mqtt.password_file``, or systemd's
``$CREDENTIALS_DIRECTORY/mqtt_password`` (``LoadCredential=``); it is held in :class:`Secret`,
which never shows its value in ``repr``/``str``/logs.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import ConfigError
from edge.redact import Secret, redact_url
from edge.tables import build_table

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (Jetson's JetPack 6): the same parser, from PyPI
    import tomli as tomllib

ENV_PREFIX = "FEATHERFACE_"
DEFAULT_STATE_DIR = "/var/lib/featherface"


@dataclass(frozen=True)
class DeviceConfig:
    """``[device]``: who this device is and where it keeps state. ``id`` empty = the hostname."""

    id: str = ""
    camera: str = "cam0"
    state_dir: str = DEFAULT_STATE_DIR
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", self.id or socket.gethostname().split(".")[0] or "edge")
        for key in ("id", "camera"):
            value = getattr(self, key)
            if any(c in value for c in "/#+ ") or not value:
                raise ConfigError(
                    f"device.{key} must be a non-empty MQTT topic level (no '/', '#', '+', spaces)"
                )
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(
                f"device.log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}"
            )


def check_host(host: str) -> None:
    """``mqtt.host`` is a bare host name or address: a URL or a ``host:port`` is refused, with the fix."""
    if not host.strip():
        raise ConfigError("mqtt.host is empty: give the broker's host name or address")
    if "://" in host:
        bare = host.split("://", 1)[1].split("/", 1)[0]
        raise ConfigError(
            f"mqtt.host must be a host name or address, not a URL: got {host!r}; write host = "
            f"{bare.rsplit(':', 1)[0]!r} (the port goes in mqtt.port, TLS in mqtt.tls)"
        )
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:  # one colon: host:port (IPv6 literals have several)
        raise ConfigError(f"mqtt.host {host!r} has a port in it; write host = {name!r} and port = {port}")
    if any(c.isspace() for c in host) or "/" in host:
        raise ConfigError(f"mqtt.host {host!r} is not a host name or address")


@dataclass(frozen=True)
class MqttConfig:
    """``[mqtt]``: the broker connection and what is published. Times in seconds, sizes in bytes."""

    enabled: bool = True
    host: str = "localhost"
    port: int = 1883
    prefix: str = "featherface"
    client_id: str = ""
    keepalive_s: int = 30
    username: str = ""
    password: Secret = field(default_factory=Secret, repr=False)
    password_file: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    tls_insecure: bool = False
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 5.0  # bounds the wait from a broker coming back to delivery
    replay_settle_s: float = 1.0
    max_inflight: int = 50
    queue_size: int = 1000
    stats_interval_s: float = 30.0
    snapshot: bool = False
    snapshot_max_bytes: int = 65536
    max_message_bytes: int = 4096

    def __post_init__(self) -> None:
        if self.enabled:
            check_host(self.host)
        if not 0 < self.port < 65536:
            raise ConfigError(f"mqtt.port must be 1..65535, got {self.port}")
        if not self.prefix or any(c in self.prefix for c in "#+") or self.prefix.startswith("/"):
            raise ConfigError(
                f"mqtt.prefix must be a topic without '#', '+' or a leading '/', got {self.prefix!r}"
            )
        for key in ("keepalive_s", "max_inflight", "queue_size", "snapshot_max_bytes", "max_message_bytes"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"mqtt.{key} must be > 0, got {getattr(self, key)}")
        for key in ("reconnect_min_s", "reconnect_max_s", "stats_interval_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"mqtt.{key} must be > 0, got {getattr(self, key)}")
        if self.replay_settle_s < 0:
            raise ConfigError(f"mqtt.replay_settle_s must be >= 0, got {self.replay_settle_s}")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ConfigError("mqtt.reconnect_max_s must be >= mqtt.reconnect_min_s")
        if (self.cert_file or self.key_file) and not (self.cert_file and self.key_file):
            raise ConfigError("mqtt.cert_file and mqtt.key_file must be given together")
        for key in ("ca_file", "cert_file", "key_file", "password_file"):
            value = getattr(self, key)
            if value and not Path(value).is_file():
                raise ConfigError(f"mqtt.{key}: file {value} does not exist")
        if self.password and self.password_file:
            raise ConfigError("mqtt.password and mqtt.password_file are both set; keep one")


@dataclass(frozen=True)
class SpoolConfig:
    """``[spool]``: the on-disk queue used while the broker is unreachable (0 = no cap)."""

    dir: str = ""  # empty = <device.state_dir>/spool
    max_events: int = 10000
    max_bytes: int = 20_000_000
    max_age_s: float = 7 * 86400.0

    def __post_init__(self) -> None:
        for key in ("max_events", "max_bytes", "max_age_s"):
            if getattr(self, key) < 0:
                raise ConfigError(f"spool.{key} must be >= 0, got {getattr(self, key)}")


@dataclass(frozen=True)
class HomeAssistantConfig:
    """``[homeassistant]``: optional MQTT discovery."""

    enabled: bool = False
    discovery_prefix: str = "homeassistant"


@dataclass(frozen=True)
class DaemonConfig:
    """``[daemon]``: loop behaviour. ``max_frames`` 0 = run until stopped (tests/demo set it)."""

    max_frames: int = 0
    drain_timeout_s: float = 5.0
    snapshot_on: str = "start"  # "start" = a crop per new track, "none" = never

    def __post_init__(self) -> None:
        if self.drain_timeout_s < 0 or self.max_frames < 0:
            raise ConfigError("daemon.drain_timeout_s and daemon.max_frames must be >= 0")
        if self.snapshot_on not in ("start", "none"):
            raise ConfigError(f"daemon.snapshot_on must be 'start' or 'none', got {self.snapshot_on!r}")


@dataclass(frozen=True)
class HttpConfig:
    """``[http]``: ``featherface-edge serve`` (edge/serve.py). Sizes in bytes/pixels, times in seconds.

    ``token`` (or ``token_file``, or ``$CREDENTIALS_DIRECTORY/http_token``) empty = no auth; at most
    ``workers + queue_size`` detection requests are admitted at once, the rest get 503 at once.
    """

    host: str = "127.0.0.1"
    port: int = 5000
    token: Secret = field(default_factory=Secret, repr=False)
    token_file: str = ""
    max_body_bytes: int = 10_000_000
    max_pixels: int = 25_000_000
    workers: int = 1
    queue_size: int = 4
    read_timeout_s: float = 30.0
    web_dir: str = ""  # the built web page (make web); empty = web/dist beside the source tree

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"http.port must be 0..65535, got {self.port}")
        for key in ("max_body_bytes", "max_pixels", "workers", "read_timeout_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"http.{key} must be > 0, got {getattr(self, key)}")
        if self.queue_size < 0:
            raise ConfigError(f"http.queue_size must be >= 0, got {self.queue_size}")
        if self.token and self.token_file:
            raise ConfigError("http.token and http.token_file are both set; keep one")


@dataclass(frozen=True)
class Config:
    """The whole file. ``path`` is where it came from (for messages)."""

    device: DeviceConfig
    mqtt: MqttConfig
    spool: SpoolConfig
    homeassistant: HomeAssistantConfig
    daemon: DaemonConfig
    source: Any  # edge.camera.SourceConfig
    detector: Any  # edge.detector.DetectorConfig
    tracker: Any  # edge.tracker.TrackerConfig
    http: HttpConfig = field(default_factory=HttpConfig)
    path: str = "<defaults>"

    @property
    def spool_dir(self) -> Path:
        return Path(self.spool.dir) if self.spool.dir else Path(self.device.state_dir) / "spool"

    def redacted(self) -> dict[str, Any]:
        """Every table as plain data, the password shown as ``***`` (for check-config / logs)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                table = {k.name: getattr(value, k.name) for k in dataclasses.fields(value)}
                out[f.name] = {k: _redacted(v) for k, v in table.items()}
        return out


def _redacted(value: Any) -> Any:
    if isinstance(value, Secret):
        return "***" if value else ""
    return redact_url(value) if isinstance(value, str) else value


def _perception_tables() -> dict[str, type]:
    # Imported here so that `check-config` on a bad [mqtt] value does not need cv2/onnxruntime first.
    from edge.camera import SourceConfig
    from edge.detector import DetectorConfig
    from edge.tracker import TrackerConfig

    return {"source": SourceConfig, "detector": DetectorConfig, "tracker": TrackerConfig}


TABLES: dict[str, type] = {
    "device": DeviceConfig,
    "mqtt": MqttConfig,
    "spool": SpoolConfig,
    "homeassistant": HomeAssistantConfig,
    "daemon": DaemonConfig,
    "http": HttpConfig,
}


def _env_value(raw: str) -> Any:
    """An environment string as TOML would read it (``8883``, ``true``, ``[1, 2]``), else the string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env(
    doc: dict[str, Any], environ: dict[str, str], tables: dict[str, type], sources: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """Overlay ``FEATHERFACE_<TABLE>__<KEY>=value`` onto the parsed file (table/key case-insensitive);
    ``sources[table][key]`` records which variable set what."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in doc.items()}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        table, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if table not in tables:
            raise ConfigError(
                f"environment variable {name}: unknown table [{table}] (known: {', '.join(tables)})"
            )
        hints = typing.get_type_hints(tables[table])
        value: Any = raw if hints.get(key) in (str, Secret, Path) else _env_value(raw)
        if not isinstance(out.setdefault(table, {}), dict):
            raise ConfigError(f"[{table}] must be a table (environment variable {name} sets a key in it)")
        out[table][key] = value
        sources.setdefault(table, {})[key] = name
    return out


def _read_password(mqtt: MqttConfig, origin: str, environ: dict[str, str]) -> MqttConfig:
    if mqtt.password:
        return mqtt
    candidates = [Path(mqtt.password_file)] if mqtt.password_file else []
    if not candidates and environ.get("CREDENTIALS_DIRECTORY"):
        cred = Path(environ["CREDENTIALS_DIRECTORY"]) / "mqtt_password"
        candidates = [cred] if cred.is_file() else []
    for path in candidates:
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{origin}: [mqtt] password_file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{origin}: [mqtt] password_file {path} is not UTF-8 text") from None
        return dataclasses.replace(mqtt, password=Secret(secret), password_file="")
    return mqtt


def parse_config(
    doc: dict[str, Any], origin: str = "<defaults>", environ: dict[str, str] | None = None
) -> Config:
    """Build and validate a :class:`Config` from a parsed TOML document plus environment overrides."""
    environ = dict(os.environ) if environ is None else environ
    tables = {**TABLES, **_perception_tables()}
    for name in doc:
        if name not in tables:
            raise ConfigError(f"{origin}: unknown table [{name}] (known: {', '.join(tables)})")
    env_sources: dict[str, dict[str, str]] = {}
    doc = apply_env(doc, environ, tables, env_sources)
    built = {
        name: build_table(cls, doc.get(name, {}), name, origin, env_sources.get(name))
        for name, cls in tables.items()
    }
    built["mqtt"] = _read_password(built["mqtt"], origin, environ)
    if not built["detector"].engine_cache:
        engines = str(Path(built["device"].state_dir) / "trt-engines")
        built["detector"] = dataclasses.replace(built["detector"], engine_cache=engines)
    return Config(**built, path=origin)


def load_config(path: str | Path | None, environ: dict[str, str] | None = None) -> Config:
    """Read ``path`` (``None`` = defaults + environment) into a validated :class:`Config`."""
    if path is None:
        return parse_config({}, "<defaults>", environ)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {p} cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {p} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        ) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None
    return parse_config(doc, str(p), environ)
