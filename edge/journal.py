"""A write-ahead journal: an event is on disk before the frame loop lets go of it.

Events wait in the publisher's memory queue and in-flight window until the broker acknowledges
them; a SIGKILL, the OOM killer or a crash would lose them there. So
:meth:`edge.mqtt.MqttPublisher.publish_event` first appends the event here: one JSON line, one
``write()``, no fsync. Once ``write`` returns the line is in the kernel's page cache, which
outlives the process. The publisher's worker makes the lines durable against a power cut with one
``fdatasync`` per ``sync_interval_s`` (group commit), so the frame loop never waits for the disk.

The worker *settles* each event once the broker acknowledged it or the spool holds it (fsync'd).
Segments ``journal-<n>.jsonl`` each begin with a checkpoint line: the tracks open at that moment
(started, not ended) and the last ``seq``. When every event of the newest segment is settled it is
replaced by a fresh one (a new checkpoint) and deleted; past ``max_segment_bytes`` new lines go to
a fresh segment and the old one is deleted once settled. So the next start (:meth:`recover`) finds
only events that may be undelivered, plus the tracks the killed run left open, whose ``end``
events it builds (:func:`edge.events.end_of_track`).

Threads: :meth:`append` is called by the frame loop, everything else by the publisher's worker;
only the worker opens, syncs and closes files, and the lock is never held across an fsync.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.events import end_of_track
from edge.tally import Tally

log = logging.getLogger(__name__)

_PREFIX, _SUFFIX = "journal-", ".jsonl"


@dataclass
class Recovered:
    """What a killed run left: ``events`` that may be undelivered (oldest first) and ``ends``."""

    events: list[dict[str, Any]] = field(default_factory=list)
    ends: list[dict[str, Any]] = field(default_factory=list)


def _line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


class Journal:
    """Append-only event journal in ``directory`` (see the module docstring)."""

    def __init__(
        self, directory: str | Path, sync_interval_s: float = 0.2, max_segment_bytes: int = 1 << 20
    ) -> None:
        self.directory = Path(directory)
        self.sync_interval_s, self.max_segment_bytes = sync_interval_s, max_segment_bytes
        self.errors = Tally(log, "journal: event(s) not written ahead (kept in memory only)")
        self.syncs = 0
        self.sync_s = 0.0  # total time in fdatasync, for stats and measurement
        self._lock = threading.Lock()
        self._fd = -1
        self._seg = 0
        self._size = 0
        self._counts: dict[int, list[int]] = {}  # segment -> [written, settled]
        self._open: dict[int, tuple[float, dict[str, Any]]] = {}  # track_id -> (start ts, last event)
        self._seq = 0
        self._dirty = False
        self._last_sync = time.monotonic()

    def _path(self, seg: int) -> Path:
        return self.directory / f"{_PREFIX}{seg:016d}{_SUFFIX}"

    def _segments(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.directory.glob(f"{_PREFIX}*{_SUFFIX}"):
            stem = path.name[len(_PREFIX) : -len(_SUFFIX)]
            if stem.isdigit():
                found.append((int(stem), path))
        return sorted(found)

    # ---- start-up -----------------------------------------------------------------------------
    def recover(self) -> Recovered:
        """Read what a previous run left (nothing after a clean stop). Call before :meth:`start`.

        A checkpoint line replaces the open-track state, the events after it update it; every
        event line counts as possibly undelivered (some may have been acknowledged: at-least-once).
        """
        events: list[dict[str, Any]] = []
        for _, path in self._segments():
            for raw in path.read_bytes().splitlines():
                try:
                    doc = json.loads(raw)
                except ValueError:  # a line torn by a power cut
                    continue
                if not isinstance(doc, dict):
                    continue
                if isinstance(doc.get("checkpoint"), dict):
                    self._restore(doc["checkpoint"])
                elif "event_id" in doc:
                    self._track(doc)
                    events.append(doc)
        ends = [
            end_of_track(last, start_ts, self._seq + i)
            for i, (start_ts, last) in enumerate(self._open.values(), start=1)
        ]
        return Recovered(events, ends)

    def start(self) -> None:
        """Delete what :meth:`recover` returned (the caller made it durable) and open a new segment."""
        old = self._segments()
        self._seg = old[-1][0] if old else 0
        self._open, self._seq = {}, 0
        with self._lock:
            self._rotate()
        for _, path in old:
            path.unlink(missing_ok=True)

    # ---- the frame loop -----------------------------------------------------------------------
    def append(self, doc: dict[str, Any]) -> int | None:
        """Write ``doc`` ahead (no fsync) and return its segment for :meth:`settle`; ``None`` when
        it could not be written (disk full: counted, logged, the event stays in memory only)."""
        line = _line(doc)
        with self._lock:
            self._track(doc)
            if self._fd < 0:
                return None
            try:
                written = os.write(self._fd, line)
            except OSError as exc:
                self.errors.note("write failed", str(exc.strerror or exc))
                return None
            if written != len(line):  # disk full mid-line: cut it off so the next line starts clean
                with contextlib.suppress(OSError):  # the frame loop must never see this fail
                    os.ftruncate(self._fd, self._size)
                self.errors.note("write failed", "short write (disk full?)")
                return None
            self._size += written
            self._counts[self._seg][0] += 1
            self._dirty = True
            return self._seg

    # ---- the publisher's worker ---------------------------------------------------------------
    def settle(self, seg: int | None) -> None:
        """One event of ``seg`` is acknowledged by the broker or safe in the spool."""
        if seg is None:
            return
        with self._lock:
            counts = self._counts.get(seg)
            if counts is None:
                return
            counts[1] += 1
            if counts[0] != counts[1]:
                return
            if seg == self._seg:  # all caught up: a fresh checkpoint replaces the whole segment
                self._rotate()
                if self._seg == seg:
                    return  # could not open a new segment (disk full): keep this one
            del self._counts[seg]
        self._path(seg).unlink(missing_ok=True)

    def maintain(self) -> None:
        """Group commit: one fdatasync per ``sync_interval_s`` when anything was written; start a new
        segment when this one is past ``max_segment_bytes``."""
        if self._dirty and time.monotonic() - self._last_sync >= self.sync_interval_s:
            self.sync()
        if self._size > self.max_segment_bytes:
            self.sync()  # the old segment's lines stay needed until settled
            with self._lock:
                self._rotate()
        self.errors.flush()

    def sync(self) -> None:
        """fdatasync the open segment (every line appended so far survives a power cut)."""
        with self._lock:
            fd, self._dirty = self._fd, False
        if fd < 0:
            return
        t0 = time.perf_counter()
        try:
            os.fdatasync(fd)
        except OSError as exc:
            self.errors.note("sync failed", str(exc.strerror or exc))
        self.sync_s += time.perf_counter() - t0
        self.syncs += 1
        self._last_sync = time.monotonic()

    def close(self) -> None:
        """At exit: sync, then delete every segment whose events are all settled (a clean stop with
        no track open leaves nothing)."""
        self.sync()
        with self._lock:
            fd, self._fd = self._fd, -1
            done = [seg for seg, (w, s) in self._counts.items() if w == s]
            if self._open:
                done = [seg for seg in done if seg != self._seg]  # its checkpoint names open tracks
        if fd >= 0:
            os.close(fd)
        for seg in done:
            self._path(seg).unlink(missing_ok=True)

    # ---- internals (under the lock) -----------------------------------------------------------
    def _track(self, doc: dict[str, Any]) -> None:
        self._seq = max(self._seq, int(doc.get("seq", 0)))
        faces = doc.get("faces") or [{}]
        track = faces[0].get("track_id")
        if track is None:
            return
        if doc.get("type") == "end":
            self._open.pop(track, None)
        else:
            start_ts = self._open[track][0] if track in self._open else float(doc["ts"])
            self._open[track] = (start_ts, doc)

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self._seq = int(checkpoint.get("seq", 0))
        self._open = {}
        for entry in checkpoint.get("open", []):
            last = entry["last"]
            self._open[int(last["faces"][0]["track_id"])] = (float(entry["start_ts"]), last)

    def _rotate(self) -> None:
        """Open segment n+1 starting with a checkpoint and make it the one appended to."""
        seg = self._seg + 1
        checkpoint = {
            "checkpoint": {
                "seq": self._seq,
                "open": [{"start_ts": ts, "last": last} for ts, last in self._open.values()],
            }
        }
        line = _line(checkpoint)
        try:
            fd = os.open(self._path(seg), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        except OSError as exc:
            self.errors.note("new segment failed", str(exc.strerror or exc))
            return
        try:
            if os.write(fd, line) != len(line):
                raise OSError("short write")
        except OSError as exc:
            os.close(fd)
            self._path(seg).unlink(missing_ok=True)
            self.errors.note("new segment failed", str(getattr(exc, "strerror", None) or exc))
            return
        old, self._fd, self._seg, self._size = self._fd, fd, seg, len(line)
        self._counts[seg] = [0, 0]
        self._dirty = True
        if old >= 0:
            os.close(old)  # only the worker gets here, and the frame loop uses self._fd under the lock
