"""A tour of every page with real content, on a desktop and on a phone: each page renders
without a script error or CSP violation, nothing sticks out sideways on a 390-px phone,
and the forms not covered elsewhere (add a user, create an API token, filter the audit
log, create an enrollment token) work. Screenshots of each page go to
artifacts/screenshots/ for a human to judge."""

from __future__ import annotations

import re
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Page, expect

from gateway.sim.lab import Lab
from gateway.store import Discovered
from tests.browser.conftest import TIMEZONE, Shot
from tests.browser.test_admin_browser import log_in
from tests.web.kit import ADMIN, VIEWER, add_user, base_url

BROWSER_ZONE = ZoneInfo(TIMEZONE)

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


async def test_every_page_on_desktop_and_phone(gw: Lab, page: Page, shot: Shot) -> None:
    base = base_url(gw)
    add_user(gw, *ADMIN)
    await gw.add_devices([("living-thermostat", "thermostat"), ("hall-plug", "plug"),
                          ("front-door", "door")], interval_s=0.5)
    await gw.fleet.wait_connected()
    await log_in(page, gw, *ADMIN)
    await expect(page.locator("[data-field=online]")).to_have_text("3")
    await shot("dashboard", phone=True)

    # Two things found on the network, waiting to be adopted below the device list.
    now = time.time()
    for key, name, kind, address, port in [
            ("mdns:shellyplug-s-6A1F2C._shelly._tcp.local.",
             "shellyplug-s-6A1F2C._shelly._tcp.local.", "_shelly._tcp.local.", "192.0.2.21",
             80),
            ("dhcp:aa:bb:cc:00:11:22", "porch-camera", "dhcp", "192.0.2.33", None)]:
        gw.daemon.store.upsert_discovered(Discovered(
            key=key, source=key.split(":")[0], name=name, type=kind, addresses=(address,),
            port=port, txt={"gen": "2"} if port else {},
            mac="aa:bb:cc:00:11:22" if port is None else None, hostname=name.split(".")[0],
            first_seen=now - 600, last_seen=now, present=True), 500)
    await page.goto(f"{base}/devices")
    await expect(page.locator('[data-list="devices"] tr')).to_have_count(3)
    await expect(page.locator("#discovered-new > li.found-item")).to_have_count(2)
    await shot("devices", phone=True)

    await page.goto(f"{base}/homeassistant")
    await expect(page.locator('[data-field="ha-username"]')).to_have_text("homeassistant:1")
    await expect(page.locator('[data-field="ha-entities"]')).not_to_have_text(re.compile("^0 "))
    await shot("homeassistant", phone=True)

    # Without network.uplink the firewall is off, and the Network page says so plainly.
    await page.goto(f"{base}/network")
    await expect(page.locator("#firewall-off")).to_contain_text("network.uplink")
    await expect(page.locator("#firewall-notice")).to_be_hidden()
    await expect(page.locator("#fw-quarantine tbody tr")).to_have_count(3)
    await shot("network", phone=True)

    await page.goto(f"{base}/enroll")
    await expect(page.locator("#enrollment-list")).to_contain_text("None open.")
    await page.get_by_label("Name (optional)").fill("Porch light")
    await page.get_by_role("button", name="Create token").click()
    await expect(page.locator("#ticket svg")).to_be_visible()
    await expect(page.locator("#enrollment-list tr")).to_have_count(1)
    await expect(page.locator("#enrollment-list")).to_contain_text("Porch light")
    await shot("enroll", phone=True)

    await page.goto(f"{base}/devices/living-thermostat")
    await expect(page.locator("#chart svg.spark").first).to_be_visible()
    # Readings are stored every second; the chart redraws as they arrive, without a reload.
    await expect(page.locator("#chart polyline.line").first).to_have_attribute(
        "points", re.compile(r"^\S+( \S+){3,}$"))
    form = page.locator('form.command[data-fixed-action="set_target"]')
    await form.locator("input").fill("23.5")
    await form.get_by_role("button", name="Send").click()
    await expect(form.locator(".result")).to_have_text("ok")
    await expect(page.locator('[data-list="state"]')).to_contain_text("23.5")
    await shot("thermostat", phone=True)

    await page.goto(f"{base}/users")
    add = page.locator("form[data-api='/api/v1/users']")
    await add.get_by_label("User name").fill(VIEWER[0])
    await add.get_by_label("Role").select_option("viewer")
    await add.get_by_label("Password").fill(VIEWER[1])
    await add.get_by_role("button", name="Add").click()
    await expect(page.locator("table.users")).to_contain_text(VIEWER[0])
    await shot("users", phone=True)

    await page.goto(f"{base}/account")
    tokens = page.locator("form[data-api='/api/v1/tokens']")
    await tokens.get_by_label("Name").fill("backup script")
    await tokens.get_by_role("button", name="Create token").click()
    await expect(tokens.locator("code.secret")).to_have_text(re.compile(r"^hgw_"))
    await shot("account-token")
    await page.reload()
    await expect(page.locator("table.tokens")).to_contain_text("backup script")
    await shot("account", phone=True)

    await page.goto(f"{base}/audit")
    await page.get_by_label("Action").select_option("user.add")
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"/audit\?action=user\.add"))
    rows = page.locator("table.audit tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows).to_contain_text(VIEWER[0])
    # Times show in the browser's time zone (the context's Europe/Berlin), whatever the
    # gateway's own zone, the same on server-rendered and live-updated pages.
    [entry] = gw.daemon.store.audit_log(1, "user.add")
    shown = datetime.fromtimestamp(entry.ts, BROWSER_ZONE).strftime("%Y-%m-%d %H:%M:%S")
    await expect(rows.locator(".c-when")).to_have_text(shown)
    await page.goto(f"{base}/audit")
    await shot("audit", phone=True)

    answer = await page.goto(f"{base}/devices/no-such-device")
    assert answer is not None and answer.status == 404
    await expect(page.get_by_role("heading", name="404")).to_be_visible()
    await shot("not-found", phone=True)
