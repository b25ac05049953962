"""systemd ``sd_notify`` over ``$NOTIFY_SOCKET`` (``Type=notify``, ``WatchdogSec=``), stdlib only.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op. The daemon pings the watchdog on every
turn of its frame loop (not from a timer thread, which would keep a hung loop alive), so a hung
detector gets the service restarted while a camera outage, which the loop survives, does not.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING datagrams; ``watchdog()`` is rate-limited to half the period."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):  # abstract namespace socket
            addr = "\0" + addr[1:]
        self._addr = addr or None
        self._sock: socket.socket | None = None
        if self._addr:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block the frame loop on a full receiver queue: a lost ping is better than a hang.
            self._sock.setblocking(False)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process meant to ping; ignore the variable when it was inherited.
        enabled = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_period_s = int(usec) / 1e6 if enabled else 0.0
        self._last_ping = 0.0

    @property
    def active(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; False (and a debug log) when it could not be sent."""
        if self._sock is None or self._addr is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self._addr)
            return True
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)
            return False

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        """Ping the watchdog (call on each turn of the loop; sends at most every period/2)."""
        if not self.watchdog_period_s:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_period_s / 2:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def stopping(self, status: str = "") -> None:
        self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
