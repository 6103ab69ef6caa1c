"""A hostile host on the LAN against the admin page: thousands of connections that never
finish a request, from one address (a process of its own: the host is not the gateway,
so its work is not measured as the gateway's). The real daemon runs with the descriptor limit a
systemd unit gets by default (1,024), and every figure is what a user would notice: the
page answers a logged-in browser, the control socket answers `home-gateway status`, a
device still logs in and publishes, the log stays small, and all is back when it stops."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time

import aiohttp
import pytest

from gateway.control import request
from gateway.sim.lab import free_port
from gateway.store import Store
from gateway.web import auth
from gateway.web.gate import HEAD_TIMEOUT_S, MAX_PER_SOURCE
from tests.hostile.flood import flooding, no_verify
from tests.integration.daemon_proc import Gateway, mqtt_connect
from tests.web.kit import Browser

pytestmark = pytest.mark.integration

FLOOD = 2000  # connections tried at once (bounded: each reopened at most every 0.5 s)
HOSTILE = "127.0.0.2"  # a second host, as the gateway sees it
OWNER = ("alice", "Kettle-Harbour-Lantern-42")


def _control_status(gateway: Gateway) -> float:
    """`home-gateway status`'s request to the control socket, timed around the request
    alone (as the command makes it; Python's start-up is not the daemon's)."""
    start = time.monotonic()
    request(gateway.control_socket, "status", timeout=5)
    return time.monotonic() - start


async def _timed(what: str, coro: object) -> float:
    start = time.monotonic()
    await coro  # type: ignore[misc]
    took = time.monotonic() - start
    assert took < 1.0, f"{what} took {took:.2f} s under the flood"
    return took


def test_the_page_the_control_socket_and_devices_work_through_a_connection_flood(
        gateway: Gateway) -> None:
    web_port = free_port()
    gateway.prefix = ("prlimit", "--nofile=1024:1024", "--")  # systemd's default
    gateway.write_config(f'\n[web]\nlisten = ["127.0.0.1:{web_port}"]\ntls = "always"\n')
    store = Store(gateway.state_dir / "gateway.db")
    store.add_user(OWNER[0], "admin", auth.hash_password(OWNER[1]))
    store.db.close()
    gateway.start()
    added = gateway.device("add", "plug-1", "--kind", "plug")
    shown = dict(re.findall(r"^(username|password): *(\S+)$", added.stdout, re.MULTILINE))
    plug = gateway.endpoint(shown["username"], shown["password"])
    base = f"https://127.0.0.1:{web_port}"

    async def scenario() -> None:
        connector = aiohttp.TCPConnector(ssl=no_verify())
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                         connector=connector) as http:
            owner = Browser(http, base)
            status, _ = await owner.login(*OWNER)
            assert status == 201
            log_before = gateway.stderr_path.stat().st_size
            descriptors = [len(os.listdir(f"/proc/{gateway.pid}/fd"))]
            with flooding("127.0.0.1", web_port, HOSTILE, FLOOD, 60, "http") as flood:
                await asyncio.sleep(4)  # every slot has tried at least once
                for _ in range(3):
                    await _timed("the admin page's status for a logged-in user",
                                 owner.call("GET", "/api/v1/status"))
                    took = await asyncio.to_thread(_control_status, gateway)
                    assert took < 1.0, f"the control socket's status took {took:.2f} s"
                    descriptors.append(len(os.listdir(f"/proc/{gateway.pid}/fd")))
                    await asyncio.sleep(1)
                assert await asyncio.to_thread(
                    mqtt_connect, plug, "plug-1", ("devices/plug-1/telemetry",
                                                    b'{"power_w": 5}')) is None
                await asyncio.sleep(HEAD_TIMEOUT_S)  # the unfinished ones are closed
            assert flood["attempts"] > 5 * FLOOD, flood  # it was turned away, again and again
            # The gate held the hostile host to its share of the daemon's descriptors.
            assert max(descriptors) < MAX_PER_SOURCE + 64, descriptors
            # … and once it stops, the hostile host is an ordinary client again.
            start = time.monotonic()
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                    ssl=no_verify(), local_addr=(HOSTILE, 0))) as stranger:
                while True:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with stranger.get(base + "/login") as reply:
                            if reply.status == 200:
                                break
                    assert time.monotonic() - start < 10, "not back within 10 s"
                    await asyncio.sleep(0.2)
            grown = gateway.stderr_path.stat().st_size - log_before
            assert grown < 1_000_000, f"the log grew by {grown} bytes"
            text = gateway.stderr()[log_before:]
            assert "admin page: refusing connections from 127.0.0.2" in text, text

    asyncio.run(scenario())
