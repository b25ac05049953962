"""Measurements that need a process of their own (peak RSS, runtime thread pools that must not mix)
run ``python -m benchmarks.<module> ...`` in a child, which prints one JSON document as its last line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class ChildFailed(RuntimeError):
    """The child exited non-zero; ``tail`` is the end of what it printed, ``last_line`` its last line."""

    def __init__(self, tail: str) -> None:
        self.tail = tail
        self.last_line = (tail.strip().splitlines() or ["no output"])[-1]
        super().__init__(self.last_line)


def run_module(module: str, args: list[str], timeout: float | None = None) -> Any:
    """Run ``module`` with ``args`` in a fresh interpreter at the repository root; its last stdout line,
    parsed as JSON. Raises :class:`ChildFailed` when it fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise ChildFailed((proc.stderr or proc.stdout)[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])
