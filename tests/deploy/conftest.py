"""Deploy fixtures: one wheel per session, two bundles (two releases), a real sshd on a loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.bundle import build_wheel
from edge.broker import free_port
from tests.deploy.deploy_helpers import SshServer, make_bundle

SSHD = Path("/usr/sbin/sshd")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("bundles")
    return make_bundle(out / "a", wheel, "a"), make_bundle(out / "b", wheel, "b")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real OpenSSH server as the current user, on a free loopback port, with throw-away keys."""
    for tool in ("ssh", "scp", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not on PATH (apt install openssh-client)")
    if not SSHD.exists():
        pytest.skip(f"{SSHD} absent (apt install openssh-server)")
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
        # sshd running as root insists on its privilege-separation dir; systemd makes it at boot.
        Path("/run/sshd").mkdir(mode=0o755)
    tmp = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / key)], check=True)
    (tmp / "authorized_keys").write_text((tmp / "client_key.pub").read_text())
    port = free_port()
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host_key'}\nPidFile {tmp / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nUsePAM no\nStrictModes no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\n"
    )
    log = (tmp / "sshd.log").open("w")
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(f"sshd exited ({proc.returncode}): {(tmp / 'sshd.log').read_text().strip()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"sshd did not listen on port {port} within 10 s")
                time.sleep(0.05)
        yield SshServer(port=port, client_key=tmp / "client_key", known_hosts=tmp / "known_hosts")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
