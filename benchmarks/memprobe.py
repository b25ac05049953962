"""Peak memory of an inference process: ``python -m benchmarks.memprobe '<subject json>' W H [RUNS]``.

Loads one subject (or none, for the baseline: ``'{}'``), runs it ``RUNS`` times (default 20) on a
``W`` x ``H`` frame on ONNX Runtime (OpenCV for the cv2 subject) with all threads, and prints
``{"maxrss_kib": ...}``: the peak resident set size of this process, which includes the interpreter and
the imported runtime libraries, the same for every subject (hence the baseline).

On Linux the peak is ``VmHWM`` from ``/proc/self/status``, not ``ru_maxrss``: the kernel carries
``ru_maxrss`` across ``execve`` from the parent's memory (Python spawns with vfork), so every probe
would report the benchmark process's own peak.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import numpy as np

from benchmarks.subjects import Subject


def probe(spec: dict, w: int, h: int, runs: int = 20) -> int:
    """``ru_maxrss`` in KiB after loading ``spec`` and running it ``runs`` times."""
    import onnxruntime  # noqa: F401  the baseline pays for the same imports as every subject

    if spec:
        subject = Subject(**{**spec, "path": Path(spec["path"])})
        image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
        timed = subject.timed("opencv" if subject.kind == "cv2" else "onnxruntime", 0, image)
        if timed is None:
            raise SystemExit(f"{subject.label} cannot run at {w}x{h}")
        for _ in range(runs):
            timed[0]()
    return peak_rss_kib()


def peak_rss_kib() -> int:
    """This process's peak RSS in KiB (``VmHWM``; ``ru_maxrss`` where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    w, h = int(argv[1]), int(argv[2])
    runs = int(argv[3]) if len(argv) > 3 else 20
    print(json.dumps({"maxrss_kib": probe(spec, w, h, runs)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
