"""`deploy push` against a real sshd on loopback: one good host, one closed port, then rollback.

The "device" is this machine through sshd, installing into a temporary prefix with the bundle's own
install.py (so the standalone installer is what runs), never the real /etc or systemctl.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.install import DeployError, Layout
from deploy.push import Target
from edge.broker import free_port
from tests.deploy.deploy_helpers import SshServer, release_of, run_deploy


def _push(
    sshd: SshServer, root: Path, hosts: list[str], *args: str | Path, remote: str = "", check: bool = False
) -> subprocess.CompletedProcess[str]:
    """`deploy push` with offline install flags; ``remote`` adds install.py flags."""
    flags = " ".join(["--no-useradd", "--no-systemctl", "--no-deps", "--pip-args=--no-index", remote])
    return run_deploy(
        "push", *hosts, *args, *sshd.push_args(), "--remote-root", root, "--remote-python", sys.executable,
        "--remote-args", flags, "--connect-timeout", "5", check=check,
    )  # fmt: skip


def _leftovers() -> set[str]:
    return {p.name for p in Path("/tmp").glob("featherface-push.*")}


def test_push_to_good_and_unreachable_host_then_rollback(
    tmp_path: Path, sshd: SshServer, bundles: tuple[Path, Path]
) -> None:
    a, b = bundles
    root = tmp_path / "device"
    layout = Layout(root)
    # The "device" says it runs Raspberry Pi OS, so the venv must see the system site-packages.
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "rpi-issue").write_text("Raspberry Pi reference 2024-07-04\n")
    secret = tmp_path / "pw"
    secret.write_text("s3cret")
    good, bad = f"127.0.0.1:{sshd.port}", f"127.0.0.1:{free_port()}"  # nothing listens on bad
    tmp_before = _leftovers()

    proc = _push(sshd, root, [good, bad], "--bundle", a, remote=f"--mqtt-password-file {secret}")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert f"{good}: ok: installed {release_of(a)}" in lines
    (bad_line,) = [ln for ln in lines if ln.startswith(f"{bad}: ")]
    assert bad_line.startswith(f"{bad}: FAILED: connect (ssh): ssh: connect to host 127.0.0.1 port ")
    assert "Connection refused" in bad_line
    assert lines[-1] == "2 host(s): 1 ok, 1 failed"
    assert proc.stderr.strip().splitlines()[-1] == f"failed: {bad}"

    rel = layout.releases / release_of(a)
    assert os.readlink(layout.current) == f"releases/{release_of(a)}"
    assert "include-system-site-packages = true" in (rel / "venv" / "pyvenv.cfg").read_text()
    assert (rel / "venv" / "bin" / "pip").exists()  # the production path: the venv has its own pip
    assert (layout.config_dir / "mqtt_password").read_text() == "s3cret"
    assert "s3cret" not in proc.stdout + proc.stderr
    assert _leftovers() == tmp_before  # the remote temporary directory is removed

    # Second release to the good host alone: exit 0; then the same again is a no-op.
    proc = _push(sshd, root, [good], "--bundle", b, remote="--venv-without-pip", check=True)
    assert f"{good}: ok: installed {release_of(b)} (previous: {release_of(a)})" in proc.stdout
    proc = _push(sshd, root, [good], "--bundle", b, check=True)
    assert f"{good}: ok: unchanged: {release_of(b)} is already installed" in proc.stdout

    # Remote rollback through the installed install.py.
    proc = _push(sshd, root, [good], "--rollback", check=True)
    assert f"{good}: ok: rolled back to {release_of(a)} (previous: {release_of(b)})" in proc.stdout
    status = json.loads(run_deploy("status", "--root", root).stdout)
    assert (status["current"], status["previous"]) == (release_of(a), release_of(b))


def test_push_reports_a_failing_install(tmp_path: Path, sshd: SshServer, bundles: tuple[Path, Path]) -> None:
    """An install error on the device comes back as the installer's own one-line reason."""
    proc = _push(sshd, tmp_path / "d", [f"127.0.0.1:{sshd.port}"], "--bundle", bundles[0],
                 remote="--python /nonexistent/python3")  # fmt: skip
    assert proc.returncode == 1
    assert f"127.0.0.1:{sshd.port}: FAILED: install (exit 1): error: cannot run /nonexistent/python3" in (
        proc.stdout
    )
    assert not (tmp_path / "d" / "opt" / "featherface" / "current").exists()


@pytest.mark.parametrize(
    ("spec", "target"),
    [("pi", Target("pi")), ("me@pi.local:2222", Target("pi.local", "me", 2222)),
     ("[fe80::1]:22", Target("fe80::1", None, 22)), ("root@[::1]", Target("::1", "root", None))],
)  # fmt: skip
def test_target_parse(spec: str, target: Target) -> None:
    assert Target.parse(spec) == target


def test_target_parse_rejects_garbage() -> None:
    with pytest.raises(DeployError, match="bad host 'pi:ssh'"):
        Target.parse("pi:ssh")
