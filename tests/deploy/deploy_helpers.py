"""Deploy test helpers: bundles with distinct releases, the deploy CLI as a subprocess, tree listings."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from deploy.bundle import REPO, build_bundle

# Flags that keep a test install offline and fast: the test venv sees no dependencies, and the wheel
# goes in without them; the install logic (venv, entry point, layout) is still the real one.
OFFLINE = ["--no-deps", "--pip-args=--no-index", "--venv-without-pip", "--system-site-packages=no"]


def make_bundle(out: Path, wheel: Path, tag: str, models: Path | None = None) -> Path:
    """A bundle whose example config carries ``tag``, so that two tags give two releases."""
    out.mkdir(parents=True, exist_ok=True)
    config = out / f"edge-{tag}.toml"
    example = REPO / "edge" / "config.example.toml"
    text = example.read_text() if example.is_file() else '[mqtt]\nhost = "localhost"\n'
    config.write_text(f"# test bundle {tag}\n{text}")
    return build_bundle(out, wheel=wheel, config=config, models_dir=models or out / "no-models")


def release_of(bundle: Path) -> str:
    return bundle.name.removeprefix("featherface-").removesuffix(".tar.gz")


def run_deploy(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m deploy ARGS`` from the checkout, as an operator would run it."""
    proc = subprocess.run(
        [sys.executable, "-m", "deploy", *map(str, args)], cwd=REPO, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"deploy {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass(frozen=True)
class SshServer:
    port: int
    client_key: Path
    known_hosts: Path

    def push_args(self) -> list[str]:
        """ssh flags for `deploy push`: our key only, no user config, pinned host key file."""
        return ["-i", str(self.client_key), "-F", "none", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR"]  # fmt: skip


def tree(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path under ``root`` with (mode, mtime_ns, size, link target): a changed file shows up."""
    listing = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            link = os.readlink(path) if path.is_symlink() else ""
            listing[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, st.st_size, link)
    listing["."] = (root.lstat().st_mode, root.lstat().st_mtime_ns, 0, "")
    return listing
