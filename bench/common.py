"""What the figures share: the daemon and the bare relay as subprocesses, enrollment through
the control socket, MQTT sessions, an arrival counter, RSS, percentiles and the result rows."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import control, mqtt
from gateway.broker.render import BrokerFiles
from gateway.config import Config
from gateway.daemon import broker_endpoint, control_socket, gateway_pki
from gateway.mqtt import Endpoint, Message, MqttSession
from gateway.sim.lab import lab_config

REPO = Path(__file__).resolve().parent.parent
# A child must not talk to a systemd that may be supervising us.
CHILD_ENV_DROP = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def progress(text: str) -> None:
    """Progress goes to stderr so stdout holds only the header and the table."""
    print(f"  {text}", file=sys.stderr, flush=True)


# -- results -----------------------------------------------------------------------------

@dataclass
class Figure:
    """One row of the table: the gateway's value next to a baseline measured in the same run."""

    name: str
    gateway: float
    baseline: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""  # e.g. lost messages, shown next to the gateway's value

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.gateway / self.baseline

    def row(self) -> list[str]:
        ratio = "—" if self.ratio is None else f"{fmt(self.ratio)}x"
        target = self.target or "—"
        if self.met is not None:
            target += " (met)" if self.met else " (MISSED)"
        gateway = fmt(self.gateway) + (f" ({self.note})" if self.note else "")
        baseline = "—" if self.baseline is None else fmt(self.baseline)
        return [self.name, gateway, baseline, ratio, target]

    def as_dict(self) -> dict[str, Any]:
        def number(x: float | None) -> float | None:  # JSON has no NaN
            return None if x is None or math.isnan(x) else x

        return {"name": self.name, "gateway": number(self.gateway),
                "baseline": number(self.baseline), "ratio": number(self.ratio),
                "target": self.target, "met": self.met, "note": self.note}


def fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def table(figures: Sequence[Figure]) -> str:
    rows = [["figure", "gateway", "baseline", "ratio", "target"]] + [f.row() for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), linear between the closest ranks."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# -- environment -------------------------------------------------------------------------

def environment() -> dict[str, str]:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    try:
        out = subprocess.run([mosquitto, "-h"], capture_output=True, text=True, timeout=10)
        broker = (out.stdout or out.stderr).splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired) as exc:
        broker = f"unknown ({exc})"
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "mqtt library": mqtt.LIBRARY,
        "mosquitto": broker,
        "cpus": str(os.cpu_count()),
        "platform": platform.platform(),
    }


# -- processes ---------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    """Resident set size in MB (10^6 bytes) from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise ValueError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM our child by its PID, then SIGKILL if it has not exited in time."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def child(args: Sequence[str], log_path: Path, *, pipe_stdout: bool = False,
                env: dict[str, str] | None = None) -> AsyncIterator[asyncio.subprocess.Process]:
    """A subprocess (cwd: the repository) with its output in log_path; stopped on exit."""
    environ = {k: v for k, v in os.environ.items() if k not in CHILD_ENV_DROP}
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *args, cwd=REPO, env={**environ, **(env or {})}, stderr=log,
            stdout=asyncio.subprocess.PIPE if pipe_stdout else log)
        try:
            yield proc
        finally:
            await stop_process(proc)


def log_tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@dataclass
class Gateway:
    """The real daemon, running as a subprocess of the benchmark."""

    config: Config
    proc: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def admin(self) -> Endpoint:
        """The gateway's own broker login (the dynsec admin, allowed every topic)."""
        return broker_endpoint(self.config, BrokerFiles(self.config.gateway.state_dir / "broker"),
                               gateway_pki(self.config))

    async def control(self, op: str, **args: Any) -> Any:
        return await asyncio.to_thread(control.request, control_socket(self.config), op,
                                       timeout=10.0, **args)

    async def wait_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n"
                                   f"{log_tail(self.log_path)}")
            with contextlib.suppress(ConnectionError, OSError, ValueError):
                status: dict[str, Any] = await self.control("status")
                if status["healthy"]:
                    return status
            await asyncio.sleep(0.2)
        raise RuntimeError(f"daemon not ready in {START_TIMEOUT_S:g} s:\n{log_tail(self.log_path)}")

    async def enroll(self, count: int, prefix: str, kind: str = "sensor"
                     ) -> list[tuple[str, Endpoint]]:
        """Register `count` devices through the control socket, like an admin would; each
        comes back with its own broker credential."""
        admin = self.admin
        enrolled = []
        for i in range(count):
            result = await self.control("device.add", id=f"{prefix}-{i + 1}", kind=kind)
            enrolled.append((result["id"], Endpoint(admin.host, admin.port, result["username"],
                                                    result["password"])))
        return enrolled


@contextlib.asynccontextmanager
async def gateway_process(workdir: Path) -> AsyncIterator[Gateway]:
    """`python -m gateway run` on a free loopback port with its own broker; stopped on exit.
    The broker dies with the daemon; should it outlive it, it is killed by its PID."""
    config = lab_config(workdir / "state")
    args = [sys.executable, "-m", "gateway", "run", "--config", str(config.source)]
    broker_pid = None
    try:
        async with child(args, workdir / "daemon.log") as proc:
            gateway = Gateway(config, proc, workdir / "daemon.log")
            broker_pid = (await gateway.wait_ready())["broker"]["pid"]
            yield gateway
    finally:
        if broker_pid is not None:
            await _reap_orphan(broker_pid, "mosquitto")


async def _reap_orphan(pid: int, name: str) -> None:
    for _ in range(50):
        try:
            if name not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                return  # gone, and the PID reused by someone else
        except OSError:
            return
        await asyncio.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def bare_relay(endpoint: Endpoint, workdir: Path, max_seconds: float = 600.0
                     ) -> AsyncIterator[asyncio.subprocess.Process]:
    """bench/bare_relay.py as its own process, subscribed and ready."""
    args = [sys.executable, "-m", "bench.bare_relay", endpoint.host, str(endpoint.port),
            endpoint.username or "", str(max_seconds)]
    async with child(args, workdir / "relay.log", pipe_stdout=True,
                     env={"BENCH_RELAY_PASSWORD": endpoint.password or ""}) as proc:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        if line.strip() != b"ready":
            raise RuntimeError(f"bare relay did not start:\n{log_tail(workdir / 'relay.log')}")
        yield proc


# -- MQTT clients in the benchmark process ----------------------------------------------

def ignore(message: Message) -> None:
    pass


def session(endpoint: Endpoint, client_id: str) -> MqttSession:
    return MqttSession(endpoint, client_id=client_id, on_message=ignore)


@contextlib.asynccontextmanager
async def running(sessions: Sequence[MqttSession], timeout: float = 30.0
                  ) -> AsyncIterator[None]:
    """Start sessions, wait until all are connected (and subscribed); stop them on exit."""
    for s in sessions:
        s.start()
    try:
        await asyncio.wait_for(asyncio.gather(*(s.wait_connected() for s in sessions)), timeout)
        yield
    finally:
        await asyncio.gather(*(s.stop() for s in sessions))


class Counter:
    """Counts live messages on a topic filter (retained ones replayed at subscribe time are
    not arrivals) and lets the benchmark wait until it has seen a given total."""

    def __init__(self, endpoint: Endpoint, topic_filter: str, client_id: str) -> None:
        self.count = 0
        self._target = 0
        self._reached = asyncio.Event()
        self.session = MqttSession(endpoint, client_id=client_id, on_message=self._on_message,
                                   subscriptions=[(topic_filter, 0)])

    def _on_message(self, message: Message) -> None:
        if message.retain:
            return
        self.count += 1
        if self.count >= self._target:
            self._reached.set()

    async def wait_for(self, total: int, timeout: float) -> bool:
        """True once `total` messages have arrived; False on timeout."""
        self._target = total
        self._reached.clear()
        if self.count >= total:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reached.wait(), timeout)
        return self.count >= total
