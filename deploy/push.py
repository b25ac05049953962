"""Push a bundle to many devices over ssh, in parallel, and report one line per host.

Per host: ``mktemp -d`` on the device, ``scp`` the bundle there, unpack it and run its ``install.py``
(with ``sudo -n`` unless the login is root), then remove the temporary directory. An unreachable or
failing host is reported with a one-line reason and never stops the others. ``rollback`` runs the
installed ``install.py rollback`` the same way.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tarfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from deploy.install import APP_DIR, DeployError

# ssh exits 255 for its own errors (connection, authentication); anything else is the remote command's.
SSH_ERROR = 255


@dataclass(frozen=True)
class Target:
    """One device: ``[user@]host[:port]`` (IPv6 as ``[addr]:port``)."""

    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, spec: str) -> Target:
        user, _, hostport = spec.rpartition("@")
        host, port = hostport, None
        if hostport.startswith("["):
            host, _, rest = hostport[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else None
        elif hostport.count(":") == 1:
            host, port = hostport.split(":")
        if not host or (port is not None and not port.isdigit()):
            raise DeployError(f"bad host {spec!r} (expected [user@]host[:port])")
        return cls(host=host, user=user or None, port=int(port) if port else None)


@dataclass(frozen=True)
class Ssh:
    """How to reach the devices; per-host user/port in a Target win over these defaults."""

    user: str | None = None
    port: int | None = None
    identity: Path | None = None
    config: str | None = None  # ssh -F (``none`` ignores ~/.ssh/config)
    options: Sequence[str] = ()  # ssh -o KEY=VALUE
    connect_timeout: int = 10

    def _common(self) -> list[str]:
        # BatchMode: never prompt (a prompt would hang a parallel run); fail with a message instead.
        args = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}"]
        if self.config:
            args += ["-F", self.config]
        if self.identity:
            args += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        for opt in self.options:
            args += ["-o", opt]
        return args

    def _dest(self, target: Target) -> str:
        user = target.user or self.user
        host = f"[{target.host}]" if ":" in target.host else target.host
        return f"{user}@{host}" if user else host

    def ssh(self, target: Target, command: str) -> list[str]:
        port = target.port or self.port
        return ["ssh", *self._common(), *(["-p", str(port)] if port else []), self._dest(target), command]

    def scp(self, target: Target, src: Path, remote_dir: str) -> list[str]:
        port = target.port or self.port
        dest = f"{self._dest(target)}:{remote_dir}/"
        return ["scp", "-q", *self._common(), *(["-P", str(port)] if port else []), str(src), dest]


@dataclass(frozen=True)
class Remote:
    """What runs on the device: where to install, with which python, and extra install.py flags."""

    root: str = "/"
    python: str = "python3"
    sudo: str = "auto"  # auto: sudo -n unless the login is root | yes | no
    args: Sequence[str] = ()
    timeout: float = 1800.0  # pip on a Pi 4 with a cold cache takes minutes

    def sudo_prefix(self) -> str:
        if self.sudo == "auto":
            return 'S=""; [ "$(id -u)" = 0 ] || S="sudo -n"; $S '
        return "sudo -n " if self.sudo == "yes" else ""


@dataclass(frozen=True)
class HostResult:
    target: str
    ok: bool
    message: str


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    return line.removeprefix("featherface-install: ")


def _call(cmd: list[str], step: str, timeout: float) -> str:
    """Run one ssh/scp step; return stdout or raise DeployError naming the step and the reason."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DeployError(f"{step}: timed out after {timeout:.0f} s") from None
    except OSError as exc:
        raise DeployError(f"{step}: cannot run {cmd[0]} ({exc.strerror})") from None
    if proc.returncode != 0:
        where = "ssh" if proc.returncode == SSH_ERROR else f"exit {proc.returncode}"
        reason = _last_line(proc.stderr) or _last_line(proc.stdout) or "no output"
        raise DeployError(f"{step} ({where}): {reason}")
    return proc.stdout


def bundle_top(bundle: Path) -> str:
    """The bundle's top directory name (``featherface-<release>``), read from the tar."""
    try:
        with tarfile.open(bundle, "r:gz") as tar:
            first = tar.next()
    except (OSError, tarfile.TarError) as exc:
        raise DeployError(f"{bundle}: cannot read bundle ({exc})") from None
    if first is None:
        raise DeployError(f"{bundle}: empty bundle")
    return first.name.split("/")[0]


def push_one(target: Target, bundle: Path, ssh: Ssh, remote: Remote) -> str:
    """Copy and install ``bundle`` on one device; returns the installer's outcome line."""
    top = bundle_top(bundle)
    tmp = _call(ssh.ssh(target, "mktemp -d /tmp/featherface-push.XXXXXX"), "connect", 60).strip()
    if not tmp.startswith("/tmp/featherface-push."):
        raise DeployError(f"connect: unexpected mktemp output {tmp!r}")
    q = shlex.quote
    flags = " ".join(q(a) for a in ["--root", remote.root, *remote.args])
    script = (
        f"trap 'rm -rf {q(tmp)}' EXIT; cd {q(tmp)} && tar -xzf {q(bundle.name)} || exit 1; "
        f"{remote.sudo_prefix()}{q(remote.python)} {q(top)}/install.py install {q(top)} {flags}"
    )
    try:
        _call(ssh.scp(target, bundle, tmp), "copy", remote.timeout)
    except DeployError:
        _call(ssh.ssh(target, f"rm -rf {q(tmp)}"), "cleanup", 60)
        raise
    out = _call(ssh.ssh(target, script), "install", remote.timeout)
    return _last_line(out)


def rollback_one(target: Target, ssh: Ssh, remote: Remote) -> str:
    """Run the installed install.py's rollback on one device."""
    q = shlex.quote
    installer = str(Path(remote.root) / APP_DIR.lstrip("/") / "current" / "install.py")
    flags = " ".join(q(a) for a in ["--root", remote.root, *remote.args])
    script = f"{remote.sudo_prefix()}{q(remote.python)} {q(installer)} rollback {flags}"
    return _last_line(_call(ssh.ssh(target, script), "rollback", remote.timeout))


def run_hosts(
    hosts: Sequence[str],
    action: Callable[[Target], str],
    jobs: int = 8,
    report: Callable[[HostResult], None] | None = None,
) -> list[HostResult]:
    """Run ``action`` on every host in parallel; results in the order of ``hosts``."""
    results: dict[str, HostResult] = {}

    def one(spec: str) -> HostResult:
        try:
            return HostResult(spec, True, action(Target.parse(spec)))
        except DeployError as exc:
            return HostResult(spec, False, str(exc))

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(hosts)))) as pool:
        futures = {pool.submit(one, spec): spec for spec in dict.fromkeys(hosts)}
        for future in as_completed(futures):
            result = future.result()
            results[result.target] = result
            if report is not None:
                report(result)
    return [results[spec] for spec in dict.fromkeys(hosts)]


def print_result(result: HostResult) -> None:
    status = "ok" if result.ok else "FAILED"
    print(f"{result.target}: {status}: {result.message}", flush=True)


def summarize(results: Sequence[HostResult]) -> int:
    """Print the tally; exit code 0 only when every host succeeded."""
    failed = [r for r in results if not r.ok]
    print(f"{len(results)} host(s): {len(results) - len(failed)} ok, {len(failed)} failed", flush=True)
    if failed:
        print("failed: " + " ".join(r.target for r in failed), file=sys.stderr, flush=True)
    return 1 if failed else 0
