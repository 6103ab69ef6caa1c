"""The admin page as a household member uses it, in a real browser (Debian's chromium).

Each test starts its own gateway with a real Mosquitto, drives the page the way a person
would (typing, clicking, waiting for what appears) and asserts what the person SEES. The
page follows the gateway over Server-Sent Events, so the live tests never reload. Every
test leaves a screenshot of its last page under artifacts/screenshots/.
"""

from __future__ import annotations

import re
import time

import pyotp
import pytest
from playwright.async_api import Locator, Page, expect

from gateway.sim.lab import Lab
from gateway.web import pages
from tests.browser.conftest import Shot
from tests.web.kit import ADMIN, VIEWER, add_user, base_url

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


async def log_in(page: Page, lab: Lab, username: str, password: str) -> None:
    base = base_url(lab)
    await page.goto(f"{base}/login")
    await page.get_by_label("User name").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(f"{base}/")
    await expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()


def nav(page: Page) -> Locator:
    return page.locator("header.top nav")


def state_value(page: Page, key: str) -> Locator:
    """The value cell of one row in the device page's "Latest state" table."""
    row = page.locator('[data-list="state"] tr').filter(
        has=page.locator("th", has_text=re.compile(f"^{re.escape(key)}$")))
    return row.locator("td")


async def test_first_run_setup(gw: Lab, page: Page, shot: Shot) -> None:
    base = base_url(gw)
    code, _ = gw.daemon.accounts.issue_setup_code()

    # A fresh gateway: whatever one opens, it asks for the setup code.
    await page.goto(f"{base}/")
    await expect(page).to_have_url(f"{base}/setup")
    await expect(page.get_by_role("heading", name="Welcome")).to_be_visible()
    await shot("form", phone=True)

    form = page.locator("form#setup")
    await page.get_by_label("Setup code").fill("ABCD-EFGH-JKMN")
    await page.get_by_label("Your user name").fill("hannah")
    await page.get_by_label("Password (at least 10 characters)").fill(ADMIN[1])
    await page.get_by_label("Password again").fill(ADMIN[1])
    async with page.expect_response(f"{base}/api/v1/setup") as answer:
        await page.get_by_role("button", name="Create the admin account").click()
    assert (await answer.value).status == 403
    await expect(form.locator(".result")).to_have_text("wrong setup code")
    await expect(form.locator(".result")).to_have_class(re.compile(r"\berror\b"))
    await shot("wrong-code")

    # Nothing was created: the gateway still offers first-run setup.
    assert gw.daemon.store.users() == []
    await page.goto(f"{base}/login")
    await expect(page).to_have_url(f"{base}/setup")

    await page.get_by_label("Setup code").fill(code.lower().replace("-", " "))  # as typed
    await page.get_by_label("Your user name").fill("hannah")
    await page.get_by_label("Password (at least 10 characters)").fill(ADMIN[1])
    await page.get_by_label("Password again").fill(ADMIN[1])
    await page.get_by_role("button", name="Create the admin account").click()

    await expect(page).to_have_url(f"{base}/")
    await expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    await expect(nav(page).get_by_role("link", name="hannah")).to_be_visible()
    await expect(nav(page).get_by_role("link", name="Users")).to_be_visible()
    await expect(page.locator("#tile-health [data-field=health]")).to_have_text("Healthy")
    await shot(phone=True)

    # The code was single use: the setup page is gone for good.
    await page.goto(f"{base}/setup")
    await expect(page).to_have_url(f"{base}/")


async def test_login_and_logout(gw: Lab, page: Page, shot: Shot) -> None:
    base = base_url(gw)
    add_user(gw, *ADMIN)

    await page.goto(f"{base}/devices")
    await expect(page).to_have_url(re.compile(r"/login\?next=(%2F|/)devices$"))
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    await shot("form", phone=True)

    await log_in(page, gw, *ADMIN)
    await expect(nav(page).get_by_role("link", name=ADMIN[0])).to_be_visible()
    cookies = await page.context.cookies()
    session = [c for c in cookies if c["name"] == "hg_session"]
    assert session, f"no session cookie after login: {cookies}"
    assert session[0]["httpOnly"] and session[0]["sameSite"] == "Strict"

    await page.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(f"{base}/login")
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    await expect(nav(page)).to_have_count(0)

    # The session ended on the server: even the old cookie, put back, opens nothing.
    await page.context.add_cookies(session)  # type: ignore[arg-type]
    await page.goto(f"{base}/devices")
    await expect(page).to_have_url(re.compile(r"/login\?next=(%2F|/)devices$"))
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    await shot()


async def test_wrong_passwords_throttled(gw: Lab, page: Page, shot: Shot) -> None:
    base = base_url(gw)
    add_user(gw, *ADMIN)
    await page.goto(f"{base}/login")
    result = page.locator("form#login .result")
    await page.get_by_label("User name").fill(ADMIN[0])

    async def attempt(password: str) -> int:
        await page.get_by_label("Password").fill(password)
        async with page.expect_response(f"{base}/api/v1/session") as answer:
            await page.get_by_role("button", name="Log in").click()
        return (await answer.value).status

    for n in range(5):
        assert await attempt(f"Wrong-Password-{n}-xyz") == 401
        await expect(result).to_have_text("wrong user name or password")
    await shot("wrong")

    # Even the right password is refused now, with how long to wait.
    assert await attempt(ADMIN[1]) == 429
    await expect(result).to_have_text(
        re.compile(r"^too many failed attempts; try again in \d+ s$"))
    await expect(result).to_have_class(re.compile(r"\berror\b"))
    await expect(page).to_have_url(f"{base}/login")
    await shot()


async def test_device_list_updates_live(gw: Lab, page: Page, shot: Shot) -> None:
    add_user(gw, *ADMIN)
    await log_in(page, gw, *ADMIN)
    await page.get_by_role("link", name="Devices").click()
    await expect(page.get_by_role("heading", name="Devices")).to_be_visible()
    rows = page.locator('[data-list="devices"]')
    await expect(rows).to_contain_text("No devices yet.")
    await page.evaluate("window.notReloaded = true")  # gone if the page reloads

    await gw.add_devices([("live-plug-1", "plug")], interval_s=0.5)

    row = page.locator("#device-live-plug-1")
    await expect(row).to_be_visible()
    await expect(row.get_by_role("link")).to_have_attribute("href", "/devices/live-plug-1")
    await expect(row).to_contain_text("plug")
    await expect(row.locator("td[data-seen]")).to_have_text(re.compile(r"^\d s ago$"))
    await expect(row.locator(".dot")).to_have_attribute("title", "online")
    await expect(rows).not_to_contain_text("No devices yet.")
    assert await page.evaluate("window.notReloaded") is True, "the page reloaded"
    await shot(phone=True)


async def test_command_from_device_page(gw: Lab, page: Page, shot: Shot) -> None:
    base = base_url(gw)
    add_user(gw, *ADMIN)
    [plug] = await gw.add_devices([("hall-plug", "plug")], interval_s=0.5)
    await gw.fleet.wait_connected()
    await log_in(page, gw, *ADMIN)
    await page.goto(f"{base}/devices/hall-plug")
    await expect(page.get_by_role("heading", name="hall-plug")).to_be_visible()
    await expect(state_value(page, "on")).to_have_text("yes")
    await page.evaluate("window.notReloaded = true")

    form = page.locator('form.command[data-fixed-action="set_power"]')
    for value, shown, expected in (("false", "no", False), ("true", "yes", True)):
        await form.locator('select[name="params.on"]').select_option(value)
        async with page.expect_response(
                f"{base}/api/v1/devices/hall-plug/commands") as answer:
            await form.get_by_role("button", name="Send").click()
        assert (await answer.value).status == 200
        await expect(form.locator(".result")).to_have_text(re.compile(r"^ok\b"))
        await expect(state_value(page, "on")).to_have_text(shown)  # live, over SSE
        assert plug.state["on"] is expected  # the simulated plug itself obeyed
    assert plug.commands_handled == 2
    assert await page.evaluate("window.notReloaded") is True, "the page reloaded"

    # The chart of the last hour has the plug's readings.
    await expect(page.locator("#chart svg.spark").first).to_be_visible()
    await expect(page.locator("#chart figcaption").first).to_contain_text("power_w")
    # Readings are stored every second; the chart redraws as they arrive, without a reload.
    await expect(page.locator("#chart polyline.line").first).to_have_attribute(
        "points", re.compile(r"^\S+( \S+){3,}$"))
    await shot(phone=True)


async def test_viewer_cannot_change_anything(gw: Lab, page: Page, shot: Shot) -> None:
    base = base_url(gw)
    add_user(gw, *ADMIN)
    add_user(gw, *VIEWER, role="viewer")
    [plug] = await gw.add_devices([("desk-plug", "plug")], interval_s=1.0)
    await log_in(page, gw, *VIEWER)

    notice = page.get_by_text("You are a viewer: you can look, but not change anything.")
    await expect(notice).to_be_visible()
    await expect(nav(page).get_by_role("link", name="Devices")).to_be_visible()
    await expect(nav(page).get_by_role("link", name="Users")).to_have_count(0)

    await page.goto(f"{base}/devices")
    await expect(page.locator("#device-desk-plug")).to_be_visible()
    await expect(page.get_by_role("heading", name="Add a device")).to_have_count(0)
    await expect(page.locator("form[data-api='/api/v1/devices']")).to_have_count(0)

    await page.goto(f"{base}/devices/desk-plug")
    await expect(page.get_by_role("heading", name="desk-plug")).to_be_visible()
    await expect(notice).to_be_visible()
    await expect(page.locator("form.command")).to_have_count(0)
    await expect(page.get_by_role("button", name=re.compile("Send|Remove"))).to_have_count(0)

    # A request forged from this very page, with its CSRF token, is refused too.
    status, body = await page.evaluate("""async () => {
        const token = document.querySelector('meta[name="csrf-token"]').content;
        const res = await fetch("/api/v1/devices/desk-plug/commands", {
            method: "POST",
            headers: {"Content-Type": "application/json", "X-CSRF-Token": token},
            body: JSON.stringify({action: "set_power", params: {on: false}})});
        return [res.status, await res.json()];
    }""")
    assert status == 403, body
    assert body["error"] == "viewers can look but not change"
    assert plug.commands_handled == 0
    status, body = await page.evaluate("""async () => {
        const token = document.querySelector('meta[name="csrf-token"]').content;
        const res = await fetch("/api/v1/devices/desk-plug", {
            method: "DELETE", headers: {"X-CSRF-Token": token}});
        return [res.status, await res.json()];
    }""")
    assert status == 403, body
    assert [d.id for d in gw.daemon.devices.devices()] == ["desk-plug"]
    await shot("device", phone=True)

    answer = await page.goto(f"{base}/users")
    assert answer is not None and answer.status == 403
    await expect(page.get_by_role("heading", name="403")).to_be_visible()
    await expect(page.get_by_text("only admins may open this page")).to_be_visible()
    await shot()


async def test_totp_enrol_and_login(gw: Lab, page: Page, shot: Shot) -> None:
    base = base_url(gw)
    add_user(gw, *ADMIN)
    await log_in(page, gw, *ADMIN)
    await nav(page).get_by_role("link", name=ADMIN[0]).click()
    await expect(page.get_by_role("heading", name="Your account")).to_be_visible()

    await page.get_by_role("button", name="Turn on").click()
    await expect(page.locator("#totp-qr svg")).to_be_visible()
    secret = (await page.locator("#totp-secret").inner_text()).replace(" ", "")
    assert re.fullmatch(r"[A-Z2-7]{32}", secret), secret
    await shot("qr", phone=True)
    totp = pyotp.TOTP(secret)
    await page.get_by_label("Code from the app").fill(totp.now())
    await page.get_by_role("button", name="Confirm").click()
    codes = page.locator("#recovery-codes li")
    await expect(codes).to_have_count(10)
    recovery = [c.strip() for c in await codes.all_inner_texts()]
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{8}", c) for c in recovery), recovery
    await shot("recovery")

    await page.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(f"{base}/login")

    # The password alone is not enough any more: the page asks for the code.
    await page.get_by_label("User name").fill(ADMIN[0])
    await page.get_by_label("Password").fill(ADMIN[1])
    await page.get_by_role("button", name="Log in").click()
    result = page.locator("form#login .result")
    await expect(result).to_have_text("enter the code from your authenticator app")
    code_box = page.get_by_label("Code from your authenticator app")
    await expect(code_box).to_be_visible()
    await shot("code")
    # Confirming used the current 30-s step and a step never counts twice; the server
    # allows one step of clock drift, so the app's next code is accepted at once.
    used = totp.at(time.time() + 30)
    await code_box.fill(used)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(f"{base}/")
    await expect(nav(page).get_by_role("link", name=ADMIN[0])).to_be_visible()

    # Once more: the same code is refused (no replay); a recovery code works, once.
    await page.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(f"{base}/login")
    await page.get_by_label("User name").fill(ADMIN[0])
    await page.get_by_label("Password").fill(ADMIN[1])
    await page.get_by_role("button", name="Log in").click()
    await expect(code_box).to_be_visible()
    await code_box.fill(used)
    await page.get_by_role("button", name="Log in").click()
    await expect(result).to_have_text("wrong or already used code")
    await code_box.fill(recovery[0])
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(f"{base}/")

    await page.goto(f"{base}/account")
    await expect(page.locator("#totp .pill")).to_have_text("On")
    await expect(page.locator("#totp")).to_contain_text("9 recovery codes left.")
    await shot()


async def test_the_page_script_escapes_the_same_characters_as_the_server(
        gw: Lab, page: Page) -> None:
    """Live updates (app.js) and rendered pages (pages.INVISIBLE) show the same characters
    escaped: every code point is tried in chromium and in Python."""
    await page.goto(f"{base_url(gw)}/login")
    in_browser = await page.evaluate("""() => {
        const out = [];
        for (let cp = 0; cp <= 0x10ffff; cp++) {
            if (cp >= 0xd800 && cp <= 0xdfff) continue;
            const s = String.fromCodePoint(cp);
            if (visible(s) !== s) out.push(cp);
        }
        return out;
    }""")
    in_python = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF
                 and pages.visible(chr(cp)) != chr(cp)]
    assert in_browser == in_python
    assert await page.evaluate("visible('plug\\u202egnp.exe')") == "plug\\u202egnp.exe"
