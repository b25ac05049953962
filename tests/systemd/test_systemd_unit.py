"""The edge unit: `systemd-analyze verify` accepts it, and it runs what the installer installs."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from deploy.install import (
    APP_DIR,
    CONFIG_DIR,
    CONFIG_NAME,
    CREDENTIAL_NAME,
    ENTRY_POINT,
    EXEC_START,
    UNIT_NAME,
)

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / UNIT_NAME


def directives(text: str) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values...]}}``; systemd allows repeated keys, so values are lists."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    cmd = ["systemd-analyze", "verify", str(unit)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _ours(stderr: str, unit: Path) -> list[str]:
    # verify also loads dependencies (network-online.target ...); only messages about our unit count.
    return [ln for ln in stderr.splitlines() if unit.name in ln or str(unit) in ln]


@pytest.fixture
def staged_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart moved into tmp, where an executable stands in for the entry point
    (verify insists that the binary exists)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not on PATH (apt install systemd)")
    binary = tmp_path / EXEC_START.lstrip("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    text = UNIT.read_text()
    assert f"ExecStart={EXEC_START} " in text
    staged = tmp_path / UNIT_NAME
    staged.write_text(text.replace(f"ExecStart={EXEC_START} ", f"ExecStart={binary} "))
    return staged


def test_systemd_analyze_verify_accepts_the_unit(staged_unit: Path) -> None:
    proc = _verify(staged_unit)
    assert proc.returncode == 0, proc.stderr
    assert _ours(proc.stderr, staged_unit) == []


def test_verify_would_catch_a_broken_unit(staged_unit: Path) -> None:
    """verify exits 0 on unknown values, so the test above must read its messages: prove it does."""
    staged_unit.write_text(staged_unit.read_text().replace("WatchdogSec=30s", "WatchdogSec=thirty"))
    messages = _ours(_verify(staged_unit).stderr, staged_unit)
    assert any("sec value" in ln for ln in messages), messages


def test_exec_start_is_the_installed_console_script() -> None:
    service = directives(UNIT.read_text())["Service"]
    (exec_start,) = service["ExecStart"]
    binary, *args = exec_start.split()
    assert binary == EXEC_START == f"{APP_DIR}/current/venv/bin/{ENTRY_POINT}"
    assert args == ["run", "--config", f"{CONFIG_DIR}/{CONFIG_NAME}"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[ENTRY_POINT] == "edge.entry:main"


def test_unit_declares_the_service_contract() -> None:
    unit = directives(UNIT.read_text())
    service = {k: v[-1] for k, v in unit["Service"].items()}
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["WatchdogSec"] == "30s" and service["Restart"] == "on-failure"
    # A long camera outage must not exhaust a start limit (issue 16): no limit, but exit 2 (config or
    # model error) is never retried, so a broken install does not cycle.
    assert unit["Unit"]["StartLimitIntervalSec"][-1] == "0"
    assert service["RestartPreventExitStatus"] == "2"
    assert (service["User"], service["Group"]) == ("featherface", "featherface")
    assert set(service["SupplementaryGroups"].split()) == {"video", "render"}
    assert service["StateDirectory"] == service["ConfigurationDirectory"] == "featherface"
    assert service["LoadCredential"] == f"{CREDENTIAL_NAME}:{CONFIG_DIR}/{CREDENTIAL_NAME}"
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("ProtectKernelTunables", "yes"), ("CapabilityBoundingSet", ""),
                       ("SystemCallFilter", "@system-service")]:  # fmt: skip
        assert service[key] == value, key
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    # The camera and accelerators live in /dev: nothing may hide it (ProtectClock implies DeviceAllow
    # before systemd 252).
    for key in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "PrivateUsers", "ProtectClock"):
        assert key not in service, key
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
