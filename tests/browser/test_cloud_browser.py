"""The Cloud page in the browser (Debian's chromium), against a real gateway with simulated
devices and no cloud link: the plain "not configured" explanation, the schedule editor
(an error shown inline, then a schedule in the list with its next run, disabled, deleted),
commands from the device page and from the owner's app appearing in the command log live,
and the dashboard's tile leading there."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.async_api import Dialog, Page, expect

from gateway.cloud import envelope
from gateway.sim.lab import Lab
from tests.browser.conftest import TIMEZONE, Shot
from tests.browser.test_admin_browser import log_in, nav
from tests.web.kit import ADMIN, VIEWER, add_user, base_url, web_lab
from tests.web.test_web_cloud import unreachable_cloud

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


async def accept(dialog: Dialog) -> None:
    await dialog.accept()


def shown_time(ts: float) -> str:
    """A time as the page shows it: in the browser's time zone."""
    return datetime.fromtimestamp(ts, ZoneInfo(TIMEZONE)).strftime("%Y-%m-%d %H:%M:%S")


async def test_schedules_and_the_command_log_on_the_cloud_page(gw: Lab, page: Page,
                                                               shot: Shot) -> None:
    base = base_url(gw)
    add_user(gw, *ADMIN)
    await gw.add_devices([("living-thermostat", "thermostat"), ("hall-plug", "plug")],
                         interval_s=1.0)
    await log_in(page, gw, *ADMIN)

    # The dashboard's tile says the link is not configured, and leads to the page.
    tile = page.locator("#tile-cloud")
    await expect(tile.locator('[data-field="cloud-state"]')).to_have_text("Not configured")
    await expect(tile).to_contain_text("local control only")
    await tile.get_by_role("link", name="cloud").click()
    await expect(page).to_have_url(f"{base}/cloud")
    await expect(page.get_by_role("heading", name="Cloud", exact=True)).to_be_visible()
    await expect(nav(page).get_by_role("link", name="Cloud")).to_have_attribute(
        "aria-current", "page")

    # Plainly: not configured, what still works, and where to configure it.
    off = page.locator("#cloud-off")
    await expect(off).to_contain_text("The cloud link is not configured.")
    await expect(off).to_contain_text("the schedules below")
    await expect(off).to_contain_text("signed commands from the owner's app")
    await expect(off).to_contain_text("docs/cloud.md")
    await expect(page.locator('#cloud-link [data-field="cloud-link-state"]')).to_have_text(
        "not configured")
    await expect(page.locator("#cloud-spool")).to_contain_text("Messages")
    await expect(page.locator("#cloud-schedules tbody")).to_contain_text("No schedules yet.")
    await expect(page.locator("#cloud-commands tbody")).to_contain_text("No commands yet.")
    await expect(page.locator("#cloud-shadows tbody tr")).to_have_count(2)
    await page.evaluate("window.notReloaded = true")

    # The form offers the chosen device's actions, with parameters to start from.
    form = page.locator("#schedule-form")
    await expect(form.locator("#when-hint")).to_contain_text("cron 0 7 * * 1-5")
    await form.get_by_label("Device").select_option("hall-plug")
    action = form.get_by_label("Action")
    await expect(action.locator("option:checked")).to_have_text("set_power")
    await expect(form.get_by_label("Parameters")).to_have_value('{"on": true}')
    await form.get_by_label("Device").select_option("living-thermostat")
    await expect(action.locator("option:checked")).to_have_text("set_target")
    await expect(form.get_by_label("Parameters")).to_have_value('{"target": 18}')
    await action.select_option("set_mode")
    await expect(form.get_by_label("Parameters")).to_have_value('{"mode": "off"}')
    await action.select_option("set_target")

    # A "when" the gateway cannot read: the error is shown in the form, nothing is saved.
    await form.get_by_label("Id").fill("morning-heat")
    await form.get_by_label("Name").fill("Morning heat")
    await form.get_by_label("When").fill("someday 07:30")
    await form.get_by_label("Parameters").fill('{"target": 21.5}')
    await form.get_by_role("button", name="Save schedule").click()
    result = form.locator(".result")
    await expect(result).to_have_text(re.compile(r'^when: "someday": unknown day "someday"'))
    await expect(result).to_have_class(re.compile(r"\berror\b"))
    assert gw.daemon.store.schedules() == []
    # Parameters that are not JSON are caught before anything is sent.
    await form.get_by_label("When").fill("weekdays 07:30")
    await form.get_by_label("Parameters").fill("{target: 21.5")
    await form.get_by_role("button", name="Save schedule").click()
    await expect(result).to_have_text("params: not valid JSON")
    await shot("error")

    await form.get_by_label("Parameters").fill('{"target": 21.5}')
    await form.get_by_role("button", name="Save schedule").click()
    row = page.locator("#schedule-morning-heat")
    await expect(row).to_contain_text("Morning heat")
    await expect(row).to_contain_text("weekdays 07:30")
    await expect(row).to_contain_text('set_target {"target": 21.5}')
    # The next run: 07:30 on the gateway's clock, shown in the browser's time zone.
    [view] = gw.daemon.cloud.schedule_view(time.time())
    next_run = shown_time(view["next_at"])
    await expect(result).to_have_text(f"Saved Morning heat: weekdays 07:30, next run {next_run}.")
    await expect(row.locator("td.next time")).to_have_text(next_run)
    await expect(row.locator("td.next small")).to_have_text(re.compile(r"^in \d+ (min|h|d)$"))
    await expect(row.locator("td.enabled")).to_have_text("yes")
    await expect(form.get_by_label("Id")).to_have_value("")

    # Disable it, then delete it (after a confirmation).
    await row.get_by_role("button", name="Disable").click()
    await expect(row.locator("td.enabled")).to_have_text("no")
    await expect(row.locator("td.next")).to_have_text("disabled")
    await expect(page.locator("#cloud-result")).to_have_text("Morning heat: disabled.")
    assert [s.enabled for s in gw.daemon.store.schedules()] == [False]
    await shot(phone=True)
    page.once("dialog", accept)
    await row.get_by_role("button", name="Delete").click()
    await expect(page.locator("#cloud-result")).to_have_text(
        "Deleted the schedule morning-heat.")
    await expect(row).to_have_count(0)
    await expect(page.locator("#cloud-schedules tbody")).to_contain_text("No schedules yet.")
    assert gw.daemon.store.schedules() == []
    assert await page.evaluate("window.notReloaded") is True, "the page reloaded"

    # A command from the owner's app (signed by a key the gateway does not know) shows up
    # live, refused, with its source and reason.
    command = envelope.sign(Ed25519PrivateKey.generate(), "phone", id="app-1",
                            device="hall-plug", action="set_power", params={"on": True},
                            iat=time.time(), exp=time.time() + 60)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/api/v1/commands", json=command) as r:
            assert r.status == 403
    log = page.locator("#cloud-commands tbody tr")
    await expect(log).to_have_count(1)
    await expect(log.locator(".c-source .pill")).to_have_text("local-signed")
    await expect(log.locator(".c-source .pill")).to_have_class(re.compile(r"\bsrc-local-signed\b"))
    await expect(log.locator(".c-outcome")).to_have_text("rejected")
    await expect(log.locator(".c-reason")).to_have_text("unknown-key")

    # A command from the device page: in the log as the admin's, ok.
    await page.goto(f"{base}/devices/hall-plug")
    send = page.locator('form.command[data-fixed-action="set_power"]')
    await send.get_by_label("on").select_option("on")
    await send.get_by_role("button", name="Send").click()
    await expect(send.locator(".result")).to_have_text("ok")
    await nav(page).get_by_role("link", name="Cloud").click()
    newest = page.locator("#cloud-commands tbody tr").first
    await expect(newest.locator(".c-source .pill")).to_have_text("admin")
    await expect(newest.locator(".c-source .pill")).to_have_class(re.compile(r"\bsrc-admin\b"))
    await expect(newest.locator(".c-actor")).to_have_text("web:alice")
    await expect(newest.locator(".c-device")).to_contain_text("hall-plug")
    await expect(newest.locator(".c-action")).to_have_text("set_power")
    await expect(newest.locator(".c-outcome")).to_have_text("ok")
    await expect(newest.locator(".c-latency")).to_have_text(re.compile(r"^\d+ ms$"))
    # The plug's shadow: what it reports and what was wanted, locally.
    shadow = page.locator("#shadow-hall-plug")
    await expect(shadow.locator("td.reported")).to_contain_text("on yes")
    await expect(shadow.locator("td.desired")).to_contain_text("on yes local")
    await shot("log", phone=True)


async def test_a_viewer_reads_the_cloud_page_without_a_form(gw: Lab, page: Page,
                                                            shot: Shot) -> None:
    add_user(gw, *VIEWER, role="viewer")
    await gw.add_devices([("hall-plug", "plug")], interval_s=1.0)
    gw.daemon.cloud.put_schedule("evening", "hall-plug", "daily 19:00", "set_power",
                                 {"on": True}, name="Evening lamp", source="admin",
                                 actor="test")
    await log_in(page, gw, *VIEWER)
    await nav(page).get_by_role("link", name="Cloud").click()
    await expect(page.locator("#cloud-off")).to_be_visible()
    row = page.locator("#schedule-evening")
    await expect(row).to_contain_text("Evening lamp")
    [view] = gw.daemon.cloud.schedule_view(time.time())
    await expect(row.locator("td.next time")).to_have_text(shown_time(view["next_at"]))
    await expect(page.locator("#schedule-form")).to_have_count(0)
    await expect(page.get_by_role("button")).to_have_count(1)  # "Log out" only
    await shot()


async def test_a_link_that_is_down_on_the_dashboard_and_the_cloud_page(
        page: Page, shot: Shot, tmp_path: Path) -> None:
    async with web_lab(tmp_path / "state", extra=unreachable_cloud(tmp_path)) as lab:
        add_user(lab, *ADMIN)
        await lab.add_devices([("hall-plug", "plug")], interval_s=1.0)
        await log_in(page, lab, *ADMIN)
        tile = page.locator("#tile-cloud")
        await expect(tile.locator('[data-field="cloud-state"]')).to_have_text("Offline")
        await expect(tile.locator('[data-field="cloud-state"]')).to_have_class(
            re.compile(r"\bbad\b"))
        await expect(tile.locator('[data-field="cloud-detail"]')).to_have_text(
            re.compile(r"^\d+ messages? spooled · oldest \d+ (s|min)$"))
        await tile.get_by_role("link", name="cloud").click()
        await expect(page.locator("#cloud-off")).to_have_count(0)
        link = page.locator("#cloud-link")
        await expect(link.locator('[data-field="cloud-link-state"]')).to_have_text(
            "offline: retrying")
        await expect(link).to_contain_text("home-1")
        await expect(link.locator("ol.history li").first).to_contain_text("down")
        await expect(page.locator('#cloud-spool [data-field="spool-messages"]')).not_to_have_text(
            "0")
        await shot(phone=True)
