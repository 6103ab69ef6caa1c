"""A real `python -m gateway run` process for tests: config, notify socket, CLI, cleanup.

Every gateway starts on a free loopback port with its state in the test's tmp_path; the
short paths (notify socket, control socket) live in a fresh folder under /tmp because
AF_UNIX paths are limited to 108 bytes. Whatever happens, the daemon and the Mosquitto it
started are killed by PID at the end of the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.credentials.secrets import load_or_create_login
from gateway.mqtt import Endpoint, MqttError, make_client
from gateway.sim.lab import free_port

REPO = Path(__file__).resolve().parents[2]
MOSQUITTO = Path("/usr/sbin/mosquitto")
GATEWAY_USERNAME = "home-gateway"
READY_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 10.0
WATCHDOG_USEC = 400_000  # the daemon should ping every 0.2 s
LEVELS = "(DEBUG|INFO|WARNING|ERROR|CRITICAL)"




# --- small helpers --------------------------------------------------------------------------


def process_state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat ("R", "S", "Z", …), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def brokers_using(state_dir: Path) -> list[int]:
    """Live mosquitto processes whose command line names a file under `state_dir`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        argv = cmdline(pid)
        if (argv and Path(argv[0]).name == "mosquitto"
                and any(str(state_dir) in arg for arg in argv)
                and process_state(pid) not in (None, "Z")):
            found.append(pid)
    return found


def accepts_tcp(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mqtt_connect(endpoint: Endpoint, client_id: str, publish: tuple[str, bytes] | None = None
                 ) -> str | None:
    """Connect once (no retry) through the project's adapter, optionally publish at QoS 1,
    disconnect. Returns None on success, the library's error text when it failed."""
    async def attempt() -> None:
        client = make_client(endpoint, client_id)
        async with client:
            if publish is not None:
                await client.publish(publish[0], publish[1], qos=1)

    try:
        asyncio.run(asyncio.wait_for(attempt(), 15))
    except MqttError as exc:
        return str(exc) or type(exc).__name__
    return None


def config_text(state_dir: Path, port: int, runtime_dir: Path, extra: str = "") -> str:
    return (f'[gateway]\nstate_dir = "{state_dir}"\nruntime_dir = "{runtime_dir}"\n\n'
            f'[[broker.listeners]]\naddress = "127.0.0.1"\nport = {port}\n{extra}')


# --- the notify socket ------------------------------------------------------------------------


@dataclass(frozen=True)
class Datagram:
    at: float  # time.monotonic() when received
    pid: int  # the sender, from SCM_CREDENTIALS (what systemd checks for NotifyAccess=main)
    fields: dict[str, str]


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.received: list[Datagram] = []

    def _receive(self, timeout: float) -> Datagram | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return None
        pid = -1
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        text = data.decode("utf-8")
        fields = dict(line.split("=", 1) for line in text.split("\n") if line)
        datagram = Datagram(time.monotonic(), pid, fields)
        self.received.append(datagram)
        return datagram

    def collect(self, seconds: float) -> list[Datagram]:
        """Everything that arrives in the next `seconds`."""
        deadline = time.monotonic() + seconds
        got = []
        while (remaining := deadline - time.monotonic()) > 0:
            datagram = self._receive(min(remaining, 0.2))
            if datagram is not None:
                got.append(datagram)
        return got

    def wait_for(self, predicate: Callable[[Datagram], bool], timeout: float, what: str,
                 alive: Callable[[], str | None] = lambda: None) -> Datagram:
        """The first new datagram matching `predicate`. `alive` returns a reason to give up
        early (the daemon died) or None."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            datagram = self._receive(min(remaining, 0.2))
            if datagram is not None and predicate(datagram):
                return datagram
            if datagram is None and (reason := alive()):
                pytest.fail(f"waiting for {what}: {reason}\nreceived: {self.received}")
        pytest.fail(f"no {what} within {timeout} s; received: {self.received}")

    def close(self) -> None:
        self.sock.close()


def has(name: str, pid: int) -> Callable[[Datagram], bool]:
    """`NAME=1` sent by `pid`: with NotifyAccess=main systemd ignores everyone else."""
    return lambda datagram: datagram.pid == pid and datagram.fields.get(name) == "1"


# --- one gateway under test ---------------------------------------------------------------------


@dataclass
class Gateway:
    root: Path  # inside tmp_path: state, config, captured stderr
    short: Path  # under /tmp: the notify socket and the runtime dir (control socket)
    port: int = field(default_factory=free_port)
    prefix: tuple[str, ...] = ()  # e.g. ("ip", "netns", "exec", NS): run it elsewhere
    proc: subprocess.Popen[bytes] | None = None
    notify: NotifySocket = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.notify = NotifySocket(self.short / "notify")
        self.write_config()

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def config(self) -> Path:
        return self.root / "gateway.toml"

    @property
    def stderr_path(self) -> Path:
        return self.root / "daemon.stderr"

    def text(self, extra: str = "") -> str:
        return config_text(self.state_dir, self.port, self.short / "run", extra)

    def write_config(self, extra: str = "", path: Path | None = None) -> Path:
        target = path or self.config
        target.write_text(self.text(extra))
        return target

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM",
                     "HOME_GATEWAY_CONFIG", "RUNTIME_DIRECTORY"):
            env.pop(name, None)
        env["PYTHONPATH"] = str(REPO)
        env.update(extra)
        return env

    def daemon_env(self, journal: bool = False) -> dict[str, str]:
        extra = {"NOTIFY_SOCKET": str(self.notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        if journal:
            # What systemd sets: the device and inode of the stream stderr is connected to.
            st = self.stderr_path.stat()
            extra["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        return self.env(**extra)

    # -- the daemon --

    def launch(self, journal: bool = False, **env: str) -> subprocess.Popen[bytes]:
        self.stderr_path.touch()
        with self.stderr_path.open("ab") as stderr:
            self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "gateway", "run", "--config",
                 str(self.config)],
                env={**self.daemon_env(journal), **env}, cwd=self.root,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        return self.proc

    def start(self, journal: bool = False, **env: str) -> Datagram:
        """Launch the daemon and return its READY=1 datagram (within 20 s)."""
        self.launch(journal, **env)
        return self.wait_ready()

    @property
    def control_socket(self) -> Path:
        return self.short / "run" / "control.sock"

    def wait_ready(self) -> Datagram:
        return self.notify.wait_for(has("READY", self.pid), READY_TIMEOUT_S, "READY=1",
                                    self._died)

    def _died(self) -> str | None:
        assert self.proc is not None
        if self.proc.poll() is None:
            return None
        return f"the daemon exited with {self.proc.returncode}; stderr:\n{self.stderr()}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        assert self.proc is not None and self.proc.poll() is None, self._died()
        os.kill(self.pid, signum)

    def reload(self) -> Datagram:
        """SIGHUP, then wait for the READY=1 that ends the reload."""
        self.signal(signal.SIGHUP)
        return self.notify.wait_for(has("READY", self.pid), READY_TIMEOUT_S,
                                    "READY=1 after SIGHUP", self._died)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    # -- the command line --

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", *args], env=self.env(),
                              cwd=self.root, capture_output=True, text=True, timeout=timeout)

    def device(self, *args: str) -> subprocess.CompletedProcess[str]:
        # `--config` goes before the device sub-command: see
        # test_device_subcommands_accept_config_after_them for the other spelling.
        return self.cli("device", "--config", str(self.config), *args)

    def status(self, config: Path | None = None) -> dict[str, Any]:
        done = self.cli("status", "--config", str(config or self.config))
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def endpoint(self, username: str | None = None, password: str | None = None) -> Endpoint:
        return Endpoint("127.0.0.1", self.port, username, password)

    def gateway_endpoint(self) -> Endpoint:
        path = self.state_dir / "broker" / "gateway.secret"
        return self.endpoint(*load_or_create_login(path, GATEWAY_USERNAME))

    # -- cleanup --

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(EXIT_TIMEOUT_S)
            for pid in brokers_using(self.state_dir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            self.notify.close()
            shutil.rmtree(self.short, ignore_errors=True)
