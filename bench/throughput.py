"""(a) Telemetry throughput, closed loop: the daemon vs the bare relay on the same broker.

Each round publishes `batch` QoS 0 readings spread over the devices and waits until the
counter has seen every republished state; throughput = messages / time of the timed rounds.
The two routes run alternately (never at once), twice each; the best phase of each counts.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    Counter,
    Figure,
    bare_relay,
    cpu_seconds,
    gateway_process,
    progress,
    running,
    session,
)
from gateway.mqtt import MqttSession

DEVICES = 20
BATCH = 200
WARMUP_ROUNDS = 3
MAX_ROUNDS = 5000
ROUND_TIMEOUT_S = 5.0
PAUSE_S = 1.5  # lets the daemon's once-a-second store flush finish between phases


@dataclass
class Route:
    """One way through the broker: who publishes where, and who counts what comes out."""

    name: str
    pid: int  # the process under test: the daemon or the bare relay
    publishers: list[MqttSession]
    topics: list[str]  # one telemetry topic per publisher
    counter: Counter


@dataclass
class Phase:
    messages: int = 0
    seconds: float = 0.0
    lost: int = 0
    cpu_s: float = 0.0  # CPU time the process under test used in the timed rounds

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else float("nan")

    @property
    def cpu_us_per_msg(self) -> float:
        return self.cpu_s / self.messages * 1e6 if self.messages else float("nan")


def readings(count: int, rng: random.Random) -> list[str]:
    ts = round(time.time(), 3)
    return [json.dumps({"ts": ts, "temperature": round(rng.uniform(18, 24), 2),
                        "humidity": rng.randint(30, 60)}) for _ in range(count)]


async def closed_loop(route: Route, seconds: float, rng: random.Random) -> Phase:
    phase = Phase()
    wall_deadline = time.monotonic() + seconds + 30
    for round_ in range(MAX_ROUNDS):
        timed = round_ >= WARMUP_ROUNDS
        if (timed and phase.seconds >= seconds) or time.monotonic() > wall_deadline:
            break
        payloads = readings(BATCH, rng)
        target = route.counter.count + BATCH
        start, cpu_start = time.perf_counter(), cpu_seconds(route.pid)
        for i, payload in enumerate(payloads):
            k = i % len(route.publishers)
            route.publishers[k].publish_nowait(route.topics[k], payload)
        if not await route.counter.wait_for(target, ROUND_TIMEOUT_S):
            phase.lost = target - route.counter.count
            progress(f"{route.name}: round {round_} lost {phase.lost}/{BATCH} messages")
            break
        if timed:
            phase.seconds += time.perf_counter() - start
            phase.cpu_s += cpu_seconds(route.pid) - cpu_start
            phase.messages += BATCH
    return phase


async def measure(workdir: Path, quick: bool) -> list[Figure]:
    seconds = 3.0 if quick else 10.0
    rng = random.Random(1)
    async with gateway_process(workdir) as gateway:
        devices = await gateway.enroll(DEVICES, prefix="bench-dev")
        admin = gateway.admin
        async with bare_relay(admin, workdir) as relay:
            routes = [
                Route("gateway", gateway.pid,
                      [session(ep, device_id) for device_id, ep in devices],
                      [f"devices/{device_id}/telemetry" for device_id, _ in devices],
                      Counter(admin, "home-gateway/+/state", "bench-count-gateway")),
                Route("baseline", relay.pid,
                      [session(admin, f"bench-publisher-{i}") for i in range(DEVICES)],
                      [f"bench/{device_id}/telemetry" for device_id, _ in devices],
                      Counter(admin, "bench/+/state", "bench-count-relay")),
            ]
            clients = [s for p in routes for s in (*p.publishers, p.counter.session)]
            best: dict[str, Phase] = {}
            async with running(clients):
                for route in routes * 2:
                    phase = await closed_loop(route, seconds, rng)
                    progress(f"throughput {route.name}: {phase.rate:,.0f} msg/s ({phase.messages}"
                             f" in {phase.seconds:.2f} s, lost {phase.lost}; process under test"
                             f" {phase.cpu_us_per_msg:.0f} µs CPU/msg)")
                    if route.name not in best or _better(phase, best[route.name]):
                        best[route.name] = phase
                    await asyncio.sleep(PAUSE_S)
        status = await gateway.control("status")
    rejected = status["messages"]["rejected"]
    gw, base = best["gateway"], best["baseline"]
    note = ", ".join(x for x in (f"lost {gw.lost}" if gw.lost else "",
                                 f"{rejected} rejected" if rejected else "") if x)
    figure = Figure(f"telemetry throughput (msg/s, {DEVICES} devices, rounds of {BATCH})",
                    gw.rate, base.rate, target="≥ 1.0x", note=note)
    figure.met = not gw.lost and figure.ratio is not None and figure.ratio >= 1.0
    cpu = Figure("telemetry: CPU per message of the relaying process (µs)", gw.cpu_us_per_msg,
                 base.cpu_us_per_msg)
    return [figure, cpu]


def _better(a: Phase, b: Phase) -> bool:
    return (a.lost, -a.rate) < (b.lost, -b.rate)
