"""The `featherface-edge` console entry: the daemon's command without the CLI framework, the rest to it.

Kept apart from :mod:`edge.service` (which :mod:`edge.cli` imports) so that no module imports the CLI
back (tests/test_import_contracts.py).
"""

from __future__ import annotations

import sys

from edge.errors import FeatherFaceError
from edge.service import PROG, run_command, run_daemon


def main() -> None:
    """Console entry point (`featherface-edge`)."""
    config = run_command(sys.argv[1:])
    if config is None:
        from edge.cli import main as cli_main

        cli_main()
        return
    try:
        code = run_daemon(config)
    except FeatherFaceError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)
