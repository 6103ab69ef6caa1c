"""(g) The cloud link: command latency through the gateway, and how fast the spool drains.

One in-process gateway (daemon, broker child, one simulated bulb) linked to the cloud
simulator (`gateway.sim.cloud`: a second Mosquitto with TLS and a signing issuer), all on
127.0.0.1, in one event loop with the issuer, so every path below pays the issuer's side
(TLS, parsing) alike.

Command latency: N signed commands, one at a time, from the cloud's issuer to the bulb and
its result back to the cloud (`CloudSim.request`: sign, publish, await the result), against
a direct round trip over the same cloud broker without the gateway: the issuer signs the
same command and publishes it on gw/<id>/bench/ping, where an echo client (the gateway's
cloud login, its own connection) answers a result of the same shape on gw/<id>/bench/pong,
both QoS 1. The two alternate command by command, after a warm-up.

Spool drain: M result messages of a realistic size, each marked.
- replay: appended to the spool (`daemon.cloud.spool.append`) while the cloud broker is
  killed, then the broker restarted; timed from the gateway's "online" status arriving at
  the cloud to the last message arriving (its reconnect backoff is not counted). The
  gateway is held off (a long backoff) until the issuer has resubscribed, since the cloud
  sim's clean session would lose whatever arrived before.
- live: the same path with the link up: M appended, 100 at a time, yielding between, timed
  from the first append to the last arrival (the appends' commits are part of the path).
- bare: one MQTT client (the gateway's cloud login, its own connection) publishing M QoS 1
  messages of the same size to the same broker as fast as it can, in windows of 100 (the
  relay's batch), timed from the first publish to the last arrival.
The three take turns, two rounds; the best round of each counts. Lost or duplicated
messages (counted by their marks) are shown next to the figure.

    python -m bench.cloud [--quick] [--commands N] [--messages M] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import math
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import Figure, environment, percentile, progress, running, table
from gateway.cloud.service import SEND_BATCH, CloudRelay
from gateway.daemon import Daemon
from gateway.mqtt import Backoff, Endpoint, Message, MqttSession
from gateway.sim.cloud import CloudSim, Received
from gateway.sim.devices import Fleet
from gateway.sim.lab import Lab, lab_config
from gateway.systemd import Notifier

DEVICE = "bench-bulb"
ACTION = "set_brightness"
PING, PONG, BARE = "bench/ping", "bench/pong", "bench/bare"
TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 120.0  # per phase; a phase that takes longer reports what arrived,
STALL_S = 10.0  # ... and so does one where nothing new arrives for this long
APPEND_CHUNK = 1000  # spool appends between yields while the cloud is down
LIVE_CHUNK = 100  # ... and while it is up (the relay sends as the appends go on)
ROUNDS = 2  # bare, live and replay in turn; the best of each counts
HOLD_S = 4.0  # the gateway's reconnect delay (2-4 s) while the cloud's issuer comes back
LINK_BACKOFF = (0.05, 0.5)
BUDGET_S = 300.0
QUICK_BUDGET_S = 90.0


def sizes(quick: bool) -> tuple[int, int, int]:
    """(commands, warm-up commands, messages per drain phase)."""
    return (60, 10, 2000) if quick else (300, 20, 20000)


@contextlib.contextmanager
def quiet_library_warnings() -> Iterator[None]:
    """aiomqtt warns once per publish while more than 10 await their PUBACK ("There are N
    pending publish calls."): every window of 100 here, in the relay and the bare client
    alike. Silenced so the output stays readable; restored afterwards."""
    logger = logging.getLogger("mqtt")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# -- what the cloud receives ---------------------------------------------------------------

class Tally:
    """Arrivals of one phase's marked messages: distinct ones, duplicates, first and last."""

    def __init__(self, tag: str, total: int) -> None:
        self.tag = tag
        self.total = total
        self.seen: set[int] = set()
        self.duplicates = 0
        self.first: float | None = None
        self.last = 0.0
        self.done = asyncio.Event()

    def add(self, n: int, at: float) -> None:
        if n in self.seen:
            self.duplicates += 1
            return
        self.seen.add(n)
        if self.first is None:
            self.first = at
        self.last = at
        if len(self.seen) >= self.total:
            self.done.set()

    async def wait(self, timeout: float) -> bool:
        """Until all arrived (True), or `timeout` passed or nothing new came for STALL_S."""
        deadline = time.monotonic() + timeout
        seen, progressed = len(self.seen), time.monotonic()
        while not self.done.is_set():
            now = time.monotonic()
            if len(self.seen) != seen:
                seen, progressed = len(self.seen), now
            if now > deadline or now - progressed > STALL_S:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), 0.5)
        return self.done.is_set()

    @property
    def lost(self) -> int:
        return self.total - len(self.seen)


class Watch:
    """CloudSim.on_message: echo answers by command id, the gateway's "online" status, and
    the marked messages of the phase under way (counted here: `CloudSim.uplink` rescans
    everything received at each call)."""

    def __init__(self) -> None:
        self.pongs: dict[str, dict[str, Any]] = {}
        self.online_at: float | None = None
        self.tally: Tally | None = None

    def __call__(self, item: Received) -> None:
        data = item.data
        if not isinstance(data, dict):
            if item.leaf == "status" and item.payload == b"online":
                self.online_at = item.at
            return
        tally = self.tally
        if tally is not None and data.get("bench") == tally.tag:
            tally.add(int(data["n"]), item.at)
        elif item.leaf == PONG:
            self.pongs[str(data.get("id"))] = data


# -- the set-up ----------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def linked_gateway(workdir: Path, backoff: Backoff
                         ) -> AsyncIterator[tuple[CloudSim, Lab, Watch]]:
    """The cloud simulator, and a gateway linked to it (telemetry to the cloud off) with a
    simulated bulb; everything stopped on exit, whatever happened."""
    watch = Watch()
    cloud = CloudSim(workdir / "cloud", on_message=watch)
    await cloud.start()
    try:
        config = lab_config(workdir / "gw", extra=cloud.config_toml("telemetry = false\n"))
        daemon = Daemon(config, notifier=Notifier({}), config_path=config.source)
        daemon.cloud.link_backoff = backoff
        try:
            await daemon.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await daemon.stop()
            raise
        lab = Lab(daemon, Fleet([]))
        try:
            await lab.add_devices([(DEVICE, "bulb")], interval_s=3600)
            await cloud.wait_for(lambda: cloud.status == "online", 15)
            yield cloud, lab, watch
        finally:
            await lab.stop()
    finally:
        await cloud.stop()


class Echo:
    """The direct baseline's device: answers every ping with a result of the same shape,
    QoS 1, from its own connection to the cloud broker."""

    def __init__(self, cloud: CloudSim) -> None:
        self.cloud = cloud
        self._tasks: set[asyncio.Task[None]] = set()
        self.session = MqttSession(cloud.gateway_endpoint(), client_id="bench-echo",
                                   on_message=self._on_message,
                                   subscriptions=[(self._topic(PING), 1)])

    def _topic(self, leaf: str) -> str:
        return f"gw/{self.cloud.gateway_id}/{leaf}"

    def _on_message(self, message: Message) -> None:
        if message.retain:
            return
        command = json.loads(message.payload)
        reply = json.dumps({"id": command["id"], "device": command["device"],
                            "action": command["action"], "status": "ok", "latency_ms": 0.5,
                            "result": command["params"], "source": "cloud"},
                           separators=(",", ":"))
        task = asyncio.get_running_loop().create_task(
            self.session.publish(self._topic(PONG), reply, qos=1))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# -- 1. command latency --------------------------------------------------------------------

async def command_latency(cloud: CloudSim, watch: Watch, count: int, warmup: int
                          ) -> tuple[list[float], list[float]]:
    """Milliseconds per command: through the gateway, and the direct echo."""
    gateway_ms: list[float] = []
    direct_ms: list[float] = []
    echo = Echo(cloud)
    async with running([echo.session]):
        for i in range(warmup + count):
            params = {"brightness": i % 100}
            t0 = time.perf_counter()
            result = await cloud.request(DEVICE, ACTION, params, timeout=TIMEOUT_S)
            t1 = time.perf_counter()
            envelope = cloud.command(DEVICE, ACTION, params)
            await cloud.publish(f"gw/{cloud.gateway_id}/{PING}",
                                json.dumps(envelope, separators=(",", ":")).encode())
            command_id = str(envelope["id"])
            pong = await cloud.wait_for(functools.partial(watch.pongs.pop, command_id, None),
                                        TIMEOUT_S)
            t2 = time.perf_counter()
            if result.get("status") != "ok" or pong.get("status") != "ok":
                raise RuntimeError(f"command failed: {result} / {pong}")
            if i >= warmup:
                gateway_ms.append((t1 - t0) * 1000)
                direct_ms.append((t2 - t1) * 1000)
    return gateway_ms, direct_ms


# -- 2. spool drain ------------------------------------------------------------------------

def result_body(tag: str, n: int) -> dict[str, Any]:
    """A command result as the relay spools it, marked with the phase and a number."""
    return {"id": secrets.token_hex(8), "device": DEVICE, "action": ACTION, "status": "ok",
            "latency_ms": 3.21, "result": {"brightness": n % 100}, "source": "cloud",
            "bench": tag, "n": n}


def append_results(relay: CloudRelay, tag: str, first: int, count: int) -> None:
    for n in range(first, first + count):
        relay.spool.append("result", "cmd/result", result_body(tag, n))


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.02)


def rate(count: int, start: float | None, end: float) -> float:
    if start is None or end <= start:
        return float("nan")
    return count / (end - start)


async def phase(watch: Watch, tag: str, total: int,
                run: Callable[[Tally], Awaitable[float | None]]) -> tuple[float, Tally]:
    """Run one drain phase; `run` returns when its clock started (monotonic). The rate
    counts the distinct messages that arrived by the last arrival."""
    tally = watch.tally = Tally(tag, total)
    try:
        start = await run(tally)
        if not await tally.wait(DRAIN_TIMEOUT_S):
            progress(f"{tag}: only {len(tally.seen)} of {total} arrived "
                     f"in {DRAIN_TIMEOUT_S:g} s")
    finally:
        watch.tally = None
    return rate(len(tally.seen), start, tally.last), tally


async def live(relay: CloudRelay, watch: Watch, tag: str, total: int) -> tuple[float, Tally]:
    async def go(tally: Tally) -> float:
        start = time.monotonic()
        for first in range(0, total, LIVE_CHUNK):
            append_results(relay, tag, first, min(LIVE_CHUNK, total - first))
            await asyncio.sleep(0)
        return start
    return await phase(watch, tag, total, go)


async def replay(cloud: CloudSim, relay: CloudRelay, watch: Watch, backoff: Backoff,
                 tag: str, total: int) -> tuple[float, Tally, float]:
    """Kill the cloud, spool `total`, bring it back; (rate, tally, seconds of appending)."""
    assert relay.link is not None
    await cloud.kill()
    await until(lambda: relay.link is not None and not relay.link.connected, TIMEOUT_S,
                "the gateway to notice the cloud is gone")
    t0 = time.perf_counter()
    for first in range(0, total, APPEND_CHUNK):
        append_results(relay, tag, first, min(APPEND_CHUNK, total - first))
        await asyncio.sleep(0)
    append_s = time.perf_counter() - t0
    # Hold the gateway off until the cloud's issuer has resubscribed: its session is clean,
    # so whatever the gateway sent before would be acknowledged by the broker and lost.
    backoff.initial, backoff.maximum, backoff.full_jitter = HOLD_S, HOLD_S, False
    before = relay.link_history[-1] if relay.link_history else None
    await until(lambda: bool(relay.link_history) and relay.link_history[-1] is not before,
                TIMEOUT_S, "a reconnect attempt of the gateway")
    watch.online_at = None

    async def go(tally: Tally) -> float | None:
        await cloud.restart()
        if relay.link is not None and relay.link.connected:
            raise RuntimeError(f"the gateway reconnected before the cloud's issuer; raise "
                               f"HOLD_S ({HOLD_S:g} s)")
        (backoff.initial, backoff.maximum), backoff.full_jitter = LINK_BACKOFF, True
        await until(lambda: watch.online_at is not None or tally.first is not None,
                    HOLD_S + TIMEOUT_S, "the gateway to reconnect")
        return min(t for t in (watch.online_at, tally.first) if t is not None)

    got, tally = await phase(watch, tag, total, go)
    return got, tally, append_s


async def bare(cloud: CloudSim, watch: Watch, tag: str, total: int) -> tuple[float, Tally]:
    """One client, QoS 1, windows of SEND_BATCH, the same payload size as the spool's."""
    endpoint: Endpoint = cloud.gateway_endpoint()
    publisher = MqttSession(endpoint, client_id="bench-bare", on_message=lambda m: None)
    topic = f"gw/{cloud.gateway_id}/{BARE}"
    payloads = [json.dumps({"mid": f"0123abcd-{n + 1}", "seq": n + 1,
                            **result_body(tag, n)}, separators=(",", ":"))
                for n in range(total)]

    async def go(tally: Tally) -> float:
        start = time.monotonic()
        for first in range(0, total, SEND_BATCH):
            await asyncio.gather(*(publisher.publish(topic, p, qos=1)
                                   for p in payloads[first:first + SEND_BATCH]))
        return start

    async with running([publisher]):
        return await phase(watch, tag, total, go)


def keep(best: dict[str, float], tallies: dict[str, list[Tally]], name: str, got: float,
         tally: Tally) -> None:
    """The best rate of the rounds counts (others' load only ever slows a round down)."""
    tallies[name].append(tally)
    current = best.get(name)
    if current is None or math.isnan(current) or got > current:
        best[name] = got


# -- the figures ---------------------------------------------------------------------------

async def run_cloud(workdir: Path, commands: int, warmup: int, messages: int
                    ) -> list[Figure]:
    backoff = Backoff(*LINK_BACKOFF, full_jitter=True)
    with quiet_library_warnings():
        return await _run_cloud(workdir, backoff, commands, warmup, messages)


async def _run_cloud(workdir: Path, backoff: Backoff, commands: int, warmup: int,
                     messages: int) -> list[Figure]:
    async with linked_gateway(workdir, backoff) as (cloud, lab, watch):
        relay = lab.daemon.cloud
        progress(f"cloud command latency: {warmup} + {commands} commands, each way")
        gateway_ms, direct_ms = await command_latency(cloud, watch, commands, warmup)
        progress(f"cloud command p50: gateway {percentile(gateway_ms, 50):.2f} ms, direct "
                 f"{percentile(direct_ms, 50):.2f} ms")
        await until(lambda: relay.spool.stats(time.time())["messages"] == 0, TIMEOUT_S,
                    "the spool to empty after the commands")

        await live(relay, watch, "warm-up", max(200, messages // 20))
        best: dict[str, float] = {}
        tallies: dict[str, list[Tally]] = {"bare": [], "live": [], "replay": []}
        for round_ in range(1, ROUNDS + 1):
            got, tally = await bare(cloud, watch, f"bare-{round_}", messages)
            keep(best, tallies, "bare", got, tally)
            progress(f"round {round_}: bare QoS 1 publish {got:,.0f} msg/s ({messages})")
            got, tally = await live(relay, watch, f"live-{round_}", messages)
            keep(best, tallies, "live", got, tally)
            progress(f"round {round_}: live spool {got:,.0f} msg/s ({messages})")
            got, tally, append_s = await replay(cloud, relay, watch, backoff,
                                                f"replay-{round_}", messages)
            keep(best, tallies, "replay", got, tally)
            progress(f"round {round_}: replay {got:,.0f} msg/s ({messages}; spooling "
                     f"them took {append_s:.2f} s, {messages / append_s:,.0f} appends/s)")

    def note(name: str) -> str:
        lost = sum(t.lost for t in tallies[name])
        dup = sum(t.duplicates for t in tallies[name])
        return ", ".join(([f"{lost} lost"] if lost else []) + ([f"{dup} dup"] if dup else []))

    def ms(name: str, f: Callable[[list[float]], float]) -> Figure:
        return Figure(f"cloud command {name} (ms, n={commands}; base: direct echo)",
                      f(gateway_ms), f(direct_ms))

    return [
        ms("p50", lambda v: percentile(v, 50)),
        ms("p99", lambda v: percentile(v, 99)),
        ms("mean", statistics.fmean),
        Figure(f"spool replay after outage (msg/s, M={messages}; base: bare QoS 1)",
               best["replay"], best["bare"], note=note("replay")),
        Figure(f"spool live, link up (msg/s, M={messages}; base: bare QoS 1)",
               best["live"], best["bare"], note=note("live")),
        Figure("spool replay vs live (msg/s; base: live)", best["replay"], best["live"],
               note=f"bare: {note('bare')}" if note("bare") else ""),
    ]


async def measure(workdir: Path, quick: bool) -> list[Figure]:
    commands, warmup, messages = sizes(quick)
    return await run_cloud(workdir, commands, warmup, messages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cloud",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--commands", type=int, metavar="N",
                        help="timed commands each way (default 300, --quick 60)")
    parser.add_argument("--messages", type=int, metavar="M",
                        help="messages per drain phase (default 20000, --quick 2000)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    args = parser.parse_args(argv)
    commands, warmup, messages = sizes(args.quick)
    commands = args.commands or commands
    messages = args.messages or messages
    if commands < 2 or messages < 2:
        parser.error("--commands and --messages take at least 2")
    env = environment()
    for key, value in env.items():
        print(f"{key + ':':14} {value}")
    print(f"{'run:':14} {'quick' if args.quick else 'full'}")
    print(flush=True)
    scale = max(1.0, messages / sizes(args.quick)[2])  # a bigger M gets more time
    budget = (QUICK_BUDGET_S if args.quick else BUDGET_S) * scale

    async def bounded() -> list[Figure]:
        with tempfile.TemporaryDirectory(prefix="bench-cloud-") as tmp:
            return await asyncio.wait_for(run_cloud(Path(tmp), commands, warmup, messages),
                                          budget)

    figures = asyncio.run(bounded())
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "quick": args.quick,
                                         "figures": [f.as_dict() for f in figures]}, indent=2,
                                        ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
