"""(i) Home Assistant: how fast a new device appears there, and how fast its switch acts.

An in-process lab (daemon, broker child, one simulated plug) and a client standing in for
Home Assistant, logged in with Home Assistant's own credential and subscribed to the
discovery and home-gateway trees, all on 127.0.0.1.

- set -> state: Home Assistant publishes ON/OFF on home-gateway/<plug>/on/set; timed until
  the mirrored state with the new value reaches it (parse, check, relay, device, state,
  mirror). Baseline, alternating command by command: a direct client (the gateway's admin
  login) publishes the same command on devices/<plug>/cmd and waits for the device's own
  state with the new value: the device round trip without the gateway in between.
- adoption -> discovery: a device is registered and given its credential (what adopting
  does); timed until every discovery config of its kind has reached Home Assistant.
  Baseline: the same direct device command round trip.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from bench.common import Figure, percentile, progress, running
from gateway import __version__
from gateway.devices.topics import device_topic
from gateway.homeassistant.discovery import DeviceInfo, device_entities
from gateway.mqtt import Message, MqttSession
from gateway.sim.lab import start_lab

DEVICE = "bench-plug"
TIMEOUT_S = 10.0


class Watcher:
    """Resolves a future when a message on `topic` satisfies a predicate."""

    def __init__(self) -> None:
        self.waiting: list[tuple[str, Any, asyncio.Future[float]]] = []

    def on_message(self, message: Message) -> None:
        now = time.perf_counter()
        for entry in list(self.waiting):
            topic, check, future = entry
            if message.topic == topic and not future.done() and check(message.payload):
                future.set_result(now)
                self.waiting.remove(entry)

    def expect(self, topic: str, check: Any) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting.append((topic, check, future))
        return future


def has_on(value: bool) -> Any:
    def check(payload: bytes) -> bool:
        try:
            return bool(json.loads(payload).get("on") is value)
        except ValueError:
            return False
    return check


async def measure(workdir: Path, quick: bool) -> list[Figure]:
    count, warmup, adoptions = (50, 10, 10) if quick else (300, 30, 40)
    lab = await start_lab(workdir / "state", extra_config="\n[homeassistant]\n"
                                                          "republish_jitter_s = 0\n")
    set_ms: list[float] = []
    direct_ms: list[float] = []
    adopt_ms: list[float] = []
    try:
        await lab.add_devices([(DEVICE, "plug")], interval_s=3600)
        assert lab.daemon.ha_login is not None
        login = lab.daemon.ha_login.current
        ha_watch, direct_watch = Watcher(), Watcher()
        ha = MqttSession(lab.endpoint(login["username"], login["password"]),
                         client_id="bench-ha", on_message=ha_watch.on_message,
                         subscriptions=[("homeassistant/#", 1), ("home-gateway/#", 1)])
        direct = MqttSession(lab.daemon.endpoint, client_id="bench-direct",
                             on_message=direct_watch.on_message,
                             subscriptions=[(device_topic(DEVICE, "state"), 1)])
        async with running([ha, direct]):
            state_topic = f"home-gateway/{DEVICE}/state"
            for i in range(warmup + count):
                value = True  # Home Assistant turns it on, the direct client off again
                arrived = ha_watch.expect(state_topic, has_on(value))
                t0 = time.perf_counter()
                await ha.publish(f"home-gateway/{DEVICE}/on/set", b"ON" if value else b"OFF",
                                 qos=1)
                t1 = await asyncio.wait_for(arrived, TIMEOUT_S)
                value = False
                arrived = direct_watch.expect(device_topic(DEVICE, "state"), has_on(value))
                t2 = time.perf_counter()
                await direct.publish(device_topic(DEVICE, "cmd"), json.dumps(
                    {"id": f"d{i}", "action": "set_power", "params": {"on": value}}), qos=1)
                t3 = await asyncio.wait_for(arrived, TIMEOUT_S)
                if i >= warmup:
                    set_ms.append((t1 - t0) * 1000)
                    direct_ms.append((t3 - t2) * 1000)
            bridge = lab.daemon.homeassistant
            for n in range(adoptions):
                device_id = f"bench-new-{n}"
                # Its configs, known before it exists: the watch is set before it is added.
                wanted = device_entities(
                    bridge.config.prefix, bridge.gateway_id,
                    DeviceInfo(device_id, device_id, "thermostat", None, None, None),
                    __version__)
                futures = [ha_watch.expect(e.topic, lambda p: bool(p)) for e in wanted]
                await asyncio.sleep(0.05)
                t0 = time.perf_counter()
                await lab.daemon.devices.add(device_id, "thermostat", source="bench",
                                             actor="bench")
                await lab.daemon.devices.issue_credential(device_id, "bench")
                done = await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT_S)
                adopt_ms.append((max(done) - t0) * 1000)
    finally:
        await lab.stop()
    p50 = percentile(set_ms, 50), percentile(direct_ms, 50)
    p99 = percentile(set_ms, 99), percentile(direct_ms, 99)
    adopt = percentile(adopt_ms, 50), percentile(adopt_ms, 99)
    progress(f"Home Assistant set -> state p50 {p50[0]:.2f} ms vs direct {p50[1]:.2f} ms; "
             f"adoption -> discovery p50 {adopt[0]:.2f} ms")
    return [
        Figure(f"HA set -> state p50 (ms, n={count})", *p50),
        Figure(f"HA set -> state p99 (ms, n={count})", *p99),
        Figure(f"adoption -> HA discovery p50 (ms, n={adoptions})", adopt[0], p50[1]),
        Figure(f"adoption -> HA discovery p99 (ms, n={adoptions})", adopt[1], p99[1]),
    ]
