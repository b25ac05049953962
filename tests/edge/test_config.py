"""Config: TOML + FEATHERFACE_<TABLE>__<KEY> overrides, frozen dataclasses, errors naming file/table/key."""

from __future__ import annotations

import dataclasses
import logging
import re
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.cli import app
from edge.config import Secret, load_config, parse_config
from edge.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "edge" / "config.example.toml"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "edge.toml"
    p.write_text(text)
    return p


def test_example_parses_and_documents_every_key() -> None:
    cfg = load_config(EXAMPLE, environ={})
    doc = tomllib.loads(EXAMPLE.read_text())
    text = EXAMPLE.read_text()
    tables = [f.name for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))]
    assert len(tables) >= 9  # every table of the Config, [http] included
    for table in tables:
        value = getattr(cfg, table)
        names = {f.name for f in dataclasses.fields(value)}
        assert names == set(doc[table]), f"[{table}] in the example differs from the dataclass"
        for key in names:  # each key has a comment line somewhere above it in its table
            assert re.search(rf"^# .*\n(?:.*\n)*?{key} = ", text, re.M), key
    assert dataclasses.is_dataclass(cfg) and cfg.mqtt.port == 1883


def test_defaults_without_a_file() -> None:
    cfg = load_config(None, environ={})
    assert cfg.device.id and cfg.mqtt.enabled and cfg.spool_dir == Path("/var/lib/featherface/spool")
    assert cfg.detector.providers == () and cfg.detector.engine_cache == "/var/lib/featherface/trt-engines"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mqtt.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[mqtt]\nport = 'abc'\n", "[mqtt] port: expected an integer, got 'abc'"),
        ("[mqtt]\nport = 70000\n", "[mqtt] port must be 1..65535, got 70000"),
        ("[mqtt]\nhots = 'x'\n", "[mqtt] unknown key 'hots'"),
        ("[mqt]\nhost = 'x'\n", "unknown table [mqt]"),
        ("[mqtt]\ntls = 'yes'\n", "[mqtt] tls: expected true or false"),
        ("[detector]\nscore_threshold = 2.0\n", "[detector] score_threshold must be in 0..1"),
        ("[detector]\nthreads = 1.5\n", "[detector] threads: expected an integer"),
        (
            "[detector]\nroi = [[0.1, 0.1]]\n",
            "[detector] roi must be a list of at least 3 [x, y] pairs, got [[0.1, 0.1]]",
        ),
        ("[detector]\nproviders = 'cuda'\n", "[detector] providers: expected a list, got 'cuda'"),
        ("[detector]\nproviders = ['gpu']\n", "[detector] providers: unknown onnxruntime provider 'gpu'"),
        ("[source]\ntype = 'webcam'\n", "[source] type must be one of"),
        ("[tracker]\nmin_hits = 0\n", "[tracker] min_hits must be >= 1"),
        ("[spool]\nmax_events = -1\n", "[spool] max_events must be >= 0"),
        ("[device]\ncamera = 'front/door'\n", "[device] camera must be a non-empty MQTT topic level"),
        (
            "[mqtt]\nca_file = '/nonexistent/ca.pem'\n",
            "[mqtt] ca_file: file /nonexistent/ca.pem does not exist",
        ),
        ("[mqtt]\nport = \n", "not valid TOML"),
        (
            "[mqtt]\nhost = 'mqtt://127.0.0.1:18883'\n",
            "not a URL: got 'mqtt://127.0.0.1:18883'; write host = '127.0.0.1'",
        ),
        ("[mqtt]\nhost = ''\n", "[mqtt] host is empty"),
        ("[mqtt]\nhost = 'broker.lan:1884'\n", "has a port in it; write host = 'broker.lan' and port = 1884"),
        (
            "[detector]\nmodel = '/nonexistent/m.onnx'\n",
            "[detector] model: file /nonexistent/m.onnx does not exist",
        ),
        (
            "[source]\ntype = 'images'\npath = '/nonexistent/frames'\n",
            "[source] path '/nonexistent/frames' does not exist",
        ),
    ],
)
def test_malformed_values_name_file_table_and_key(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert needle in str(err.value)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_ipv6_broker_address_is_a_host(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "[mqtt]\nhost = '::1'\n"), environ={}).mqtt.host == "::1"


def test_non_utf8_file_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_bytes("[device]\ncamera = 'caf\u00e9'\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert str(err.value) == f"config file {path} is not UTF-8 text (byte 0xe9 at offset 22)"
    assert err.value.exit_code == 2


def test_table_error_names_the_environment_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, ""), environ={"FEATHERFACE_MQTT__PORT": "99999"})
    assert str(err.value).endswith("[mqtt] port must be 1..65535, got 99999 (from FEATHERFACE_MQTT__PORT)")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:secret@10.0.0.5:554/s1", "rtsp://***@10.0.0.5:554/s1"),
        ("rtsp://admin:p@ss@10.0.0.5/s1", "rtsp://***@10.0.0.5/s1"),  # '@' in the password
        ("rtsp://admin:pa/ss@10.0.0.5/s1", "rtsp://***@10.0.0.5/s1"),  # '/' in the password
        ("rtsp://10.0.0.5/s1", "rtsp://10.0.0.5/s1"),
    ],
)
def test_redact_url_never_shows_a_password(url: str, shown: str) -> None:
    from edge.redact import redact_url

    assert redact_url(url) == shown


def test_config_reading_errors_are_one_line(tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_bytes(b"caf\xe9")
    text = f"[mqtt]\npassword_file = '{password}'\n"
    with pytest.raises(ConfigError, match=r"password_file .* is not UTF-8 text"):
        load_config(_write(tmp_path, text), environ={})
    with pytest.raises(ConfigError, match=r"\[source\] must be a table"):
        load_config(_write(tmp_path, "source = 5\n"), environ={"FEATHERFACE_SOURCE__FPS": "5"})


def test_redacted_hides_url_credentials(tmp_path: Path) -> None:
    text = "[source]\ntype = 'url'\npath = 'rtsp://admin:secret@10.0.0.5:554/stream1'\n"
    out = load_config(_write(tmp_path, text), environ={}).redacted()
    assert out["source"]["path"] == "rtsp://***@10.0.0.5:554/stream1"
    assert "secret" not in str(out)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/edge.toml")


def test_environment_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, "[mqtt]\nhost = 'file-host'\nport = 1884\n")
    env = {
        "FEATHERFACE_MQTT__HOST": "env-host",
        "FEATHERFACE_MQTT__PORT": "8883",
        "FEATHERFACE_MQTT__TLS": "true",
        "FEATHERFACE_DETECTOR__ROI": "[[0, 0], [1, 0], [1, 1]]",
        "FEATHERFACE_DEVICE__ID": "1234",  # a string field keeps digits as text
        "UNRELATED": "x",
    }
    cfg = load_config(path, environ=env)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls) == ("env-host", 8883, True)
    assert cfg.detector.roi == ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0))
    assert cfg.device.id == "1234"
    with pytest.raises(
        ConfigError, match=r"\[mqtt\] port \(from FEATHERFACE_MQTT__PORT\): expected an integer"
    ):
        load_config(path, environ={"FEATHERFACE_MQTT__PORT": "eighty"})
    with pytest.raises(ConfigError, match="FEATHERFACE_NOPE__X: unknown table"):
        load_config(path, environ={"FEATHERFACE_NOPE__X": "1"})
    with pytest.raises(ConfigError, match="unknown key 'colour' \\(from FEATHERFACE_SOURCE__COLOUR\\)"):
        load_config(path, environ={"FEATHERFACE_SOURCE__COLOUR": "1"})


def test_password_sources_and_redaction(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pw_file = tmp_path / "pw"
    pw_file.write_text("s3cret-from-file\n")
    cfg = load_config(_write(tmp_path, f"[mqtt]\nusername = 'u'\npassword_file = '{pw_file}'\n"), environ={})
    assert cfg.mqtt.password.reveal() == "s3cret-from-file"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("s3cret-from-systemd")
    cfg2 = load_config(
        _write(tmp_path, "[mqtt]\nusername = 'u'\n"), environ={"CREDENTIALS_DIRECTORY": str(creds)}
    )
    assert cfg2.mqtt.password.reveal() == "s3cret-from-systemd"
    cfg3 = load_config(_write(tmp_path, "[mqtt]\npassword = 'inline-s3cret'\n"), environ={})
    assert cfg3.mqtt.password.reveal() == "inline-s3cret"
    for c in (cfg, cfg2, cfg3):
        with caplog.at_level(logging.DEBUG):
            logging.getLogger("test").info("config %r %s %s", c, c.mqtt, c.redacted())
        assert "s3cret" not in repr(c) + str(c.mqtt) + str(c.redacted()) + caplog.text
    assert repr(Secret("x")) == "Secret('***')"
    with pytest.raises(ConfigError, match="both set"):
        load_config(_write(tmp_path, f"[mqtt]\npassword = 'a'\npassword_file = '{pw_file}'\n"), environ={})


def test_perception_tables_are_built(tmp_path: Path) -> None:
    cfg = parse_config({"source": {"type": "synthetic", "frames": 5}, "tracker": {"min_hits": 1}}, environ={})
    assert cfg.source.type == "synthetic" and cfg.source.frames == 5 and cfg.tracker.min_hits == 1


def test_check_config_cli(tmp_path: Path) -> None:
    good = _write(tmp_path, "[mqtt]\npassword = 'hunter2'\n")
    result = CliRunner().invoke(app, ["check-config", str(good)])
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output and '"password": "***"' in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = 'x'\n")
    result = CliRunner().invoke(app, ["check-config", str(bad)])
    assert result.exit_code == 2
    assert "[mqtt] port" in result.output and len(result.output.strip().splitlines()) == 1


def test_check_config_refuses_what_run_refuses(tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.onnx"
    corrupt.write_bytes(b"\x08\x07not a model")
    for table in (
        f"[detector]\nmodel = '{corrupt}'\n",
        "[source]\ntype = 'images'\npath = '/nonexistent/frames'\n",
        "[mqtt]\nhost = 'mqtt://broker.lan'\n",
    ):
        result = CliRunner().invoke(app, ["check-config", str(_write(tmp_path, table))])
        assert result.exit_code == 2, (table, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_check_config_redacts_camera_credentials(tmp_path: Path) -> None:
    path = _write(tmp_path, "[source]\ntype = 'url'\npath = 'rtsp://admin:secret@10.0.0.5/s1'\n")
    result = CliRunner().invoke(app, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert "secret" not in result.output and "rtsp://***@10.0.0.5/s1" in result.output


def test_coerce_checks_list_items() -> None:
    from edge.tables import coerce

    assert coerce([1, 2.5], list[float], "k") == [1.0, 2.5]
    with pytest.raises(ConfigError, match=r"k\[1\]: expected an integer, got 'a'"):
        coerce([1, "a"], list[int], "k")


def test_example_config_command_prints_a_valid_config(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["example-config"])
    assert result.exit_code == 0 and "[mqtt]" in result.output
    path = tmp_path / "edge.toml"
    path.write_text(result.output)
    checked = CliRunner().invoke(app, ["check-config", str(path)])
    assert checked.exit_code == 0, checked.output


def test_run_without_a_config_points_at_the_example(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "-c", str(tmp_path / "edge.toml")])
    assert result.exit_code == 2
    assert "featherface-edge example-config > edge.toml" in result.output
