"""What web tests share: a gateway with its admin page on loopback, accounts made directly in
its store (fast: no browser), and an HTTP client that behaves like a same-origin browser."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.sim.lab import Lab, free_port, start_lab
from gateway.web import auth

ADMIN = ("alice", "Kettle-Harbour-Lantern-42")
VIEWER = ("victor", "Quiet-Meadow-Copper-77")

# A firewall that renders its ruleset but never applies it (these tests never use
# "enforce"): the IoT segment uses documentation prefixes, the interfaces need not exist.
RENDER_ONLY_FIREWALL = """
[network]
uplink = "hgdemo0"
iot = "hgdemo1"
iot_subnets = ["192.0.2.0/24", "2001:db8:1::/64"]
lan_subnets = ["198.51.100.0/24"]
[firewall]
mode = "render-only"
"""


@asynccontextmanager
async def web_lab(state_dir: Path, extra: str = "", users: bool = False
                  ) -> AsyncIterator[Lab]:
    """A running gateway whose admin page listens on a free loopback port; with `users`,
    ADMIN has an admin account and VIEWER a viewer's."""
    port = free_port()
    lab = await start_lab(state_dir, extra_config=f'\n[web]\nlisten = ["127.0.0.1:{port}"]\n'
                                                   + extra)
    try:
        if users:
            add_user(lab, *ADMIN)
            add_user(lab, *VIEWER, role="viewer")
        yield lab
    finally:
        await lab.stop()


def base_url(lab: Lab) -> str:
    return lab.daemon.web.urls[0].rstrip("/")


def add_user(lab: Lab, username: str, password: str, role: str = "admin") -> None:
    lab.daemon.store.add_user(username, role, auth.hash_password(password))


@dataclass
class Browser:
    """An aiohttp client with a cookie jar that sends Origin and the page's CSRF token the
    way the admin page's JavaScript does."""

    http: aiohttp.ClientSession
    base: str
    csrf: str = ""

    async def page(self, path: str) -> tuple[int, str]:
        async with self.http.get(self.base + path) as r:
            text = await r.text()
            found = re.search(r'name="csrf-token" content="([^"]*)"', text)
            if found:
                self.csrf = found.group(1)
            return r.status, text

    async def call(self, method: str, path: str, body: Any = None,
                   **headers: str) -> tuple[int, Any, aiohttp.ClientResponse]:
        sent = {"Origin": self.base, "X-CSRF-Token": self.csrf, **headers}
        async with self.http.request(method, self.base + path, json=body, headers=sent,
                                     allow_redirects=False) as r:
            try:
                data = await r.json(content_type=None)
            except ValueError:
                data = await r.text()
            return r.status, data, r

    async def login(self, username: str, password: str, code: str | None = None) -> Any:
        await self.page("/login")
        body = {"username": username, "password": password}
        if code:
            body["code"] = code
        status, data, _ = await self.call("POST", "/api/v1/session", body)
        if status == 201:
            self.csrf = data["csrf_token"]
        return status, data


@asynccontextmanager
async def browser(lab: Lab, source: str | None = None) -> AsyncIterator[Browser]:
    """A browser on this machine; from the loopback address `source` (say 127.0.0.2, a
    second host as the gateway sees it) when given."""
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1, as a browser keeps them
    connector = aiohttp.TCPConnector(local_addr=(source, 0)) if source else None
    async with aiohttp.ClientSession(cookie_jar=jar, connector=connector) as http:
        yield Browser(http, base_url(lab))


async def poll(b: Browser, path: str, check: Callable[[Any], bool], what: str,
               timeout: float = 10.0) -> Any:
    """GET `path` until `check` holds for its JSON; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        status, data, _ = await b.call("GET", path)
        if status == 200 and check(data):
            return data
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {data!r})")
        await asyncio.sleep(0.1)
