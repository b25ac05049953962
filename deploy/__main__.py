"""``python -m deploy``: build a bundle, install it here, roll back, or push it to devices over ssh.

    python -m deploy build [--out dist] [--config FILE] [--models DIR] [--wheel WHL]
    python -m deploy install BUNDLE [--root PREFIX] [--no-systemctl] [--no-useradd] ...   (as root)
    python -m deploy rollback [--root PREFIX] [--no-systemctl]
    python -m deploy status [--root PREFIX]
    python -m deploy push HOST... [--bundle B] [-u USER] [-p PORT] [-i KEY] [--remote-args "..."]
    python -m deploy push HOST... --rollback

``install``, ``rollback`` and ``status`` are deploy/install.py's commands (the same file the bundle
carries to the device); see ``python -m deploy install --help``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from deploy import install as installer
from deploy.bundle import REPO, build_bundle
from deploy.install import DeployError
from deploy.push import Remote, Ssh, print_result, push_one, rollback_one, run_hosts, summarize


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build dist/featherface-<release>.tar.gz")
    b.add_argument("--out", type=Path, default=REPO / "dist", help="output folder (default: dist/)")
    b.add_argument("--config", type=Path, help="example config (default: edge/config.example.toml)")
    b.add_argument("--models", type=Path, help="model folder (default: edge/models; may be empty)")
    b.add_argument("--wheel", type=Path, help="use this wheel instead of building one")

    p = sub.add_parser("push", help="install a bundle on one or many devices over ssh, in parallel")
    p.add_argument("hosts", nargs="+", metavar="HOST", help="[user@]host[:port]")
    p.add_argument("--bundle", type=Path, help="bundle to push (default: newest dist/featherface-*.tar.gz)")
    p.add_argument("--rollback", action="store_true", help="roll the hosts back instead of installing")
    p.add_argument("-u", "--user", help="ssh login (default: ssh's own)")
    p.add_argument("-p", "--port", type=int, help="ssh port (default: ssh's own)")
    p.add_argument("-i", "--identity", type=Path, help="ssh private key")
    p.add_argument("-F", "--ssh-config", help="ssh config file ('none' ignores ~/.ssh/config)")
    p.add_argument("-o", "--ssh-option", action="append", default=[], help="ssh -o KEY=VALUE (repeat)")
    p.add_argument("--connect-timeout", type=int, default=10, help="seconds (default: 10)")
    p.add_argument("--remote-root", default="/", help="install prefix on the device (default: /)")
    p.add_argument("--remote-python", default="python3", help="python on the device (default: python3)")
    p.add_argument("--sudo", choices=("auto", "yes", "no"), default="auto", help="auto: unless root")
    p.add_argument("--remote-args", default="", help='install.py flags, e.g. "--openvino --no-start"')
    p.add_argument("--jobs", type=int, default=8, help="hosts at a time (default: 8)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per step (default: 1800)")
    return parser


def _newest_bundle() -> Path:
    bundles = sorted((REPO / "dist").glob("featherface-*.tar.gz"), key=lambda p: p.stat().st_mtime)
    if not bundles:
        raise DeployError("no bundle in dist/ (run `python -m deploy build` or pass --bundle)")
    return bundles[-1]


def _push(args: argparse.Namespace) -> int:
    ssh = Ssh(user=args.user, port=args.port, identity=args.identity, config=args.ssh_config,
              options=tuple(args.ssh_option), connect_timeout=args.connect_timeout)  # fmt: skip
    remote = Remote(root=args.remote_root, python=args.remote_python, sudo=args.sudo,
                    args=tuple(shlex.split(args.remote_args)), timeout=args.timeout)  # fmt: skip
    if args.rollback:
        results = run_hosts(args.hosts, lambda t: rollback_one(t, ssh, remote), args.jobs, print_result)
    else:
        bundle = args.bundle or _newest_bundle()
        if not bundle.is_file():
            raise DeployError(f"{bundle}: no such bundle")
        print(f"pushing {bundle.name} to {len(args.hosts)} host(s)", flush=True)
        results = run_hosts(args.hosts, lambda t: push_one(t, bundle, ssh, remote), args.jobs, print_result)
    return summarize(results)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("install", "rollback", "status"):
        return installer.main(argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            out = build_bundle(args.out, wheel=args.wheel, config=args.config, models_dir=args.models)
            print(out)
            return 0
        return _push(args)
    except DeployError as exc:
        print(f"deploy: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
