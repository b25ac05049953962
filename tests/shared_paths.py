"""Where the tests find ../shared (data and weights that must never be committed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# `FEATHERFACE_SHARED` lets a user point at another copy; the default is the sibling of the repo root.
SHARED = Path(os.environ.get("FEATHERFACE_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def need_shared(relpath: str) -> Path:
    """Return ``SHARED / relpath``, or skip the calling test with the reason when it is absent."""
    path = SHARED / relpath
    if not path.exists():
        pytest.skip(f"needs ../shared/{relpath} (absent: {path})")
    return path
