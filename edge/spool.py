"""A bounded on-disk spool: messages that could not be delivered wait here, oldest first.

One file per record (``<key>.json``, ``key`` a zero-padded counter), written to a temporary name,
fsync'd, renamed into place and the directory fsync'd. Files are never modified after that, so a
SIGKILL or power cut leaves either the whole record or nothing (a stray ``.tmp`` file, removed at
open) and no recovery parser is needed; delivery removes a record with one ``unlink``.

Caps on count, bytes and age keep the spool from filling the SD card during a long outage; the
oldest records are dropped first and every drop is counted by reason (``dropped``): ``count``,
``bytes``, ``age``, ``corrupt``, ``disk_full`` (the file system refused the write: ENOSPC/EDQUOT)
and ``write_error`` (any other I/O error). A failed write never leaves its temporary file behind.
Drops are logged as one line per ``log_interval_s`` with the counts (:class:`edge.tally.Tally`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import ConfigError
from edge.tally import Tally

log = logging.getLogger(__name__)

_SUFFIX = ".json"
_KEY_DIGITS = 16
DROP_REASONS = ("count", "bytes", "age", "corrupt", "disk_full", "write_error")


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One spooled record: ``key`` orders records (oldest first); ``record`` is the JSON object."""

    key: int
    record: dict[str, Any]


class Spool:
    """Durable FIFO of JSON records in ``directory`` with count/bytes/age caps (0 = no cap).

    Not thread-safe: the MQTT publisher's worker thread owns it.
    """

    def __init__(
        self,
        directory: str | Path,
        max_count: int = 10_000,
        max_bytes: int = 50_000_000,
        max_age_s: float = 7 * 86400.0,
        log_interval_s: float = 60.0,
    ) -> None:
        self.directory = Path(directory)
        self.max_count, self.max_bytes, self.max_age_s = max_count, max_bytes, max_age_s
        self.drops = Tally(log, "spool: record(s) dropped", log_interval_s)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"spool directory {self.directory} cannot be created ({exc.strerror})"
            ) from None
        if not os.access(self.directory, os.W_OK):
            raise ConfigError(f"spool directory {self.directory} is not writable")
        # key -> (size in bytes, mtime); insertion order == key order (rebuilt sorted below).
        self._index: OrderedDict[int, tuple[int, float]] = OrderedDict()
        self._bytes = 0
        self._scan()
        self._next_key = (next(reversed(self._index)) + 1) if self._index else 1

    def _scan(self) -> None:
        found: list[tuple[int, int, float]] = []
        for path in self.directory.iterdir():
            if path.name.endswith(".tmp"):  # a write torn by a crash: never renamed, never acknowledged
                path.unlink(missing_ok=True)
                continue
            if not path.name.endswith(_SUFFIX) or not path.stem.isdigit():
                continue
            st = path.stat()
            found.append((int(path.stem), st.st_size, st.st_mtime))
        for key, size, mtime in sorted(found):
            self._index[key] = (size, mtime)
            self._bytes += size
        if found:
            log.info("spool: %d record(s), %d bytes waiting in %s", len(found), self._bytes, self.directory)

    def _path(self, key: int) -> Path:
        return self.directory / f"{key:0{_KEY_DIGITS}d}{_SUFFIX}"

    def __len__(self) -> int:
        return len(self._index)

    @property
    def nbytes(self) -> int:
        return self._bytes

    @property
    def dropped(self) -> dict[str, int]:
        """Records dropped since start, by reason (every reason present, 0 when none)."""
        return {reason: self.drops.totals.get(reason, 0) for reason in DROP_REASONS}

    @property
    def dropped_total(self) -> int:
        return self.drops.total

    def append(self, record: dict[str, Any], sync: bool = True) -> int:
        """Write ``record`` and return its key, or -1 when it was dropped (counted and logged).

        ``sync``: fsync the file and the directory before returning (``False`` for a batch that
        the caller makes durable with one :meth:`sync`). The oldest records past the caps are dropped.
        """
        data = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
        if self.max_bytes and len(data) > self.max_bytes:
            self.drops.note("bytes", f"a {len(data)}-byte record exceeds the {self.max_bytes}-byte cap")
            return -1
        key = self._next_key
        self._next_key += 1
        path = self._path(key)
        tmp = path.with_name(path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, "short write")
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            if sync:
                self._fsync_dir()
        except OSError as exc:  # disk full or failing: count it, leave no litter, keep the daemon alive
            tmp.unlink(missing_ok=True)
            path.unlink(missing_ok=True)  # renamed but the directory fsync failed: index == disk
            reason = "disk_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "write_error"
            self.drops.note(reason, f"{self.directory}: {exc.strerror or exc}")
            return -1
        self._index[key] = (len(data), time.time())
        self._bytes += len(data)
        self._enforce_caps()
        return key

    def sync(self) -> None:
        """Make every record written with ``sync=False`` durable (one sync of the file system)."""
        os.sync()

    def _fsync_dir(self) -> None:
        # The rename (or unlink) is only durable once the directory entry is on disk.
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _drop_oldest(self, reason: str) -> None:
        key = next(iter(self._index))
        self._forget(key)
        self.drops.note(reason, "the spool's caps are reached; the oldest records go first")

    def _forget(self, key: int) -> None:
        size, _ = self._index.pop(key)
        self._bytes -= size
        self._path(key).unlink(missing_ok=True)

    def _enforce_caps(self) -> None:
        self.expire()
        while self.max_count and len(self._index) > self.max_count:
            self._drop_oldest("count")
        while self.max_bytes and self._bytes > self.max_bytes and self._index:
            self._drop_oldest("bytes")

    def expire(self, now: float | None = None) -> None:
        """Drop records older than ``max_age_s`` (by the time they were written)."""
        if not self.max_age_s:
            return
        limit = (time.time() if now is None else now) - self.max_age_s
        while self._index:
            _, mtime = next(iter(self._index.values()))
            if mtime >= limit:
                break
            self._drop_oldest("age")

    def keys(self) -> list[int]:
        """Keys of every waiting record, oldest first."""
        return list(self._index)

    def read(self, key: int) -> SpoolEntry | None:
        """The record under ``key``; a corrupt or vanished file is removed, counted and ``None``."""
        try:
            record = json.loads(self._path(key).read_bytes())
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as exc:
            if key in self._index:
                self._forget(key)
                self.drops.note("corrupt", f"record {key} is unreadable ({exc})")
            return None
        return SpoolEntry(key, record)

    def peek(self, limit: int, skip: set[int] | frozenset[int] = frozenset()) -> list[SpoolEntry]:
        """Up to ``limit`` of the oldest records whose keys are not in ``skip``, oldest first."""
        self.expire()
        out: list[SpoolEntry] = []
        for key in list(self._index):
            if len(out) >= limit:
                break
            if key in skip:
                continue
            entry = self.read(key)
            if entry is not None:
                out.append(entry)
        return out

    def recent_event_ids(self, n: int) -> set[str]:
        """``event_id`` of the newest ``n`` records (recovery checks what is already here)."""
        keys = list(self._index)[-n:] if n > 0 else []
        entries = (self.read(key) for key in keys)
        return {str(e.record.get("payload", {}).get("event_id")) for e in entries if e is not None}

    def remove(self, key: int) -> None:
        """Forget a delivered record (a no-op for keys already gone, e.g. dropped by a cap)."""
        if key in self._index:
            self._forget(key)
