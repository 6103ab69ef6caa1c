"""Minimal sd_notify client for systemd's notify socket (stdlib only).

Written instead of using ``sdnotify`` because that library swallows errors silently
and encodes latin-1, so a STATUS containing e.g. "✓" is dropped without a trace.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """sd_notify over $NOTIFY_SOCKET; a no-op when the variable is unset."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        # "@name" is Linux's abstract namespace, spelled with a leading NUL in the address.
        self._address = "\0" + path[1:] if path.startswith("@") else path
        self._watchdog_interval = _watchdog_interval(env)
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half systemd's timeout), or None if not wanted."""
        return self._watchdog_interval

    def notify(self, **fields: str | int) -> None:
        if not self.enabled or not fields:
            return
        for name in fields:
            if not name or "=" in name or "\n" in name:
                raise ValueError(f"invalid sd_notify field name: {name!r}")
        # A newline inside a value would start a new field, so flatten it.
        message = "\n".join(f"{k}={str(v).replace(chr(10), ' ')}" for k, v in fields.items())
        try:
            if self._sock is None:
                # One socket per notifier; CLOEXEC so children never inherit it, and
                # non-blocking: a receiver that stops reading must not freeze the event
                # loop (the message is dropped and the failure logged instead).
                self._sock = socket.socket(
                    socket.AF_UNIX,
                    socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            self._sock.sendto(message.encode("utf-8"), self._address)
        except OSError as exc:
            # Never let a vanished/refusing systemd socket take the daemon down;
            # warn once so it is visible, then keep quiet.
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(level, "sd_notify to %r failed: %s", self._address, exc)

    def ready(self, status: str) -> None:
        self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> None:
        self.notify(STATUS=text)

    def stopping(self, status: str = "Stopping") -> None:
        self.notify(STOPPING=1, STATUS=status)

    def reloading(self) -> None:
        # The caller sends ready() once the reload is done.
        self.notify(RELOADING=1)

    async def watchdog(self, healthy: Callable[[], bool]) -> None:
        """Ping WATCHDOG=1 every interval while healthy(); runs until cancelled."""
        interval = self._watchdog_interval
        if interval is None:
            return
        while True:
            # An unhealthy daemon stops pinging so systemd kills and restarts it.
            if healthy():
                self.notify(WATCHDOG=1)
            await asyncio.sleep(interval)

    def close(self) -> None:
        """Close the socket; a later notify() opens a fresh one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    # WATCHDOG_PID names the process meant to ping; if it is another one, we must not.
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2 / 1e6
