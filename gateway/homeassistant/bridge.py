"""The Home Assistant bridge: discovery configs, availability and states out; commands in.

Everything published is derived from the registry and the daemon's status by the pure
functions in `discovery.py`, and compared with what was published before:
- a config is (re)published when it is new or differs; every config the gateway ever
  published and no longer wants is cleared with an empty retained message, also across
  restarts (the store remembers the topics), so no ghost entity stays behind;
- availability per device is retained "online"/"offline" from the device's presence, and
  together with the gateway's own retained status (its MQTT will) decides availability;
- when Home Assistant announces itself (`<prefix>/status` = "online") everything is
  published again after a random delay, so many bridges do not answer at once.

Commands arrive on `home-gateway/<id>/<key>/set`, are parsed and checked against the
device kind's schema, and go through the same path as every local command (audited with
source "homeassistant"). Invalid ones are rejected and audited, never forwarded.

The bridge talks to Home Assistant through the gateway's own broker session, or through a
session of its own to Home Assistant's broker (`homeassistant.broker = "external"`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.aio import cancel_and_wait
from gateway.config import Config, ExternalBroker
from gateway.devices.service import CommandRejected, DeviceService
from gateway.devices.topics import DEVICE_ID, HA_BRIDGE_ROOT, bridge_state_topic
from gateway.homeassistant.discovery import (
    GATEWAY_STATE_TOPIC,
    GATEWAY_STATUS_TOPIC,
    SET_SUBSCRIPTION,
    DeviceInfo,
    Entity,
    SetError,
    availability_topic,
    device_entities,
    gateway_entities,
    gateway_state,
    parse_set,
)
from gateway.mqtt import Endpoint, Message, MqttSession, NotConnected, Will
from gateway.store import Device, Store

log = logging.getLogger(__name__)

ACTOR = "homeassistant"
SYNC_INTERVAL_S = 5.0  # presence and the gateway's own state are checked this often
GATEWAY_ID_SETTING = "homeassistant.gateway_id"
MAX_INFLIGHT_COMMANDS = 32  # more at once are refused, not queued without bound

Command = Callable[[str, str, dict[str, Any]], Awaitable[Any]]


def parse_set_topic(topic: str) -> tuple[str, str] | None:
    """`home-gateway/<id>/<key>/set` -> (id, key); else None."""
    parts = topic.split("/")
    if (len(parts) == 4 and parts[0] == HA_BRIDGE_ROOT and parts[3] == "set"
            and DEVICE_ID.fullmatch(parts[1]) and parts[2]):
        return parts[1], parts[2]
    return None


def device_info(device: Device) -> DeviceInfo:
    return DeviceInfo(id=device.id, name=device.name, kind=device.kind, model=device.model,
                      firmware=device.firmware, mac=device.mac)


def external_endpoint(external: ExternalBroker) -> Endpoint:
    password = Path(external.password_file).read_text().strip()
    tls = (ssl.create_default_context(cafile=str(external.ca_file) if external.ca_file else None)
           if external.tls else None)
    return Endpoint(external.host, external.port, external.username, password, tls)


class HomeAssistantBridge:
    def __init__(self, config: Config, store: Store, devices: DeviceService,
                 local: MqttSession, command: Command,
                 gateway_status: Callable[[], Mapping[str, Any]]) -> None:
        self.config = config.homeassistant
        self.store = store
        self.devices = devices
        self.local = local
        self.command = command
        self.gateway_status = gateway_status
        self.gateway_id = store.setting(GATEWAY_ID_SETTING) or self._new_gateway_id(store)
        self.birth_topic = f"{self.config.prefix}/status"
        self.session: MqttSession = local
        self.last_birth: dict[str, Any] | None = None  # payload and when, since start
        self.commands = {"ok": 0, "rejected": 0, "failed": 0}
        self._published: dict[str, str] = {}  # topic -> payload sent since start
        self._owners = store.ha_entities()  # config topic -> device id, across restarts
        self._wake = asyncio.Event()
        self._full = False  # the next sync re-publishes everything
        self._tasks: list[asyncio.Task[None]] = []
        self._commands: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    @staticmethod
    def _new_gateway_id(store: Store) -> str:
        """Short and random: two gateways in one Home Assistant never share an entity id."""
        gateway_id = secrets.token_hex(3)
        store.set_setting(GATEWAY_ID_SETTING, gateway_id)
        return gateway_id

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    @property
    def external(self) -> bool:
        return self.config.broker == "external"

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if not self.enabled:
            return
        subscriptions = [(self.birth_topic, 1), (SET_SUBSCRIPTION, 1)]
        if self.external:
            assert self.config.external is not None
            self.session = MqttSession(
                external_endpoint(self.config.external),
                client_id=f"home-gateway-{self.gateway_id}", on_message=self.handle,
                subscriptions=subscriptions, on_connect=self.connected,
                will=Will(GATEWAY_STATUS_TOPIC, b"offline"))
            self.session.start()  # Home Assistant's broker may be down: it reconnects
        else:
            for topic, qos in subscriptions:
                await self.local.subscribe(topic, qos)
        self.devices.change_hooks.append(self._wake.set)
        self._full = True
        self._tasks = [asyncio.get_running_loop().create_task(self._sync_loop(),
                                                              name="homeassistant-sync")]

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.devices.change_hooks.remove(self._wake.set)
        await cancel_and_wait(*self._tasks, *self._commands)
        if self.external:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.session.publish(GATEWAY_STATUS_TOPIC, b"offline", 1,
                                                            True), 1)
            await self.session.stop()

    async def connected(self) -> None:
        """After every (re)connection: the broker may have lost what was retained."""
        if self.external:
            with contextlib.suppress(Exception):
                await self.session.publish(GATEWAY_STATUS_TOPIC, b"online", qos=1, retain=True)
        self.republish()

    def republish(self, delay_s: float = 0.0) -> None:
        """Publish everything again (now, or after `delay_s`)."""
        if not self.enabled:
            return
        if delay_s <= 0:
            self._full = True
            self._wake.set()
            return
        task = asyncio.get_running_loop().create_task(self._republish_later(delay_s))
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)

    async def _republish_later(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self.republish()

    # -- what arrives ------------------------------------------------------------------

    def wants(self, topic: str) -> bool:
        """Is this message for the bridge (on the gateway's own session)?"""
        return self.enabled and (topic == self.birth_topic or (topic.endswith("/set")
                                 and topic.startswith(f"{HA_BRIDGE_ROOT}/")))

    def handle(self, message: Message) -> None:
        if message.topic == self.birth_topic:
            payload = message.payload[:32].decode(errors="replace")
            self.last_birth = {"payload": payload, "at": time.time()}
            if payload == "online":
                # Jitter: many integrations answer one birth; spread them out.
                jitter = self.config.republish_jitter_s
                self.republish(secrets.randbelow(jitter * 1000 + 1) / 1000 if jitter else 0)
            return
        target = parse_set_topic(message.topic)
        if target is None:
            return
        if len(self._commands) >= MAX_INFLIGHT_COMMANDS:
            self._reject(*target, "too many commands at once; try again")
            return
        task = asyncio.get_running_loop().create_task(self._on_set(*target, message.payload))
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)

    async def _on_set(self, device_id: str, key: str, payload: bytes) -> None:
        device = self.devices.device(device_id)
        if device is None:
            self._reject(device_id, key, f"unknown device {device_id!r}")
            return
        try:
            action, params = parse_set(device.kind, key, payload)
        except SetError as exc:
            self._reject(device_id, key, str(exc))
            return
        try:
            await self.command(device_id, action, params)
            self.commands["ok"] += 1
        except CommandRejected as exc:  # audited by the command path itself
            self.commands["failed"] += 1
            log.warning("homeassistant: %s %s: %s", device_id, action, exc)

    def _reject(self, device_id: str, key: str, problem: str) -> None:
        self.commands["rejected"] += 1
        self.store.audit(ACTOR, "command", "rejected", target=device_id,
                         detail=f"{key}/set (source homeassistant): {problem}")
        log.warning("homeassistant: rejected %s/%s/set: %s", device_id, key, problem)

    # -- what is published -------------------------------------------------------------

    def entities(self) -> dict[str, tuple[str, Entity]]:
        """Every config the gateway wants published: topic -> (device id, entity)."""
        prefix, version = self.config.prefix, __version__
        wanted = {e.topic: ("", e) for e in gateway_entities(prefix, self.gateway_id, version,
                                                              self.config.name)}
        for device in self.devices.devices():
            for entity in device_entities(prefix, self.gateway_id, device_info(device),
                                          version):
                wanted[entity.topic] = (device.id, entity)
        return wanted

    async def _sync_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), SYNC_INTERVAL_S)
            self._wake.clear()
            try:
                await self.sync()
            except NotConnected:
                self._full = True  # try everything again once connected
            except Exception:
                log.exception("homeassistant: publishing failed")

    async def sync(self) -> None:
        """Bring the broker's retained messages in line with what the gateway wants."""
        if not self.session.connected:
            raise NotConnected("not connected")
        async with self._lock:
            full, self._full = self._full, False
            if full:
                self._published.clear()
            wanted = self.entities()
            added: dict[str, str] = {}
            for topic, (device_id, entity) in wanted.items():
                added[topic] = device_id
                await self._put(topic, json.dumps(entity.payload, sort_keys=True))
            gone = [t for t in self._owners if t not in wanted]
            for topic in gone:  # an empty retained config removes the entity
                await self.session.publish(topic, b"", qos=1, retain=True)
                self._published.pop(topic, None)
            gone_devices = {self._owners[t] for t in gone} - {d for d, _ in wanted.values()}
            for device_id in gone_devices - {""}:
                for topic in (availability_topic(device_id), bridge_state_topic(device_id)):
                    await self.session.publish(topic, b"", qos=1, retain=True)
                    self._published.pop(topic, None)
            if gone or added.keys() != self._owners.keys():
                new = {t: d for t, d in added.items() if self._owners.get(t) != d}
                self.store.set_ha_entities(new, gone)
                self._owners = dict(added)
            for device in self.devices.devices():
                present = self.devices.present(device.id)
                await self._put(availability_topic(device.id),
                                "online" if present else "offline")
                if full and self.external:  # the gateway's broker has them retained already
                    state = self.devices.state(device.id)
                    if state:
                        await self._put(bridge_state_topic(device.id), json.dumps(state))
            await self._put(GATEWAY_STATE_TOPIC,
                            json.dumps(gateway_state(self.gateway_status()), sort_keys=True))
            if full and not self.external:
                await self._republish_states()

    async def _put(self, topic: str, payload: str) -> None:
        """Publish retained unless exactly this was published already."""
        if self._published.get(topic) == payload:
            return
        await self.session.publish(topic, payload, qos=1, retain=True)
        self._published[topic] = payload

    async def _republish_states(self) -> None:
        """Home Assistant asked for everything: the states too (retained, but a restarted
        broker or a cleared retained message would leave entities empty)."""
        for device in self.devices.devices():
            state = self.devices.state(device.id)
            if state:
                await self.session.publish(bridge_state_topic(device.id), json.dumps(state),
                                           qos=0, retain=True)

    def mirror_state(self, device_id: str, state: Mapping[str, Any]) -> None:
        """In external mode, a device's state goes to Home Assistant's broker as well."""
        if self.enabled and self.external and self.session.connected:
            self.session.publish_nowait(bridge_state_topic(device_id), json.dumps(state),
                                        retain=True)

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "broker": self.config.broker,
            "prefix": self.config.prefix,
            "connected": self.session.connected if self.enabled else False,
            "gateway_id": self.gateway_id,
            "entities": len(self._owners),
            "devices": len({d for d in self._owners.values() if d}),
            "last_birth": self.last_birth,
            "commands": dict(self.commands),
        }
