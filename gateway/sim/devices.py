"""Simulated devices that speak the device contract (DESIGN §6).

Each agent holds its own broker credential, publishes retained state on connect and
telemetry at its kind's rate, obeys commands and answers on cmd/result. Used by the demo,
the tests and the benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.aio import cancel_and_wait
from gateway.broker.render import enrollment_client_id, enrollment_username
from gateway.devices.enrollment import token_parts
from gateway.devices.kinds import KINDS
from gateway.devices.topics import device_topic, enroll_topic
from gateway.mqtt import Endpoint, Message, MqttSession, login_refused


def initial_state(kind: str, rng: random.Random) -> dict[str, Any]:
    if kind == "thermostat":
        return {"temperature": round(rng.uniform(17, 22), 1), "humidity": rng.randint(35, 55),
                "target": 21.0, "mode": "heat", "heating": False}
    if kind == "plug":
        return {"on": True, "power_w": 0.0, "energy_wh": 0.0}
    if kind == "bulb":
        return {"on": False, "brightness": 80}
    if kind == "door":
        return {"open": False, "battery": rng.randint(60, 100)}
    if kind == "camera":
        return {"motion": False, "recording": True}
    return {"temperature": round(rng.uniform(18, 23), 1), "humidity": rng.randint(35, 60),
            "battery": rng.randint(60, 100)}


def step(kind: str, state: dict[str, Any], dt: float, rng: random.Random) -> None:
    """Advance the physical model by dt seconds."""
    if kind == "thermostat":
        heating = state["mode"] in ("heat", "auto") and state["temperature"] < state["target"]
        drift = 0.02 * dt if heating else -0.005 * dt
        state["temperature"] = round(state["temperature"] + drift + rng.gauss(0, 0.02), 2)
        state["heating"] = heating
    elif kind == "plug":
        state["power_w"] = round(rng.gauss(60, 3), 1) if state["on"] else 0.0
        state["energy_wh"] = round(state["energy_wh"] + state["power_w"] * dt / 3600, 3)
    elif kind == "door":
        if rng.random() < 0.02:
            state["open"] = not state["open"]
    elif kind == "camera":
        state["motion"] = rng.random() < 0.1
    elif kind == "sensor":
        state["temperature"] = round(state["temperature"] + rng.gauss(0, 0.05), 2)


def obey(kind: str, state: dict[str, Any], action: str, params: dict[str, Any]) -> str | None:
    """Apply a command; return an error for one this device cannot carry out."""
    if action not in KINDS[kind].actions:
        return f"unsupported action {action}"
    if action == "set_target":
        state["target"] = float(params["target"])
    elif action == "set_mode":
        state["mode"] = params["mode"]
    elif action == "set_power":
        state["on"] = bool(params["on"])
    elif action == "set_brightness":
        state["brightness"] = int(params["brightness"])
        state["on"] = state["brightness"] > 0
    elif action == "set_recording":
        state["recording"] = bool(params["on"])
    return None


@dataclass
class SimDevice:
    """A device agent. It keeps the login it is connected with as a fallback when it takes
    an offered one, so a refused new login (a rotation the gateway rolled back) costs it
    one reconnect, never its connection."""

    id: str
    kind: str
    endpoint: Endpoint
    interval_s: float | None = None  # None: the kind's realistic rate
    seed: int | None = None
    # Misbehaviour for tests: never acknowledge offers, or drop offline when one arrives.
    acknowledge: bool = True
    offline_on_offer_s: float | None = None
    # The ack topic of a login received by enrollment or offer, sent after each connect.
    ack_topic: str | None = None
    commands_handled: int = 0
    telemetry_sent: int = 0
    offers_seen: int = 0
    longest_offline_s: float = 0.0
    state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.state = self.state or initial_state(self.kind, self._rng)
        self.fallback: Endpoint | None = None
        self._offline_since: float | None = None
        self.session = MqttSession(
            self.endpoint, client_id=self.id, on_message=self._on_message,
            subscriptions=[(device_topic(self.id, "cmd"), 1),
                           (device_topic(self.id, "creds"), 1)],
            on_connect=self._on_connect, on_disconnect=self._on_disconnect)
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.session.connected

    @property
    def username(self) -> str | None:
        return self.session.endpoint.username

    async def start(self) -> None:
        self.session.start()
        self._task = asyncio.get_running_loop().create_task(self._report_loop())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self.session.stop()

    async def _on_connect(self) -> None:
        if self._offline_since is not None:
            gap = time.monotonic() - self._offline_since
            self.longest_offline_s = max(self.longest_offline_s, gap)
            self._offline_since = None
        with contextlib.suppress(Exception):
            await self._publish_state()
            if self.ack_topic is not None:
                await self.session.publish(self.ack_topic, b"{}", qos=1)

    def _on_disconnect(self, error: str | None) -> None:
        if self._offline_since is None:
            self._offline_since = time.monotonic()
        if login_refused(error) and self.fallback is not None:
            # The login we hold was refused: go back to the one that worked before.
            self.session.endpoint, self.fallback = self.fallback, self.session.endpoint

    async def _publish_state(self) -> None:
        with contextlib.suppress(Exception):
            await self.session.publish(device_topic(self.id, "state"), json.dumps(self.state),
                                       qos=1, retain=True)

    async def _report_loop(self) -> None:
        interval = self.interval_s or KINDS[self.kind].telemetry_interval_s
        # Spread devices over the interval like a real fleet, not all at once.
        await asyncio.sleep(self._rng.uniform(0, min(interval, 2.0)))
        last = time.monotonic()
        while True:
            now = time.monotonic()
            step(self.kind, self.state, now - last, self._rng)
            last = now
            if self.session.connected:
                reading = {"ts": round(time.time(), 3), **self._metrics()}
                if self.session.publish_nowait(device_topic(self.id, "telemetry"),
                                               json.dumps(reading)):
                    self.telemetry_sent += 1
            await asyncio.sleep(interval)

    def _metrics(self) -> dict[str, Any]:
        return {k: self.state[k] for k in KINDS[self.kind].metrics if k in self.state}

    def _on_message(self, message: Message) -> None:
        if message.topic == device_topic(self.id, "creds"):
            self._on_offer(message.payload)
            return
        try:
            command = json.loads(message.payload)
            command_id, action = str(command["id"]), str(command["action"])
            params = command.get("params") or {}
        except (ValueError, KeyError, TypeError):
            return
        error = obey(self.kind, self.state, action, params)
        self.commands_handled += 1
        result: dict[str, Any] = {"id": command_id, "status": "error" if error else "ok"}
        if error:
            result["error"] = error
        else:
            result["state"] = self.state
        self.session.publish_nowait(device_topic(self.id, "cmd/result"), json.dumps(result))
        asyncio.get_running_loop().create_task(self._publish_state())

    def _on_offer(self, payload: bytes) -> None:
        try:
            offer = json.loads(payload)
            new = replace(self.session.endpoint, username=str(offer["username"]),
                          password=str(offer["password"]))
            ack = str(offer["ack_topic"])
        except (ValueError, KeyError, TypeError):
            return
        self.offers_seen += 1
        if not self.acknowledge:
            return
        if new.username == self.session.endpoint.username:  # switched already: say so again
            self.session.publish_nowait(ack, b"{}")
            return
        asyncio.get_running_loop().create_task(self._switch(new, ack))

    async def _switch(self, new: Endpoint, ack: str) -> None:
        if self.offline_on_offer_s is not None:
            delay, self.offline_on_offer_s = self.offline_on_offer_s, None  # once
            await self.session.stop()
            await asyncio.sleep(delay)
            self.session.start()  # back with the old login; the gateway offers again
            return
        self.fallback, self.ack_topic = self.session.endpoint, ack
        self.session.endpoint = new
        await self.session.reconnect()


async def enroll(endpoint: Endpoint, token: str, hello: dict[str, Any],
                 timeout: float = 10.0) -> dict[str, Any]:
    """Enroll like a new device: log in with the token, say hello, return the answer
    (status, device_id, username, password, ack_topic). TimeoutError when the broker
    refuses the token or nothing answers."""
    token_id, secret = token_parts(token)
    answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def on_message(message: Message) -> None:
        if not answer.done():
            answer.set_result(json.loads(message.payload))

    session: MqttSession

    async def say_hello() -> None:
        await session.publish(enroll_topic(token_id, "hello"), json.dumps(hello), qos=1)

    session = MqttSession(
        replace(endpoint, username=enrollment_username(token_id), password=secret),
        client_id=enrollment_client_id(token_id), on_message=on_message,
        subscriptions=[(enroll_topic(token_id, "creds"), 1)], on_connect=say_hello)
    async with session:
        return await asyncio.wait_for(answer, timeout)


async def enrolled_device(endpoint: Endpoint, token: str, kind: str, **hello: Any) -> SimDevice:
    """A SimDevice that got its login through enrollment (not started yet)."""
    answer = await enroll(endpoint, token, {"kind": kind, **hello})
    if answer.get("status") != "ok":
        raise RuntimeError(f"enrollment refused: {answer.get('error')}")
    login = replace(endpoint, username=answer["username"], password=answer["password"])
    return SimDevice(answer["device_id"], kind, login, ack_topic=answer["ack_topic"])


class Fleet:
    """A group of simulated devices started and stopped together."""

    def __init__(self, devices: Sequence[SimDevice]) -> None:
        self.devices = list(devices)

    async def start(self) -> None:
        for device in self.devices:
            await device.start()

    async def stop(self) -> None:
        await asyncio.gather(*(d.stop() for d in self.devices))

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(
            asyncio.gather(*(d.session.wait_connected() for d in self.devices)), timeout)

    @property
    def connected(self) -> int:
        return sum(d.connected for d in self.devices)


def fleet_ids(kinds: Sequence[str], count: int, prefix: str = "sim") -> list[tuple[str, str]]:
    """(id, kind) pairs cycling through `kinds`: sim-thermostat-1, sim-plug-2, …"""
    return [(f"{prefix}-{kinds[i % len(kinds)]}-{i + 1}", kinds[i % len(kinds)])
            for i in range(count)]
