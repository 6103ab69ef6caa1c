"""The Network page in the browser (Debian's chromium), against a real gateway whose
firewall renders but never applies (render-only): the loud notice, the drop counters and
their charts, adopting a quarantined device with a profile, blocking one and putting it
back, all without a reload; a viewer sees the same page without a button."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.async_api import Dialog, Page, expect

from gateway.firewall.manager import Sample
from gateway.sim.lab import Lab
from tests.browser.conftest import Shot
from tests.browser.test_admin_browser import log_in, nav
from tests.web.kit import ADMIN, RENDER_ONLY_FIREWALL, VIEWER, add_user, base_url, web_lab

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

PLUG_CLOUD = """description = "Plug with its vendor's cloud"
[[allow]]
host = "api.plug-vendor.example"
protocol = "tcp"
ports = [443, 8883]
[[allow]]
cidr = "203.0.113.0/24"
protocol = "icmp"
"""
DEVICES = [("porch-cam", "camera", "Porch camera", "192.0.2.10"),
           ("living-thermostat", "thermostat", "Living room", "192.0.2.11"),
           ("hall-sensor", "sensor", "Hall sensor", "192.0.2.12"),
           ("garage-plug", "plug", "Garage plug", "192.0.2.13"),
           ("old-bulb", "bulb", "Old bulb", None)]
CLASSES = ("inbound", "quarantine", "egress", "lateral", "upnp", "spoof", "flood")


async def accept(dialog: Dialog) -> None:
    await dialog.accept()


async def network_lab(tmp_path: Path) -> Lab:
    """Devices in quarantine, a local profile with a DNS name, and an hour of counter
    samples (render-only mode samples nothing itself: nothing is applied to count)."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "plug-cloud.toml").write_text(PLUG_CLOUD)
    return tmp_path / "state", RENDER_ONLY_FIREWALL + f'profiles_dir = "{profiles}"\n'


async def populate(lab: Lab) -> None:
    for device_id, kind, name, ip in DEVICES:
        await lab.daemon.devices.add(device_id, kind, name=name, source="test", ip=ip,
                                     actor="test")
    now = time.time()
    totals = dict.fromkeys(CLASSES, 0)
    for i in range(120, -1, -1):  # every 30 s for an hour: a burst of inbound scans
        totals = {**totals, "inbound": totals["inbound"] + (40 if 60 <= i <= 70 else i % 3),
                  "quarantine": totals["quarantine"] + (i % 7 == 0),
                  "upnp": totals["upnp"] + (i % 20 == 0)}
        lab.daemon.firewall.history.append(Sample(now - i * 30, dict(totals)))


async def test_adopt_block_and_release_on_the_network_page(page: Page, shot: Shot,
                                                           tmp_path: Path) -> None:
    state, extra = await network_lab(tmp_path)
    async with web_lab(state, extra=extra) as gw:
        base = base_url(gw)
        add_user(gw, *ADMIN)
        await populate(gw)
        await log_in(page, gw, *ADMIN)

        # The dashboard says loudly that nothing is protected, and links to the page.
        notice = page.locator("#firewall-notice")
        await expect(notice).to_be_visible()
        await expect(notice).to_contain_text("Devices are NOT protected")
        tile = page.locator("#tile-firewall")
        await expect(tile.locator('[data-field="fw-state"]')).to_have_text("Render-only")
        await expect(tile.locator('[data-field="fw-state"]')).to_have_class(re.compile(r"\bbad\b"))
        await shot("dashboard", phone=True)
        await tile.get_by_role("link", name="network").click()
        await expect(page).to_have_url(f"{base}/network")
        await expect(page.get_by_role("heading", name="Network", exact=True)).to_be_visible()
        await expect(nav(page).get_by_role("link", name="Network")).to_have_attribute(
            "aria-current", "page")
        await expect(notice).to_contain_text('firewall.mode = "render-only"')
        status = page.locator("#fw-status")
        await expect(status.locator('[data-field="fw-mode"]')).to_have_text(
            "render-only: not applied")

        # The counters, each class explained, with the last hour drawn.
        drops = page.locator("#drops figure")
        await expect(drops).to_have_count(len(CLASSES))
        inbound = page.locator('#drops figure[data-class="inbound"]')
        await expect(inbound).to_contain_text("a scan")
        await expect(inbound.locator("svg.spark polyline.line")).to_have_attribute(
            "points", re.compile(r"^\S+( \S+){100,}$"))
        await expect(inbound.locator(".recent")).to_have_text(re.compile(r"^\d+ in the last hour$"))
        await expect(page.locator('#drops figure[data-class="spoof"] svg.spark')).to_be_visible()

        # Everything starts in quarantine; the device without an address says why.
        waiting = page.locator("#fw-quarantine")
        await expect(waiting.locator("tbody tr")).to_have_count(5)
        await expect(waiting.locator("#fw-old-bulb")).to_contain_text("no known address")
        await page.evaluate("window.notReloaded = true")

        # Adopt the plug with a chosen profile: it moves to the other table, with the
        # destinations that profile allows.
        plug = waiting.locator("#fw-garage-plug")
        profile = plug.get_by_label("Profile")
        await expect(profile.locator("option:checked")).to_have_text("plug (its kind)")
        await profile.select_option("plug-cloud")
        await plug.get_by_role("button", name="Adopt").click()
        result = page.locator("#network-result")
        await expect(result).to_have_text(
            "garage-plug: restricted (profile plug-cloud), applied. "
            "firewall RENDER-ONLY: devices are NOT protected")
        adopted = page.locator("#fw-devices #fw-garage-plug")
        await expect(adopted.locator(".pill")).to_have_text("restricted")
        await expect(adopted).to_contain_text("plug-cloud")
        reach = adopted.locator("td.reach")
        await expect(reach).to_contain_text("tcp ports 443, 8883 → api.plug-vendor.example")
        await expect(reach).to_contain_text("icmp → 203.0.113.0/24")
        await expect(waiting.locator("#fw-garage-plug")).to_have_count(0)
        stored = gw.daemon.store.device("garage-plug")
        assert stored is not None and (stored.policy, stored.profile) == ("restricted",
                                                                           "plug-cloud")

        # The thermostat with its kind's profile: it may ask sensors over CoAP.
        await waiting.locator("#fw-living-thermostat").get_by_role("button",
                                                                   name="Adopt").click()
        thermostat = page.locator("#fw-devices #fw-living-thermostat")
        await expect(thermostat).to_contain_text("udp port 5683 → sensor devices")
        await expect(thermostat).to_contain_text("(its kind)")

        # Block the camera (after a confirmation), then put it back into quarantine.
        page.once("dialog", accept)
        await waiting.locator("#fw-porch-cam").get_by_role("button", name="Block").click()
        blocked = page.locator("#fw-devices #fw-porch-cam")
        await expect(blocked.locator(".pill")).to_have_text("blocked")
        await expect(blocked).to_contain_text("nothing, not even the gateway")
        await expect(waiting.locator("tbody tr")).to_have_count(2)
        await shot(phone=True)
        await blocked.get_by_role("button", name="Back to quarantine").click()
        await expect(waiting.locator("#fw-porch-cam")).to_be_visible()
        await expect(page.locator("#fw-devices #fw-porch-cam")).to_have_count(0)

        # A change made elsewhere (the command line) shows up live, as does "open",
        # which is a warning.
        await gw.daemon.firewall.set_policy("hall-sensor", "open", None, "admin")
        sensor = page.locator("#fw-devices #fw-hall-sensor")
        await expect(sensor.locator(".pill")).to_have_text("⚠ open")
        await expect(page.locator("#open-devices")).to_contain_text("1 device with policy open")
        assert await page.evaluate("window.notReloaded") is True, "the page reloaded"
        await shot("open", phone=True)

        actions = [(e.actor, e.target, e.result)
                   for e in gw.daemon.store.audit_log(10, "device.policy")][::-1]
        assert actions == [("web:alice", "garage-plug", "ok"),
                           ("web:alice", "living-thermostat", "ok"),
                           ("web:alice", "porch-cam", "ok"), ("web:alice", "porch-cam", "ok"),
                           ("admin", "hall-sensor", "ok")]

        # The device's own page shows its policy and profile, and links here.
        await page.goto(f"{base}/devices/garage-plug")
        box = page.locator("#network")
        await expect(box.locator('[data-field="fw-policy"]')).to_have_text("restricted")
        await expect(box.locator('[data-field="fw-profile"]')).to_have_text("plug-cloud")
        await expect(notice).to_be_visible()
        await box.get_by_role("link", name="Network").click()
        await expect(page).to_have_url(f"{base}/network")


async def test_a_viewer_sees_the_network_but_no_button(page: Page, shot: Shot,
                                                      tmp_path: Path) -> None:
    state, extra = await network_lab(tmp_path)
    async with web_lab(state, extra=extra) as gw:
        add_user(gw, *VIEWER, role="viewer")
        await populate(gw)
        await gw.daemon.firewall.set_policy("garage-plug", "restricted", "plug-cloud", "test")
        await gw.daemon.firewall.set_policy("porch-cam", "blocked", None, "test")
        await log_in(page, gw, *VIEWER)
        await nav(page).get_by_role("link", name="Network").click()
        await expect(page.locator("#firewall-notice")).to_contain_text(
            "Devices are NOT protected")
        await expect(page.locator("#drops figure svg.spark")).to_have_count(len(CLASSES))
        await expect(page.locator("#fw-quarantine tbody tr")).to_have_count(3)
        await expect(page.locator("#fw-devices #fw-porch-cam .pill")).to_have_text("blocked")
        await expect(page.get_by_role("button")).to_have_count(1)  # "Log out" only
        await expect(page.get_by_label("Profile")).to_have_count(0)
        await shot(phone=True)
