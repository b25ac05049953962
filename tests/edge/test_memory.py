"""glibc malloc settings for the daemon (edge.memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import ctypes, ctypes.util, json
    from edge.memory import tune_malloc
    applied = tune_malloc()

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")]

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = MallInfo2
    # Free one 1 MiB block, then hold two. glibc's default raises its mmap threshold on that free,
    # so the two come from the heap; with the fixed threshold both are mmapped (hblks: mmapped
    # regions in use), i.e. given back to the system as soon as they are freed.
    libc.free(libc.malloc(1 << 20))
    before = libc.mallinfo2().hblks
    a, b = libc.malloc(1 << 20), libc.malloc(1 << 20)
    held = libc.mallinfo2().hblks - before
    libc.free(a)
    libc.free(b)
    print(json.dumps({"applied": applied, "mmapped": held}))
    """
)


def _run(env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=60, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tune_malloc_keeps_large_blocks_on_mmap_unless_the_user_tuned_malloc() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    try:
        tuned = _run(base)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"not glibc >= 2.33 (no mallinfo2): {exc.stderr.strip().splitlines()[-1]}")
    assert tuned == {"applied": True, "mmapped": 2}
    # A user's own MALLOC_* setting wins: nothing is changed, and glibc's default shows.
    assert _run({**base, "MALLOC_ARENA_MAX": "4"}) == {"applied": False, "mmapped": 0}
