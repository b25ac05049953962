"""`featherface-edge`: the device CLI. Thin typer commands over plain functions in `edge`."""

from __future__ import annotations

import sys

import typer

from edge import __version__
from edge.errors import FeatherFaceError

app = typer.Typer(
    help="FeatherFace edge daemon: camera -> face detector -> tracker -> MQTT face events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """FeatherFace edge daemon."""


@app.command()
def version() -> None:
    """Print the featherface-edge version."""
    typer.echo(__version__)


def main() -> None:
    """Console entry point: a FeatherFaceError becomes one line on stderr and its exit code."""
    try:
        app(standalone_mode=False)
    except FeatherFaceError as exc:
        print(f"featherface-edge: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code and message
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
