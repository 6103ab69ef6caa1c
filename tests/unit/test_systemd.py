"""Tests for gateway.systemd against a real Unix datagram socket playing systemd."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.systemd import Notifier

RECV_TIMEOUT = 2.0


@pytest.fixture
def short_dir(tmp_path: Path) -> Iterator[Path]:
    # AF_UNIX paths are limited to ~108 bytes; pytest's tmp_path may be longer.
    if len(str(tmp_path / "notify.sock")) < 100:
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def systemd(short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd, and its NOTIFY_SOCKET value."""
    path = str(short_dir / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(RECV_TIMEOUT)
    try:
        yield sock, path
    finally:
        sock.close()


def recv(sock: socket.socket) -> bytes:
    return sock.recv(65536)


def test_ready_sends_exact_datagram(systemd: tuple[socket.socket, str]) -> None:
    sock, path = systemd
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    n.ready("Serving 3 devices")
    assert recv(sock) == b"READY=1\nSTATUS=Serving 3 devices"
    n.status("busy")
    assert recv(sock) == b"STATUS=busy"
    n.stopping()
    assert recv(sock) == b"STOPPING=1\nSTATUS=Stopping"
    n.reloading()
    assert recv(sock) == b"RELOADING=1"
    n.notify(MAINPID=42, STATUS="x")
    assert recv(sock) == b"MAINPID=42\nSTATUS=x"
    n.close()


def test_utf8_status_survives(systemd: tuple[socket.socket, str]) -> None:
    sock, path = systemd
    n = Notifier({"NOTIFY_SOCKET": path})
    text = "Gerät \u2013 3 °C ✓"  # en dash and check mark are outside latin-1
    n.status(text)
    data = recv(sock)
    assert data == b"STATUS=Ger\xc3\xa4t \xe2\x80\x93 3 \xc2\xb0C \xe2\x9c\x93"
    assert data.decode("utf-8") == "STATUS=" + text
    n.close()


def test_newline_in_value_cannot_inject_field(systemd: tuple[socket.socket, str]) -> None:
    sock, path = systemd
    n = Notifier({"NOTIFY_SOCKET": path})
    n.status("ok\nREADY=1")
    data = recv(sock)
    assert data == b"STATUS=ok READY=1"
    assert data.split(b"\n") == [b"STATUS=ok READY=1"]
    n.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract namespace is Linux")
def test_abstract_namespace() -> None:
    name = f"hg-test-{secrets.token_hex(8)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(RECV_TIMEOUT)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        n.ready("up")
        assert recv(sock) == b"READY=1\nSTATUS=up"
        n.close()
    finally:
        sock.close()


def test_noop_without_notify_socket(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.systemd")
    n = Notifier({})
    assert not n.enabled
    assert n.watchdog_interval is None
    n.ready("up")
    n.notify(WATCHDOG=1)
    n.close()
    assert caplog.records == []


def test_default_environ_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not Notifier().enabled
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    assert Notifier().enabled


def test_missing_socket_warns_once(short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.systemd")
    n = Notifier({"NOTIFY_SOCKET": str(short_dir / "gone.sock")})
    n.ready("up")
    n.status("still here")
    n.status("and again")
    n.close()
    ours = [r for r in caplog.records if r.name == "gateway.systemd"]
    assert [r.levelno for r in ours] == [logging.WARNING, logging.DEBUG, logging.DEBUG]


def test_refused_socket_does_not_raise(short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A socket file whose owner went away: sendto fails with ECONNREFUSED.
    path = str(short_dir / "dead.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(path)
    dead.close()
    caplog.set_level(logging.WARNING, logger="gateway.systemd")
    n = Notifier({"NOTIFY_SOCKET": path})
    n.ready("up")
    n.close()
    assert len(caplog.records) == 1


def test_a_receiver_that_stops_reading_never_blocks_the_daemon(
        systemd: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture) -> None:
    # The test harness (or a wedged systemd) may stop reading; a blocking send would then
    # freeze the daemon's event loop. The messages that do not fit are dropped instead.
    _, path = systemd
    caplog.set_level(logging.WARNING, logger="gateway.systemd")
    n = Notifier({"NOTIFY_SOCKET": path})
    for i in range(5000):  # far more than a datagram queue holds
        n.status(f"status {i} " + "x" * 200)
    n.close()
    assert len(caplog.records) == 1 and "failed" in caplog.records[0].getMessage()


def test_watchdog_interval() -> None:
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    assert Notifier({"WATCHDOG_USEC": "200000"}).watchdog_interval == pytest.approx(0.1)
    me = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": me}).watchdog_interval == (
        pytest.approx(0.1)
    )
    other = str(os.getpid() + 1)
    assert Notifier({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": other}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "-5"}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_interval is None
    assert Notifier({}).watchdog_interval is None


async def _count_datagrams(sock: socket.socket, duration: float) -> list[bytes]:
    """Receive (without blocking the loop) every datagram arriving within duration."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    got: list[bytes] = []
    while (left := deadline - loop.time()) > 0:
        try:
            got.append(await asyncio.wait_for(loop.sock_recv(sock, 65536), left))
        except TimeoutError:
            break
    return got


async def test_watchdog_pings(systemd: tuple[socket.socket, str]) -> None:
    sock, path = systemd
    sock.setblocking(False)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    task = asyncio.create_task(n.watchdog(lambda: True))
    try:
        got = await _count_datagrams(sock, 0.55)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        n.close()
    assert set(got) == {b"WATCHDOG=1"}
    assert 3 <= len(got) <= 7


async def test_watchdog_silent_while_unhealthy(systemd: tuple[socket.socket, str]) -> None:
    sock, path = systemd
    sock.setblocking(False)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    state = {"healthy": False, "asked": 0}

    def healthy() -> bool:
        state["asked"] += 1
        return bool(state["healthy"])

    task = asyncio.create_task(n.watchdog(healthy))
    try:
        assert await _count_datagrams(sock, 0.35) == []
        assert state["asked"] >= 2  # it did check, and chose not to ping
        # Recovery resumes pinging, proving the silence above was not a broken setup.
        state["healthy"] = True
        got = await _count_datagrams(sock, 0.3)
        assert got and set(got) == {b"WATCHDOG=1"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        n.close()


async def test_watchdog_cancellable(systemd: tuple[socket.socket, str]) -> None:
    _, path = systemd
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    task = asyncio.create_task(n.watchdog(lambda: True))
    await asyncio.sleep(0.05)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    assert task.cancelled()
    n.close()


async def test_watchdog_returns_without_interval(systemd: tuple[socket.socket, str]) -> None:
    _, path = systemd
    calls: list[int] = []

    def healthy() -> bool:
        calls.append(1)
        return True

    await asyncio.wait_for(Notifier({"NOTIFY_SOCKET": path}).watchdog(healthy), 1.0)
    other = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
    if os.getpid() != 1:
        await asyncio.wait_for(Notifier(other).watchdog(healthy), 1.0)
    assert calls == []
