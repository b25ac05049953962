"""`featherface-train`: the desktop CLI. Thin typer commands over plain functions in `trainer`."""

from __future__ import annotations

import sys

import typer

from edge.errors import FeatherFaceError

app = typer.Typer(
    help="FeatherFace trainer: V1 teacher, Nano-B distillation / B-FPGM pruning / fine-tuning, "
    "WIDER FACE evaluation and export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """FeatherFace trainer."""


def main() -> None:
    """Console entry point: a FeatherFaceError becomes one line on stderr and its exit code."""
    try:
        app(standalone_mode=False)
    except FeatherFaceError as exc:
        print(f"featherface-train: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
