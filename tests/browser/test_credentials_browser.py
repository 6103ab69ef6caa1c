"""Enrollment and credential rotation in the browser (Debian's chromium), against a real
gateway, broker and a simulated device that enrolls with the token read off the page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import Browser, Dialog, Page, expect

from gateway.credentials.pki import ca_fingerprint
from gateway.sim.devices import enroll, enrolled_device
from gateway.sim.lab import Lab
from tests.browser.conftest import Shot
from tests.browser.test_admin_browser import log_in, nav
from tests.web.kit import ADMIN, VIEWER, add_user, base_url, web_lab

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


async def accept(dialog: Dialog) -> None:
    await dialog.accept()


async def test_enroll_a_device_from_the_page_then_rotate_it(gw: Lab, page: Page,
                                                              shot: Shot) -> None:
    base = base_url(gw)
    add_user(gw, *ADMIN)
    await log_in(page, gw, *ADMIN)
    await nav(page).get_by_role("link", name="Devices").click()
    await page.get_by_role("link", name="Enroll a device").click()
    await expect(page).to_have_url(f"{base}/enroll")
    await expect(page.get_by_role("heading", name="Enroll a device")).to_be_visible()
    await expect(nav(page).get_by_role("link", name="Devices")).to_have_attribute(
        "aria-current", "page")

    await page.get_by_label("Name (optional)").fill("Garden sensor")
    await page.get_by_label("Valid for (minutes)").fill("10")
    await page.get_by_role("button", name="Create token").click()
    ticket = page.locator("#ticket")
    await expect(ticket).to_be_visible()
    await expect(ticket.get_by_role("img", name=re.compile("QR code"))).to_be_visible()
    token_box = page.locator("#ticket-token")
    await expect(token_box).to_have_text(re.compile(r"^[0-9a-f]{10}\.\S{27}$"))
    token = (await token_box.inner_text()).strip()
    port = gw.daemon.endpoint.port
    await expect(page.locator("#ticket-brokers")).to_have_text(f"127.0.0.1:{port} plain text")
    await expect(page.locator("#ticket-ca")).to_have_text(ca_fingerprint(gw.daemon.pki))
    download = ticket.get_by_role("link", name="Download the CA certificate")
    await expect(download).to_have_attribute("href", "/api/v1/ca.crt")
    token_id = token.split(".")[0]
    listed = page.locator(f'#enrollment-list tr[data-id="{token_id}"]')
    await expect(listed).to_contain_text("Garden sensor")
    await expect(listed).to_contain_text("web:alice")
    await shot("token", phone=True)

    # Another token, revoked from the list: the broker refuses it from then on.
    await page.get_by_label("Name (optional)").fill("")
    await page.get_by_label("Device id (optional; else the kind and a random suffix)").fill(
        "spare-plug")
    await page.get_by_role("button", name="Create token").click()
    await expect(token_box).not_to_have_text(token)
    spare = (await token_box.inner_text()).strip()
    row = page.locator(f'#enrollment-list tr[data-id="{spare.split(".")[0]}"]')
    await expect(row).to_contain_text("spare-plug")
    page.once("dialog", accept)
    await row.get_by_role("button", name="Revoke").click()
    await expect(row).to_have_count(0)
    await expect(listed).to_be_visible()
    with pytest.raises(TimeoutError):
        await enroll(gw.endpoint(), spare, {"kind": "plug"}, timeout=3)

    # The device enrolls with the token read off the page, and appears in the list live.
    await page.goto(f"{base}/devices")
    await expect(page.get_by_role("heading", name="Devices")).to_be_visible()
    agent = await enrolled_device(gw.endpoint(), token, "sensor", model="GS-1",
                                  firmware="2.4.1")
    gw.fleet.devices.append(agent)
    await agent.start()
    device_row = page.locator(f"#device-{agent.id}")
    await expect(device_row).to_contain_text("Garden sensor")
    await expect(device_row.locator(".dot")).to_have_attribute("title", "online")
    await expect(device_row.locator(".c-cred")).to_have_text(re.compile(r"^\d+ s$"))

    await device_row.get_by_role("link", name="Garden sensor").click()
    await expect(page.get_by_role("heading", name="Garden sensor")).to_be_visible()
    await expect(page.locator(".sub")).to_contain_text("GS-1 · firmware 2.4.1")
    credential = page.locator("#credential")
    await expect(credential.locator('[data-field="cred-user"]')).to_have_text(f"{agent.id}.1")
    await expect(credential.locator('[data-field="cred-result"]')).to_have_text(
        "never rotated")
    await expect(credential.locator('[data-field="cred-next"]')).to_have_text("in 29 d")
    await page.evaluate("window.notReloaded = true")

    await credential.get_by_role("button", name="Rotate now").click()
    await expect(credential.locator("form .result").first).to_have_text("Rotation started.")
    await expect(credential.locator('[data-field="cred-result"]')).to_have_text("ok")
    await expect(credential.locator('[data-field="cred-user"]')).to_have_text(f"{agent.id}.2")
    await expect(credential.locator('[data-field="cred-next"]')).to_have_text("in 29 d")
    assert await page.evaluate("window.notReloaded") is True, "the page reloaded"
    assert agent.username == f"{agent.id}.2" and agent.connected

    # A shorter period for this device, then back to the default.
    days = credential.get_by_label(re.compile("Rotation period in days"))
    await days.fill("7")
    await credential.get_by_role("button", name="Save").click()
    await expect(credential).to_contain_text("7 days")
    await expect(credential.locator('[data-field="cred-next"]')).to_have_text("in 6 d")
    await shot(phone=True)
    await credential.get_by_label(re.compile("Rotation period in days")).fill("")
    await credential.get_by_role("button", name="Save").click()
    await expect(credential).to_contain_text("30 days (default)")


async def test_rotation_alert_on_the_dashboard_and_rotate_all(browser: Browser, page: Page,
                                                               shot: Shot,
                                                               tmp_path: Path) -> None:
    # A device that does not acknowledge its new login within 1 s fails its attempt, and
    # one failure raises the alert; the next attempt waits ten minutes.
    fast = "[credentials]\nack_timeout_s = 1\nretry_initial_s = 600\nalert_after = 1\n"
    async with web_lab(tmp_path / "state", extra=fast) as gw:
        base = base_url(gw)
        add_user(gw, *ADMIN)
        add_user(gw, *VIEWER, role="viewer")
        [deaf, plug] = await gw.add_devices([("deaf-bulb", "bulb"), ("good-plug", "plug")],
                                            interval_s=0.3)
        deaf.acknowledge = False
        await log_in(page, gw, *ADMIN)
        banner = page.locator("#rotation-alert")
        await expect(banner).to_be_hidden()
        state = page.locator("#tile-credentials [data-field=cred-state]")
        await expect(state).to_have_text("OK")
        await page.evaluate("window.notReloaded = true")

        # Rotate all, from the device list.
        await nav(page).get_by_role("link", name="Devices").click()
        page.once("dialog", accept)
        rotate_all = page.locator("form[data-api='/api/v1/credentials/rotate-all']")
        await rotate_all.get_by_role("button", name="Rotate all").click()
        await expect(rotate_all.locator(".result")).to_have_text("2 rotations started.")
        await expect(page.locator("#device-deaf-bulb .c-cred .pill")).to_have_text("alert")
        await expect(page.locator("#device-good-plug .c-cred")).to_have_text(
            re.compile(r"^\d+ s$"))
        assert plug.username == "good-plug.2"
        assert gw.daemon.store.device("good-plug").rotation_result == "ok"
        await shot("devices", phone=True)

        # The dashboard shows the alert, and follows it live.
        await nav(page).get_by_role("link", name="Dashboard").click()
        await expect(banner).to_be_visible()
        await expect(banner.get_by_role("link", name="deaf-bulb")).to_have_attribute(
            "href", "/devices/deaf-bulb")
        await expect(state).to_have_text("1 alert")
        await page.evaluate("window.notReloaded = true")
        deaf.acknowledge = True  # it starts cooperating: the next attempt clears the alert
        await gw.daemon.rotator.rotate(["deaf-bulb"], "manual", "test")
        await expect(banner).to_be_hidden()
        await expect(state).to_have_text("OK")
        assert await page.evaluate("window.notReloaded") is True, "the page reloaded"
        # .2 was dropped with the failed attempt; its successor is in use now
        current = deaf.username
        assert current == "deaf-bulb.3"

        # Once more without acknowledging: the device page shows the alert.
        deaf.acknowledge = False
        await gw.daemon.rotator.rotate(["deaf-bulb"], "manual", "test")
        await expect(banner).to_be_visible()
        await shot("dashboard", phone=True)
        await page.goto(f"{base}/devices/deaf-bulb")
        await expect(page.locator('[data-field="cred-alert"]')).to_be_visible()
        await expect(page.locator('[data-field="cred-result"]')).to_have_text(
            re.compile(r"^alert: no acknowledgement"))
        await shot(phone=True)
        assert deaf.connected and deaf.username == current

        # A viewer sees the alert but no button to change anything.
        await page.get_by_role("button", name="Log out").click()
        await expect(page).to_have_url(f"{base}/login")
        await log_in(page, gw, *VIEWER)
        await expect(banner).to_be_visible()
        await page.goto(f"{base}/devices/deaf-bulb")
        await expect(page.locator("#credential")).to_be_visible()
        await expect(page.get_by_role("button", name=re.compile("Rotate|Save"))).to_have_count(0)
        await page.goto(f"{base}/devices")
        await expect(page.get_by_role("button", name="Rotate all")).to_have_count(0)
        await expect(page.get_by_role("link", name="Enroll a device")).to_have_count(0)
