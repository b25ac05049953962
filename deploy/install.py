"""Install a FeatherFace bundle on this machine, roll back to the previous release, or show status.

Standalone on purpose: the bundle carries this file and the device runs it with the system ``python3``
(stdlib only, 3.8+ syntax) before any venv exists::

    sudo python3 featherface-<release>/install.py install            # the bundle it sits in
    sudo python3 /opt/featherface/current/install.py rollback

Layout; every path is under ``--root`` (default ``/``), so tests install into a temporary prefix:

    /opt/featherface/releases/<release>/  venv/ models/ config/ systemd/ docs/ install.py manifest.json
    /opt/featherface/current  -> releases/<release>   what the unit's ExecStart runs
    /opt/featherface/previous -> releases/<older>     what ``rollback`` switches back to
    /etc/featherface/edge.toml                        0640 root:featherface, written only when absent
    /etc/featherface/mqtt_password                    0600 root:root (LoadCredential= source)
    /etc/systemd/system/featherface-edge.service

Idempotent: every step changes something only when it differs from what is there, so installing the same
release twice touches no file and restarts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

APP_DIR = "/opt/featherface"
CONFIG_DIR = "/etc/featherface"
CONFIG_NAME = "edge.toml"
CREDENTIAL_NAME = "mqtt_password"
UNIT_NAME = "featherface-edge.service"
UNIT_DIR = "/etc/systemd/system"
ENTRY_POINT = "featherface-edge"
SERVICE_USER = "featherface"
# Added to the service user when the group exists: cameras and Jetson nvhost (video), DRI render nodes
# (render), GPIO and I2C peripherals on Pi/Jetson boards.
DEVICE_GROUPS = ("video", "render", "gpio", "i2c")
MANIFEST = "manifest.json"
COMPLETE = ".complete"  # written last into a release dir; a dir without it is a crashed install
# What the systemd unit runs; tests check the unit against it.
EXEC_START = f"{APP_DIR}/current/venv/bin/{ENTRY_POINT}"


class DeployError(Exception):
    """A deploy step failed; ``str(err)`` is the one-line message for the operator."""

    exit_code = 1


@dataclass(frozen=True)
class Layout:
    """The installed file layout under a root prefix."""

    root: Path

    def under(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    @property
    def app(self) -> Path:
        return self.under(APP_DIR)

    @property
    def releases(self) -> Path:
        return self.app / "releases"

    @property
    def current(self) -> Path:
        return self.app / "current"

    @property
    def previous(self) -> Path:
        return self.app / "previous"

    @property
    def config_dir(self) -> Path:
        return self.under(CONFIG_DIR)

    @property
    def unit(self) -> Path:
        return self.under(UNIT_DIR) / UNIT_NAME

    def release_of(self, link: Path) -> str | None:
        """The release a ``current``/``previous`` symlink names, or None."""
        return os.path.basename(os.readlink(link)) if link.is_symlink() else None


@dataclass
class Options:
    root: Path = Path("/")
    systemctl: str | None = "systemctl"  # None: never call systemctl
    start: bool = True  # False: enable the unit but leave it stopped (edit the config first)
    useradd: bool = True
    python: str = sys.executable
    system_site_packages: str = "auto"  # auto (yes on Raspberry Pi OS) | yes | no
    extras: Sequence[str] = ("edge",)
    no_deps: bool = False
    venv_without_pip: bool = False  # install with the installing python's pip (needs pip >= 22.3)
    pip_args: Sequence[str] = ()
    keep: int = 3
    force: bool = False
    mqtt_password_file: Path | None = None
    log: Callable[[str], None] = field(default=lambda msg: print(f"featherface-install: {msg}", flush=True))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(bundle_dir: Path) -> dict:
    """Read the manifest and check every file it lists against its sha256."""
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise DeployError(f"{bundle_dir}: no {MANIFEST}; pass a bundle (.tar.gz or its unpacked folder)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DeployError(f"{path}: not a FeatherFace bundle manifest ({exc})") from None
    for key in ("release", "version", "wheel", "unit", "files"):
        if key not in manifest:
            raise DeployError(f"{path}: manifest lacks '{key}'")
    for rel, meta in sorted(manifest["files"].items()):
        file = bundle_dir / rel
        if not file.is_file():
            raise DeployError(f"bundle file {rel} is missing")
        if sha256_file(file) != meta["sha256"]:
            raise DeployError(f"bundle file {rel}: sha256 mismatch (corrupt or altered bundle)")
    return manifest


@contextlib.contextmanager
def open_bundle(path: Path) -> Iterator[Path]:
    """Yield the bundle directory for an extracted bundle or a ``.tar.gz``."""
    if path.is_dir():
        yield path
        return
    if not path.is_file():
        raise DeployError(f"{path}: no such bundle")
    with tempfile.TemporaryDirectory(prefix="featherface-bundle-") as tmp:
        try:
            with tarfile.open(path, "r:gz") as tar:
                for member in tar.getmembers():
                    # Refuse absolute paths, .. and links: the bundle is untrusted until verified.
                    if member.name.startswith("/") or ".." in Path(member.name).parts:
                        raise DeployError(f"{path}: unsafe member {member.name!r}")
                    if not (member.isfile() or member.isdir()):
                        raise DeployError(f"{path}: member {member.name!r} is not a plain file")
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: refuse odd modes too
                    tar.extractall(tmp, filter="data")
                else:
                    tar.extractall(tmp)
        except (tarfile.TarError, OSError) as exc:
            raise DeployError(f"{path}: cannot read bundle ({exc})") from None
        tops = [p for p in Path(tmp).iterdir() if (p / MANIFEST).is_file()]
        if len(tops) != 1:
            raise DeployError(f"{path}: expected one top directory with {MANIFEST}")
        yield tops[0]


def _run(cmd: Sequence[str], what: str) -> None:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True)
    except OSError as exc:
        raise DeployError(f"{what}: cannot run {cmd[0]} ({exc.strerror})") from None
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise DeployError(f"{what} failed (exit {proc.returncode}): {lines[-1] if lines else cmd[0]}")


def is_raspberry_pi(layout: Layout) -> bool:
    if layout.under("/etc/rpi-issue").exists():
        return True
    with contextlib.suppress(OSError):
        return "Raspberry Pi" in layout.under("/proc/device-tree/model").read_text(errors="replace")
    return False


def _group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _place(path: Path, data: bytes, mode: int, gid: int | None) -> None:
    """Write a file atomically with its mode and root:gid ownership (ownership only as root)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    if os.geteuid() == 0:
        os.chown(tmp, 0, gid if gid is not None else 0)
    os.replace(tmp, path)


def _symlink(link: Path, release: str) -> None:
    tmp = link.with_name(f".{link.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(f"releases/{release}", tmp)  # relative, so a prefix tree stays self-contained
    os.replace(tmp, link)


def ensure_user(opts: Options) -> bool:
    """Create the system user and add it to the device groups present; True when anything changed."""
    if not opts.useradd:
        return False
    if opts.root != Path("/"):
        opts.log(f"--root {opts.root}: skipping user creation (create '{SERVICE_USER}' on the device)")
        return False
    changed = False
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        nologin = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if Path(s).exists()), "/bin/false")
        _run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
              "/var/lib/featherface", "--shell", nologin, "--comment", "FeatherFace edge daemon",
              SERVICE_USER], "useradd")  # fmt: skip
        opts.log(f"created system user {SERVICE_USER}")
        changed = True
    for group in DEVICE_GROUPS:
        gid = _group_id(group)
        if gid is not None and SERVICE_USER not in grp.getgrgid(gid).gr_mem:
            _run(["usermod", "--append", "--groups", group, SERVICE_USER], f"usermod -aG {group}")
            opts.log(f"added {SERVICE_USER} to group {group}")
            changed = True
    return changed


def _check_python(python: str, requires: str) -> None:
    """Fail early with an actionable message instead of pip's resolver wall of text."""
    try:
        proc = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True)  # fmt: skip
    except OSError:
        proc = None
    if proc is None or proc.returncode != 0:
        raise DeployError(f"cannot run {python} to create the venv (pass --python)")
    have = tuple(int(x) for x in proc.stdout.strip().split("."))
    if requires.startswith(">="):
        need = tuple(int(x) for x in requires[2:].split(".")[:2])
        if have < need:
            raise DeployError(f"{python} is Python {proc.stdout.strip()}; featherface needs {requires} "
                              "(install a newer python3 and pass --python /usr/bin/python3.X)")  # fmt: skip


def build_release(bundle_dir: Path, manifest: dict, rel_dir: Path, opts: Options, layout: Layout) -> None:
    """Create releases/<release>/: bundle files, a venv with the wheel, and the completion marker."""
    if rel_dir.exists():
        shutil.rmtree(rel_dir)  # an earlier install died half-way (no marker) or --force
    _check_python(opts.python, manifest.get("requires_python", ""))
    shutil.copytree(bundle_dir, rel_dir, ignore=shutil.ignore_patterns("wheels"))
    os.chmod(rel_dir, 0o755)
    site = opts.system_site_packages == "yes" or (
        opts.system_site_packages == "auto" and is_raspberry_pi(layout)
    )
    venv = rel_dir / "venv"
    # A venv cannot be moved (its scripts carry absolute shebangs), so it is built in place.
    flags = ["--system-site-packages"] if site else []
    if opts.venv_without_pip:
        # Skips ensurepip (seconds on a small board); the installing python's pip targets the venv.
        flags.append("--without-pip")
        pip = [opts.python, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
    else:
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install"]
    _run([opts.python, "-m", "venv", *flags, str(venv)], "venv")
    extras = f"[{','.join(opts.extras)}]" if opts.extras else ""
    wheel = bundle_dir / manifest["wheel"]
    pip += ["--quiet", "--disable-pip-version-check"]
    pip += ["--no-input", *(["--no-deps"] if opts.no_deps else []), *opts.pip_args, f"{wheel}{extras}"]
    opts.log(f"installing {wheel.name}{extras} into {venv}" + (" (system site-packages)" if site else ""))
    _run(pip, "pip install")
    if not (venv / "bin" / ENTRY_POINT).exists():
        raise DeployError(f"the wheel did not install the {ENTRY_POINT} entry point")
    (rel_dir / COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))


def install_system_files(
    bundle_dir: Path, manifest: dict, layout: Layout, opts: Options
) -> tuple[bool, bool]:
    """Config (only when absent), credential, unit; returns (unit changed, anything else written)."""
    gid = _group_id(SERVICE_USER)
    wrote = False
    if gid is None and opts.root == Path("/"):
        opts.log(f"warning: no group '{SERVICE_USER}'; new files in {CONFIG_DIR} will be root-only")
    if not layout.config_dir.exists():
        layout.config_dir.mkdir(parents=True)
        os.chmod(layout.config_dir, 0o750)
        if os.geteuid() == 0:
            os.chown(layout.config_dir, 0, gid if gid is not None else 0)
    config = layout.config_dir / CONFIG_NAME
    if not config.exists():
        if manifest.get("config"):
            _place(config, (bundle_dir / manifest["config"]).read_bytes(), 0o640, gid)
            wrote = True
            opts.log(f"wrote {config} from the example; edit it, then restart {UNIT_NAME}")
        else:
            opts.log(f"warning: the bundle has no example config; write {config} yourself")
    credential = layout.config_dir / CREDENTIAL_NAME
    if opts.mqtt_password_file is not None:
        secret = opts.mqtt_password_file.read_bytes()
        if not credential.exists() or credential.read_bytes() != secret:
            _place(credential, secret, 0o600, None)
            wrote = True
            opts.log(f"installed the MQTT password as {credential}")
    elif not credential.exists():
        # LoadCredential= fails the unit when its source is missing; an empty file means "no password".
        _place(credential, b"", 0o600, None)
        wrote = True
    unit_text = (bundle_dir / manifest["unit"]).read_bytes()
    if layout.unit.exists() and layout.unit.read_bytes() == unit_text:
        return False, wrote
    layout.unit.parent.mkdir(parents=True, exist_ok=True)
    _place(layout.unit, unit_text, 0o644, None)
    opts.log(f"installed {layout.unit}")
    return True, wrote


def systemctl(opts: Options, *args: str) -> None:
    if opts.systemctl is not None:
        _run([*opts.systemctl.split(), *args], f"systemctl {' '.join(args)}")


def _restart(opts: Options, unit_changed: bool) -> None:
    if unit_changed:
        systemctl(opts, "daemon-reload")
    systemctl(opts, "enable", UNIT_NAME)
    if opts.start:
        systemctl(opts, "restart", UNIT_NAME)


def prune(layout: Layout, keep: int, opts: Options) -> None:
    """Delete the oldest releases beyond ``keep``, never current or previous."""
    pinned = {layout.release_of(layout.current), layout.release_of(layout.previous)}
    done = [p for p in layout.releases.iterdir() if (p / COMPLETE).is_file()]
    done.sort(key=lambda p: (p / COMPLETE).stat().st_mtime, reverse=True)
    for old in done[max(keep, 2) :]:
        if old.name not in pinned:
            shutil.rmtree(old)
            opts.log(f"removed old release {old.name}")


def install(bundle: Path, opts: Options) -> str:
    """Install ``bundle`` (dir or .tar.gz); returns the one-line outcome."""
    layout = Layout(opts.root)
    if opts.root == Path("/") and os.geteuid() != 0:
        raise DeployError("installing into / needs root (run with sudo, or pass --root PREFIX)")
    with open_bundle(bundle) as bundle_dir:
        manifest = load_bundle(bundle_dir)
        release = manifest["release"]
        changed = ensure_user(opts)
        rel_dir = layout.releases / release
        rebuilt = opts.force or not (rel_dir / COMPLETE).is_file()
        if rebuilt:
            layout.releases.mkdir(parents=True, exist_ok=True)
            build_release(bundle_dir, manifest, rel_dir, opts, layout)
        unit_changed, wrote = install_system_files(bundle_dir, manifest, layout, opts)
    old = layout.release_of(layout.current)
    switched = old != release
    if switched:
        if old is not None:
            _symlink(layout.previous, old)  # first, so a crash in between leaves both valid
        _symlink(layout.current, release)
        prune(layout, opts.keep, opts)
    if not (rebuilt or switched or unit_changed or wrote or changed):
        return f"unchanged: {release} is already installed"
    _restart(opts, unit_changed)
    return f"installed {release}" + (f" (previous: {old})" if switched and old else "")


def rollback(opts: Options) -> str:
    """Swap ``current`` and ``previous``; restore that release's unit and restart the service."""
    layout = Layout(opts.root)
    if opts.root == Path("/") and os.geteuid() != 0:
        raise DeployError("rolling back / needs root (run with sudo, or pass --root PREFIX)")
    cur, prev = layout.release_of(layout.current), layout.release_of(layout.previous)
    if prev is None:
        raise DeployError(f"no previous release under {layout.app} to roll back to")
    if not (layout.releases / prev / COMPLETE).is_file():
        raise DeployError(f"previous release {prev} is missing or incomplete")
    _symlink(layout.current, prev)
    if cur is not None:
        _symlink(layout.previous, cur)
    unit_text = (layout.releases / prev / "systemd" / UNIT_NAME).read_bytes()
    unit_changed = not layout.unit.exists() or layout.unit.read_bytes() != unit_text
    if unit_changed:
        layout.unit.parent.mkdir(parents=True, exist_ok=True)
        _place(layout.unit, unit_text, 0o644, None)
    _restart(opts, unit_changed)
    return f"rolled back to {prev} (previous: {cur})"


def status(root: Path) -> dict:
    layout = Layout(root)
    releases = sorted(p.name for p in layout.releases.glob("*") if (p / COMPLETE).is_file())
    return {"current": layout.release_of(layout.current), "previous": layout.release_of(layout.previous),
            "releases": releases}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="install.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", type=Path, default=Path("/"), help="install under this prefix (tests)")
    common.add_argument("--no-systemctl", action="store_true", help="never call systemctl")
    common.add_argument("--systemctl", default=os.environ.get("SYSTEMCTL", "systemctl"),
                        help="systemctl command (env SYSTEMCTL)")  # fmt: skip
    common.add_argument("--no-start", action="store_true", help="enable the unit but do not (re)start it")
    # Install options live in `common` too: rollback accepts and ignores them, so that `deploy push
    # --rollback` can reuse the fleet's one set of --remote-args.
    common.add_argument("--no-useradd", action="store_true", help="do not create the service user")
    common.add_argument("--python", default=sys.executable, help="interpreter for the venv")
    common.add_argument("--system-site-packages", choices=("auto", "yes", "no"), default="auto",
                        help="auto: yes on Raspberry Pi OS, so apt's picamera2 is visible")  # fmt: skip
    common.add_argument("--openvino", action="store_true", help="also install the [openvino] extra")
    common.add_argument("--no-deps", action="store_true", help="install the wheel without dependencies")
    common.add_argument(
        "--pip-args", default="", help='extra pip flags, with "=": --pip-args="--no-index --find-links DIR"'
    )
    common.add_argument("--venv-without-pip", action="store_true",
                        help="no pip in the venv; install with --python's own pip (faster)")  # fmt: skip
    common.add_argument("--keep", type=int, default=3, help="releases to keep (at least 2)")
    common.add_argument("--force", action="store_true", help="rebuild the release even if installed")
    common.add_argument("--mqtt-password-file", type=Path, help="install this file as the MQTT password")
    ins = sub.add_parser("install", parents=[common], help="install a bundle (default: this one)")
    ins.add_argument("bundle", nargs="?", type=Path, default=Path(__file__).resolve().parent)
    sub.add_parser("rollback", parents=[common], help="switch back to the previous release")
    st = sub.add_parser("status", help="print current/previous/releases as JSON")
    st.add_argument("--root", type=Path, default=Path("/"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "status":
        print(json.dumps(status(args.root)))
        return 0
    opts = Options(root=args.root, systemctl=None if args.no_systemctl else args.systemctl,
                   start=not args.no_start)  # fmt: skip
    try:
        if args.command == "rollback":
            outcome = rollback(opts)
        else:
            opts.useradd = not args.no_useradd
            opts.python = args.python
            opts.system_site_packages = args.system_site_packages
            opts.extras = ("edge", "openvino") if args.openvino else ("edge",)
            opts.no_deps, opts.pip_args, opts.keep = args.no_deps, args.pip_args.split(), args.keep
            opts.venv_without_pip = args.venv_without_pip
            opts.force, opts.mqtt_password_file = args.force, args.mqtt_password_file
            outcome = install(args.bundle, opts)
    except DeployError as exc:
        print(f"featherface-install: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # disk full, read-only fs, permissions: one line, not a traceback
        print(f"featherface-install: error: {exc}", file=sys.stderr)
        return 1
    opts.log(outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main())
