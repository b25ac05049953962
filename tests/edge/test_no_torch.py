"""`edge` must import on a device without torch or trainer: every module, in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import importlib, importlib.abc, pkgutil, sys

class Forbid(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "trainer", "torchvision"):
            raise ImportError(f"{name} is forbidden on the edge")
        return None

sys.meta_path.insert(0, Forbid())
import edge
names = sorted(m.name for m in pkgutil.walk_packages(edge.__path__, "edge."))
for name in names:
    importlib.import_module(name)
assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "trainer")]
print(len(names), " ".join(names))
"""


def test_every_edge_module_imports_without_torch_or_trainer() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    count, names = proc.stdout.split(" ", 1)
    for mine in ("edge.camera", "edge.detector", "edge.model", "edge.backends", "edge.tracker", "edge.cli"):
        assert mine in names.split()
    assert int(count) >= 10
