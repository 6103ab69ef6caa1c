"""Home Assistant and the "Discovered on the network" list in the browser (Debian's
chromium), against a real gateway and broker: the Home Assistant page shows what to type
into Home Assistant's MQTT integration, "Show password" reveals the password (audited),
"Rotate login" shows the new login and the old one waiting, and the page follows live when
Home Assistant logs in with the new one; on the Devices page a discovered thing is adopted
(its credential shown once, and it works on the broker), another ignored and taken back, and
a name from the network shows as text, never as markup.

Sightings are put into the store directly, as the mDNS and DHCP edges would."""

from __future__ import annotations

import re
import time

import pytest
from playwright.async_api import Page, expect

from gateway.mqtt import MqttError, make_client
from gateway.sim.lab import Lab
from gateway.store import Discovered
from tests.browser.conftest import Shot
from tests.browser.test_admin_browser import log_in, nav
from tests.browser.test_cloud_browser import accept
from tests.web.kit import ADMIN, VIEWER, add_user, base_url

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


def sight(lab: Lab, key: str, name: str, type: str, addresses: tuple[str, ...],
          port: int | None = None, mac: str | None = None, hostname: str | None = None,
          txt: dict[str, str] | None = None) -> None:
    now = time.time()
    lab.daemon.store.upsert_discovered(Discovered(
        key=key, source="dhcp" if key.startswith("dhcp:") else "mdns", name=name, type=type,
        addresses=addresses, port=port, txt=txt or {}, mac=mac, hostname=hostname,
        first_seen=now - 300, last_seen=now, present=True), 500)


async def works_on_broker(lab: Lab, username: str, password: str, client_id: str) -> bool:
    try:
        async with make_client(lab.endpoint(username, password), client_id):
            return True
    except MqttError:
        return False


async def test_home_assistant_page_password_and_rotation(gw: Lab, page: Page,
                                                         shot: Shot) -> None:
    base = base_url(gw)
    daemon = gw.daemon
    add_user(gw, *ADMIN)
    await log_in(page, gw, *ADMIN)
    tile = page.locator("#tile-homeassistant")
    await expect(tile.locator('[data-field="ha-detail"]')).to_contain_text(
        "Home Assistant not seen yet")
    await nav(page).get_by_role("link", name="Home Assistant").click()
    await expect(page).to_have_url(f"{base}/homeassistant")
    await expect(page.get_by_role("heading", name="Home Assistant", exact=True)).to_be_visible()
    await expect(nav(page).get_by_role("link", name="Home Assistant")).to_have_attribute(
        "aria-current", "page")

    # What Home Assistant's MQTT integration needs.
    connection = page.locator("#ha-connection")
    await expect(connection.locator("ul.brokers")).to_have_text(
        f"127.0.0.1 port {daemon.endpoint.port} plain text")
    username = page.locator('[data-field="ha-username"]')
    await expect(username).to_have_text("homeassistant:1")
    await expect(connection.get_by_role("link", name="Download the CA certificate")
                 ).to_have_attribute("href", "/api/v1/ca.crt")
    await expect(connection).to_contain_text("homeassistant")  # the discovery prefix
    await expect(page.locator('[data-field="ha-birth"]')).to_have_text("never")
    await expect(page.locator('[data-field="ha-commands"]')).to_have_text(
        "0 ok · 0 rejected · 0 failed")
    password = page.locator("#ha-password")
    await expect(password).to_be_hidden()

    # Show password: fetched when asked, audited.
    await page.get_by_role("button", name="Show password").click()
    first = daemon.ha_login.current  # type: ignore[union-attr]
    await expect(password).to_have_text(first["password"])
    await expect(page.get_by_role("button", name="Show password")).to_be_hidden()
    [entry] = daemon.store.audit_log(1, "homeassistant.credential")
    assert (entry.actor, entry.result, entry.target) == ("web:alice", "revealed",
                                                         "homeassistant:1")
    await shot("connection", phone=True)

    # Rotate: the new login shows, the old one keeps working until it is used.
    page.once("dialog", accept)
    await page.get_by_role("button", name="Rotate login").click()
    await expect(username).to_have_text("homeassistant:2")
    await expect(page.locator("#ha-rotate .result")).to_contain_text(
        "New login homeassistant:2 issued")
    await expect(password).to_be_hidden()  # it was the old login's
    await expect(page.locator('[data-field="ha-current"]')).to_have_text("homeassistant:2")
    waiting = page.locator('[data-field="ha-waiting"]')
    await expect(waiting).to_contain_text(
        "homeassistant:1 until Home Assistant logs in with homeassistant:2")
    assert await works_on_broker(gw, first["username"], first["password"], "ha-old")
    await page.get_by_role("button", name="Show password").click()
    second = daemon.ha_login.current  # type: ignore[union-attr]
    await expect(password).to_have_text(second["password"])
    assert second["password"] != first["password"]
    await shot("rotated")

    # Home Assistant logs in with the new login: the page follows, without a reload.
    assert await works_on_broker(gw, second["username"], second["password"], "ha-new")
    await expect(waiting).to_have_text("none")
    await expect(page.locator('[data-field="ha-last-login"]')).to_contain_text(
        "homeassistant:2 from 127.0.0.1")
    assert not await works_on_broker(gw, first["username"], first["password"], "ha-old-2")
    await expect(password).to_have_text(second["password"])  # still shown: same login
    await shot(phone=True)


async def test_viewer_sees_no_password_and_no_buttons(gw: Lab, page: Page) -> None:
    base = base_url(gw)
    add_user(gw, *VIEWER, role="viewer")
    await log_in(page, gw, *VIEWER)
    await page.goto(f"{base}/homeassistant")
    await expect(page.locator('[data-field="ha-username"]')).to_have_text("homeassistant:1")
    await expect(page.locator("#ha-connection")).to_contain_text("only an admin can see it")
    await expect(page.get_by_role("button", name="Show password")).to_have_count(0)
    await expect(page.get_by_role("button", name="Rotate login")).to_have_count(0)


async def test_adopt_and_ignore_discovered_things(gw: Lab, page: Page, shot: Shot) -> None:
    base = base_url(gw)
    add_user(gw, *ADMIN)
    sight(gw, "dhcp:aa:bb:cc:00:11:22", "porch-cam", "dhcp", ("10.9.8.33",),
          mac="aa:bb:cc:00:11:22", hostname="porch-cam")
    sight(gw, "mdns:shelly-plug-7._shelly._tcp.local.", "shelly-plug-7._shelly._tcp.local.",
          "_shelly._tcp.local.", ("10.9.8.21",), port=80, hostname="shelly-plug-7.local.",
          txt={"gen": "2", "app": "PlugS"})
    evil = "<script>alert(1)</script>"
    sight(gw, "mdns:odd._http._tcp.local.", f"{evil}._http._tcp.local.", "_http._tcp.local.",
          ("10.9.8.40",), port=8080, hostname="<img src=x onerror=alert(2)>.local.")
    await log_in(page, gw, *ADMIN)
    await expect(page.locator("#tile-discovery [data-field=disc-state]")).to_have_text("3 new")
    await page.goto(f"{base}/devices")
    section = page.locator("#discovered")
    await expect(section.get_by_role("heading", name=re.compile("Discovered on the network"))
                 ).to_be_visible()
    items = page.locator("#discovered-new > li.found-item")
    await expect(items).to_have_count(3)
    # A name from the network is text: shown as it is, never run (the page fixture fails
    # the test on any script error; an alert would be one).
    odd = items.filter(has_text="alert(1)")
    await expect(odd.locator(".found-name strong")).to_have_text(evil)
    await expect(odd).to_contain_text("<img src=x onerror=alert(2)>.local.")
    cam = page.locator('li.found-item[data-key="dhcp:aa:bb:cc:00:11:22"]')
    await expect(cam).to_contain_text("DHCP lease")
    await expect(cam).to_contain_text("aa:bb:cc:00:11:22")
    plug = page.locator('li.found-item[data-key="mdns:shelly-plug-7._shelly._tcp.local."]')
    await expect(plug.locator(".found-name strong")).to_have_text("shelly-plug-7")
    await expect(plug).to_contain_text("_shelly._tcp.local.")
    await expect(plug).to_contain_text("gen=2")
    await shot("list", phone=True)

    # Adopt the camera: its credential is shown once, and works on the broker.
    await cam.locator("summary").click()
    await expect(cam.get_by_label("Id")).to_have_value("porch-cam")
    await cam.get_by_label("Name").fill("Porch camera")
    await cam.get_by_label("Kind").select_option("camera")
    await cam.get_by_role("button", name="Adopt", exact=True).click()
    said = page.locator("#discovered-result")
    await expect(said).to_contain_text("Added porch-cam. MQTT user porch-cam.1 password")
    secret = await said.locator("code.secret").inner_text()
    assert await works_on_broker(gw, "porch-cam.1", secret, "porch-cam")
    await expect(cam).to_have_count(0)  # it left the list
    await expect(items).to_have_count(2)
    await expect(page.locator("#device-porch-cam")).to_contain_text("Porch camera")
    device = gw.daemon.store.device("porch-cam")
    assert device is not None and device.mac == "aa:bb:cc:00:11:22"
    await expect(said).to_contain_text("shown once")  # still there after the redraw
    await shot("adopted")

    # Ignore the plug: it leaves the list for the collapsed list of ignored ones.
    await plug.get_by_role("button", name="Ignore").click()
    await expect(said).to_have_text("Ignored shelly-plug-7.")
    await expect(items).to_have_count(1)
    ignored = page.locator("#discovered-ignored")
    await expect(ignored.locator("summary")).to_have_text("Ignored (1)")
    await expect(ignored.get_by_role("button", name="Un-ignore")).to_be_hidden()  # collapsed
    await ignored.locator("summary").click()
    await shot("ignored", phone=True)
    await ignored.get_by_role("button", name="Un-ignore").click()
    await expect(said).to_have_text("shelly-plug-7 is back in the list.")
    await expect(items).to_have_count(2)
    await expect(page.locator("#discovered-ignored")).to_have_count(0)
    assert [e.target for e in gw.daemon.store.audit_log(5, "discovery.unignore")] == [
        "mdns:shelly-plug-7._shelly._tcp.local."]

    # Something new found while the page is open appears without a reload.
    sight(gw, "dhcp:aa:bb:cc:00:11:55", "garden-light", "dhcp", ("10.9.8.55",),
          mac="aa:bb:cc:00:11:55")
    await expect(items).to_have_count(3)
    await expect(items.filter(has_text="garden-light")).to_have_count(1)
