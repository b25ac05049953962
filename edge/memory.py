"""Keep the daemon's resident memory flat: glibc malloc settings for a long-running frame loop.

Every frame allocates a few large, short-lived buffers (the decoded frame, the network input, the
runtime's outputs) from several threads. glibc raises its mmap threshold each time such a block is
freed, after which the same sizes come from per-thread heaps that it rarely gives back, so the
process grows well past what one frame needs (measured on the daemon at 640x480: a peak of 118-128
MB; with the settings below, 111-112; docs/BENCHMARKS.md). A fixed threshold keeps large blocks on
mmap (returned to the system on free) and two arenas bound the per-thread heaps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# mallopt parameters (glibc <malloc.h>).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD = 256 * 1024  # bytes: a 640x480 BGR frame is 900 KiB, its float input 3.5 MiB
ARENA_MAX = 2


def tune_malloc() -> bool:
    """Apply the settings where the C library is glibc and the user did not set ``MALLOC_*`` itself;
    True when applied. Elsewhere (musl, macOS) nothing happens."""
    if any(k.startswith("MALLOC_") for k in os.environ):
        return False  # the user's own tuning wins
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD),
            (M_ARENA_MAX, ARENA_MAX),
        )
    )
    if not ok:
        log.debug("mallopt refused a setting; malloc left as it was")
    return ok
