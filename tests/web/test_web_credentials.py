"""Credentials over the admin API, against a real gateway, broker and simulated devices:
each device's login as the page shows it (never a secret), rotate one or all, the
rotation period, enrollment tokens (created, listed, used by a real simulated device,
revoked), the CA download, the status tile, the alert banner and the plain-text notice;
viewers, read tokens, missing CSRF tokens and malformed bodies are refused by name."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.config import Listener
from gateway.sim.devices import enroll, enrolled_device
from gateway.sim.lab import Lab
from gateway.web.accounts import Principal
from tests.web.kit import (
    ADMIN,
    VIEWER,
    add_user,
    base_url,
    browser,
    poll,
    web_lab,
)

pytestmark = pytest.mark.integration

DAY_S = 86400
SECRET_WORDS = re.compile(r'"(password|secret|hash|salt)"')


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[Lab]:
    async with web_lab(tmp_path / "state", users=True) as lab:
        yield lab


def audit(lab: Lab, action: str, target: str | None = None) -> list[tuple[str, str, str]]:
    return [(e.actor, e.result, e.detail)
            for e in lab.daemon.store.audit_log(200, action, target=target)]


async def test_device_view_shows_the_login_but_never_a_secret(web: Lab) -> None:
    await web.add_devices([("cv-plug-1", "plug")], interval_s=0.5)
    async with browser(web) as b:
        await b.login(*ADMIN)
        status, device, _ = await b.call("GET", "/api/v1/devices/cv-plug-1")
        assert status == 200
        c = device["credential"]
        stored = web.daemon.store.device("cv-plug-1")
        assert stored is not None and stored.rotated_at is not None
        assert c == {
            "username": "cv-plug-1.1", "rotated_at": stored.rotated_at,
            "age_s": c["age_s"], "next_rotation": stored.rotated_at + 30 * DAY_S,
            "rotation_days": 30, "rotation_days_default": True, "rotating": False,
            "step": None, "failures": 0, "last_result": "", "alert": False}
        assert 0 <= c["age_s"] < 10
        listed = (await b.call("GET", "/api/v1/devices"))[1]["devices"]
        assert listed[0]["credential"] == {**c, "age_s": listed[0]["credential"]["age_s"]}
        for path in ("/api/v1/devices", "/api/v1/devices/cv-plug-1", "/api/v1/status"):
            text = json.dumps((await b.call("GET", path))[1])
            assert not SECRET_WORDS.search(text), (path, text)
        # A device registered without a login has none to show, or to rotate.
        await web.daemon.devices.add("bare-bulb", "bulb", source="test", actor="test")
        c = (await b.call("GET", "/api/v1/devices/bare-bulb"))[1]["credential"]
        assert (c["username"], c["age_s"], c["next_rotation"]) == (None, None, None)
        status, data, _ = await b.call("POST", "/api/v1/devices/bare-bulb/rotate")
        assert status == 409 and data["error"] == "bare-bulb has no credential to rotate"


async def test_rotate_now_and_rotate_all(web: Lab) -> None:
    stubborn, plug = await web.add_devices([("rot-bulb", "bulb"), ("rot-plug", "plug")],
                                           interval_s=0.3)
    stubborn.acknowledge = False  # stays mid-rotation: "already rotating" is testable
    async with browser(web) as b:
        await b.login(*ADMIN)
        status, data, _ = await b.call("POST", "/api/v1/devices/rot-bulb/rotate")
        assert status == 202 and data == {"started": ["rot-bulb"]}
        c = (await b.call("GET", "/api/v1/devices/rot-bulb"))[1]["credential"]
        assert c["rotating"] is True and c["step"] in ("created", "offered")
        assert c["username"] == "rot-bulb.1"  # the old login stays active until proven
        status, data, _ = await b.call("POST", "/api/v1/devices/rot-bulb/rotate")
        assert status == 409 and data["error"] == "rot-bulb is already rotating"
        status, data, _ = await b.call("POST", "/api/v1/devices/no-such-thing/rotate")
        assert status == 404 and data["error"] == "no device 'no-such-thing'"

        status, data, _ = await b.call("POST", "/api/v1/credentials/rotate-all")
        assert status == 202 and data == {"started": ["rot-plug"]}  # the bulb is busy
        done = await poll(b, "/api/v1/devices/rot-plug",
                          lambda d: d["credential"]["last_result"] == "ok",
                          "the plug's rotation", 15)
        assert done["credential"]["username"] == "rot-plug.2"
        assert done["credential"]["rotating"] is False
        assert plug.username == "rot-plug.2" and plug.connected
        status_view = (await b.call("GET", "/api/v1/status"))[1]
        assert status_view["credentials"]["rotating"] == 1
        assert status_view["tiles"]["credentials"]["state"] == "rotating"
    assert ("web:alice", "started") in [a[:2] for a in audit(web, "credential.rotate",
                                                              "rot-bulb")]
    assert ("web:alice", "rejected", "is already rotating") in audit(
        web, "credential.rotate", "rot-bulb")
    assert audit(web, "credential.rotate_all") == [("web:alice", "ok", "1 rotation started")]


async def test_rotation_period_per_device(tmp_path: Path) -> None:
    declared = '[[devices]]\nid = "cfg-plug"\nkind = "plug"\n'
    async with web_lab(tmp_path / "state", extra=declared) as lab:
        add_user(lab, *ADMIN)
        await lab.add_devices([("per-sensor", "sensor")], interval_s=1.0)
        rotated_at = lab.daemon.store.device("per-sensor").rotated_at
        async with browser(lab) as b:
            await b.login(*ADMIN)
            path = "/api/v1/devices/per-sensor/rotation"
            status, device, _ = await b.call("PUT", path, {"days": 7})
            assert status == 200
            c = device["credential"]
            assert (c["rotation_days"], c["rotation_days_default"]) == (7, False)
            assert c["next_rotation"] == pytest.approx(rotated_at + 7 * DAY_S)
            assert lab.daemon.store.device("per-sensor").rotation_days == 7
            for body, message in [
                ({"days": 0}, "days: expected a whole number from 1 to 3650"),
                ({"days": 3651}, "days: expected a whole number from 1 to 3650"),
                ({"days": "7"}, "days: expected a whole number or null"),
                ({"days": True}, "days: expected a whole number or null"),
                ({"days": 7.5}, "days: expected a whole number or null"),
                ({}, "days: missing"),
                ({"days": 7, "every": 1}, "every: unknown field"),
            ]:
                status, data, _ = await b.call("PUT", path, body)
                assert status == 400 and data["error"].startswith(message), (body, data)
            status, device, _ = await b.call("PUT", path, {"days": None})
            assert status == 200 and device["credential"]["rotation_days"] == 30
            assert device["credential"]["rotation_days_default"] is True
            status, data, _ = await b.call("PUT", "/api/v1/devices/nope-nope/rotation",
                                           {"days": 7})
            assert status == 404
            status, data, _ = await b.call("PUT", "/api/v1/devices/cfg-plug/rotation",
                                           {"days": 7})
            assert status == 409 and "declared in the config file" in data["error"]
        assert [(a, r, d) for a, r, d in audit(lab, "credential.rotation_days")] == [
            ("web:alice", "ok", "the default (every 30 days)"),
            ("web:alice", "ok", "every 7 days")]


async def test_enrollment_create_list_use_and_revoke(web: Lab) -> None:
    async with browser(web) as b:
        await b.login(*ADMIN)
        started = time.time()
        status, made, _ = await b.call("POST", "/api/v1/enrollments",
                                       {"name": "Garden sensor", "minutes": 5})
        assert status == 201
        assert re.fullmatch(r"[0-9a-f]{10}\.[A-Za-z0-9_-]{27}", made["token"])
        assert made["token"].startswith(made["id"] + ".")
        assert made["expires_at"] == pytest.approx(started + 300, abs=5)
        port = web.daemon.endpoint.port
        assert made["brokers"] == [{"host": "127.0.0.1", "port": port, "tls": False}]
        assert made["qr_svg"].startswith("<svg") and "<script" not in made["qr_svg"]
        assert json.loads(made["qr_payload"]) == {
            "v": 1, "token": made["token"], "brokers": made["brokers"],
            "ca_sha256": made["ca_sha256"]}
        assert " " not in made["qr_payload"]  # compact: a smaller code

        # The CA download is the certificate whose fingerprint the device pins.
        async with b.http.get(b.base + "/api/v1/ca.crt") as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "application/x-pem-file"
            assert "attachment" in r.headers["Content-Disposition"]
            pem = await r.read()
        cert = x509.load_pem_x509_certificate(pem)
        der = cert.public_bytes(serialization.Encoding.DER)
        assert made["ca_sha256"] == hashlib.sha256(der).digest().hex(":")
        assert pem == web.daemon.pki.ca_cert.read_bytes()

        status, listed, _ = await b.call("GET", "/api/v1/enrollments")
        assert status == 200
        [entry] = listed["enrollments"]
        assert entry == {"id": made["id"], "name": "Garden sensor", "device_id": None,
                         "created_by": "web:alice", "created_at": entry["created_at"],
                         "expires_at": made["expires_at"], "state": "open", "failures": 0}
        assert made["token"].split(".")[1] not in json.dumps(listed)

        # A real (simulated) device enrolls with the token and gets its own login.
        agent = await enrolled_device(web.endpoint(), made["token"], "sensor",
                                      model="GS-1", firmware="2.4.1")
        web.fleet.devices.append(agent)
        await agent.start()
        device = await poll(b, f"/api/v1/devices/{agent.id}", lambda d: d["online"],
                            "the enrolled device to report", 15)
        assert (device["name"], device["kind"], device["source"], device["model"],
                device["firmware"]) == ("Garden sensor", "sensor", "enrolled", "GS-1",
                                        "2.4.1")
        assert device["credential"]["username"] == f"{agent.id}.1"
        await poll(b, "/api/v1/enrollments", lambda d: d["enrollments"] == [],
                   "the used enrollment to leave the list")

        # Revoked: gone from the list, and the broker refuses the token.
        status, second, _ = await b.call("POST", "/api/v1/enrollments",
                                         {"device_id": "porch-light"})
        assert status == 201
        assert (await b.call("GET", "/api/v1/enrollments"))[1]["enrollments"][0][
            "device_id"] == "porch-light"
        status, data, _ = await b.call("DELETE", f"/api/v1/enrollments/{second['id']}")
        assert status == 200 and data == {"revoked": second["id"]}
        status, data, _ = await b.call("DELETE", f"/api/v1/enrollments/{second['id']}")
        assert status == 404 and data["error"] == f"no open enrollment {second['id']!r}"
        assert (await b.call("GET", "/api/v1/enrollments"))[1]["enrollments"] == []
        with pytest.raises(TimeoutError):
            await enroll(web.endpoint(), second["token"], {"kind": "bulb"}, timeout=3)
        assert web.daemon.store.device("porch-light") is None
    assert [r for _, r, _ in audit(web, "enrollment.create")] == ["ok", "ok"]
    assert ("web:alice", "revoked", "porch-light") in audit(web, "enrollment.close")


async def test_enrollment_bodies_are_checked_by_name(web: Lab) -> None:
    await web.add_devices([("taken-plug", "plug")], interval_s=1.0)
    async with browser(web) as b:
        await b.login(*ADMIN)
        for body, status, message in [
            ({"minutes": 0}, 400, "minutes: expected a whole number from 1 to 1440"),
            ({"minutes": 1441}, 400, "minutes: expected a whole number from 1 to 1440"),
            ({"minutes": "5"}, 400, "minutes: expected a whole number"),
            ({"minutes": None}, 400, "minutes: expected a whole number"),
            ({"name": ""}, 400, "name: expected 1 to 64 characters"),
            ({"name": "x" * 65}, 400, "name: expected 1 to 64 characters"),
            ({"device_id": "No Spaces!"}, 400, "device_id: device id 'No Spaces!' must be"),
            ({"device_id": "ab"}, 400, "device_id: expected 3 to 40 characters"),
            ({"device_id": "taken-plug"}, 409, "device_id: device 'taken-plug' already"),
            ({"ttl": 5}, 400, "ttl: unknown field"),
            ([], 400, "body: expected a JSON object"),
        ]:
            got, data, _ = await b.call("POST", "/api/v1/enrollments", body)
            assert got == status and data["error"].startswith(message), (body, data)
        async with b.http.post(b.base + "/api/v1/enrollments", data="minutes=5",
                               headers={"Origin": b.base, "X-CSRF-Token": b.csrf}) as r:
            assert r.status == 415
        status, made, _ = await b.call("POST", "/api/v1/enrollments", {})  # all optional
        assert status == 201
        default = web.config.credentials.enrollment_minutes * 60
        assert made["expires_at"] - time.time() == pytest.approx(default, abs=5)
        assert (await b.call("DELETE", "/api/v1/enrollments/not-a-token"))[0] == 404
    assert len(web.daemon.store.enrollments()) == 1  # nothing made by the refused ones


async def test_viewers_read_tokens_and_forged_requests_change_nothing(web: Lab) -> None:
    await web.add_devices([("sec-door", "door")], interval_s=1.0)
    ticket = await web.daemon.enrollments.create("test", name="Spare")
    changes: list[tuple[str, str, Any]] = [
        ("POST", "/api/v1/devices/sec-door/rotate", None),
        ("POST", "/api/v1/credentials/rotate-all", None),
        ("PUT", "/api/v1/devices/sec-door/rotation", {"days": 3}),
        ("POST", "/api/v1/enrollments", {"name": "evil"}),
        ("DELETE", f"/api/v1/enrollments/{ticket.id}", None),
    ]
    reads = ["/api/v1/enrollments", "/api/v1/ca.crt", "/api/v1/devices/sec-door"]
    async with browser(web) as b:
        await b.login(*VIEWER)
        for method, path, body in changes:
            status, data, _ = await b.call(method, path, body)
            assert status == 403, (method, path, data)
            assert data["error"] == "viewers can look but not change"
        for path in reads:
            assert (await b.call("GET", path))[0] == 200, path
        async with b.http.get(b.base + "/enroll") as r:
            assert r.status == 403  # the page is for admins
    async with browser(web) as b:
        await b.login(*ADMIN)
        for method, path, body in changes:
            for headers, why in [({"X-CSRF-Token": ""}, "X-CSRF-Token"),
                                 ({"Origin": "http://evil.example"}, "Origin")]:
                status, data, _ = await b.call(method, path, body, **headers)
                assert status == 403 and data["error"].startswith(why), (method, path)
    _, token = web.daemon.accounts.create_token(Principal(ADMIN[0], "admin"), "ro", "read")
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        for method, path, body in changes:
            async with http.request(method, base_url(web) + path, json=body) as r:
                assert r.status == 403 and "read-only" in (await r.json())["error"]
        for path in reads:
            async with http.get(base_url(web) + path) as r:
                assert r.status == 200, path
    store = web.daemon.store
    assert store.rotations() == [] and store.device("sec-door").rotation_days is None
    assert [e.id for e in store.live_enrollments(time.time())] == [ticket.id]
    assert not audit(web, "credential.rotate") and not audit(web, "credential.rotate_all")


async def test_rotation_alert_reaches_status_and_dashboard(tmp_path: Path) -> None:
    fast = "[credentials]\nack_timeout_s = 1\nretry_initial_s = 60\nalert_after = 1\n"
    async with web_lab(tmp_path / "state", extra=fast) as lab:
        add_user(lab, *ADMIN)
        [agent] = await lab.add_devices([("deaf-camera", "camera")], interval_s=0.3)
        agent.acknowledge = False
        async with browser(lab) as b:
            await b.login(*ADMIN)
            _, page = await b.page("/")
            assert re.search(r'id="rotation-alert" role="alert" hidden', page)
            assert "tile-credentials" in page and "plaintext-listeners" not in page
            assert (await b.call("POST", "/api/v1/devices/deaf-camera/rotate"))[0] == 202
            status = await poll(b, "/api/v1/status",
                                lambda s: s["credentials"]["alerts"] == ["deaf-camera"],
                                "the rotation alert", 15)
            tile = status["tiles"]["credentials"]
            assert (tile["state"], tile["label"], tile["alerts"]) == (
                "alert", "1 alert", ["deaf-camera"])
            c = (await b.call("GET", "/api/v1/devices/deaf-camera"))[1]["credential"]
            assert c["alert"] is True and c["last_result"].startswith("alert: ")
            assert c["failures"] == 1 and c["username"] == "deaf-camera.1"
            assert c["next_rotation"] == pytest.approx(time.time() + 60, abs=10)  # retry
            _, page = await b.page("/")
            banner = re.search(r'<div class="notice alert" id="rotation-alert" '
                               r'role="alert">(.*?)</div>', page, re.S)
            assert banner and '<a href="/devices/deaf-camera">deaf-camera</a>' in banner[1]
            _, page = await b.page("/devices/deaf-camera")
            assert re.search(r'data-field="cred-alert">Rotation keeps failing', page)
            _, page = await b.page("/devices")
            assert re.search(r'<span class="pill bad" title="alert: [^"]*">alert</span>', page)
        assert agent.connected and agent.username == "deaf-camera.1"


async def test_plain_text_listener_is_marked_on_the_dashboard_and_enroll_page(
        tmp_path: Path) -> None:
    """The marking follows the config. Tests may bind only loopback and their own
    namespaces, so the gateway runs on loopback and is then given the config of one with a
    legacy listener on its IoT address (the page and status read the running config)."""
    address, port = "192.168.50.1", 1883
    async with web_lab(tmp_path / "state") as lab:
        config = lab.daemon.config
        legacy = dataclasses.replace(config.broker, listeners=(
            *config.broker.listeners, Listener(address, port, tls=False)))
        lab.daemon.config = dataclasses.replace(config, broker=legacy)
        add_user(lab, *ADMIN)
        async with browser(lab) as b:
            await b.login(*ADMIN)
            status = (await b.call("GET", "/api/v1/status"))[1]
            assert status["credentials"]["plaintext_listeners"] == [f"{address}:{port}"]
            _, page = await b.page("/")
            notice = re.search(r'<p class="notice" id="plaintext-listeners">(.*?)</p>', page,
                               re.S)
            assert notice, page
            assert f"<code>{address}:{port}</code>" in notice[1]
            assert "legacy devices: credentials readable on the network" in notice[1]
            _, page = await b.page("/enroll")
            assert f"<code>{address}:{port}</code>" in page
            _, made, _ = await b.call("POST", "/api/v1/enrollments", {})
            assert {"host": address, "port": port, "tls": False} in made["brokers"]
