"""Install into a temporary root prefix: real venv, real wheel install, real symlinks, no real /etc.

systemctl is replaced by a recorder script through --systemctl, so the tests see which calls an install
makes without touching the machine's systemd.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from deploy.install import EXEC_START, Layout, is_raspberry_pi
from tests.deploy.deploy_helpers import OFFLINE, release_of, run_deploy, tree


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[Path, Path]:
    """An executable that logs its arguments: stands in for systemctl."""
    log = tmp_path / "systemctl.log"
    script = tmp_path / "fake-systemctl"
    script.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    script.chmod(0o755)
    return script, log


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_twice_then_upgrade_then_rollback(
    tmp_path: Path, bundles: tuple[Path, Path], recorder: tuple[Path, Path]
) -> None:
    root = tmp_path / "root"
    layout = Layout(root)
    fake, log = recorder
    a, b = bundles
    flags = ["--root", root, "--no-useradd", "--systemctl", fake, *OFFLINE]

    out = run_deploy("install", a, *flags).stdout
    assert f"installed {release_of(a)}" in out.splitlines()[-1]
    unit = "featherface-edge.service"
    assert _calls(log) == ["daemon-reload", f"enable {unit}", f"restart {unit}"]

    # Layout and permissions.
    assert os.readlink(layout.current) == f"releases/{release_of(a)}"
    assert not layout.previous.exists()
    rel = layout.releases / release_of(a)
    assert (rel / ".complete").is_file() and (rel / "manifest.json").is_file()
    assert (rel / "install.py").is_file() and (rel / "systemd" / "featherface-edge.service").is_file()
    config = layout.config_dir / "edge.toml"
    credential = layout.config_dir / "mqtt_password"
    assert config.read_text().startswith("# test bundle a\n")
    assert (_mode(layout.config_dir), _mode(config), _mode(credential)) == (0o750, 0o640, 0o600)
    assert credential.read_bytes() == b""
    assert _mode(layout.unit) == 0o644
    assert layout.unit.read_bytes() == (rel / "systemd" / "featherface-edge.service").read_bytes()

    # The unit's ExecStart resolves, through `current`, to the wheel's console script in the release venv.
    entry = root / EXEC_START.lstrip("/")
    assert entry.is_file() and os.access(entry, os.X_OK)
    # pip writes `#!python` or, for paths over the kernel's shebang limit, a /bin/sh exec trampoline.
    assert f"{rel / 'venv' / 'bin' / 'python'}" in "".join(entry.read_text().splitlines()[:3])
    assert "include-system-site-packages = false" in (rel / "venv" / "pyvenv.cfg").read_text()
    where = subprocess.run(
        [rel / "venv" / "bin" / "python", "-c", "import edge; print(edge.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(str(rel / "venv" / "lib"))  # the wheel's copy, not the checkout

    # Idempotent: the same release again changes no file, no mtime, and calls no systemctl.
    before = tree(root)
    again = run_deploy("install", a, *flags).stdout
    assert again.splitlines()[-1] == f"featherface-install: unchanged: {release_of(a)} is already installed"
    assert tree(root) == before
    assert len(_calls(log)) == 3

    # Upgrade: the operator's config survives, `previous` keeps the old release.
    config.write_text("# edited by the operator\n")
    run_deploy("install", b, *flags)
    assert os.readlink(layout.current) == f"releases/{release_of(b)}"
    assert os.readlink(layout.previous) == f"releases/{release_of(a)}"
    assert config.read_text() == "# edited by the operator\n"
    assert _calls(log)[3:] == [f"enable {unit}", f"restart {unit}"]

    # Rollback swaps them and restarts the service.
    out = run_deploy("rollback", "--root", root, "--systemctl", fake).stdout
    assert f"rolled back to {release_of(a)}" in out
    assert os.readlink(layout.current) == f"releases/{release_of(a)}"
    assert os.readlink(layout.previous) == f"releases/{release_of(b)}"
    assert _calls(log)[-1] == f"restart {unit}"
    status = json.loads(run_deploy("status", "--root", root).stdout)
    assert status == {"current": release_of(a), "previous": release_of(b),
                      "releases": sorted([release_of(a), release_of(b)])}  # fmt: skip

    # Re-installing the newer bundle after a rollback just switches back; nothing is rebuilt.
    venv_mtime = (layout.releases / release_of(b) / "venv" / "pyvenv.cfg").stat().st_mtime_ns
    run_deploy("install", b, *flags)
    assert os.readlink(layout.current) == f"releases/{release_of(b)}"
    assert (layout.releases / release_of(b) / "venv" / "pyvenv.cfg").stat().st_mtime_ns == venv_mtime


def test_rollback_without_previous_fails_clearly(tmp_path: Path) -> None:
    proc = run_deploy("rollback", "--root", tmp_path, "--no-systemctl", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"featherface-install: error: no previous release under {tmp_path}/opt/featherface to roll back to"
    )


@pytest.mark.parametrize(
    ("path", "text", "expected"),
    [("etc/rpi-issue", "Raspberry Pi reference 2024-07-04\n", True),
     ("proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.0\0", True),
     ("proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\0", False),
     (None, "", False)],
)  # fmt: skip
def test_raspberry_pi_detection(tmp_path: Path, path: str | None, text: str, expected: bool) -> None:
    if path:
        (tmp_path / path).parent.mkdir(parents=True)
        (tmp_path / path).write_text(text)
    assert is_raspberry_pi(Layout(tmp_path)) is expected
