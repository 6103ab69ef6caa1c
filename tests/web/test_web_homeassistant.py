"""Home Assistant and the "Discovered" inventory over the admin API and pages, against a real
gateway and broker: the connection details (never the password), revealing the password
(admins only, audited) and rotating Home Assistant's login (the old one keeps working until
Home Assistant uses the new one), 409 when Home Assistant has no login on this broker; the
discovered list, adopting a sighting (a device with its MAC and IoT address and a credential
that works on the broker), ignoring and taking back, every refusal, and names from the
network escaped on the page.

Sightings are put into the store directly (legitimate setup: the mDNS and DHCP edges that
normally write them are tested against real zeroconf and real lease files elsewhere)."""

from __future__ import annotations

import html
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.credentials.pki import ca_fingerprint
from gateway.mqtt import Endpoint, MqttError, make_client
from gateway.sim.lab import Lab
from gateway.store import Discovered
from gateway.web.accounts import Principal
from tests.web.kit import (
    ADMIN,
    RENDER_ONLY_FIREWALL,
    VIEWER,
    add_user,
    browser,
    poll,
    web_lab,
)

pytestmark = pytest.mark.integration

PLUG_KEY = "mdns:shelly-plug-7._shelly._tcp.local."
LEASE_KEY = "dhcp:aa:bb:cc:00:11:22"
EVIL_KEY = "mdns:<script>alert(1)</script>._http._tcp.local."


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    # With IoT subnets (192.0.2.0/24, 2001:db8:1::/64), so an adopted thing keeps the
    # addresses it has there; the firewall only renders.
    async with web_lab(tmp_path / "state", extra=RENDER_ONLY_FIREWALL, users=True) as lab:
        yield lab


def sight(lab: Lab, key: str, name: str, *, source: str = "mdns", type: str = "_http._tcp.local.",
          addresses: tuple[str, ...] = ("192.0.2.50",), port: int | None = 80,
          txt: dict[str, str] | None = None, mac: str | None = None,
          hostname: str | None = None) -> None:
    now = time.time()
    lab.daemon.store.upsert_discovered(Discovered(
        key=key, source=source, name=name, type=type, addresses=addresses, port=port,
        txt=txt or {}, mac=mac, hostname=hostname, first_seen=now - 60, last_seen=now,
        present=True), 500)


def seed(lab: Lab) -> None:
    sight(lab, PLUG_KEY, "shelly-plug-7._shelly._tcp.local.", type="_shelly._tcp.local.",
          addresses=("192.0.2.21", "2001:db8:1::21", "198.51.100.9"),
          txt={"gen": "2", "app": "PlugS"}, hostname="shelly-plug-7.local.")
    sight(lab, LEASE_KEY, "porch-cam", source="dhcp", type="dhcp", addresses=("192.0.2.33",),
          port=None, mac="aa:bb:cc:00:11:22", hostname="porch-cam")


async def refused(endpoint: Endpoint, client_id: str) -> bool:
    """One connection attempt: True when the broker refuses the login."""
    try:
        async with make_client(endpoint, client_id):
            return False
    except MqttError:
        return True


# -- Home Assistant ---------------------------------------------------------------------

async def test_connection_details_never_the_password(lab: Lab) -> None:
    daemon = lab.daemon
    async with browser(lab) as b:
        status, data, _ = await b.call("GET", "/api/v1/homeassistant")
        assert status == 401  # not logged in
        await b.login(*VIEWER)
        status, data, _ = await b.call("GET", "/api/v1/homeassistant")
        assert status == 200, data
        assert data["enabled"] is True and data["broker"] == "gateway"
        assert data["prefix"] == "homeassistant"
        assert data["brokers"] == [{"host": "127.0.0.1", "port": daemon.endpoint.port,
                                    "tls": False}]
        assert data["username"] == "homeassistant:1"
        assert data["login"]["username"] == "homeassistant:1"
        assert data["login"]["waiting_for_switch_from"] is None
        assert data["ca_file"] == str(daemon.pki.ca_cert)
        assert data["ca_sha256"] == (ca_fingerprint(daemon.pki) if daemon.pki.ca_cert.exists()
                                     else None)
        assert data["commands"] == {"ok": 0, "rejected": 0, "failed": 0}
        assert "password" not in data
        password = daemon.ha_login.current["password"]  # type: ignore[union-attr]
        _, raw, _ = await b.call("GET", "/api/v1/homeassistant")
        assert password not in str(raw)

        _, s, _ = await b.call("GET", "/api/v1/status")
        assert s["homeassistant"]["login"]["username"] == "homeassistant:1"
        assert set(s["discovery"]) >= {"mdns", "dhcp", "found", "new"}
        assert s["tiles"]["homeassistant"]["state"] in ("connected", "disconnected")
        assert s["tiles"]["discovery"] == {"state": "ok", "label": "Nothing new",
                                           "detail": "0 found on the network", "new": 0}

        # A viewer sees the page, but neither the password nor the buttons.
        code, page = await b.page("/homeassistant")
        assert code == 200
        assert 'href="/homeassistant" aria-current="page">Home Assistant</a>' in page
        assert 'data-field="ha-username">homeassistant:1</code>' in page
        assert f"<code>127.0.0.1</code> port <code>{daemon.endpoint.port}</code>" in page
        assert 'href="/api/v1/ca.crt"' in page
        assert "only an admin can see it" in page
        assert "Show password" not in page and "Rotate login" not in page
        assert password not in page
        assert "never" in page  # no birth message seen yet
        for method, path in [("GET", "/api/v1/homeassistant/credential"),
                             ("POST", "/api/v1/homeassistant/rotate")]:
            status, data, _ = await b.call(method, path)
            assert (status, data["error"]) == (403, "viewers can look but not change"), path
        _, dashboard = await b.page("/")
        assert 'id="tile-homeassistant"' in dashboard and 'href="/homeassistant"' in dashboard
        assert 'data-field="disc-state">Nothing new</p>' in dashboard
    assert daemon.store.audit_log(5, "homeassistant.credential") == []
    assert daemon.ha_login.current["username"] == "homeassistant:1"  # type: ignore[union-attr]


async def test_reveal_is_audited_and_rotate_keeps_the_old_login_until_the_new_one_is_used(
        lab: Lab) -> None:
    daemon = lab.daemon
    store = daemon.store
    async with browser(lab) as b:
        await b.login(*ADMIN)
        _, page = await b.page("/homeassistant")
        assert "Show password" in page and "Rotate login" in page
        status, first, _ = await b.call("GET", "/api/v1/homeassistant/credential")
        assert status == 200, first
        assert first["username"] == "homeassistant:1" and len(first["password"]) >= 20
        [entry] = store.audit_log(5, "homeassistant.credential")
        assert (entry.actor, entry.result, entry.target) == ("web:alice", "revealed",
                                                             "homeassistant:1")
        assert first["password"] not in entry.detail
        old = lab.endpoint(first["username"], first["password"])
        assert not await refused(old, "ha-probe-1")  # it works on the broker

        status, data, _ = await b.call("POST", "/api/v1/homeassistant/rotate")
        assert (status, data) == (200, {"username": "homeassistant:2"})
        rotated = store.audit_log(1, "homeassistant.credential")[0]
        assert (rotated.actor, rotated.result, rotated.target) == (
            "web:alice", "rotated", "homeassistant:2")
        _, data, _ = await b.call("GET", "/api/v1/homeassistant")
        assert data["username"] == "homeassistant:2"
        assert data["login"]["waiting_for_switch_from"] == "homeassistant:1"
        _, page = await b.page("/homeassistant")
        assert "homeassistant:1</span> <small>until Home Assistant logs in with " \
               "homeassistant:2" in page
        assert not await refused(old, "ha-probe-2")  # the old login still works

        status, second, _ = await b.call("GET", "/api/v1/homeassistant/credential")
        assert second["username"] == "homeassistant:2"
        assert second["password"] != first["password"]
        assert [e.target for e in store.audit_log(5, "homeassistant.credential")
                if e.result == "revealed"] == ["homeassistant:2", "homeassistant:1"]
        new = lab.endpoint(second["username"], second["password"])
        assert not await refused(new, "ha-probe-3")
        # The broker tells the gateway Home Assistant uses the new login: the old one goes.
        data = await poll(b, "/api/v1/homeassistant",
                          lambda d: d["login"]["waiting_for_switch_from"] is None,
                          "the switch to homeassistant:2")
        assert data["login"]["last_login"]["username"] == "homeassistant:2"
        assert data["login"]["last_login"]["address"] == "127.0.0.1"
        assert await refused(old, "ha-probe-4")
        _, page = await b.page("/homeassistant")
        assert "homeassistant:2 <small>from 127.0.0.1" in page
    # A read-only token reads the details, but neither reveals nor rotates.
    _, token = daemon.accounts.create_token(Principal(ADMIN[0], "admin"), "ro", "read")
    async with browser(lab) as b:
        auth = {"Authorization": f"Bearer {token}"}
        status, data, _ = await b.call("GET", "/api/v1/homeassistant", **auth)
        assert status == 200 and "password" not in data
        for method, path in [("GET", "/api/v1/homeassistant/credential"),
                             ("POST", "/api/v1/homeassistant/rotate")]:
            status, data, _ = await b.call(method, path, **auth)
            assert (status, data["error"]) == (403, "this API token is read-only")
    # revealed twice, rotated, switched
    assert len(store.audit_log(10, "homeassistant.credential")) == 4


async def test_no_login_on_this_broker_is_409(tmp_path: Path) -> None:
    async with web_lab(tmp_path / "state", extra="\n[homeassistant]\nenabled = false\n") as lab:
        add_user(lab, *ADMIN)
        async with browser(lab) as b:
            await b.login(*ADMIN)
            _, data, _ = await b.call("GET", "/api/v1/homeassistant")
            assert data["enabled"] is False and data["brokers"] == []
            assert "username" not in data and "login" not in data
            why = ("Home Assistant has no login on this gateway's broker: the integration is "
                   "off (homeassistant.enabled = false)")
            for method, path in [("GET", "/api/v1/homeassistant/credential"),
                                 ("POST", "/api/v1/homeassistant/rotate")]:
                status, data, _ = await b.call(method, path)
                assert (status, data["error"]) == (409, why), path
            _, page = await b.page("/homeassistant")
            assert "The Home Assistant integration is off" in page
            assert "Show password" not in page and "Rotate login" not in page
            _, s, _ = await b.call("GET", "/api/v1/status")
            assert s["tiles"]["homeassistant"] == {
                "state": "off", "label": "Off", "detail": "homeassistant.enabled = false"}
        assert lab.daemon.store.audit_log(5, "homeassistant.credential") == []


# -- the discovered inventory -----------------------------------------------------------

async def test_discovered_list_and_refusals(lab: Lab) -> None:
    seed(lab)
    store = lab.daemon.store
    async with browser(lab) as b:
        await b.login(*VIEWER)
        status, data, _ = await b.call("GET", "/api/v1/discovered")
        assert status == 200, data
        assert data["status"]["found"] == 2 and data["status"]["new"] == 2
        by_key = {d["key"]: d for d in data["discovered"]}
        plug = by_key[PLUG_KEY]
        assert plug["source"] == "mdns" and plug["type"] == "_shelly._tcp.local."
        assert plug["txt"] == {"gen": "2", "app": "PlugS"} and plug["port"] == 80
        assert plug["status"] == "new" and plug["present"] is True and plug["device"] is None
        assert by_key[LEASE_KEY]["mac"] == "aa:bb:cc:00:11:22"
        _, s, _ = await b.call("GET", "/api/v1/status")
        assert s["tiles"]["discovery"]["label"] == "2 new"

        _, page = await b.page("/devices")
        assert page.count('class="found-item"') == 2
        assert "<strong title=\"shelly-plug-7._shelly._tcp.local.\">shelly-plug-7</strong>" in page
        assert "DHCP lease" in page and "<code>aa:bb:cc:00:11:22</code>" in page
        assert "Adopt" not in page and "Ignore" not in page  # a viewer's page
        for path, body in [("/api/v1/discovered/adopt",
                            {"key": PLUG_KEY, "id": "hall-plug", "kind": "plug"}),
                           ("/api/v1/discovered/ignore", {"key": PLUG_KEY, "ignored": True})]:
            status, data, _ = await b.call("POST", path, body)
            assert (status, data["error"]) == (403, "viewers can look but not change"), path

    async with browser(lab) as b:
        await b.login(*ADMIN)
        await lab.daemon.devices.add("taken-plug", "plug", source="test", actor="test")
        adopt = "/api/v1/discovered/adopt"
        for body, code, error in [
            ({"key": "mdns:nothing", "id": "x-plug", "kind": "plug"}, 404,
             "nothing discovered as 'mdns:nothing'"),
            ({"key": PLUG_KEY, "id": "taken-plug", "kind": "plug"}, 409, None),
            ({"key": PLUG_KEY, "id": "Hall Plug", "kind": "plug"}, 400, None),
            ({"key": PLUG_KEY, "id": "hall-plug", "kind": "toaster"}, 400,
             "kind: expected one of: "),
            ({"key": PLUG_KEY, "id": "hall-plug"}, 400, "kind: missing"),
            ({"id": "hall-plug", "kind": "plug"}, 400, "key: missing"),
            ({"key": "", "id": "hall-plug", "kind": "plug"}, 400,
             "key: expected 1 to 300 characters"),
            ({"key": PLUG_KEY, "id": "hall-plug", "kind": "plug", "mac": "x"}, 400,
             "mac: unknown field"),
        ]:
            status, data, _ = await b.call("POST", adopt, body)
            assert status == code, (body, data)
            if error:
                assert data["error"].startswith(error), (body, data)
        for body, code, error in [
            ({"key": "dhcp:nothing", "ignored": True}, 404,
             "nothing discovered as 'dhcp:nothing'"),
            ({"key": PLUG_KEY}, 400, "ignored: missing"),
            ({"key": PLUG_KEY, "ignored": "yes"}, 400, "ignored: expected true or false"),
        ]:
            status, data, _ = await b.call("POST", "/api/v1/discovered/ignore", body)
            assert (status, data["error"]) == (code, error), body
        # A browser request without the page's CSRF token changes nothing either.
        status, data, _ = await b.call("POST", "/api/v1/discovered/ignore",
                                       {"key": PLUG_KEY, "ignored": True},
                                       **{"X-CSRF-Token": "stale"})
        assert status == 403 and data["error"].startswith("X-CSRF-Token")
    assert {d.status for d in store.discovered()} == {"new"}
    assert store.audit_log(5, "discovery.adopt") == []
    assert store.audit_log(5, "discovery.ignore") == []


async def test_adopt_gives_the_device_its_address_and_a_working_login(lab: Lab) -> None:
    seed(lab)
    store = lab.daemon.store
    async with browser(lab) as b:
        await b.login(*ADMIN)
        _, page = await b.page("/devices")
        # The Adopt form starts from the name, as a device id.
        assert 'name="id" required pattern="[a-z0-9\\-]{3,40}" maxlength="40" ' \
               'value="porch-cam"' in page
        assert 'value="shelly-plug-7"' in page

        status, data, _ = await b.call("POST", "/api/v1/discovered/adopt", {
            "key": LEASE_KEY, "id": "porch-cam", "kind": "camera", "name": "Porch camera"})
        assert status == 201, data
        device = data["device"]
        assert (device["id"], device["name"], device["kind"]) == ("porch-cam", "Porch camera",
                                                                  "camera")
        assert device["mac"] == "aa:bb:cc:00:11:22" and device["ip"] == "192.0.2.33"
        assert device["policy"] == "quarantine"
        credential = data["credential"]
        assert credential["username"] == device["credential"]["username"] == "porch-cam.1"
        assert not await refused(lab.endpoint(credential["username"], credential["password"]),
                                 "porch-cam")
        assert await refused(lab.endpoint(credential["username"], "wrong"), "porch-cam")
        [entry] = store.audit_log(1, "discovery.adopt")
        assert (entry.actor, entry.target) == ("web:alice", "porch-cam")

        # mDNS: only the addresses inside the IoT subnets are the device's.
        status, data, _ = await b.call("POST", "/api/v1/discovered/adopt", {
            "key": PLUG_KEY, "id": "hall-plug", "kind": "plug"})
        assert status == 201, data
        assert data["device"]["ip"] == "192.0.2.21 2001:db8:1::21"
        assert data["device"]["mac"] is None and data["device"]["name"] == "hall-plug"

        _, data, _ = await b.call("GET", "/api/v1/discovered")
        by_key = {d["key"]: d for d in data["discovered"]}
        assert (by_key[LEASE_KEY]["status"], by_key[LEASE_KEY]["device"]) == ("adopted",
                                                                              "porch-cam")
        assert data["status"]["new"] == 0
        for path, body in [("/api/v1/discovered/adopt",
                            {"key": LEASE_KEY, "id": "porch-cam-2", "kind": "camera"}),
                           ("/api/v1/discovered/ignore", {"key": LEASE_KEY, "ignored": True})]:
            status, data, _ = await b.call("POST", path, body)
            assert status == 409 and "adopted as porch-cam" in data["error"], (path, data)
        assert store.device("porch-cam-2") is None

        _, page = await b.page("/devices")
        assert "Nothing new on the network." in page
        assert 'href="/devices/porch-cam"' in page  # in the device list now


async def test_ignore_hides_it_and_un_ignore_brings_it_back(lab: Lab) -> None:
    seed(lab)
    store = lab.daemon.store
    async with browser(lab) as b:
        await b.login(*ADMIN)
        status, data, _ = await b.call("POST", "/api/v1/discovered/ignore",
                                       {"key": PLUG_KEY, "ignored": True})
        assert (status, data) == (200, {"key": PLUG_KEY, "status": "ignored"})
        [entry] = store.audit_log(1, "discovery.ignore")
        assert (entry.actor, entry.target) == ("web:alice", PLUG_KEY)
        _, data, _ = await b.call("GET", "/api/v1/discovered")
        assert data["status"]["new"] == 1
        _, page = await b.page("/devices")
        new, ignored = page.split('id="discovered-ignored"')
        assert "shelly-plug-7" not in new and "porch-cam" in new
        assert "Ignored (1)" in ignored and "shelly-plug-7" in ignored
        assert "Un-ignore" in ignored

        status, data, _ = await b.call("POST", "/api/v1/discovered/ignore",
                                       {"key": PLUG_KEY, "ignored": False})
        assert (status, data) == (200, {"key": PLUG_KEY, "status": "new"})
        assert store.audit_log(1, "discovery.unignore")[0].target == PLUG_KEY
        _, page = await b.page("/devices")
        assert 'id="discovered-ignored"' not in page
        assert page.count('class="found-item"') == 2


async def test_names_from_the_network_are_escaped(lab: Lab) -> None:
    sight(lab, EVIL_KEY, "<script>alert(1)</script>._http._tcp.local.",
          txt={"model": "<b>bold</b>", "x\"onmouseover": "alert(3)"},
          hostname="<img src=x onerror=alert(2)>.local.")
    sight(lab, "dhcp:aa:bb:cc:00:11:99", '"><svg onload=alert(4)>', source="dhcp",
          type="dhcp", port=None, mac="aa:bb:cc:00:11:99", hostname='"><svg onload=alert(4)>')
    async with browser(lab) as b:
        await b.login(*ADMIN)
        code, page = await b.page("/devices")
        assert code == 200
        for raw in ("<script>alert(1)", "<img src=x", "<b>bold", "<svg onload",
                    'x"onmouseover'):
            assert raw not in page, raw
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "&lt;img src=x onerror=alert(2)&gt;.local." in page
        assert "&lt;b&gt;bold&lt;/b&gt;" in page
        assert "&#34;&gt;&lt;svg onload=alert(4)&gt;" in page
        # in attributes too: the hidden key and the suggested name
        assert f'value="{html.escape(EVIL_KEY)}"'.replace("&quot;", "&#34;").replace(
            "&#x27;", "&#39;") in page
        assert 'value="script-alert-1-script"' in page  # the suggested id: a plain slug
        # and adopting it keeps the name as text, never markup
        status, data, _ = await b.call("POST", "/api/v1/discovered/adopt", {
            "key": EVIL_KEY, "id": "odd-thing", "kind": "sensor",
            "name": "<script>alert(1)</script>"})
        assert status == 201, data
        _, page = await b.page("/devices")
        assert "<script>alert" not in page
