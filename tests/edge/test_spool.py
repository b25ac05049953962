"""The on-disk spool: durable, oldest first, bounded by count/bytes/age with every drop counted."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.errors import ConfigError
from edge.spool import Spool


def _rec(i: int, pad: int = 0) -> dict[str, object]:
    return {"topic": "t", "payload": {"seq": i, "pad": "x" * pad}}


def test_fifo_and_remove(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    keys = [spool.append(_rec(i)) for i in range(5)]
    assert keys == sorted(keys) and len(spool) == 5
    assert [e.record["payload"]["seq"] for e in spool.peek(3)] == [0, 1, 2]
    spool.remove(keys[0])
    assert [e.record["payload"]["seq"] for e in spool.peek(10, skip={keys[1]})] == [2, 3, 4]
    spool.remove(keys[0])  # idempotent
    assert len(spool) == 4


def test_survives_reopen_and_keeps_order(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    for i in range(3):
        first.append(_rec(i))
    (tmp_path / "0000000000000099.json.tmp").write_text('{"torn')  # a write cut short by a crash
    again = Spool(tmp_path)
    assert [e.record["payload"]["seq"] for e in again.peek(10)] == [0, 1, 2]
    assert not list(tmp_path.glob("*.tmp"))
    assert again.append(_rec(3)) > max(again.keys()[:-1])  # keys keep growing across restarts


def test_survives_sigkill(tmp_path: Path) -> None:
    """A writer killed with SIGKILL mid-stream leaves only whole records, all readable, in order."""
    code = (
        "import sys; from edge.spool import Spool; s = Spool(sys.argv[1])\n"
        "i = 0\n"
        "while True:\n"
        "    s.append({'topic': 't', 'payload': {'seq': i}}); i += 1\n"
        "    if i == 20: print('go', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"go"
    time.sleep(0.05)
    proc.kill()
    proc.wait()
    spool = Spool(tmp_path)
    seqs = [e.record["payload"]["seq"] for e in spool.peek(100_000)]
    assert len(seqs) >= 20 and seqs == list(range(len(seqs)))
    assert spool.dropped_total == 0


def test_count_cap_drops_oldest(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_count=3)
    for i in range(5):
        spool.append(_rec(i))
    assert [e.record["payload"]["seq"] for e in spool.peek(10)] == [2, 3, 4]
    assert spool.dropped["count"] == 2 and len(list(tmp_path.glob("*.json"))) == 3


def test_bytes_cap(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000)
    for i in range(10):
        spool.append(_rec(i, pad=200))
    assert spool.nbytes <= 1000 and spool.dropped["bytes"] > 0
    assert spool.peek(1)[0].record["payload"]["seq"] == 10 - len(spool)
    assert spool.append(_rec(99, pad=5000)) == -1  # a record bigger than the whole cap
    assert spool.dropped["bytes"] >= 2


def test_age_cap(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_age_s=60)
    spool.append(_rec(0))
    old = time.time() - 3600
    for path in tmp_path.glob("*.json"):
        os.utime(path, (old, old))
    spool = Spool(tmp_path, max_age_s=60)  # ages come from the files, so they survive restarts
    spool.append(_rec(1))
    assert [e.record["payload"]["seq"] for e in spool.peek(10)] == [1]
    assert spool.dropped["age"] == 1


def test_corrupt_record_is_dropped_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    k0 = spool.append(_rec(0))
    spool.append(_rec(1))
    (tmp_path / f"{k0:016d}.json").write_text("not json")
    assert [e.record["payload"]["seq"] for e in spool.peek(10)] == [1]
    assert spool.dropped["corrupt"] == 1


def test_unwritable_directory_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="spool directory"):
        Spool(blocker / "spool")


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a real file system that runs out of space (ENOSPC), as an SD card does."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount command to make a small tmpfs")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_leaves_no_litter_and_counts_disk_full(
    tiny_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tiny_fs / "spool", max_count=0, max_bytes=0, max_age_s=0)
    with caplog.at_level(logging.WARNING, logger="edge.spool"):
        keys = [spool.append(_rec(i, pad=3000)) for i in range(60)]  # ~180 KB into 64 KiB
    assert -1 in keys and keys.index(-1) > 5
    full = keys.count(-1)
    assert spool.dropped["disk_full"] == full and spool.dropped["bytes"] == 0
    assert not list((tiny_fs / "spool").glob("*.tmp"))  # every failed write cleaned up after itself
    assert len(list((tiny_fs / "spool").glob("*.json"))) == len(spool) == 60 - full
    lines = [r for r in caplog.records if "spool" in r.getMessage()]
    assert len(lines) == 1 and "disk_full" in lines[0].getMessage()  # once, then the summary
    assert [e.record["payload"]["seq"] for e in spool.peek(5)] == [0, 1, 2, 3, 4]


def test_drops_are_summarised_not_logged_one_by_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path, max_count=3, log_interval_s=60)
    with caplog.at_level(logging.WARNING, logger="edge.spool"):
        for i in range(200):
            spool.append(_rec(i))
        assert len(caplog.records) == 1  # the first drop, at once
        spool.drops.flush()
        assert len(caplog.records) == 1  # the summary waits for its interval
        spool.drops.flush(force=True)  # as the publisher does at exit
    assert spool.dropped["count"] == 197 and spool.dropped_total == 197
    summary = caplog.records[-1].getMessage()
    assert len(caplog.records) == 2 and "196 x count" in summary and "197 since start" in summary
