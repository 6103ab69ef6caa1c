"""The embedded Mosquitto: render its files, run it as our child, restart it if it dies."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime
import logging
import os
import re
import signal
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

from gateway.aio import cancel_and_wait
from gateway.broker.render import (
    GATEWAY_USERNAME,
    MAX_CONNECTIONS_PER_LISTENER,
    BrokerFiles,
    ListenerSpec,
    certificate_addresses,
    client_address,
    find_plugin,
    render_dynsec,
    render_mosquitto_conf,
)
from gateway.credentials.pki import (
    Pki,
    host_names,
    issue_server_cert,
    openssl_conf,
    renewal_due,
)
from gateway.credentials.secrets import hash_password, load_or_create_login, write_private
from gateway.mqtt import Backoff
from gateway.store import Store

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
STABLE_AFTER_S = 30.0  # a broker that ran this long resets the restart backoff


class BrokerError(Exception):
    pass


# Mosquitto's connection messages, each matched against the whole message after the
# timestamp. The client id is text a stranger chooses (spaces, quotes, the broker's own
# phrases; Mosquitto refuses control characters, so not a line break): it is only ever
# read where the grammar puts it, as the longest text before the broker's own suffix,
# which always ends the line.
_MESSAGE = re.compile(r"\d+: (.*)")
_NEW_CONNECTION = re.compile(r"New connection from (\S+):\d+ on port \d+\.")
_LOGGED_IN = re.compile(
    r"New client connected from (\S+):\d+ as (.+) \(p\d+, c\d+, k\d+(?:, u'(.*)')?\)\.")
# A login refused: "<unknown>" on Mosquitto 2.0.11, the client id on 2.0.21.
_REFUSED = re.compile(r"Client (.+) disconnected, not authorised\.")
_LEFT_EARLY = "Client <unknown> closed its connection."  # gone before logging in
# A client's session ended: it disconnected, dropped, timed out or broke the protocol.
_GONE = re.compile(r"Client (.+) (?:disconnected|closed its connection|has exceeded timeout, "
                   r"disconnecting|disconnected due to (?:protocol error|out of memory))\.|"
                   r"Socket error on client (.+), disconnecting\.")
# Mosquitto 2.0 closes a connection that never sends CONNECT after ~95 s (measured: 94.7 s
# on 2.0.11; it treats it as a client with a 60 s keepalive). A refusal is charged to an
# address only while every connection still waiting could be the refused one.
PENDING_S = 100.0


class LogEvent(NamedTuple):
    connection: bool  # a connection message (logged at debug level)
    refused: str | None = None  # the address of a refused login ("unknown" if unsure)
    login: tuple[str, str] | None = None  # (address, username) of an accepted login
    up: str | None = None  # the client id of a session that began
    down: str | None = None  # the client id of a session that ended


class ConnectionLog:
    """Reads Mosquitto's connection messages. A refused login names no address, so it is
    charged to the address of the connections that have not logged in yet when they all
    come from one address, and to "unknown" otherwise: a stranger's refused logins are
    never charged to another host whose connection happens to be waiting too."""

    def __init__(self) -> None:
        # Waiting connections: never more than the listeners' max_connections (at most
        # four listeners at that limit fit the unit's descriptors), so this bound loses none.
        self._pending: deque[tuple[float, str]] = deque(maxlen=4 * MAX_CONNECTIONS_PER_LISTENER)

    def feed(self, line: str, now: float) -> LogEvent:
        while self._pending and now - self._pending[0][0] > PENDING_S:
            self._pending.popleft()
        framed = _MESSAGE.fullmatch(line)
        message = framed[1] if framed else ""
        if match := _NEW_CONNECTION.fullmatch(message):
            self._pending.append((now, match[1]))
            return LogEvent(True)
        if match := _LOGGED_IN.fullmatch(message):
            for i, (_, address) in enumerate(self._pending):
                if address == match[1]:
                    del self._pending[i]
                    break
            return LogEvent(True, login=(match[1], match[3]) if match[3] else None,
                            up=match[2])
        if _REFUSED.fullmatch(message):
            addresses = {address for _, address in self._pending}
            if self._pending:
                self._pending.popleft()
            return LogEvent(True, refused=addresses.pop() if len(addresses) == 1 else "unknown")
        if message == _LEFT_EARLY:
            if self._pending:
                self._pending.popleft()
            return LogEvent(True)
        if match := _GONE.fullmatch(message):
            return LogEvent(True, down=match[1] or match[2])
        return LogEvent(False)


def _die_with_parent() -> None:
    """Runs in the child before exec: if the gateway is killed, the broker goes too."""
    set_parent_death_signal(signal.SIGTERM)


def set_parent_death_signal(sig: int) -> None:
    """In a child before exec: the kernel sends it `sig` when its parent dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG


async def wait_accepting(proc: asyncio.subprocess.Process, host: str, port: int, what: str,
                         tail: Sequence[str], ssl: ssl_module.SSLContext | None = None) -> None:
    """Until the Mosquitto `proc` accepts a connection on host:port (with `ssl`, completes a
    TLS handshake); BrokerError with its last words (`tail`) if it exits or does not
    answer within START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.returncode is not None:
            await asyncio.sleep(0.05)  # let the stderr reader catch the last words
            raise BrokerError(f"{what} exited with status {proc.returncode}: "
                              + (" | ".join(tail) or "no output"))
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ssl),
                                               2.0)
        except (OSError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"{what} did not accept {'TLS' if ssl else 'connections'} on {host}:{port} "
                    f"within {START_TIMEOUT_S:.0f} s ({exc}): "
                    + (" | ".join(tail) or "no output")) from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


async def terminate(proc: asyncio.subprocess.Process | None) -> None:
    """SIGTERM, SIGKILL after STOP_TIMEOUT_S; returns once the process is gone."""
    if proc is None or proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def broker_environment() -> dict[str, str]:
    """Our environment minus systemd's notify variables: Mosquitto would otherwise send its
    own READY=1 on our unit's socket before the gateway is ready."""
    return {k: v for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}


class EmbeddedBroker:
    def __init__(self, files: BrokerFiles, listeners: Sequence[ListenerSpec], *,
                 executable: str, max_packet_size: int, store: Store,
                 pki: Pki, on_restart: Callable[[int, str], None] | None = None,
                 on_login_refused: Callable[[str], None] | None = None,
                 on_login: Callable[[str, str], None] | None = None,
                 on_presence: Callable[[str, bool], None] = lambda client_id, up: None,
                 other_logins: Callable[[], Sequence[tuple[str, str, list[dict[str, object]]]]]
                 = lambda: ()) -> None:
        self.files = files
        self.on_presence = on_presence  # (client id, connected) as the broker's log says
        self.other_logins = other_logins  # (username, password, ACLs): Home Assistant's
        self.pki = pki
        self.listeners = tuple(listeners)
        self.executable = executable
        self.max_packet_size = max_packet_size
        self.store = store
        self.on_restart = on_restart
        self.on_login_refused = on_login_refused
        self.on_login = on_login  # (address, username) of every accepted login
        self._connections = ConnectionLog()
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._stopping = False
        self._backoff = Backoff(initial=0.5, maximum=30.0)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def render(self) -> None:
        """Write mosquitto.conf and the dynamic-security file from config and database."""
        self.files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf = render_mosquitto_conf(self.files, self.listeners, self.max_packet_size,
                                     find_plugin(), run_as_root=os.geteuid() == 0)
        write_private(self.files.conf, conf)
        write_private(self.files.openssl_conf, openssl_conf())
        if any(listener.tls for listener in self.listeners):
            self._issue()
        # The gateway's own login as its file says now (it is rotated too).
        username, secret = load_or_create_login(self.files.gateway_secret, GATEWAY_USERNAME)
        others = [(name, hash_password(password), acls)
                  for name, password, acls in self.other_logins()]
        dynsec = render_dynsec(hash_password(secret), self.store.credentials(),
                               self.store.live_enrollments(time.time()), username, others)
        write_private(self.files.dynsec, dynsec)

    def _issue(self) -> None:
        issue_server_cert(self.pki, self.files.server_cert, self.files.server_key,
                          host_names(), certificate_addresses(self.listeners))

    def renew(self, now: datetime.datetime | None = None) -> bool:
        """A new certificate for the TLS listeners once the current one is near its end.
        Mosquitto 2.0 reads it again on SIGHUP: sessions stay, new connections get it."""
        if (not any(listener.tls for listener in self.listeners) or not self.running
                or not renewal_due(self.files.server_cert, now)):
            return False
        self._issue()
        assert self._proc is not None
        self._proc.send_signal(signal.SIGHUP)
        log.info("broker: certificate renewed")
        return True

    async def start(self) -> None:
        self._stopping = False
        await self._spawn()
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(), name="broker-supervisor")

    async def stop(self) -> None:
        self._stopping = True
        await cancel_and_wait(self._supervisor)
        self._supervisor = None
        await self._terminate()

    async def restart(self) -> None:
        """Re-render and restart now (after a listener change)."""
        await self.stop()
        await self.start()

    async def _spawn(self) -> None:
        self.render()
        self._stderr_tail.clear()
        self._proc = await asyncio.create_subprocess_exec(
            self.executable, "-c", str(self.files.conf),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent,
            env={**broker_environment(), "OPENSSL_CONF": str(self.files.openssl_conf)},
        )
        asyncio.get_running_loop().create_task(self._read_stderr(self._proc))
        try:
            await self._wait_accepting(self._proc)
        except BaseException:
            await self._terminate()
            raise
        log.info("broker: mosquitto (pid %d) accepting on %s", self._proc.pid,
                 ", ".join(f"{x.address}:{x.port}" for x in self.listeners))

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            event = self._connections.feed(line, time.monotonic())
            if event.refused is not None and self.on_login_refused is not None:
                self.on_login_refused(event.refused)
            if event.login is not None and self.on_login is not None:
                self.on_login(*event.login)
            if event.up is not None or event.down is not None:
                self.on_presence(event.up or event.down or "", event.up is not None)
            if event.connection:
                log.debug("mosquitto: %s", line)
            elif line:
                self._stderr_tail.append(line)
                level = logging.WARNING if "rror" in line else logging.INFO
                log.log(level, "mosquitto: %s", line)

    async def _wait_accepting(self, proc: asyncio.subprocess.Process) -> None:
        first = self.listeners[0]
        await wait_accepting(proc, client_address(first), first.port, "mosquitto",
                             self._stderr_tail)

    async def _supervise(self) -> None:
        while True:
            proc = self._proc
            assert proc is not None
            started = time.monotonic()
            status = await proc.wait()
            if self._stopping:
                return
            if time.monotonic() - started > STABLE_AFTER_S:
                self._backoff.reset()
            reason = f"exited with status {status}"
            log.error("broker: mosquitto %s; restarting", reason)
            while True:
                await asyncio.sleep(self._backoff.next_delay())
                try:
                    await self._spawn()
                    break
                except (BrokerError, OSError) as exc:
                    log.error("broker: restart failed: %s", exc)
            self.restarts += 1
            if self.on_restart is not None:
                self.on_restart(self.restarts, reason)

    async def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        await terminate(proc)
