"""The cloud relay over the admin API and pages, against a real gateway with simulated
devices and no cloud link: the local command path (a signed envelope needs no login and is
verified like one from the cloud; an unsigned command is an admin's), each refusal with its
HTTP status and reason code, audited, in the command log and never reaching the device; the
relay's view (link, spool, command log, shadows, schedules), the schedules API, the Cloud
page and the dashboard tile."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.cloud import envelope
from gateway.credentials.pki import Pki, ensure_ca
from gateway.sim.devices import SimDevice
from gateway.sim.lab import Lab, free_port
from gateway.web.accounts import Principal
from gateway.web.api import cloud_tile
from tests.web.kit import ADMIN, VIEWER, add_user, base_url, browser, poll, web_lab

pytestmark = pytest.mark.integration

APP_KEY = Ed25519PrivateKey.generate()  # the owner's app: any device, any action
NARROW_KEY = Ed25519PrivateKey.generate()  # plugs' power only
STRANGER_KEY = Ed25519PrivateKey.generate()  # configured nowhere


def signers_config() -> str:
    return f"""
[[cloud.signers]]
kid = "app"
public_key = "{envelope.public_key_text(APP_KEY.public_key())}"

[[cloud.signers]]
kid = "narrow"
public_key = "{envelope.public_key_text(NARROW_KEY.public_key())}"
devices = ["plug-*"]
actions = ["set_power"]
"""


@dataclass
class Relay:
    lab: Lab
    plug: SimDevice
    thermostat: SimDevice

    @property
    def base(self) -> str:
        return base_url(self.lab)


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    async with web_lab(tmp_path / "state", extra=signers_config(), users=True) as lab:
        plug, thermostat = await lab.add_devices([("plug-1", "plug"), ("therm-1", "thermostat")],
                                                 interval_s=1.0)
        yield Relay(lab, plug, thermostat)


_ids = iter(range(1, 1_000_000))


def signed(key: Ed25519PrivateKey = APP_KEY, kid: str = "app", *, device: str = "plug-1",
           action: str = "set_power", params: dict[str, Any] | None = None,
           iat: float | None = None, exp: float | None = None,
           id: str | None = None) -> dict[str, Any]:
    now = time.time()
    return envelope.sign(key, kid, id=id or f"cmd-{next(_ids)}", device=device, action=action,
                         params={"on": True} if params is None else params,
                         iat=now - 1 if iat is None else iat,
                         exp=now + 60 if exp is None else exp)


async def post(base: str, body: bytes | str | Any, content_type: str = "application/json",
               **headers: str) -> tuple[int, Any]:
    """POST /api/v1/commands as the owner's app does: no cookie, no Origin, no token."""
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "/api/v1/commands", data=data,
                             headers={"Content-Type": content_type, **headers}) as r:
            try:
                return r.status, await r.json(content_type=None)
            except ValueError:
                return r.status, await r.text()


async def test_a_signed_command_needs_no_login_and_reaches_the_device(relay: Relay) -> None:
    before = relay.plug.commands_handled
    command = signed(params={"on": True})
    status, data = await post(relay.base, command)
    assert status == 200, data
    assert data["source"] == "local-signed"
    result = data["result"]
    assert (result["id"], result["device"], result["action"], result["status"]) == (
        command["id"], "plug-1", "set_power", "ok")
    assert result["result"]["state"]["on"] is True
    assert relay.plug.commands_handled == before + 1
    [entry] = relay.lab.daemon.store.command_log(1)
    assert (entry.command_id, entry.source, entry.actor, entry.device_id, entry.action,
            entry.outcome) == (command["id"], "local-signed", "local-signed:app", "plug-1",
                               "set_power", "ok")
    # The narrow key may switch plugs; its own commands carry its key id.
    status, data = await post(relay.base, signed(NARROW_KEY, "narrow", params={"on": False}))
    assert status == 200 and data["result"]["status"] == "ok", data
    assert relay.lab.daemon.store.command_log(1)[0].actor == "local-signed:narrow"
    assert relay.plug.commands_handled == before + 2
    # A session cookie and a foreign Origin change nothing: the signature is what counts.
    async with browser(relay.lab) as b:
        await b.login(*VIEWER)
        async with b.http.post(b.base + "/api/v1/commands", json=signed(),
                               headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 200, await r.text()
    assert relay.plug.commands_handled == before + 3


def _tampered() -> dict[str, Any]:
    command = signed(params={"on": True})
    command["params"] = {"on": False}
    return command


def _stranger() -> dict[str, Any]:
    return signed(STRANGER_KEY, "stranger")


def _expired() -> dict[str, Any]:
    now = time.time()
    return signed(iat=now - 120, exp=now - 60)


def _future() -> dict[str, Any]:
    now = time.time()
    return signed(iat=now + 600, exp=now + 900)


def _long_lived() -> dict[str, Any]:
    now = time.time()
    return signed(iat=now, exp=now + 7200)


def _malformed() -> dict[str, Any]:
    command = signed()
    del command["exp"]
    return command


REFUSALS: list[tuple[str, Callable[[], dict[str, Any]], int, str]] = [
    ("bad signature", _tampered, 403, "bad-signature"),
    ("unknown key", _stranger, 403, "unknown-key"),
    ("expired", _expired, 403, "expired"),
    ("from the future", _future, 403, "from-the-future"),
    ("too long-lived", _long_lived, 403, "too-long-lived"),
    ("out of scope: another device", lambda: signed(NARROW_KEY, "narrow", device="therm-1"),
     403, "out-of-scope"),
    ("out of scope: another action", lambda: signed(
        NARROW_KEY, "narrow", device="plug-1", action="identify", params={}), 403,
     "out-of-scope"),
    ("unknown device", lambda: signed(device="ghost-1"), 404, "unknown-device"),
    ("bad params", lambda: signed(params={"on": "yes"}), 400, "bad-params"),
    ("action of another kind", lambda: signed(action="set_target", params={"target": 20}),
     400, "bad-params"),
    ("malformed", _malformed, 400, "malformed"),
]


@pytest.mark.parametrize(("build", "http_status", "reason"),
                         [pytest.param(b, s, r, id=name) for name, b, s, r in REFUSALS])
async def test_each_refused_signed_command_is_answered_audited_and_logged(
        relay: Relay, build: Callable[[], dict[str, Any]], http_status: int,
        reason: str) -> None:
    store = relay.lab.daemon.store
    before = (relay.plug.commands_handled, relay.thermostat.commands_handled)
    command = build()
    status, data = await post(relay.base, command)
    assert status == http_status, data
    result = data["result"]
    assert (result["status"], result["reason"]) == ("rejected", reason)
    assert data["error"].startswith(f"rejected: {reason}: "), data
    assert result["message"] and result["message"] in data["error"]
    [audited] = store.audit_log(1)
    assert (audited.action, audited.result) == ("command", "rejected")
    assert f"(source local-signed): {reason}: " in audited.detail
    [logged] = store.command_log(1)
    assert (logged.source, logged.outcome, logged.reason) == ("local-signed", "rejected",
                                                              reason)
    # A malformed envelope's fields are not trusted enough to be recorded.
    assert logged.device_id == ("" if reason == "malformed" else command["device"])
    assert (relay.plug.commands_handled, relay.thermostat.commands_handled) == before


async def test_a_replayed_command_is_refused(relay: Relay) -> None:
    command = signed(params={"on": True})
    status, data = await post(relay.base, command)
    assert status == 200 and data["result"]["status"] == "ok"
    handled = relay.plug.commands_handled
    status, data = await post(relay.base, command)
    assert status == 403 and data["result"]["reason"] == "replayed", data
    assert relay.plug.commands_handled == handled
    [logged] = relay.lab.daemon.store.command_log(1)
    assert (logged.command_id, logged.outcome, logged.reason) == (command["id"], "rejected",
                                                                  "replayed")
    assert "replayed" in relay.lab.daemon.store.audit_log(1)[0].detail


async def test_a_signed_schedule_command_goes_through_the_same_path(relay: Relay) -> None:
    put = signed(device="therm-1", action="schedule.put",
                 params={"id": "app-morning", "when": "daily 06:45", "action": "set_target",
                         "params": {"target": 20.5}})
    status, data = await post(relay.base, put)
    assert status == 200 and data["result"]["status"] == "ok", data
    [schedule] = relay.lab.daemon.store.schedules()
    # Kept as the vendor app's, so its runs are reported to the cloud like the app's commands.
    assert (schedule.id, schedule.when, schedule.source) == ("app-morning", "daily 06:45",
                                                             "local-signed")
    # The narrow key may not schedule the thermostat.
    status, data = await post(relay.base, signed(
        NARROW_KEY, "narrow", device="therm-1", action="schedule.delete",
        params={"id": "app-morning"}))
    assert status == 403 and data["result"]["reason"] == "out-of-scope"
    assert len(relay.lab.daemon.store.schedules()) == 1


async def test_unsigned_commands_are_an_admins(relay: Relay) -> None:
    body = {"device": "plug-1", "action": "set_power", "params": {"on": True}}
    handled = relay.plug.commands_handled
    status, data = await post(relay.base, body)
    assert (status, data) == (401, {"error": "log in first"})
    async with browser(relay.lab) as b:
        await b.login(*VIEWER)
        status, data, _ = await b.call("POST", "/api/v1/commands", body)
        assert (status, data["error"]) == (403, "viewers can look but not change")
    assert relay.plug.commands_handled == handled

    async with browser(relay.lab) as b:
        await b.login(*ADMIN)
        # A browser's session needs the same-origin checks like every other change.
        status, data, _ = await b.call("POST", "/api/v1/commands", body, **{
            "X-CSRF-Token": "forged"})
        assert status == 403 and data["error"].startswith("X-CSRF-Token")
        status, data, _ = await b.call("POST", "/api/v1/commands", body,
                                       Origin="http://evil.example")
        assert status == 403 and data["error"].startswith("Origin")
        assert relay.plug.commands_handled == handled

        status, data, _ = await b.call("POST", "/api/v1/commands", body)
        assert status == 200, data
        assert data["source"] == "admin"
        assert (data["result"]["device"], data["result"]["status"]) == ("plug-1", "ok")
        assert relay.plug.commands_handled == handled + 1
        [entry] = relay.lab.daemon.store.command_log(1)
        assert (entry.source, entry.actor, entry.outcome) == ("admin", "web:alice", "ok")

        # Refusals by the relay: named, with the result; the device never sees them.
        for sent, code, reason, error in [
            ({"device": "plug-1", "action": "set_power", "params": {"on": 1}}, 400, "invalid",
             "parameter 'on': expected true or false"),
            ({"device": "plug-1", "action": "set_target", "params": {"target": 20}}, 400,
             "invalid", "action 'set_target' is not supported by a plug"),
            ({"device": "ghost-1", "action": "set_power", "params": {"on": True}}, 404,
             "unknown-device", "unknown device 'ghost-1'"),
        ]:
            status, data, _ = await b.call("POST", "/api/v1/commands", sent)
            assert status == code and data["error"].startswith(error), (sent, data)
            assert (data["result"]["status"], data["result"]["reason"]) == ("rejected", reason)
            [entry] = relay.lab.daemon.store.command_log(1)
            assert (entry.source, entry.device_id, entry.outcome) == (
                "admin", sent["device"], "rejected")
        # A malformed one is refused before the relay, and audited.
        status, data, _ = await b.call("POST", "/api/v1/commands",
                                       {"device": "plug-1", "action": "set_power", "kid": "x"})
        assert (status, data["error"]) == (400, "kid: unknown field (expected: device, "
                                                 "action, params)")
        [audited] = relay.lab.daemon.store.audit_log(1)
        assert (audited.actor, audited.action, audited.result, audited.target) == (
            "web:alice", "command", "rejected", "plug-1")
        assert relay.plug.commands_handled == handled + 1

    # An admin API token needs no CSRF token (it is not an ambient credential).
    _, token = relay.lab.daemon.accounts.create_token(Principal(ADMIN[0], "admin"), "app",
                                                      "admin")
    status, data = await post(relay.base, body, Authorization=f"Bearer {token}")
    assert status == 200 and data["result"]["status"] == "ok", data
    assert relay.lab.daemon.store.command_log(1)[0].actor == "api:alice"


async def test_a_device_that_never_connected_or_does_not_answer(relay: Relay) -> None:
    daemon = relay.lab.daemon
    await daemon.devices.add("plug-9", "plug", source="test", actor="test")
    status, data = await post(relay.base, signed(device="plug-9"))
    assert status == 409 and data["result"]["status"] == "offline", data
    assert daemon.store.command_log(1)[0].outcome == "offline"
    # A device that stopped answering: 504 once the relay's timeout passed.
    await relay.thermostat.stop()
    daemon.cloud.config = dataclasses.replace(daemon.cloud.config, command_timeout_s=1)
    status, data = await post(relay.base, signed(device="therm-1", action="set_target",
                                                 params={"target": 21}))
    assert status == 504 and data["result"]["status"] == "timeout", data
    assert daemon.store.command_log(1)[0].outcome == "timeout"


async def test_oversize_and_non_json_bodies_are_refused_plainly(relay: Relay) -> None:
    handled = relay.plug.commands_handled
    command = signed(params={"on": True})
    big = json.dumps(command)[:-1] + ', "pad": "' + "x" * envelope.MAX_BYTES + '"}'
    for sent in (big, big.encode()):
        status, data = await post(relay.base, sent)
        assert status == 413 and data["error"] == (
            f"body: {len(big)} bytes (at most {envelope.MAX_BYTES})"), data

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000].encode()

    async with aiohttp.ClientSession() as http:
        async with http.post(relay.base + "/api/v1/commands", data=chunks(),
                             headers={"Content-Type": "application/json"}) as r:
            assert r.status == 413
            assert (await r.json())["error"] == (
                f"body: larger than {envelope.MAX_BYTES} bytes")
    for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
        status, data = await post(relay.base, json.dumps(command), content_type)
        assert (status, data["error"]) == (
            415, "expected a JSON body (Content-Type: application/json)"), content_type
    for sent, error in [("{", "body: not valid JSON"), ("[1]", "body: expected a JSON object"),
                        (b"\xff\xfe", "body: not valid JSON")]:
        status, data = await post(relay.base, sent)
        assert status == 400 and data["error"].startswith(error), data
    assert relay.plug.commands_handled == handled
    # None of these was a command: the command log has none of them.
    assert relay.lab.daemon.store.command_log(5) == []
    # The same envelope, sent properly, still works: nothing was marked as seen.
    status, data = await post(relay.base, command)
    assert status == 200 and data["result"]["status"] == "ok", data


async def test_the_relays_view(relay: Relay) -> None:
    async with browser(relay.lab) as b:
        await b.login(*VIEWER)  # reading needs no admin
        status, view, _ = await b.call("GET", "/api/v1/cloud")
        assert status == 200, view
        s = view["status"]
        assert (s["state"], s["url"], s["gateway_id"], s["connected_since"]) == (
            "not configured", None, None, None)
        assert s["signers"] == ["app", "narrow"]
        assert s["spool"]["messages"] == 0 and s["spool"]["by_class"] == {
            "telemetry": 0, "shadow": 0, "result": 0}
        assert view["commands"] == [] and view["schedules"] == []
        assert [sh["device"] for sh in view["shadows"]] == ["plug-1", "therm-1"]

        for i in range(3):
            assert (await post(relay.base, signed(params={"on": i % 2 == 0})))[0] == 200
        await post(relay.base, signed(STRANGER_KEY, "stranger"))
        # The plug's state (its shadow's reported side) follows its command result.
        view = await poll(b, "/api/v1/cloud?limit=2", lambda v: any(
            sh["device"] == "plug-1" and sh["reported"] == {"on": True}
            for sh in v["shadows"]), "the plug's reported state after the last command")
        assert len(view["commands"]) == 2
        newest = view["commands"][0]
        assert {k: newest[k] for k in ("source", "actor", "device", "action", "outcome",
                                       "reason")} == {
            "source": "local-signed", "actor": "local-signed:stranger", "device": "plug-1",
            "action": "set_power", "outcome": "rejected", "reason": "unknown-key"}
        assert view["commands"][1]["outcome"] == "ok"
        assert view["commands"][1]["latency_ms"] >= 0
        plug = next(sh for sh in view["shadows"] if sh["device"] == "plug-1")
        assert plug["reported"] == {"on": True}
        assert plug["desired"]["on"]["value"] is True
        assert plug["desired"]["on"]["side"] == "local"
        for bad in ("0", "1001", "x"):
            status, data, _ = await b.call("GET", f"/api/v1/cloud?limit={bad}")
            assert (status, data["error"]) == (
                400, "limit: expected a whole number from 1 to 1000")

        status, data, _ = await b.call("GET", "/api/v1/status")
        assert data["cloud"]["state"] == "not configured"
        assert data["tiles"]["cloud"] == {"state": "not configured",
                                          "label": "Not configured",
                                          "detail": "local control only (no [cloud] url)"}
        status, html = await b.page("/")
        assert 'id="tile-cloud"' in html and 'href="/cloud"' in html
        # The Cloud page reads without JavaScript: everything is in the HTML.
        status, html = await b.page("/cloud")
        assert status == 200
        assert "The cloud link is not configured." in html and "docs/cloud.md" in html
        assert "local-signed:stranger" in html and "unknown-key" in html
        assert 'id="shadow-plug-1"' in html
        assert "schedule-form" not in html  # a viewer gets no form


def test_the_dashboard_tile_says_what_waits_while_the_link_is_down() -> None:
    spool = {"messages": 3, "oldest_age_s": 330.0}
    assert cloud_tile({"state": "offline", "spool": spool}) == {
        "state": "offline", "label": "Offline", "detail": "3 messages spooled · oldest 5 min"}
    assert cloud_tile({"state": "connected", "spool": {**spool, "messages": 1}}) == {
        "state": "connected", "label": "Connected", "detail": "1 message spooled"}
    assert cloud_tile({"state": "offline", "spool": {"messages": 0, "oldest_age_s": None}})[
        "detail"] == "0 messages spooled"


async def test_schedules(relay: Relay) -> None:
    store = relay.lab.daemon.store
    path = "/api/v1/schedules/morning-heat"
    body = {"device": "therm-1", "when": "weekdays 07:30", "action": "set_target",
            "params": {"target": 21}, "name": "Morning heat"}
    async with browser(relay.lab) as b:
        await b.login(*ADMIN)
        status, data, _ = await b.call("PUT", path, {**body, "when": "someday 07:30"})
        assert (status, data["error"]) == (400, 'when: "someday": unknown day "someday"; '
                                                "expected daily, weekdays, weekends or day "
                                                "names mon,tue,wed,thu,fri,sat,sun"), data
        status, data, _ = await b.call("PUT", path, {**body, "when": "at dawn please"})
        assert status == 400 and data["error"].startswith(
            'when: "at dawn please": expected "daily HH:MM"'), data
        status, data, _ = await b.call("PUT", path, {**body, "when": "cron 61 * * * *"})
        assert status == 400 and data["error"].startswith("when: ") and "61" in data["error"]
        for sent, error in [
            ({**body, "device": "ghost-1"}, "no device 'ghost-1'"),
            ({**body, "params": {"target": 99}}, "parameter 'target': expected a number "
                                                 "from 5 to 30"),
            ({**body, "enabled": "yes"}, "enabled: expected true or false"),
            ({k: v for k, v in body.items() if k != "when"}, "when: missing"),
        ]:
            status, data, _ = await b.call("PUT", path, sent)
            assert (status, data["error"]) == (400, error), sent
        status, data, _ = await b.call("PUT", "/api/v1/schedules/Bad_Id", body)
        assert (status, data["error"]) == (
            400, "id: expected 1 to 40 characters from a-z, 0-9 and '-'")
        assert store.schedules() == []

        status, data, _ = await b.call("PUT", path, body)
        assert status == 200, data
        assert {k: data[k] for k in ("id", "device", "name", "when", "action", "params",
                                     "source", "enabled", "last_result")} == {
            "id": "morning-heat", "device": "therm-1", "name": "Morning heat",
            "when": "weekdays 07:30", "action": "set_target", "params": {"target": 21},
            "source": "admin", "enabled": True, "last_result": ""}
        assert time.time() < data["next_at"] <= time.time() + 4 * 86400
        [audited] = store.audit_log(1, "schedule.put")
        assert (audited.actor, audited.target) == ("web:alice", "therm-1")

        # Normalized; disabled; the name defaults to the id.
        status, data, _ = await b.call("PUT", "/api/v1/schedules/lamp", {
            "device": "plug-1", "when": "Mon,Wed 18:00", "action": "set_power",
            "params": {"on": True}, "enabled": False})
        assert status == 200, data
        assert (data["name"], data["when"], data["enabled"]) == ("lamp", "mon,wed 18:00", False)
        status, data, _ = await b.call("GET", "/api/v1/schedules")
        assert status == 200
        assert [(s["id"], s["enabled"]) for s in data["schedules"]] == [("lamp", False),
                                                                        ("morning-heat", True)]
        assert data["timezone"]
        status, html = await b.page("/cloud")
        assert 'id="schedule-morning-heat"' in html and "schedule-form" in html

        status, data, _ = await b.call("DELETE", "/api/v1/schedules/lamp")
        assert (status, data) == (200, {"deleted": "lamp"})
        status, data, _ = await b.call("DELETE", "/api/v1/schedules/lamp")
        assert (status, data["error"]) == (404, "no schedule 'lamp'")
        assert [s.id for s in store.schedules()] == ["morning-heat"]

    async with browser(relay.lab) as b:
        await b.login(*VIEWER)
        status, data, _ = await b.call("GET", "/api/v1/schedules")
        assert status == 200 and len(data["schedules"]) == 1
        for method, sent in (("PUT", body), ("DELETE", None)):
            status, data, _ = await b.call(method, path, sent)
            assert (status, data["error"]) == (403, "viewers can look but not change")
    assert [s.id for s in store.schedules()] == ["morning-heat"]


def unreachable_cloud(tmp_path: Path) -> str:
    """A [cloud] table for a cloud that refuses every connection (nothing listens)."""
    pki = Pki(tmp_path / "cloud-ca")
    ensure_ca(pki)
    (tmp_path / "cloud-password").write_text("secret\n")
    return f"""
[cloud]
url = "mqtts://127.0.0.1:{free_port()}"
gateway_id = "home-1"
ca_file = "{pki.ca_cert}"
username = "gw-home-1"
password_file = "{tmp_path / 'cloud-password'}"
backoff_initial_s = 1
backoff_max_s = 1
"""


async def test_a_configured_link_that_is_down(tmp_path: Path) -> None:
    """A cloud that does not answer: the link is offline and keeps retrying, what the cloud
    should hear waits in the spool, and the page, the API and the tile say so."""
    async with web_lab(tmp_path / "state", extra=unreachable_cloud(tmp_path)) as lab:
        add_user(lab, *ADMIN)
        await lab.add_devices([("plug-1", "plug")], interval_s=1.0)
        async with browser(lab) as b:
            await b.login(*ADMIN)
            view = await poll(b, "/api/v1/cloud",
                              lambda v: v["status"]["history"]
                              and v["status"]["spool"]["messages"] > 0,
                              "a failed attempt and a spooled shadow")
            s = view["status"]
            assert (s["state"], s["gateway_id"], s["connected_since"]) == ("offline", "home-1",
                                                                           None)
            assert s["url"].startswith("mqtts://127.0.0.1:")
            assert s["last_error"] and s["history"][-1]["event"] == "down"
            assert s["spool"]["by_class"]["shadow"] >= 1
            status, data, _ = await b.call("GET", "/api/v1/status")
            tile = data["tiles"]["cloud"]
            assert (tile["state"], tile["label"]) == ("offline", "Offline")
            assert " spooled · oldest " in tile["detail"]
            # Commands keep working locally while the cloud is away.
            status, data, _ = await b.call("POST", "/api/v1/commands", {
                "device": "plug-1", "action": "set_power", "params": {"on": True}})
            assert status == 200 and data["result"]["status"] == "ok", data
            status, html = await b.page("/cloud")
            assert status == 200
            assert "The cloud link is not configured." not in html
            assert "offline: retrying" in html and "home-1" in html
            assert '<ol class="history" reversed>' in html and ">down</span>" in html
