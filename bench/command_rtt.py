"""(b) Command round trip: gateway -> device -> result, vs a direct client doing the same.

An in-process lab (daemon, broker child, one simulated plug). The gateway path is
DeviceService.send_command; the baseline publishes the same command with the gateway's
admin login (QoS 1, like the gateway) and awaits the matching cmd/result. The two
alternate command by command, so drift and noise hit both alike.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from bench.common import Figure, percentile, progress, running
from gateway.devices.topics import device_topic
from gateway.mqtt import Endpoint, Message, MqttSession
from gateway.sim.lab import start_lab

DEVICE = "bench-plug"
TIMEOUT_S = 10.0


class DirectClient:
    """Commands a device straight over MQTT: publish cmd, await the matching cmd/result."""

    def __init__(self, endpoint: Endpoint, device_id: str) -> None:
        self.device_id = device_id
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self.session = MqttSession(
            endpoint, client_id="bench-direct", on_message=self._on_message,
            subscriptions=[(device_topic(device_id, "cmd/result"), 1)])

    def _on_message(self, message: Message) -> None:
        result = json.loads(message.payload)
        future = self._pending.pop(str(result.get("id")), None)
        if future is not None and not future.done():
            future.set_result(result)

    async def command(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        self._next += 1
        command_id = f"direct-{self._next}"
        future = self._pending[command_id] = asyncio.get_running_loop().create_future()
        payload = json.dumps({"id": command_id, "action": action, "params": params})
        await self.session.publish(device_topic(self.device_id, "cmd"), payload, qos=1)
        return await asyncio.wait_for(future, TIMEOUT_S)


async def measure(workdir: Path, quick: bool) -> list[Figure]:
    count, warmup = (100, 20) if quick else (500, 50)
    gateway_ms: list[float] = []
    direct_ms: list[float] = []
    lab = await start_lab(workdir / "state")
    try:
        [plug] = await lab.add_devices([(DEVICE, "plug")], interval_s=3600)
        await plug.session.wait_connected(TIMEOUT_S)
        direct = DirectClient(lab.daemon.endpoint, DEVICE)
        async with running([direct.session]):
            for i in range(warmup + count):
                params = {"on": i % 2 == 0}
                t0 = time.perf_counter()
                result = await lab.daemon.devices.send_command(DEVICE, "set_power", params,
                                                               source="bench")
                t1 = time.perf_counter()
                direct_result = await direct.command("set_power", params)
                t2 = time.perf_counter()
                if result["status"] != "ok" or direct_result["status"] != "ok":
                    raise RuntimeError(f"command failed: {result} / {direct_result}")
                if i >= warmup:
                    gateway_ms.append((t1 - t0) * 1000)
                    direct_ms.append((t2 - t1) * 1000)
    finally:
        await lab.stop()
    p50 = percentile(gateway_ms, 50), percentile(direct_ms, 50)
    p99 = percentile(gateway_ms, 99), percentile(direct_ms, 99)
    added = p50[0] - p50[1]
    progress(f"command round trip: gateway p50 {p50[0]:.2f} ms, direct p50 {p50[1]:.2f} ms "
             f"({count} each)")
    return [
        Figure(f"command round trip p50 (ms, n={count})", *p50),
        Figure(f"command round trip p99 (ms, n={count})", *p99),
        Figure("command: added at p50 (ms)", added, target="≤ 0.5 ms", met=added <= 0.5),
    ]
