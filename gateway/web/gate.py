"""The admin page's door: how many connections it lets in, from whom, and how long a
connection may take to say what it wants.

aiohttp bounds neither the number of connections nor the time a first request head may
take (a connection that never finishes its head stays open for good), so one LAN host
could hold every descriptor the daemon has and take the control socket, the broker link
and the store down with the page. Here every accepted TCP connection is counted per
source address and in total before anything else happens (before TLS too): one over a
limit is closed at once, and one that has not sent a whole request head within
HEAD_TIMEOUT_S of arriving (TLS handshake included) is closed then. Later requests on a
kept-alive connection fall under aiohttp's own `keepalive_timeout` (KEEPALIVE_S), and
request bodies under BODY_TIMEOUT_S (where the API reads them). Refusals are logged as
one summary line a minute, never one line per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable
from typing import cast

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 256  # in total, on all the admin page's listeners
MAX_PER_SOURCE = 32  # a browser opens ~6, plus one event stream per open tab
HEAD_TIMEOUT_S = 10.0  # from accept to a whole first request head, TLS handshake included
KEEPALIVE_S = 15.0  # an idle kept-alive connection is closed after this
BODY_TIMEOUT_S = 10.0  # a request body (at most MAX_BODY) must arrive within this
SUMMARY_S = 60.0  # refusals are counted in the log once per this
MAX_NAMED = 10  # addresses named in the log at most, per minute
END_OF_HEAD = b"\r\n\r\n"


class Gate:
    """Counts open connections per source and refuses those over the limits. Pure
    bookkeeping (the clock is passed in); `refusals()` says what to log and when."""

    def __init__(self, total: int = MAX_CONNECTIONS, per_source: int = MAX_PER_SOURCE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.per_source = per_source
        self.clock = clock
        self.open: Counter[str] = Counter()
        self.refused: Counter[tuple[str, str]] = Counter()  # (source, why) since last summary
        self.slow = 0  # closed for a late request head, since the last summary
        self.named: set[tuple[str, str]] = set()  # refused sources already logged
        self._summarised = clock()

    def admit(self, source: str) -> bool:
        why = ("over the limit of connections from one address"
               if self.open[source] >= self.per_source else
               "over the limit of connections in total"
               if sum(self.open.values()) >= self.total else None)
        if why is not None:
            self.refused[(source, why)] += 1
            return False
        self.open[source] += 1
        return True

    def release(self, source: str) -> None:
        self.open[source] -= 1
        if self.open[source] <= 0:
            del self.open[source]

    def summary(self) -> list[str]:
        """Lines to log now: a source is named when it is first refused, and the counts
        follow once a minute while refusals go on (at most MAX_NAMED sources a line set)."""
        lines = []
        for source, why in list(self.refused)[:MAX_NAMED]:
            if (source, why) not in self.named:
                self.named.add((source, why))
                lines.append(f"admin page: refusing connections from {source} ({why}); "
                             "counts follow once a minute")
        if not (self.refused or self.slow) or self.clock() - self._summarised < SUMMARY_S:
            return lines
        self._summarised = self.clock()
        counted = sorted(self.refused.items(), key=lambda item: -item[1])
        lines += [f"admin page: refused {n} connection{'s' * (n != 1)} from {source} "
                  f"in the last minute ({why})" for (source, why), n in counted[:MAX_NAMED]]
        if len(counted) > MAX_NAMED:
            rest = sum(n for _, n in counted[MAX_NAMED:])
            lines.append(f"admin page: refused {rest} more from {len(counted) - MAX_NAMED} "
                         "other addresses in the last minute")
        if self.slow:
            lines.append(f"admin page: closed {self.slow} connection"
                         f"{'s' * (self.slow != 1)} that sent no whole request within "
                         f"{HEAD_TIMEOUT_S:g} s")
        self.refused.clear()
        self.named.clear()
        self.slow = 0
        return lines


class GatedListener:
    """A protocol factory for `loop.create_server` (without `ssl=`: TLS starts here, after
    the gate) that hands each admitted connection to aiohttp's own protocol."""

    def __init__(self, gate: Gate, inner: Callable[[], asyncio.Protocol],
                 tls: ssl.SSLContext | None) -> None:
        self.gate = gate
        self.inner = inner
        self.tls = tls
        self.connections: set[_Connection] = set()

    def __call__(self) -> asyncio.Protocol:
        return _Connection(self)

    def note(self) -> None:
        for line in self.gate.summary():
            log.warning("%s", line)

    def close_all(self) -> None:
        """Stopping: close what is still open (aiohttp's runner no longer does on every
        version once its sites are not its own)."""
        for connection in list(self.connections):
            connection.abort()


class _Connection(asyncio.Protocol):
    """One accepted connection, between the socket (or TLS) and aiohttp's protocol: it
    holds a slot at the gate until it is lost and enforces the first head's deadline."""

    def __init__(self, listener: GatedListener) -> None:
        self.listener = listener
        self.source = ""
        self.transport: asyncio.Transport | None = None
        self.inner: asyncio.Protocol | None = None
        self.pending: list[bytes | None] = []  # data (None: EOF) before `inner` started
        self.head = b""  # the tail of what came before the first END_OF_HEAD
        self.headed = False
        self.deadline: asyncio.TimerHandle | None = None
        self.admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = self.transport = cast(asyncio.Transport, transport)  # TCP: a Transport
        peer = transport.get_extra_info("peername")
        self.source = str(peer[0]) if isinstance(peer, tuple) else "unix"
        if not self.listener.gate.admit(self.source):
            transport.abort()
            self.listener.note()
            return
        self.admitted = True
        self.listener.connections.add(self)
        loop = asyncio.get_running_loop()
        self.deadline = loop.call_later(HEAD_TIMEOUT_S, self._late)
        if self.listener.tls is None:
            self._start(transport)
        else:
            task = loop.create_task(self._handshake(transport, self.listener.tls))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _handshake(self, raw: asyncio.Transport, tls: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            secure = await loop.start_tls(raw, self, tls, server_side=True,
                                          ssl_handshake_timeout=HEAD_TIMEOUT_S)
        except Exception:  # refused, reset or too slow: start_tls closed the socket
            secure = None
        if secure is None:  # and the socket's loss is told to no one else
            self._release()
            return
        self.transport = secure
        self._start(secure)

    def _start(self, transport: asyncio.BaseTransport) -> None:
        self.inner = self.listener.inner()
        self.inner.connection_made(transport)
        for data in self.pending:
            if data is None:
                self.inner.eof_received()
            else:
                self.inner.data_received(data)
        self.pending.clear()

    def _late(self) -> None:
        self.listener.gate.slow += 1
        self.abort()
        self.listener.note()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _release(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        if self.admitted:
            self.admitted = False
            self.listener.connections.discard(self)
            self.listener.gate.release(self.source)

    def data_received(self, data: bytes) -> None:
        if not self.headed:
            self.head = self.head[-3:] + data
            if END_OF_HEAD in self.head:
                self.headed = True
                self.head = b""
                if self.deadline is not None:
                    self.deadline.cancel()
        if self.inner is None:
            self.pending.append(data)
        else:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.inner is None:
            self.pending.append(None)
            return None
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if self.inner is not None:
            with contextlib.suppress(Exception):
                self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()
