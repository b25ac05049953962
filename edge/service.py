"""The daemon's start path (`featherface-edge run`), without the CLI framework.

The service's memory budget is 110 MB on a 640x480 camera (docs/BENCHMARKS.md), and the CLI framework
(typer with click and rich) cost 11 MB of it while the daemon parses one option. So the console entry
(:mod:`edge.entry`) runs the daemon's own command through :func:`run_daemon` here and hands every other
command line, help and usage errors included, to :mod:`edge.cli`, whose ``run`` calls the same function.

(Python's ``ssl``, 4.7 MB, stays: paho-mqtt 2.2 imports it at load time and, although it guards that
import, names ``ssl.SSLWantReadError`` on every socket read, so a process without it breaks.)
"""

from __future__ import annotations

import os
from pathlib import Path

from edge.errors import ConfigError

PROG = "featherface-edge"
DEFAULT_CONFIG = Path("/etc/featherface/edge.toml")


def quiet_native_logs() -> None:
    """Keep OpenCV's and FFmpeg's own WARN lines (an RTSP hiccup, a codec note) out of the daemon's log:
    the daemon reports what matters itself. OpenCV reads both variables when cv2 is imported and when
    FFmpeg starts, so they are set before anything imports cv2; a value the user set wins."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "16")  # AV_LOG_ERROR


def run_daemon(config: Path) -> int:
    """Load ``config`` and run the daemon until it stops; returns its exit code.

    Raises FeatherFaceError (one line for the caller to print) for a missing or invalid config and
    for start-up problems."""
    quiet_native_logs()  # before the imports below bring in cv2
    from edge.config import load_config

    if not config.exists():
        raise ConfigError(
            f"config file {config} does not exist; start from the annotated example: "
            f"{PROG} example-config > edge.toml, then run -c edge.toml"
        )
    cfg = load_config(config)
    from edge.daemon import configure_logging
    from edge.daemon import run as run_config

    configure_logging(cfg.device.log_level)
    return run_config(cfg)


def run_command(argv: list[str]) -> Path | None:
    """The config path when ``argv`` is exactly the daemon's command (``run``, optionally with
    ``-c``/``--config FILE`` or ``--config=FILE``), else None: help, a typo or any other command
    goes to the full CLI, which owns the usage messages."""
    if not argv or argv[0] != "run":
        return None
    rest = argv[1:]
    if not rest:
        return DEFAULT_CONFIG
    if len(rest) == 2 and rest[0] in ("-c", "--config") and not rest[1].startswith("-"):
        return Path(rest[1])
    if len(rest) == 1 and rest[0].startswith("--config=") and len(rest[0]) > len("--config="):
        return Path(rest[0][len("--config=") :])
    return None
