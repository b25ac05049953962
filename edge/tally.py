"""Counts of things that can happen thousands of times an hour, logged as one line per interval.

A spool dropping records at 25 events/s or a broker refusing every reconnect must not flood the
journal with one line each. A :class:`Tally` logs the first occurrence of each reason at once (so
the operator learns of it without waiting), then at most one summary line per ``interval_s`` with
the counts by reason since the last line; ``totals`` keeps the counts since start for ``stats``.
"""

from __future__ import annotations

import logging
import time


class Tally:
    """Counts by reason; ``note`` logs a new reason at once, repeats only in a periodic summary.

    ``what`` names the thing counted in the summary, e.g. ``"spool: dropped record(s)"``.
    Not thread-safe: one thread notes and flushes (the publisher's worker).
    """

    def __init__(
        self, logger: logging.Logger, what: str, interval_s: float = 60.0, level: int = logging.WARNING
    ) -> None:
        self.log, self.what, self.interval_s, self.level = logger, what, interval_s, level
        self.totals: dict[str, int] = {}
        self._pending: dict[str, int] = {}  # counted since the last line, not yet logged
        self._seen: set[str] = set()  # reasons already logged in this episode
        self._last_line = -float("inf")

    def note(self, reason: str, detail: str = "", n: int = 1) -> None:
        """Count ``n`` occurrences of ``reason``; ``detail`` is logged with a reason's first line."""
        self.totals[reason] = self.totals.get(reason, 0) + n
        if reason not in self._seen:
            self._seen.add(reason)
            self.flush(force=True)  # what was pending belongs before the new reason
            self._emit({reason: n}, detail)
            return
        self._pending[reason] = self._pending.get(reason, 0) + n
        self.flush()

    def flush(self, force: bool = False) -> None:
        """Log the summary if one is due (``interval_s`` since the last line) or ``force``."""
        if self._pending and (force or time.monotonic() - self._last_line >= self.interval_s):
            self._emit(self._pending, "")
            self._pending = {}

    def reset(self) -> None:
        """End an episode (e.g. connected again): log what is pending; the next reason logs at once."""
        self.flush(force=True)
        self._seen.clear()

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    def _emit(self, counts: dict[str, int], detail: str) -> None:
        now = time.monotonic()
        if detail or (len(counts) == 1 and sum(counts.values()) == 1):  # a reason's first line
            (reason,) = counts
            self.log.log(self.level, "%s: %s%s", self.what, reason, f" ({detail})" if detail else "")
        else:
            parts = ", ".join(f"{n} x {reason}" for reason, n in counts.items())
            self.log.log(
                self.level,
                "%s in the last %.0f s: %s (%d since start)",
                self.what,
                now - self._last_line,
                parts,
                self.total,
            )
        self._last_line = now
