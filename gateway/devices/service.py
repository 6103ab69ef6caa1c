"""The live device service: takes in what devices send, sends them commands, and keeps the
broker's clients in step with the registry.

The hot path (one telemetry message) is: parse and validate, merge into the in-memory
state, republish on home-gateway/<id>/state. The store is written in batches once a second,
so no message waits for SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.aio import cancel_and_wait
from gateway.broker.dynsec import DynsecClient
from gateway.broker.render import create_device_login_commands, delete_login_commands
from gateway.config import DeviceDecl
from gateway.devices.kinds import check_command
from gateway.devices.registry import DeviceError, Registry
from gateway.devices.topics import bridge_state_topic, device_topic, parse_device_topic
from gateway.devices.validate import Invalid, Limits, parse_command_result, parse_reading
from gateway.mqtt import Message, MqttSession
from gateway.store import Device, Store

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0
COMMAND_TIMEOUT_S = 10.0
ONLINE_WITHIN_S = 120.0  # a device that reported within this is "online"


class CommandRejected(Exception):
    """A command that was not sent, or not answered; str() is the reason."""


class CommandTimeout(CommandRejected):
    """Sent, but the device gave no result in time."""


class DeviceOffline(CommandRejected):
    """Not sent: the device has never connected, so nothing could deliver it."""


@dataclass(slots=True)
class Live:
    """What the daemon knows of one device since it started."""

    state: dict[str, Any]
    last_seen: float | None = None
    invalid: int = 0
    dirty: bool = False
    # Rejections not yet audited, so a flood becomes one audit line per interval.
    unaudited: int = 0
    last_reason: str = ""
    last_audit: float = 0.0


@dataclass(slots=True)
class Counters:
    accepted: int = 0
    rejected: int = 0
    unknown: int = 0
    commands: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class DeviceService:
    def __init__(self, store: Store, session: MqttSession, dynsec: DynsecClient, *,
                 limits: Limits, history_size: int, invalid_audit_interval_s: float) -> None:
        self.store = store
        self.registry = Registry(store)
        self.session = session
        self.dynsec = dynsec
        self.limits = limits
        self.history_size = history_size
        self.audit_interval = invalid_audit_interval_s
        self.counters = Counters()
        self._devices: dict[str, Device] = {}
        self._live: dict[str, Live] = {}
        self._telemetry: list[tuple[str, float, str]] = []
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._data_version = -1
        # Called with a device id when its retained state arrives: it just (re)connected.
        self.on_state: Callable[[str], None] = lambda device_id: None
        # Each called with (device id, "telemetry"|"state", ts, values) for each accepted
        # reading: the cloud relay's telemetry and shadows, the privacy week's aggregates.
        self.reading_hooks: list[Callable[[str, str, float, dict[str, Any]], None]] = []
        # Each called after the registry was (re)read: a device came, went or changed.
        self.change_hooks: list[Callable[[], None]] = []
        # Client ids with a session on the broker, as the embedded broker's log tells;
        # None when nobody tells (an external broker): presence is then recent activity.
        self.connected: set[str] | None = None
        self.reload()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop(),
                                                               name="devices-flush")

    async def stop(self) -> None:
        await cancel_and_wait(self._flusher)
        self.flush()
        for future in self._pending.values():
            future.cancel()

    def reload(self) -> None:
        """Re-read the registry (after our own change, or another process's)."""
        self._devices = {d.id: d for d in self.store.devices()}
        for device in self._devices.values():
            if device.id not in self._live:
                self._live[device.id] = Live(state=dict(device.state),
                                             last_seen=device.last_seen,
                                             invalid=device.invalid_messages)
        self._data_version = self.store.data_version()
        for hook in self.change_hooks:
            hook()

    def devices(self) -> list[Device]:
        return list(self._devices.values())

    def device(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    def online(self, within_s: float = ONLINE_WITHIN_S) -> int:
        return sum(1 for d in self._devices if self.is_online(d, within_s))

    def last_seen(self, device_id: str) -> float | None:
        live = self._live.get(device_id)
        return live.last_seen if live else None

    def is_online(self, device_id: str, within_s: float = ONLINE_WITHIN_S) -> bool:
        seen = self.last_seen(device_id)
        return seen is not None and time.time() - seen < within_s

    def present(self, device_id: str) -> bool:
        """Is the device there: connected to the broker (when its log tells), else active
        within ONLINE_WITHIN_S."""
        if self.connected is not None:
            return device_id in self.connected
        return self.is_online(device_id)

    def set_presence(self, client_id: str, up: bool) -> None:
        """From the broker's log: a session began or ended (a device's client id is its id)."""
        if self.connected is None:
            self.connected = set()
        if up:
            self.connected.add(client_id)
        else:
            self.connected.discard(client_id)

    def state(self, device_id: str) -> dict[str, Any]:
        """The device's latest reported state and readings (live, not yet flushed)."""
        live = self._live.get(device_id)
        return dict(live.state) if live else {}

    # -- what devices send -------------------------------------------------------------

    def handle(self, message: Message) -> None:
        parsed = parse_device_topic(message.topic)
        device = self._devices.get(parsed[0]) if parsed else None
        if parsed is None or device is None:
            self.counters.unknown += 1
            return
        device_id, leaf = parsed
        live = self._live[device_id]
        now = time.time()
        if leaf in ("telemetry", "state"):
            try:
                reading = parse_reading(message.payload, now, self.limits)
            except Invalid as exc:
                self._reject(device_id, live, leaf, exc, now)
                return
            live.state.update(reading.values)
            live.last_seen = now
            live.dirty = True
            self.counters.accepted += 1
            for hook in self.reading_hooks:
                hook(device_id, leaf, reading.ts, reading.values)
            if leaf == "telemetry":
                self._telemetry.append((device_id, reading.ts, json.dumps(reading.values)))
            else:
                self.on_state(device_id)
            state = dict(live.state, ts=round(reading.ts, 3))
            self.session.publish_nowait(bridge_state_topic(device_id), json.dumps(state),
                                        retain=True)
        elif leaf == "cmd/result":
            try:
                result = parse_command_result(message.payload, self.limits)
            except Invalid as exc:
                self._reject(device_id, live, leaf, exc, now)
                return
            future = self._pending.get(f"{device_id}/{result['id']}")
            if future is not None and not future.done():
                future.set_result(result)
            live.last_seen = now
            live.dirty = True

    def _reject(self, device_id: str, live: Live, leaf: str, error: Invalid,
                now: float) -> None:
        self.counters.rejected += 1
        self.counters.by_reason[error.code] = self.counters.by_reason.get(error.code, 0) + 1
        live.invalid += 1
        live.unaudited += 1
        live.last_reason = f"{leaf}: {error}"
        live.dirty = True
        if now - live.last_audit >= self.audit_interval:
            self._audit_rejections(device_id, live, now)

    def _audit_rejections(self, device_id: str, live: Live, now: float) -> None:
        self.store.audit(f"device:{device_id}", "message.invalid", "dropped", target=device_id,
                         detail=f"{live.unaudited} dropped; last: {live.last_reason}")
        log.warning("device %s: dropped %d invalid message(s); last: %s", device_id,
                    live.unaudited, live.last_reason)
        live.unaudited = 0
        live.last_audit = now

    # -- persistence -------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                self.flush()
                if self.store.data_version() != self._data_version:
                    self.reload()
            except Exception:
                log.exception("devices: could not write to the store")

    def flush(self) -> None:
        """Write buffered telemetry, device activity and due rejection audits."""
        rows, self._telemetry = self._telemetry, []
        if rows:
            self.store.add_telemetry(rows, self.history_size)
        now = time.time()
        activity = []
        for device_id, live in self._live.items():
            if live.unaudited and now - live.last_audit >= self.audit_interval:
                self._audit_rejections(device_id, live, now)
            if live.dirty and device_id in self._devices:
                activity.append((device_id, live.last_seen or 0.0, live.invalid,
                                 json.dumps(live.state)))
                live.dirty = False
        if activity:
            self.store.save_device_activity(activity)
        self._data_version = self.store.data_version()

    # -- commands ----------------------------------------------------------------------

    async def send_command(self, device_id: str, action: str, params: dict[str, Any], *,
                           source: str, actor: str | None = None,
                           timeout: float = COMMAND_TIMEOUT_S) -> dict[str, Any]:
        """Validate, send and await the device's result. Every outcome is audited, by
        `actor` (default: the source) with the source in the detail."""
        device = self._devices.get(device_id)
        problem = (f"unknown device {device_id!r}" if device is None
                   else check_command(device.kind, action, params))
        who = actor or source
        action_note = f"{action} (source {source})" if actor else action
        if problem:
            self.store.audit(who, "command", "rejected", target=device_id,
                             detail=f"{action_note}: {problem}")
            raise CommandRejected(problem)
        if self.last_seen(device_id) is None:
            # Nothing would deliver it (commands are not retained): say so now, not in 10 s.
            self.store.audit(who, "command", "rejected", target=device_id,
                             detail=f"{action_note}: never connected")
            raise DeviceOffline(f"{device_id} has never connected")
        command_id = secrets.token_hex(8)
        key = f"{device_id}/{command_id}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        self.counters.commands += 1
        try:
            payload = json.dumps({"id": command_id, "action": action, "params": params})
            await self.session.publish(device_topic(device_id, "cmd"), payload, qos=1)
            result = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.store.audit(who, "command", "timeout", target=device_id, detail=action_note)
            raise CommandTimeout(f"no result from {device_id} within {timeout:g} s") from None
        finally:
            self._pending.pop(key, None)
        self.store.audit(who, "command", str(result["status"]), target=device_id,
                         detail=action_note)
        return result

    # -- registry changes, applied to the live broker ---------------------------------

    async def add(self, id: str, kind: str, *, name: str | None = None, source: str,
                  mac: str | None = None, ip: str | None = None,
                  actor: str = "admin") -> Device:
        device = self.registry.add(id, kind, name=name, source=source, mac=mac, ip=ip,
                                   actor=actor)
        self.reload()
        return device

    async def issue_credential(self, id: str, actor: str = "admin") -> tuple[str, str]:
        old = [c.username for c in self.store.credentials(id)]
        username, secret = self.registry.issue_credential(id, actor)
        await self.dynsec.apply(delete_login_commands(old)
                                + create_device_login_commands(id, username, secret))
        self.reload()
        return username, secret

    async def remove(self, id: str, actor: str = "admin") -> None:
        usernames = self.registry.remove(id, actor)
        self.reload()
        self._live.pop(id, None)
        await self.dynsec.apply(delete_login_commands(usernames))
        # Clear the retained bridge state so nothing downstream shows a ghost.
        with contextlib.suppress(Exception):
            await self.session.publish(bridge_state_topic(id), b"", qos=1, retain=True)

    async def sync_declared(self, declared: Iterable[DeviceDecl]) -> None:
        """Devices declared in the config file. A declared device that left the file is
        removed, its credential revoked."""
        wanted = set()
        for decl in declared:
            wanted.add(decl.id)
            try:
                self.registry.add(decl.id, decl.kind, name=decl.name, source="config",
                                  mac=decl.mac, ip=decl.ip, actor="config")
                self.store.set_rotation_days(decl.id, decl.rotation_days)
                if decl.policy is not None or decl.profile is not None:
                    current = self.store.device(decl.id)
                    assert current is not None
                    self.store.set_device_policy(decl.id, decl.policy or current.policy,
                                                 decl.profile or current.profile)
            except DeviceError as exc:
                log.error("config: device %s: %s", decl.id, exc)
        for device in self.store.devices():
            if device.source == "config" and device.id not in wanted:
                log.info("config: device %s is no longer declared; removing it", device.id)
                await self.remove(device.id, actor="config")
        self.reload()
