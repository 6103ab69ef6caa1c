"""The dashboard's Updates tile, the status API and GET /api/v1/updates against a real
gateway. On this machine the gateway runs from source, so the real check (dpkg's own status
file) says it is not packaged; the pending, current and unknown states are set on the
service the way a check leaves them (tests/unit/test_updates.py runs those checks against
the real apt-get)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.sim.lab import Lab
from gateway.updates import STATUS_FILE, Check, Upgrade, installed_packages
from gateway.web.api import updates_tile
from tests.web.kit import ADMIN, VIEWER, Browser, browser, poll, web_lab

pytestmark = pytest.mark.integration

LIBSSL = Upgrade("libssl3", "3.0.11-1~deb12u1", "3.0.13-1~deb12u2",
                 "Debian-Security:12/stable-security", True)
GATEWAY = Upgrade("home-gateway", "0.1.0-1", "0.2.0-1", "Debian:12.5/stable", False)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    async with web_lab(tmp_path / "state", users=True) as lab:
        yield lab


async def tile_on_dashboard(b: Browser) -> tuple[str, str]:
    """The tile's state paragraph (with its classes) and detail, as the page renders them."""
    _, page = await b.page("/")
    start = page.index('<section class="tile later" id="tile-updates">')
    section = page[start:page.index("</section>", start)]
    state = section[section.index('<p class="big'):section.index("</p>") + 4]
    detail = section.split('data-field="upd-detail">', 1)[1].split("</span>", 1)[0]
    return state, detail


async def test_a_source_install_is_not_packaged_by_the_real_check(lab: Lab) -> None:
    # The precondition, from dpkg's own file: this machine has no home-gateway package.
    assert "home-gateway" not in installed_packages(STATUS_FILE.read_text()), (
        "home-gateway is installed as a package here; this test needs a source install")
    async with browser(lab) as b:
        status, _, _ = await b.call("GET", "/api/v1/updates")
        assert status == 401  # reading needs a login
        await b.login(*VIEWER)
        s = await poll(b, "/api/v1/status", lambda s: s["updates"]["checked_at"] is not None,
                       "the first check")
        updates = s["updates"]
        assert updates == {"state": "not-packaged", "package": "home-gateway",
                           "installed": None, "checked_at": updates["checked_at"],
                           "checking": False, "error": None, "pending": [], "security": 0}
        assert time.time() - 60 < updates["checked_at"] <= time.time()
        assert s["tiles"]["updates"] == {
            "state": "not-packaged", "label": "Not packaged",
            "detail": "Not installed from a Debian package", "pending": 0, "security": 0}
        status, data, _ = await b.call("GET", "/api/v1/updates")
        assert (status, data) == (200, updates)
        assert await tile_on_dashboard(b) == (
            '<p class="big" data-field="upd-state">Not packaged</p>',
            "Not installed from a Debian package")
        assert lab.daemon.updates.checks == 1  # once at start; the next within the hour


async def test_the_tile_shows_pending_current_and_unknown(lab: Lab) -> None:
    updates = lab.daemon.updates
    await updates.stop()  # the states below are set by hand; no check may replace them
    async with browser(lab) as b:
        await b.login(*VIEWER)
        updates.last = Check("pending", time.time() - 150, "0.1.0-1", (LIBSSL, GATEWAY))
        _, s, _ = await b.call("GET", "/api/v1/status")
        assert s["updates"]["state"] == "pending" and s["updates"]["security"] == 1
        assert s["tiles"]["updates"] == {
            "state": "pending", "label": "2 pending (1 security)",
            "detail": "libssl3 3.0.11-1~deb12u1 → 3.0.13-1~deb12u2 (security), "
                      "home-gateway 0.1.0-1 → 0.2.0-1 · checked 2 min ago",
            "pending": 2, "security": 1}
        status, data, _ = await b.call("GET", "/api/v1/updates")
        assert status == 200
        assert data["pending"] == [
            {"package": "libssl3", "installed": "3.0.11-1~deb12u1",
             "candidate": "3.0.13-1~deb12u2", "origin": "Debian-Security:12/stable-security",
             "security": True},
            {"package": "home-gateway", "installed": "0.1.0-1", "candidate": "0.2.0-1",
             "origin": "Debian:12.5/stable", "security": False}]
        assert await tile_on_dashboard(b) == (
            '<p class="big bad" data-field="upd-state">2 pending (1 security)</p>',
            "libssl3 3.0.11-1~deb12u1 → 3.0.13-1~deb12u2 (security), "
            "home-gateway 0.1.0-1 → 0.2.0-1 · checked 2 min ago")

        updates.last = Check("pending", time.time() - 30, "0.1.0-1", (GATEWAY,))
        state, _ = await tile_on_dashboard(b)
        assert state == '<p class="big warn" data-field="upd-state">1 pending (0 security)</p>'

        updates.last = Check("current", time.time() - 7300, "0.2.0-1")
        _, s, _ = await b.call("GET", "/api/v1/status")
        assert s["tiles"]["updates"]["label"] == "Up to date"
        assert await tile_on_dashboard(b) == (
            '<p class="big ok" data-field="upd-state">Up to date</p>',
            "home-gateway 0.2.0-1 and what it needs · checked 2 h ago")

        error = ("apt-get failed (exit 100): E: The package lists or status file could not "
                 "be parsed or opened.")
        updates.last = Check("unknown", time.time(), "0.2.0-1", error=error)
        _, s, _ = await b.call("GET", "/api/v1/status")
        assert s["updates"]["error"] == error
        assert s["tiles"]["updates"] == {"state": "unknown", "label": "Unknown",
                                         "detail": error, "pending": 0, "security": 0}
        assert await tile_on_dashboard(b) == (
            '<p class="big warn" data-field="upd-state">Unknown</p>', error)


async def _snapshot(response: aiohttp.ClientResponse) -> dict[str, Any]:
    while True:
        line = await asyncio.wait_for(response.content.readline(), 10)
        if line.startswith(b"data: ") and line.strip() != b"data: {}":
            snapshot: dict[str, Any] = json.loads(line[6:])
            return snapshot


async def test_the_live_dashboard_hears_of_a_new_check(lab: Lab) -> None:
    updates = lab.daemon.updates
    await updates.stop()
    async with browser(lab) as b:
        await b.login(*ADMIN)
        timeout = aiohttp.ClientTimeout(total=30)
        async with b.http.get(b.base + "/api/v1/events", timeout=timeout) as r:
            await _snapshot(r)
            updates.last = Check("pending", time.time(), "0.1.0-1", (LIBSSL,))
            for _ in range(10):
                tile = (await _snapshot(r))["status"]["tiles"]["updates"]
                if tile["state"] == "pending":
                    break
            assert tile["label"] == "1 pending (1 security)"


def test_the_tile_lists_what_fits_and_counts_the_rest() -> None:
    def status(state: str, pending: list[Upgrade], **more: Any) -> dict[str, Any]:
        return {"state": state, "package": "home-gateway", "installed": "0.1.0-1",
                "checked_at": None, "checking": False, "error": None,
                "pending": [u.to_json() for u in pending],
                "security": sum(u.security for u in pending), **more}

    many = [Upgrade(f"lib{i}", "1.0", "1.1", "Debian:12.5/stable", False) for i in range(8)]
    tile = updates_tile(status("pending", many))
    assert tile["label"] == "8 pending (0 security)"
    assert tile["detail"] == ", ".join(f"lib{i} 1.0 → 1.1" for i in range(6)) + ", 2 more"
    new = Upgrade("python3-aiomqtt", None, "2.0.1-1", "Debian:13.1/stable", False)
    assert updates_tile(status("pending", [new]))["detail"] == "python3-aiomqtt new → 2.0.1-1"
    first = status("unknown", [], installed=None, error="not checked yet")
    assert updates_tile(first) == {"state": "unknown", "label": "Unknown",
                                   "detail": "not checked yet", "pending": 0, "security": 0}
    assert updates_tile(status("current", []))["detail"] == (
        "home-gateway 0.1.0-1 and what it needs")
