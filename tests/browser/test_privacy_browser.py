"""The Privacy page in the browser (Debian's chromium), against a real gateway: the four
categories with their consent texts, all off; a switch turned on stays on across a reload
and shows on the dashboard; a released week appears live as exactly the bytes the next
export sends; "Delete queued export data" empties it; the export history; a viewer's
page, where nothing can be changed."""

from __future__ import annotations

import re
import time

import pytest
from playwright.async_api import Page, expect

from gateway.privacy.reports import CATEGORIES, WeekData
from gateway.sim.lab import Lab
from tests.browser.conftest import Shot
from tests.browser.test_admin_browser import log_in, nav
from tests.browser.test_cloud_browser import accept
from tests.web.kit import ADMIN, VIEWER, add_user, base_url

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


async def pre_text(page: Page) -> str:
    """The <pre> of the next export's bytes, exactly as the browser holds it."""
    pre = page.locator("#preview-bytes")
    await expect(pre).to_be_visible()
    return await pre.text_content() or ""


async def test_consent_the_exact_bytes_and_deleting_them(gw: Lab, page: Page,
                                                         shot: Shot) -> None:
    base = base_url(gw)
    privacy, store = gw.daemon.privacy, gw.daemon.store
    add_user(gw, *ADMIN)
    await log_in(page, gw, *ADMIN)

    # The dashboard: off, and a way to the page.
    tile = page.locator("#tile-privacy")
    await expect(tile.locator('[data-field="privacy-state"]')).to_have_text("Off")
    await expect(tile.locator('[data-field="privacy-detail"]')).to_have_text(
        "no category consented")
    await tile.get_by_role("link", name="privacy").click()
    await expect(page).to_have_url(f"{base}/privacy")
    await expect(page.get_by_role("heading", name="Privacy", exact=True)).to_be_visible()
    await expect(nav(page).get_by_role("link", name="Privacy")).to_have_attribute(
        "aria-current", "page")

    # Four categories, each with its consent text, all off; nothing queued, no history.
    texts = {c["name"]: c["text"] for c in privacy.status()["categories"]}
    cards = page.locator("article.consent")
    await expect(cards).to_have_count(len(CATEGORIES))
    for name in CATEGORIES:
        card = page.locator(f"#consent-{name}")
        await expect(card.locator(".consent-text")).to_have_text(texts[name])
        await expect(card.get_by_role("switch")).not_to_be_checked()
        await expect(card.get_by_role("switch")).to_be_enabled()
        await expect(card.locator(f'[data-field="consent-state-{name}"]')).to_have_text("off")
    await expect(page.get_by_role("switch", name="Device usage")).to_have_attribute(
        "aria-describedby", "consent-text-usage")
    await expect(page.locator("#preview-empty")).to_have_text("Nothing is queued.")
    await expect(page.locator("#privacy-history tbody")).to_contain_text(
        "Nothing has been exported yet.")
    await expect(page.locator("#privacy-error")).to_be_hidden()
    await expect(page.locator('#privacy-budget [data-field="week-spent"]')).to_contain_text(
        "0 of")
    await shot("off", phone=True)

    # Turn usage on: at once, audited as the admin's, and still on after a reload.
    await page.evaluate("window.notReloaded = true")
    await page.get_by_role("switch", name="Device usage").check()
    await expect(page.locator("#privacy-result")).to_have_text("usage: turned on.")
    usage = page.locator("#consent-usage")
    await expect(usage.locator('[data-field="consent-state-usage"]')).to_have_text("on")
    await expect(usage).to_contain_text("by web:alice")
    await expect(usage.get_by_role("switch")).to_be_focused()  # redrawn, focus kept
    assert store.consents()["usage"][0] is True
    [entry] = store.audit_log(1, "privacy.consent")
    assert (entry.actor, entry.result, entry.target) == ("web:alice", "granted", "usage")
    assert await page.evaluate("window.notReloaded") is True, "the page reloaded"
    await page.reload()
    await expect(page.get_by_role("switch", name="Device usage")).to_be_checked()
    await expect(page.get_by_role("switch", name="Energy by hour")).not_to_be_checked()
    await nav(page).get_by_role("link", name="Dashboard").click()
    await expect(tile.locator('[data-field="privacy-state"]')).to_have_text("On")
    await expect(tile.locator('[data-field="privacy-detail"]')).to_have_text(
        "usage on · 0 reports queued")

    # A week ends (one long gone, here): its report is released and queued. The page
    # follows the gateway live and shows exactly the bytes the next export sends.
    await nav(page).get_by_role("link", name="Privacy").click()
    await page.evaluate("window.notReloaded = true")
    privacy.data = WeekData("2020-W01")
    [report] = privacy.close_week()
    assert report["category"] == "usage"
    ids, body, send_after = privacy.next_export()
    assert len(ids) == 1 and send_after is not None
    await expect(page.locator('#privacy-next [data-field="queue-reports"]')).to_have_text("1")
    assert await pre_text(page) == body.decode()
    await expect(page.locator('#privacy-next [data-field="queue-bytes"]')).to_have_text(
        f"{len(body)} bytes")
    await expect(page.locator('#privacy-next [data-field="sink"]')).to_have_text(
        privacy.describe_sink())
    await expect(page.locator('#privacy-budget [data-field="year-spent"]')).not_to_contain_text(
        re.compile(r"^0 of"))
    assert await page.evaluate("window.notReloaded") is True, "the page reloaded"
    await page.reload()  # server-rendered the same
    assert await pre_text(page) == body.decode()
    await shot("queued", phone=True)

    # "Delete queued export data", confirmed: nothing is queued any more, audited.
    page.once("dialog", accept)
    await page.get_by_role("button", name="Delete queued export data").click()
    await expect(page.locator("#privacy-result")).to_have_text(
        "Deleted 1 queued report and this week's data collected so far.")
    await expect(page.locator("#preview-empty")).to_have_text("Nothing is queued.")
    await expect(page.locator("#preview-bytes")).to_have_count(0)
    assert privacy.next_export() == ([], b"", None)
    [entry] = store.audit_log(1, "privacy.queue")
    assert (entry.actor, entry.result) == ("web:alice", "deleted")

    # The export history.
    store.log_export(time.time(), "file /var/lib/home-gateway/privacy/outbox", 1, len(body),
                     "usage", "ok")
    store.log_export(time.time(), "https https://reports.example/in", 2, 640,
                     "energy,usage", "failed: https://reports.example/in answered HTTP 503")
    await page.reload()
    rows = page.locator("#privacy-history tbody tr")
    await expect(rows).to_have_count(2)
    newest, oldest = rows.nth(0), rows.nth(1)
    await expect(newest.locator(".c-result")).to_have_text(
        "failed: https://reports.example/in answered HTTP 503")
    await expect(newest.locator(".c-result")).to_have_class(re.compile(r"\bbad\b"))
    await expect(newest.locator(".c-categories")).to_have_text("energy,usage")
    await expect(oldest.locator(".c-result")).to_have_text("ok")
    await expect(oldest.locator(".c-bytes")).to_have_text(str(len(body)))
    await expect(oldest.locator(".c-sink")).to_have_text(
        "file /var/lib/home-gateway/privacy/outbox")

    # Turning usage off again: the dashboard says so.
    await page.get_by_role("switch", name="Device usage").uncheck()
    await expect(page.locator("#privacy-result")).to_have_text("usage: turned off.")
    await expect(page.get_by_role("switch", name="Device usage")).not_to_be_checked()
    assert store.consents()["usage"][0] is False
    await shot(phone=True)
    await nav(page).get_by_role("link", name="Dashboard").click()
    await expect(tile.locator('[data-field="privacy-state"]')).to_have_text("Off")


async def test_a_viewer_reads_the_privacy_page_without_changing_anything(
        gw: Lab, page: Page, shot: Shot) -> None:
    add_user(gw, *VIEWER, role="viewer")
    gw.daemon.privacy.set_consent("energy", True, "test")
    gw.daemon.privacy.data = WeekData("2020-W01")
    gw.daemon.privacy.close_week()
    _, body, _ = gw.daemon.privacy.next_export()
    await log_in(page, gw, *VIEWER)
    await nav(page).get_by_role("link", name="Privacy").click()
    await expect(page.get_by_role("switch", name="Energy by hour")).to_be_checked()
    for name in CATEGORIES:
        await expect(page.locator(f"#consent-{name}").get_by_role("switch")).to_be_disabled()
    assert await pre_text(page) == body.decode()
    await expect(page.get_by_role("button", name="Delete queued export data")).to_have_count(0)
    await expect(page.locator("#privacy-consent")).to_contain_text("Only an admin can change")
    await shot()
