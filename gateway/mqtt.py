"""The one MQTT client adapter (DESIGN §4).

It hides the two client generations Debian ships: `aiomqtt` 2.x (preferred; trixie's
python3-asyncio-mqtt) and `asyncio_mqtt` 0.16 (bookworm's python3-asyncio-mqtt). Neither
reconnects by itself, a 0.16 client object is single-use, and 0.16 drops messages that
arrive before its message iterator is entered, so `MqttSession` owns all three: it makes a
fresh client per connection, takes messages from paho's callback before subscribing,
resubscribes after every reconnect and backs off with jitter between attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import random
import re
import socket
import ssl
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.aio import cancel_and_wait

try:  # aiomqtt 2.x: PyPI, and trixie's python3-asyncio-mqtt
    import aiomqtt as _lib

    GENERATION = 2
except ImportError:  # bookworm's python3-asyncio-mqtt 0.16
    import asyncio_mqtt as _lib  # type: ignore[no-redef]

    GENERATION = 0


def _version(module: Any) -> str:
    """The module's version. Debian's builds get one of two places wrong: trixie's aiomqtt
    hard-codes `__version__ = "0.0.0"` (its package metadata is right), bookworm's
    asyncio_mqtt has metadata of 0.0.0 (its `__version__` is right)."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        found = importlib.metadata.version(module.__name__)
        if found != "0.0.0":
            return found
    return str(getattr(module, "__version__", ""))


# Which client generation this interpreter uses, e.g. "aiomqtt 2.5.1" (status, benchmarks).
LIBRARY = f"{_lib.__name__} {_version(_lib)}".strip()

log = logging.getLogger(__name__)

MqttError: type[Exception] = _lib.MqttError
CONNECT_TIMEOUT_S = 10
PENDING_CALLS_WARNING = 1000
# Small control messages must not wait for Nagle + delayed ACK (~40 ms a round trip).
SOCKET_OPTIONS = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


# A CONNACK refusing the login (MQTT 3.1.1 codes 4/5, MQTT 5 codes 134/135), as either
# client generation words it; anything else (a network error) is not a refused login.
_LOGIN_REFUSED = re.compile(r"\[code:(4|5|134|135)\]|not authori[sz]ed|bad user name",
                            re.IGNORECASE)


def login_refused(error: str | None) -> bool:
    """True when a connection error text says the broker refused the credentials."""
    return bool(error and _LOGIN_REFUSED.search(error))


class NotConnected(Exception):
    """Raised by publish() while the session has no live connection."""


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 0


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and as whom to connect. `repr` never shows the password."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: ssl.SSLContext | None = None


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with jitter: a ceiling d doubling from `initial` to `maximum`,
    each delay drawn from [½·d, d], or from [0, d] with `full_jitter` (many clients that
    lost one server then come back spread out, not in waves)."""

    initial: float = 0.25
    maximum: float = 30.0
    attempt: int = 0
    full_jitter: bool = False

    def ceiling(self) -> float:
        return min(self.maximum, self.initial * 2.0 ** min(self.attempt, 64))

    def next_delay(self) -> float:
        ceiling = self.ceiling()
        self.attempt += 1
        return random.uniform(0.0 if self.full_jitter else ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def make_client(endpoint: Endpoint, client_id: str, *, will: Will | None = None,
                keepalive: int = 30) -> Any:
    """A library client for one connection attempt (0.16 clients are single-use)."""
    lib_will = _lib.Will(will.topic, will.payload, will.qos, will.retain) if will else None
    common: dict[str, Any] = {
        "username": endpoint.username,
        "password": endpoint.password,
        "tls_context": endpoint.tls,
        "will": lib_will,
        "keepalive": keepalive,
        "socket_options": SOCKET_OPTIONS,
    }
    if GENERATION == 2:
        client = _lib.Client(endpoint.host, endpoint.port, identifier=client_id,
                             timeout=CONNECT_TIMEOUT_S, **common)
    else:
        client = _lib.Client(endpoint.host, endpoint.port,  # type: ignore[call-arg]
                             client_id=client_id, **common)
    # Both libraries log a warning for every publish while more than 10 await their
    # acknowledgement; a spool replayed in windows of 100 would fill the journal.
    setattr(client, "pending_calls_threshold" if GENERATION == 2 else "_pending_calls_threshold",
            PENDING_CALLS_WARNING)
    return client


async def _disconnect(client: Any, timeout: float = 2.0) -> None:
    """A clean DISCONNECT in both generations (aiomqtt 2 has no disconnect()): paho sends
    it, and its callback resolves the library's `_disconnected` future."""
    with contextlib.suppress(Exception):
        if client._client.disconnect() == 0:
            await asyncio.wait([client._disconnected], timeout=timeout)


class MqttSession:
    """A long-lived MQTT session: reconnects, resubscribes and dispatches every message.

    `on_message` is called synchronously on the event loop for each message, in order;
    it must not block (schedule slow work yourself). `on_connect` runs after every
    (re)connection once the subscriptions are in place.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        client_id: str,
        on_message: Callable[[Message], None],
        subscriptions: Sequence[tuple[str, int]] = (),
        on_connect: Callable[[], Coroutine[Any, Any, None]] | None = None,
        will: Will | None = None,
        keepalive: int = 30,
        backoff: Backoff | None = None,
        on_disconnect: Callable[[str | None], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.client_id = client_id
        self._on_message = on_message
        self._subscriptions = list(subscriptions)
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._reconnect_now = False
        self._will = will
        self._keepalive = keepalive
        self._backoff = backoff or Backoff()
        self._client: Any = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._hooks: set[asyncio.Task[None]] = set()
        self.connections = 0  # successful connections so far, for status and tests
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"mqtt:{self.client_id}"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if self._client is not None:  # a clean DISCONNECT, so the broker does not send our will
            await _disconnect(self._client)
        await cancel_and_wait(task, *self._hooks)

    async def __aenter__(self) -> MqttSession:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def reconnect(self) -> None:
        """Drop the connection and connect again at once, e.g. as a new `endpoint`."""
        self._reconnect_now = True
        self._connected.clear()  # from now on, "connected" means the new connection
        if self._client is not None:
            await _disconnect(self._client)

    async def subscribe(self, topic: str, qos: int = 0) -> None:
        """Subscribe now (if connected) and again after every reconnect."""
        self._subscriptions.append((topic, qos))
        if self._client is not None and self.connected:
            await self._client.subscribe(topic, qos)

    async def publish(self, topic: str, payload: bytes | str, qos: int = 0,
                      retain: bool = False) -> None:
        client = self._client
        if client is None or not self.connected:
            raise NotConnected(f"not connected to {self.endpoint.host}:{self.endpoint.port}")
        await client.publish(topic, payload, qos=qos, retain=retain)

    def publish_nowait(self, topic: str, payload: bytes | str, retain: bool = False) -> bool:
        """QoS 0 fire-and-forget for hot paths: hands the packet to paho without awaiting
        the write callback (both generations keep the paho client in `_client`)."""
        client = self._client
        if client is None or not self.connected:
            return False
        info = client._client.publish(topic, payload, 0, retain)
        return bool(info.rc == 0)

    async def _run(self) -> None:
        while True:
            try:
                await self._connect_and_dispatch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the library raises MqttError and OSError subclasses
                self.last_error = str(exc) or type(exc).__name__
            finally:
                self._connected.clear()
                self._client = None
            if self._on_disconnect is not None:
                self._on_disconnect(self.last_error)
            if self._reconnect_now:
                self._reconnect_now = False
                continue
            delay = self._backoff.next_delay()
            log.debug("%s: disconnected (%s); retrying in %.2f s", self.client_id,
                      self.last_error, delay)
            await asyncio.sleep(delay)

    def _on_paho_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        try:
            self._on_message(Message(message.topic, bytes(message.payload or b""),
                                     bool(message.retain), int(message.qos)))
        except Exception:  # one bad handler call must not end the session
            log.exception("%s: message handler failed", self.client_id)

    async def _connect_and_dispatch(self) -> None:
        client = make_client(self.endpoint, self.client_id, will=self._will,
                             keepalive=self._keepalive)
        async with client:
            # Dispatch straight from paho's callback, before the first SUBSCRIBE: nothing
            # (retained messages included) can arrive unseen, and there is no queue and no
            # task per message as in both libraries' iterators. Both keep paho in _client.
            client._client.on_message = self._on_paho_message
            for topic, qos in self._subscriptions:
                await client.subscribe(topic, qos)
            self._client = client
            self._connected.set()
            self.connections += 1
            self._backoff.reset()
            self.last_error = None
            log.debug("%s: connected to %s:%d", self.client_id, self.endpoint.host,
                      self.endpoint.port)
            if self._on_connect is not None:
                hook = asyncio.get_running_loop().create_task(self._on_connect())
                self._hooks.add(hook)
                hook.add_done_callback(self._hooks.discard)
            # Both generations resolve this future when the connection ends. asyncio.wait
            # (not await) so that cancelling us does not cancel the library's own future.
            disconnected = client._disconnected
            await asyncio.wait([disconnected])
            error = None if disconnected.cancelled() else disconnected.exception()
            if error is not None:
                raise error
