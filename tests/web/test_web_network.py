"""The network guard over the admin API and pages, against a real gateway whose firewall
renders but never applies (render-only): the firewall view (status, counter history,
devices with their profiles' destinations), policy changes (adopt, block, back to
quarantine) and their refusals by name, the audit, the status tile and banner; viewers,
read tokens and forged requests change nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.firewall.manager import Sample
from gateway.firewall.model import Allow
from gateway.sim.lab import Lab
from gateway.web.accounts import Principal
from gateway.web.api import allow_view, firewall_notice, firewall_tile
from tests.web.kit import (
    ADMIN,
    RENDER_ONLY_FIREWALL,
    VIEWER,
    add_user,
    base_url,
    browser,
    poll,
    web_lab,
)

pytestmark = pytest.mark.integration

VENDOR_CAM = """description = "Camera that uploads clips"
[[allow]]
host = "clips.vendor.example"
protocol = "tcp"
ports = [443, "8000-8100"]
[[allow]]
cidr = "203.0.113.0/24"
protocol = "icmp"
[[peer]]
device = "hall-sensor"
protocol = "udp"
ports = [5683]
"""
DECLARED = """
[[devices]]
id = "cfg-door"
kind = "door"
ip = "192.0.2.30"
policy = "restricted"
"""
CLASSES = ["inbound", "quarantine", "egress", "lateral", "upnp", "spoof", "flood"]


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Lab]:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "vendorcam.toml").write_text(VENDOR_CAM)
    extra = RENDER_ONLY_FIREWALL + f'profiles_dir = "{profiles}"\n' + DECLARED
    async with web_lab(tmp_path / "state", extra=extra, users=True) as lab:
        devices = lab.daemon.devices
        await devices.add("cam-1", "camera", source="test", ip="192.0.2.10", actor="test")
        await devices.add("plug-1", "plug", source="test", ip="192.0.2.11", actor="test")
        await devices.add("bare-plug", "plug", source="test", actor="test")
        await devices.add("far-plug", "plug", source="test", ip="10.0.0.5", actor="test")
        yield lab


def by_id(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["id"]: d for d in view["devices"]}


def placed(device_id: str) -> Callable[[Any], bool]:
    return lambda view: by_id(view).get(device_id, {}).get("placed", False)


async def test_firewall_view_shows_status_history_and_devices(net: Lab) -> None:
    firewall = net.daemon.firewall
    now = time.time()
    firewall.history.extend([
        Sample(now - 7200, dict.fromkeys(CLASSES, 0)),  # older than the hour asked for
        Sample(now - 60, {**dict.fromkeys(CLASSES, 0), "inbound": 4}),
        Sample(now - 30, {**dict.fromkeys(CLASSES, 0), "inbound": 9, "upnp": 1}),
    ])
    async with browser(net) as b:
        await b.login(*VIEWER)  # reading needs no admin
        view = await poll(b, "/api/v1/firewall", placed("cam-1"), "cam-1 in the firewall")
        s = view["status"]
        assert (s["mode"], s["healthy"], s["enforcing"]) == ("render-only", True, False)
        assert s["summary"] == "firewall RENDER-ONLY: devices are NOT protected"
        assert s["rules"] > 0 and set(s["dropped"]) == set(CLASSES)
        assert view["profiles"] == ["bulb", "camera", "door", "plug", "sensor", "thermostat",
                                    "vendorcam"]
        assert view["minutes"] == 60
        assert [h["at"] for h in view["history"]] == [now - 60, now - 30]
        assert view["history"][1]["dropped"] == {**dict.fromkeys(CLASSES, 0), "inbound": 9,
                                                 "upnp": 1}
        devices = by_id(view)
        assert set(devices) == {"cam-1", "plug-1", "bare-plug", "far-plug", "cfg-door"}
        assert devices["cam-1"] == {
            "id": "cam-1", "name": "cam-1", "kind": "camera", "policy": "quarantine",
            "profile": "camera", "profile_default": True, "profile_found": True,
            "description": "Camera: the gateway's broker only",
            "addresses": ["192.0.2.10"], "placed": True, "problem": "", "locked": False,
            "allow": [], "peers": []}
        assert devices["bare-plug"]["placed"] is False
        assert devices["bare-plug"]["problem"].startswith("no known address")
        assert devices["far-plug"]["placed"] is False
        assert "outside network.iot_subnets" in devices["far-plug"]["problem"]
        assert devices["cfg-door"]["locked"] is True
        # The door's shipped profile: ping to cameras.
        assert devices["cfg-door"]["peers"] == [
            {"protocol": "icmp", "ports": [], "device": None, "kind": "camera"}]

        status, view, _ = await b.call("GET", "/api/v1/firewall?minutes=1440")
        assert status == 200 and len(view["history"]) == 3
        for bad in ("0", "1441", "x"):
            status, data, _ = await b.call("GET", f"/api/v1/firewall?minutes={bad}")
            assert status == 400 and data["error"] == "minutes: expected a whole number " \
                                                      "from 1 to 1440"

        status, data, _ = await b.call("GET", "/api/v1/status")
        assert data["firewall"]["mode"] == "render-only"
        tile = data["tiles"]["firewall"]
        assert (tile["state"], tile["label"], tile["dropped"]) == ("render-only", "Render-only",
                                                                   0)
        assert tile["notice"]["title"].startswith("Devices are NOT protected")
        device = (await b.call("GET", "/api/v1/devices/cam-1"))[1]
        assert (device["policy"], device["profile"]) == ("quarantine", "camera")


async def test_adopt_block_and_quarantine_again(net: Lab) -> None:
    firewall = net.daemon.firewall
    async with browser(net) as b:
        await b.login(*ADMIN)
        await poll(b, "/api/v1/firewall", placed("cam-1"), "cam-1 in the firewall")
        status, data, _ = await b.call("PUT", "/api/v1/devices/cam-1/policy",
                                       {"policy": "restricted", "profile": "vendorcam"})
        assert status == 200, data
        assert data == {"id": "cam-1", "policy": "restricted", "profile": "vendorcam",
                        "applied": True,
                        "firewall": "firewall RENDER-ONLY: devices are NOT protected"}
        # Applied before the answer: the firewall's inventory has it already.
        assert firewall.inventory is not None
        [rule] = [r for r in firewall.inventory.input.devices if r.id == "cam-1"]
        assert (rule.policy, rule.profile) == ("restricted", "vendorcam")
        cam = by_id((await b.call("GET", "/api/v1/firewall"))[1])["cam-1"]
        assert (cam["policy"], cam["profile"], cam["profile_default"]) == (
            "restricted", "vendorcam", False)
        host, cidr = cam["allow"]
        # Render-only asks no resolver: nothing leaves this machine, names stay unresolved.
        await asyncio.sleep(1.5)
        assert firewall.status()["dns"] == {}
        assert host == {"protocol": "tcp", "ports": ["443", "8000-8100"],
                        "host": "clips.vendor.example", "cidr": None, "addresses": []}
        assert cidr == {"protocol": "icmp", "ports": [], "host": None,
                        "cidr": "203.0.113.0/24", "addresses": ["203.0.113.0/24"]}
        assert cam["peers"] == [{"protocol": "udp", "ports": ["5683"], "device": "hall-sensor",
                                 "kind": None}]

        # Blocking leaves out the profile: it stays for a later adoption.
        status, data, _ = await b.call("PUT", "/api/v1/devices/cam-1/policy",
                                       {"policy": "blocked"})
        assert status == 200 and (data["policy"], data["profile"]) == ("blocked", "vendorcam")
        stored = net.daemon.store.device("cam-1")
        assert stored is not None and (stored.policy, stored.profile) == ("blocked", "vendorcam")
        # null: back to the profile named after its kind.
        status, data, _ = await b.call("PUT", "/api/v1/devices/cam-1/policy",
                                       {"policy": "quarantine", "profile": None})
        assert status == 200 and data["profile"] is None
        cam = by_id((await b.call("GET", "/api/v1/firewall"))[1])["cam-1"]
        assert (cam["policy"], cam["profile"], cam["profile_default"]) == (
            "quarantine", "camera", True)
        device = (await b.call("GET", "/api/v1/devices/cam-1"))[1]
        assert (device["policy"], device["profile"]) == ("quarantine", "camera")

        # Refusals, each named; the device is unchanged.
        for body, status_code, error in [
            ({"policy": "restricted", "profile": "nope"}, 400,
             "no profile 'nope' (profiles: bulb, camera, door, plug, sensor, thermostat, "
             "vendorcam)"),
            ({"policy": "trusted"}, 400,
             "policy: expected one of: quarantine, restricted, open, blocked"),
            ({"profile": "camera"}, 400, "policy: missing"),
            ({"policy": "open", "why": "x"}, 400, "why: unknown field (expected: policy, "
                                                  "profile)"),
            ({"policy": "open", "profile": 7}, 400, "profile: expected a string or null"),
            ([], 400, "body: expected a JSON object"),
        ]:
            status, data, _ = await b.call("PUT", "/api/v1/devices/cam-1/policy", body)
            assert (status, data["error"]) == (status_code, error), body
        status, data, _ = await b.call("PUT", "/api/v1/devices/cfg-door/policy",
                                       {"policy": "open"})
        assert status == 400 and "cfg-door's policy is set in the config file" in data["error"]
        status, data, _ = await b.call("PUT", "/api/v1/devices/ghost-cam/policy",
                                       {"policy": "blocked"})
        assert status == 404 and data["error"] == "no device 'ghost-cam'"
        async with b.http.put(b.base + "/api/v1/devices/cam-1/policy", data="policy=open",
                              headers={"Origin": b.base, "X-CSRF-Token": b.csrf}) as r:
            assert r.status == 415
        stored = net.daemon.store.device("cam-1")
        assert stored is not None and (stored.policy, stored.profile) == ("quarantine", None)

    entries = [(e.actor, e.result, e.detail)
               for e in net.daemon.store.audit_log(50, "device.policy", target="cam-1")]
    assert entries[::-1][:3] == [
        ("web:alice", "ok", "quarantine -> restricted, profile vendorcam"),
        ("web:alice", "ok", "restricted -> blocked, profile vendorcam"),
        ("web:alice", "ok", "blocked -> quarantine, profile camera (its kind)")]
    assert ("web:alice", "refused", "no profile 'nope' (profiles: bulb, camera, door, plug, "
            "sensor, thermostat, vendorcam)") in entries
    [door] = net.daemon.store.audit_log(5, "device.policy", target="cfg-door")
    assert (door.actor, door.result) == ("web:alice", "refused")


async def test_viewers_read_tokens_and_forged_requests_cannot_change_a_policy(
        net: Lab) -> None:
    adopt = {"policy": "restricted", "profile": "camera"}
    path = "/api/v1/devices/cam-1/policy"
    async with browser(net) as b:
        await b.login(*VIEWER)
        assert (await b.call("GET", "/api/v1/firewall"))[0] == 200
        status, data, _ = await b.call("PUT", path, adopt)
        assert status == 403 and data["error"] == "viewers can look but not change"
        status, html = await b.page("/network")
        assert status == 200 and "Waiting for adoption" in html
        assert "Adopt</button>" not in html and "Block</button>" not in html
    async with browser(net) as b:
        await b.login(*ADMIN)
        for headers, why in [({"X-CSRF-Token": ""}, "X-CSRF-Token"),
                             ({"X-CSRF-Token": "forged"}, "X-CSRF-Token"),
                             ({"Origin": "http://evil.example"}, "Origin")]:
            status, data, _ = await b.call("PUT", path, adopt, **headers)
            assert status == 403 and data["error"].startswith(why), headers
        _, token = net.daemon.accounts.create_token(Principal(ADMIN[0], "admin"), "ro", "read")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.put(base_url(net) + path, json=adopt) as r:
            assert r.status == 403 and "read-only" in (await r.json())["error"]
        async with http.get(base_url(net) + "/api/v1/firewall") as r:
            assert r.status == 200
    stored = net.daemon.store.device("cam-1")
    assert stored is not None and stored.policy == "quarantine"
    assert net.daemon.store.audit_log(5, "device.policy") == []  # refused before it


async def test_pages_show_the_render_only_banner_and_the_network_page(net: Lab) -> None:
    async with browser(net) as b:
        await b.login(*ADMIN)
        await poll(b, "/api/v1/firewall", placed("cam-1"), "cam-1 in the firewall")
        for path in ("/", "/devices", "/devices/cam-1", "/audit", "/network"):
            status, html = await b.page(path)
            assert status == 200 and "Devices are NOT protected" in html, path
            assert 'id="firewall-notice" role="alert">' in html, path  # not hidden
        status, html = await b.page("/network")
        assert '<a href="/network" aria-current="page">Network</a>' in html
        assert 'id="fw-cam-1"' in html and "Adopt</button>" in html
        assert "render-only: not applied" in html
        assert "outside network.iot_subnets" in html  # far-plug's problem, by the device
        assert "policy set in the config file" in html  # cfg-door: no buttons
        for name in CLASSES:
            assert f'data-class="{name}"' in html
        status, data, _ = await b.call("PUT", "/api/v1/devices/plug-1/policy",
                                       {"policy": "open"})
        assert status == 200, data
        html = (await b.page("/network"))[1]
        assert "⚠ 1 device with policy open" in html and 'class="warn-row"' in html
        html = (await b.page("/"))[1]
        assert 'id="tile-firewall"' in html and "Render-only" in html
        html = (await b.page("/devices/plug-1"))[1]
        assert '<td data-field="fw-policy" class="warn">open</td>' in html


async def test_without_an_uplink_the_firewall_is_off_and_says_so(tmp_path: Path) -> None:
    async with web_lab(tmp_path / "state") as lab:
        add_user(lab, *ADMIN)
        await lab.daemon.devices.add("off-plug", "plug", source="test", ip="192.0.2.9",
                                     actor="test")
        async with browser(lab) as b:
            await b.login(*ADMIN)
            view = (await b.call("GET", "/api/v1/firewall"))[1]
            assert view["status"]["mode"] == "off" and view["history"] == []
            [plug] = view["devices"]
            assert (plug["policy"], plug["placed"], plug["problem"]) == ("quarantine", False,
                                                                          "")
            status, data, _ = await b.call("PUT", "/api/v1/devices/off-plug/policy",
                                           {"policy": "restricted"})
            assert status == 200 and data["applied"] is False
            assert data["firewall"] == "firewall off (network.uplink not set)"
            html = (await b.page("/network"))[1]
            assert 'id="firewall-off"' in html and "network.uplink" in html
            assert 'id="firewall-notice" role="alert" hidden' in html  # no banner
            tile = (await b.call("GET", "/api/v1/status"))[1]["tiles"]["firewall"]
            assert (tile["state"], tile["label"], tile["notice"]) == ("off", "Off", None)


FW = {"mode": "enforce", "healthy": True, "enforcing": True, "problem": "", "rules": 80,
      "dropped": dict.fromkeys(CLASSES, 0)}


def test_tile_and_banner_by_mode_and_health() -> None:
    assert firewall_notice(FW) is None
    assert firewall_tile({**FW, "dropped": {**FW["dropped"], "inbound": 3}}) == {
        "state": "ok", "label": "Enforcing", "dropped": 3,
        "detail": "3 packets dropped · 80 rules", "notice": None}
    broken = {**FW, "healthy": False, "problem": "nft rejected the ruleset: x"}
    assert firewall_notice(broken) == {
        "title": "Firewall problem:",
        "text": "nft rejected the ruleset: x. The last good ruleset stays in force; the "
                "gateway keeps retrying."}
    none_in_force = firewall_notice({**broken, "enforcing": False})
    assert none_in_force is not None
    assert none_in_force["text"].endswith("No ruleset is in force: devices are NOT protected.")
    assert firewall_tile(broken)["state"] == "unhealthy"
    render_only = firewall_notice({**FW, "mode": "render-only", "enforcing": False})
    assert render_only is not None and "NOT protected" in render_only["title"]
    assert firewall_notice({**FW, "mode": "off", "healthy": False, "problem": "x"}) is None


def test_a_dns_name_is_shown_with_what_it_resolves_to_now() -> None:
    allow = Allow("tcp", ((443, 443), (0, 65535)), host="clips.vendor.example")
    dns = {"clips.vendor.example": {"addresses": ["203.0.113.5", "2001:db8::5"], "ttl_s": 60,
                                    "ok": True}}
    assert allow_view(allow, dns) == {
        "protocol": "tcp", "ports": ["443", "0-65535"], "host": "clips.vendor.example",
        "cidr": None, "addresses": ["203.0.113.5", "2001:db8::5"]}
    assert allow_view(allow, {})["addresses"] == []  # not resolved yet
    net = Allow("icmp", cidr=ip_network("2001:db8:2::/48"))
    assert allow_view(net, dns)["addresses"] == ["2001:db8:2::/48"]
