"""(e) Credential rotation: "rotate all" for a whole fleet, vs the same fleet reconnecting.

An in-process lab (daemon, broker child) with simulated sensors reporting every 5 s. For
each fleet size (100 then 500; quick: 20 then 100; the lab grows between the two):

- gateway: `Rotator.rotate_all` (a new login per device committed, created in the broker in
  one dynamic-security batch, offered, acknowledged from the new login, the old one
  deleted), timed from the call until no rotation is in flight and every device is
  connected again with a newer login than before;
- baseline: every device drops its connection and reconnects with the login it has
  (`session.reconnect()`, all at once), timed until every device has connected again.

Both report the longest time any one device was offline (`SimDevice.longest_offline_s`,
reset before each phase). Baseline and rotation alternate round by round (two rounds in a
full run); the time is the best round of each, the longest offline the worst round of each.
The progress lines break each rotation down (every broker batch: when it was sent, when the
broker answered, whether the gateway gave up first; the rotator's ticks; the broker's CPU
and bytes written) and check the outcome: every device on its active login and the broker
holding exactly the active logins. Anything that went wrong on the way (a batch the gateway
timed out on, a rotation retried or finished twice) is shown next to the figure.

A rotation that stops moving for STALL_S while the broker is idle is a stall, not a slow
run: a device offline on a login the broker no longer has ("locked out") or a rotation
acknowledged but never finished ("stranded"). The figure is then the time of the last
progress, with the stall in its note; the benchmark puts the stalled devices back on their
feet (a locked-out device on the login that worked, stranded acknowledgements flushed) so
the next round starts whole, and stops by itself either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Figure, cpu_seconds, progress
from gateway.credentials.rotation import TICK_S
from gateway.mqtt import Message
from gateway.sim.devices import SimDevice, fleet_ids
from gateway.sim.lab import Lab, start_lab
from gateway.store import Rotation

PREFIX = "rot"
INTERVAL_S = 5.0  # telemetry every 5 s per device: present, but not what is measured
SETUP_TIMEOUT_S = 60.0  # the devices added, connected and seen by the gateway
SETTLE_S = 1.0  # between phases, once the broker has answered every batch
STALL_S = 5.0  # no rotation moved this long, the broker idle: stalled
HOOK_S = 0.1  # a device records its offline gap in its on-connect hook, just after connecting
POLL_S = 0.01


def phase_timeout(devices: int) -> float:
    """At most this long for one rotation (or reconnect) of the whole fleet: 34 s for 100
    devices (a quick run stays inside its budget), 90 s for 500 (about 3x what it takes)."""
    return 20.0 + 0.14 * devices


# -- what the gateway does meanwhile ----------------------------------------------------

@dataclass
class Batch:
    """One dynamic-security batch: when the gateway sent it, when its apply() returned (a
    publish not acknowledged in time ends it early) and when the broker's answer came."""

    kind: str
    commands: int
    sent: float
    returned: float = math.nan
    answered: float = math.nan
    errors: int = 0

    @property
    def gave_up(self) -> bool:
        """apply() returned before the broker answered: the gateway logged the change as
        deferred to the next broker start, though the broker did apply it."""
        return self.answered > self.returned + 0.001


@dataclass
class Probe:
    """Wraps (does not change) the daemon's dynamic-security client and the rotator's tick
    to time them."""

    batches: list[Batch] = field(default_factory=list)
    answers: list[tuple[float, int]] = field(default_factory=list)  # arrival, errors
    ticks: list[float] = field(default_factory=list)
    recording: bool = False
    t0: float = 0.0

    def install(self, lab: Lab) -> None:
        dynsec, rotator = lab.daemon.dynsec, lab.daemon.rotator
        execute, handle, tick = dynsec.execute, dynsec.handle, rotator.tick

        async def timed_execute(commands: Sequence[dict[str, Any]],
                                ignore: Sequence[str] = ()) -> list[dict[str, Any]]:
            batch = Batch(str(commands[0]["command"]), len(commands), time.perf_counter())
            if self.recording:
                self.batches.append(batch)
            try:
                return await execute(commands, ignore)
            finally:
                batch.returned = time.perf_counter()

        def timed_handle(message: Message) -> None:
            # The broker answers one connection's batches in the order they were sent.
            with contextlib.suppress(ValueError, KeyError, TypeError):
                responses = json.loads(message.payload)["responses"]
                self.answers.append((time.perf_counter(),
                                     sum(bool(r.get("error")) for r in responses)))
            handle(message)

        async def timed_tick(now: float | None = None) -> None:
            t0 = time.perf_counter()
            await tick(now)
            if self.recording:
                self.ticks.append(time.perf_counter() - t0)

        dynsec.execute = timed_execute  # type: ignore[method-assign]
        dynsec.handle = timed_handle  # type: ignore[method-assign]
        rotator.tick = timed_tick  # type: ignore[method-assign]

    @contextlib.contextmanager
    def recorded(self) -> Iterator[None]:
        self.batches.clear()
        self.answers.clear()
        self.ticks.clear()
        self.t0 = time.perf_counter()
        self.recording = True
        try:
            yield
        finally:
            self.recording = False

    async def drained(self, timeout: float) -> None:
        """Until the broker has answered every batch sent while recording (bounded), then
        SETTLE_S more; pairs batches with answers."""
        with contextlib.suppress(RuntimeError):
            await _until(lambda: len(self.answers) >= len(self.batches), timeout,
                         "the broker to answer every batch")
        for batch, (answered, errors) in zip(self.batches, self.answers, strict=False):
            batch.answered, batch.errors = answered, errors
        await asyncio.sleep(SETTLE_S)

    def lines(self) -> list[str]:
        lines = []
        for b in self.batches:
            answer = ("no broker answer" if math.isnan(b.answered)
                      else f"broker answered after {b.answered - b.sent:.2f} s")
            errors = f" ({b.errors} errors)" if b.errors else ""
            gave_up = ", gave up first" if b.gave_up else ""
            lines.append(f"+{b.sent - self.t0:.2f} s {b.kind} x{b.commands}: {answer}{errors};"
                         f" apply() returned after {b.returned - b.sent:.2f} s{gave_up}")
        if self.ticks:
            lines.append(f"{len(self.ticks)} rotator ticks, longest {max(self.ticks):.2f} s "
                         f"(a tick waits for the rotator's lock and its broker batches)")
        return lines


class _QuietPending(logging.Filter):
    """aiomqtt warns about every pending QoS 1 publish beyond 10 while the broker is busy."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pending publish calls" not in record.getMessage()


# -- the two phases -----------------------------------------------------------------------

@dataclass
class Phase:
    seconds: float
    longest_offline_s: float
    anomalies: str = ""
    locked: int = 0  # devices left out of longest_offline_s: locked out, not just offline
    stalls: str = ""  # the stalls among the anomalies (locked out, stranded)


async def _until(done: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until done(); the perf_counter time it first held. Raises after timeout."""
    deadline = time.perf_counter() + timeout
    while True:
        now = time.perf_counter()
        if done():
            return now
        if now > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(POLL_S)


def _version(username: str | None) -> int:
    return int((username or "").rsplit(".", 1)[1])


async def bare_reconnect(agents: Sequence[SimDevice]) -> Phase:
    """Every device reconnects at once with its existing login."""
    for agent in agents:
        agent.longest_offline_s = 0.0
    before = {a.id: a.session.connections for a in agents}
    t0 = time.perf_counter()
    await asyncio.gather(*(a.session.reconnect() for a in agents))
    t1 = await _until(lambda: all(a.connected and a.session.connections > before[a.id]
                                  for a in agents), phase_timeout(len(agents)),
                  "every device to reconnect")
    await asyncio.sleep(HOOK_S)
    return Phase(t1 - t0, max(a.longest_offline_s for a in agents))


async def rotate_all(lab: Lab, agents: Sequence[SimDevice], probe: Probe) -> Phase:
    """Rotator.rotate_all, timed until no rotation is in flight and every device is
    connected with a newer login than before (a retried attempt ends a version higher)."""
    for agent in agents:
        agent.longest_offline_s = 0.0
    before = {a.id: (a.session.connections, _version(a.username)) for a in agents}
    store = lab.daemon.store

    def switched(a: SimDevice) -> bool:
        connections, version = before[a.id]
        return (a.connected and a.session.connections > connections
                and _version(a.username) > version)

    wall0 = time.time()
    pid = _broker_pid(lab)
    cpu0, wrote0 = cpu_seconds(pid), _written(pid)
    with probe.recorded():
        t0 = probe.t0
        started = await lab.daemon.rotator.rotate_all("bench")
        call_s = time.perf_counter() - t0
        if len(started) != len(agents):
            raise RuntimeError(f"rotate_all started {len(started)} of {len(agents)}")
        t1, stall = await _wait_rotated(lab, agents, probe, switched)
    await asyncio.sleep(HOOK_S)
    if stall.locked or stall.stranded:
        await _recover(lab, stall, switched)
    locked_ids = {a.id for a in stall.locked}
    longest = max(a.longest_offline_s for a in agents if a.id not in locked_ids)
    await probe.drained(phase_timeout(len(agents)))
    cpu, wrote = cpu_seconds(pid) - cpu0, _written(pid) - wrote0

    # The outcome: every device on its active login, the broker holding exactly those.
    active = {c.device_id: c.username for c in store.credentials() if c.state == "active"}
    wrong = [a.id for a in agents if active.get(a.id) != a.username]
    if wrong:
        raise RuntimeError(f"devices not on their active login: {wrong[:5]} ({len(wrong)})")
    in_broker = {u for u in _broker_logins(lab) if u.startswith(f"{PREFIX}-")}
    audit = [e for e in store.audit_log(10 * len(agents), "credential.rotate") if e.ts >= wall0]
    finishes = [e.target for e in audit if e.result == "ok"]
    counts = [
        (sum(b.gave_up for b in probe.batches), "broker batches timed out in the gateway"),
        (len({e.target for e in audit if e.result not in ("started", "ok")}), "retried"),
        (sum(a.session.connections - before[a.id][0] > 1 for a in agents),
         "reconnected twice"),
        (len(finishes) - len(set(finishes)), "finished twice"),
        (len(stall.locked), "locked out"),  # on a deleted login: excluded, then put back
        (len(stall.stranded), "stranded"),  # acknowledged, never finished: flushed
        (len(in_broker - set(active.values())), "old logins left in the broker"),
        (len(set(active.values()) - in_broker), "active logins missing in the broker"),
    ]
    anomalies = ", ".join(f"{n} {what}" for n, what in counts if n)
    progress(f"rotation: {len(agents)} devices, rotate all {t1 - t0:.2f} s (the call "
             f"{call_s:.2f} s), longest offline {longest * 1000:.0f} ms, broker CPU "
             f"{cpu:.1f} s, broker wrote {wrote / 1e6:,.0f} MB"
             + (f"; {anomalies}" if anomalies else ""))
    for line in probe.lines():
        progress(f"rotation:   {line}")
    stalls = ", ".join(f"{n} {what}" for n, what in ((len(stall.locked), "locked out"),
                                                      (len(stall.stranded), "stranded")) if n)
    return Phase(t1 - t0, longest, anomalies, len(stall.locked), stalls)


@dataclass
class Stall:
    """Rotations that stopped making progress: devices offline on a login the broker no
    longer has (locked out), and rotations acknowledged but never finished (stranded)."""

    locked: list[SimDevice] = field(default_factory=list)
    stranded: list[str] = field(default_factory=list)


async def _wait_rotated(lab: Lab, agents: Sequence[SimDevice], probe: Probe,
                        switched: Callable[[SimDevice], bool]) -> tuple[float, Stall]:
    """Until no rotation is in flight and every device switched: that moment. If nothing
    moves for STALL_S while the broker has answered everything, the moment of the last
    progress, and what stalled (the figure's note says so)."""
    store = lab.daemon.store
    start = time.perf_counter()
    timeout = phase_timeout(len(agents))
    deadline = start + timeout
    last_change, state = start, None
    pending_count, checked = len(agents), start
    while True:
        now = time.perf_counter()
        pending = [a for a in agents if not switched(a)]
        if len(pending) != pending_count:
            pending_count, last_change = len(pending), now
        if not pending and not store.rotations():
            return now, Stall()
        if now - checked >= 0.5:  # the SQL and the broker's file twice a second at most
            checked = now
            rotations = store.rotations()
            new_state = {(r.device_id, r.step) for r in rotations}
            if new_state != state:
                state, last_change = new_state, now
            broker_idle = len(probe.answers) >= len(probe.batches)
            if broker_idle and now - last_change >= STALL_S:
                logins = _broker_logins(lab)
                stall = Stall([a for a in pending if not a.connected
                               and a.username not in logins],
                              [r.device_id for r in rotations if r.step == "acked"])
                known = {a.id for a in stall.locked} | set(stall.stranded)
                if known >= {a.id for a in pending} | {r.device_id for r in rotations}:
                    return last_change, stall
        if now > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for every "
                               f"rotation to finish: {len(pending)} devices not switched; "
                               f"in flight {_in_flight(store.rotations(), agents)}; "
                               f"{_explain(lab, pending[0] if pending else agents[0])}")
        await asyncio.sleep(POLL_S)


async def _recover(lab: Lab, stall: Stall, switched: Callable[[SimDevice], bool]) -> None:
    """Put a stalled rotation back on its feet so the next round starts whole: a locked-out
    device goes back to the login that worked (what SimDevice means to do on a refused
    login; the gateway then offers its retry), and stranded acknowledgements are flushed."""
    for agent in stall.locked:
        progress(f"rotation: locked out: {_explain(lab, agent)}")
        if agent.fallback is not None:
            agent.session.endpoint, agent.fallback = agent.fallback, agent.session.endpoint
        await agent.session.stop()  # out of its backoff at once
        agent.session.start()
    if stall.stranded:
        progress(f"rotation: stranded (acknowledged, never finished, old login still in the "
                 f"broker): {', '.join(stall.stranded[:5])}")
        rotator = lab.daemon.rotator
        await rotator._finish_acked()  # what the next acknowledgement would have done
    store = lab.daemon.store
    await _until(lambda: all(switched(a) for a in stall.locked) and not store.rotations(),
                 phase_timeout(len(stall.locked)), "the stalled rotations to finish")


def _in_flight(rotations: Sequence[Rotation], agents: Sequence[SimDevice]) -> str:
    by_id = {a.id: a for a in agents}
    return ", ".join(f"{r.device_id} {r.step} {r.old_username}->{r.new_username} (device on "
                     f"{by_id[r.device_id].username if r.device_id in by_id else '?'})"
                     for r in rotations[:5])


def _explain(lab: Lab, agent: SimDevice) -> str:
    """Where a device that did not finish its rotation stands, for the error message."""
    store = lab.daemon.store
    fallback = agent.fallback.username if agent.fallback else None
    trail = "; ".join(f"{e.result}: {e.detail}" for e in
                      reversed(store.audit_log(6, "credential.rotate", target=agent.id)))
    logins = sorted(u for u in _broker_logins(lab) if u.startswith(f"{agent.id}."))
    return (f"{agent.id}: {'connected' if agent.connected else 'offline'} as {agent.username}"
            f" (fallback {fallback}, last error {agent.session.last_error!r}); in flight "
            f"{store.rotation(agent.id)}; credentials "
            f"{[(c.username, c.state) for c in store.credentials(agent.id)]}; in the broker "
            f"{logins}; audit: {trail}")


# -- the lab --------------------------------------------------------------------------------

def _broker_pid(lab: Lab) -> int:
    broker = lab.daemon.broker
    if broker is None or broker.pid is None:
        raise RuntimeError("the lab has no broker process")
    return broker.pid


def _written(pid: int) -> int:
    """Bytes the process has passed to write() so far (files and sockets): /proc/<pid>/io."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise ValueError(f"no wchar for pid {pid}")


def _dynsec_file(lab: Lab) -> Path:
    return lab.config.gateway.state_dir / "broker" / "dynamic-security.json"


def _broker_logins(lab: Lab) -> set[str]:
    """The usernames in the plugin's own file (it rewrites it after every change)."""
    for _ in range(10):  # the plugin's writes are not atomic: read again if caught mid-write
        with contextlib.suppress(ValueError, OSError):
            data = json.loads(_dynsec_file(lab).read_text())
            return {str(c["username"]) for c in data.get("clients", [])}
        time.sleep(0.05)
    raise RuntimeError(f"cannot read {_dynsec_file(lab)}")


async def grow(lab: Lab, agents: list[SimDevice], count: int, probe: Probe) -> None:
    """Add devices until the lab has `count`, all connected and seen by the gateway."""
    new = fleet_ids(["sensor"], count, prefix=PREFIX)[len(agents):]
    with probe.recorded():
        t0 = probe.t0
        added = await asyncio.wait_for(lab.add_devices(new, interval_s=INTERVAL_S),
                                       SETUP_TIMEOUT_S)
        agents.extend(added)
        await asyncio.wait_for(asyncio.gather(*(a.session.wait_connected() for a in added)),
                               SETUP_TIMEOUT_S)
        seconds = time.perf_counter() - t0
    await probe.drained(phase_timeout(len(new)))
    in_broker = sum(b.answered - b.sent for b in probe.batches)
    progress(f"rotation: setup of {len(new)} devices (now {count}) {seconds:.1f} s "
             f"({seconds / len(new) * 1000:.0f} ms/device; {len(probe.batches)} broker "
             f"batches {in_broker:.1f} s of it); dynamic-security file "
             f"{_dynsec_file(lab).stat().st_size / 1000:.0f} kB")


async def idle_tick(lab: Lab, probe: Probe, count: int = 3) -> None:
    """What the rotator's tick costs every second with nothing in flight, and its SQL."""
    with probe.recorded():
        await _until(lambda: len(probe.ticks) >= count, count * TICK_S + 5.0, "idle ticks")
    store = lab.daemon.store

    def median_ms(fn: Callable[[], object], runs: int = 21) -> float:
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return sorted(samples)[runs // 2] * 1000

    progress(f"rotation: idle rotator tick with {len(store.devices())} devices "
             f"{sorted(probe.ticks)[len(probe.ticks) // 2] * 1000:.2f} ms every {TICK_S:g} s "
             f"(it reads the cached device view; reading every device from SQLite would "
             f"take {median_ms(store.devices):.2f} ms)")


# -- the figures ----------------------------------------------------------------------------

async def measure(workdir: Path, quick: bool) -> list[Figure]:
    sizes, rounds = ((20, 100), 1) if quick else ((100, 500), 2)
    figures: list[Figure] = []
    quiet = _QuietPending()
    logging.getLogger("mqtt").addFilter(quiet)
    lab = await start_lab(workdir / "state")
    try:
        probe = Probe()
        probe.install(lab)
        agents: list[SimDevice] = []
        for size in sizes:
            await grow(lab, agents, size, probe)
            rotations: list[Phase] = []
            baselines: list[Phase] = []
            for _ in range(rounds):
                base = await bare_reconnect(agents)
                progress(f"rotation: {size} devices, bare reconnect {base.seconds:.2f} s, "
                         f"longest offline {base.longest_offline_s * 1000:.0f} ms")
                baselines.append(base)
                await asyncio.sleep(SETTLE_S)
                rotations.append(await rotate_all(lab, agents, probe))
            # Time: the best round of each (a stall in another round is noted too).
            # Offline: the worst round of each, since one device's longest gap is the point.
            baseline = min(baselines, key=lambda p: p.seconds)
            rotation = min(rotations, key=lambda p: p.seconds)
            note = "; ".join([rotation.anomalies] + [f"another round: {r.stalls}"
                                                     for r in rotations
                                                     if r is not rotation and r.stalls])
            locked = max(r.locked for r in rotations)
            worst = f", worst of {rounds}" if rounds > 1 else ""
            figures += [
                Figure(f"rotate all, {size} devices: until all on new login (s)",
                       rotation.seconds, baseline.seconds, note=note.strip("; ")),
                Figure(f"rotate all, {size} devices: longest device offline (ms{worst})",
                       max(r.longest_offline_s for r in rotations) * 1000,
                       max(b.longest_offline_s for b in baselines) * 1000,
                       note=f"not counting {locked} locked out" if locked else ""),
            ]
        await idle_tick(lab, probe)
    finally:
        await lab.stop()
        logging.getLogger("mqtt").removeFilter(quiet)
    return figures
