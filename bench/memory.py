"""(c) Memory: the daemon's RSS with 100 simulated devices connected, vs the bare relay (a
Python process holding one MQTT client) on the same broker. The broker's RSS is shown too."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.common import Figure, Gateway, bare_relay, gateway_process, progress, rss_mb
from gateway.sim.devices import Fleet, SimDevice

DEVICES = 100
INTERVAL_S = 5.0
ONLINE_TIMEOUT_S = 30.0


async def measure(workdir: Path, quick: bool) -> list[Figure]:
    sample_s = 2.0 if quick else 5.0
    async with gateway_process(workdir) as gateway:
        enrolled = await gateway.enroll(DEVICES, prefix="bench-mem")
        fleet = Fleet([SimDevice(device_id, "sensor", ep, interval_s=INTERVAL_S, seed=i)
                       for i, (device_id, ep) in enumerate(enrolled)])
        async with bare_relay(gateway.admin, workdir) as relay:
            await fleet.start()
            try:
                await fleet.wait_connected(ONLINE_TIMEOUT_S)
                status = await _wait_online(gateway, DEVICES)
                pids = {"daemon": gateway.pid, "relay": relay.pid,
                        "broker": status["broker"]["pid"]}
                peak = dict.fromkeys(pids, 0.0)
                deadline = time.monotonic() + sample_s
                while time.monotonic() < deadline:  # the peak over a few telemetry intervals
                    for name, pid in pids.items():
                        peak[name] = max(peak[name], rss_mb(pid))
                    await asyncio.sleep(0.25)
            finally:
                await fleet.stop()
    progress(f"memory: daemon {peak['daemon']:.1f} MB, relay {peak['relay']:.1f} MB, "
             f"broker {peak['broker']:.1f} MB")
    return [
        Figure(f"daemon RSS, {DEVICES} devices online (MB)", peak["daemon"], peak["relay"],
               target="≤ 70 MB", met=peak["daemon"] <= 70),
        Figure(f"broker RSS, {DEVICES} devices (MB, for information)", peak["broker"]),
    ]


async def _wait_online(gateway: Gateway, count: int) -> dict[str, Any]:
    deadline = time.monotonic() + ONLINE_TIMEOUT_S
    while True:
        status: dict[str, Any] = await gateway.control("status")
        if status["devices"]["online"] >= count:
            return status
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {status['devices']['online']}/{count} devices online")
        await asyncio.sleep(0.5)
