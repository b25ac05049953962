"""The one console entry both programs use: typer's own usage errors, our one-line errors, --version."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import typer

from edge.errors import FeatherFaceError


def run_app(app: typer.Typer, prog: str) -> NoReturn:
    """Run ``app`` as ``prog``: a FeatherFaceError becomes one stderr line and its exit code.

    Standalone mode lets typer handle what it owns: a usage error prints its two-line message and
    exits 2, ``typer.Exit(code)`` exits with ``code``, Ctrl-C exits 130. Anything else is a bug and
    keeps its traceback.
    """
    try:
        app(prog_name=prog)
    except FeatherFaceError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.exit(0)  # standalone mode always exits; this keeps the NoReturn promise for the type checker


def version_option(version: str) -> Any:
    """An eager ``--version`` flag for an app's callback: prints ``version`` and exits 0."""

    def show(value: bool) -> None:
        if value:
            typer.echo(version)
            raise typer.Exit()

    return typer.Option("--version", callback=show, is_eager=True, help="Print the version and exit.")
