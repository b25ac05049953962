"""The edge package runs on Python 3.10 (JetPack 6 on a Jetson ships 3.10); checked by vermin."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EDGE = Path(__file__).resolve().parents[2] / "edge"


def test_edge_needs_no_python_newer_than_3_10() -> None:
    vermin = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    if vermin is None:
        pytest.skip("vermin is not installed (it comes with the dev extra)")
    res = subprocess.run(
        [vermin, "--target=3.10-", "--violations", "--no-tips", "--eval-annotations", str(EDGE)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # --violations lists only what breaks the target; exit 0 means none.
    assert res.returncode == 0, res.stdout + res.stderr
