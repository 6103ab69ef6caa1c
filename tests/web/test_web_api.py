"""The JSON API does what the pages need: first-run setup, accounts and TOTP, devices and
their commands, the audit log, live events, the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import pyotp
import pytest

from gateway.sim.lab import Lab
from tests.web.kit import ADMIN, VIEWER, add_user, base_url, browser, web_lab

pytestmark = pytest.mark.integration


@pytest.fixture
async def web(tmp_path: Path):
    async with web_lab(tmp_path / "state") as lab:
        yield lab


async def test_first_run_setup_code_is_single_use_and_expires(web: Lab) -> None:
    accounts = web.daemon.accounts
    # the daemon made one at start and logged it; a new one replaces it
    code, expires = accounts.issue_setup_code()
    assert len(code.replace("-", "")) >= 10 and expires - time.time() == pytest.approx(3600, 5)
    async with browser(web) as b:
        status, _ = await b.page("/")
        assert (await b.page("/login"))[1].count("Welcome") == 1  # /login -> /setup
        status, data, _ = await b.call("GET", "/api/v1/setup")
        assert data["needed"] is True
        body = {"code": "AAAA-BBBB-CCCC", "username": "alice", "password": ADMIN[1]}
        status, data, _ = await b.call("POST", "/api/v1/setup", body)
        assert status == 403 and data["error"] == "wrong setup code"
        body["code"] = code.lower()
        body["password"] = "password123"
        status, data, _ = await b.call("POST", "/api/v1/setup", body)
        assert status == 400 and "10,000 most common" in data["error"]
        body["password"] = ADMIN[1]
        real = accounts.clock
        accounts.clock = lambda: real() + 3601
        status, data, _ = await b.call("POST", "/api/v1/setup", body)
        assert status == 403 and "expired" in data["error"]
        accounts.clock = real
        status, data, _ = await b.call("POST", "/api/v1/setup", body)
        assert status == 201 and data["role"] == "admin"
        b.csrf = data["csrf_token"]
        assert (await b.call("GET", "/api/v1/account"))[1]["username"] == "alice"
    async with browser(web) as b:
        await b.page("/login")
        status, data, _ = await b.call("POST", "/api/v1/setup", {**body, "username": "eve"})
        assert status == 409  # set up already: the code is spent
    assert [u.username for u in web.daemon.store.users()] == ["alice"]
    assert web.daemon.store.audit_log(10, "setup", result="failed")


async def test_a_stranger_cannot_keep_the_owner_from_setting_up(web: Lab) -> None:
    """Wrong setup codes throttle the address that sent them, not the first-run setup
    itself: another host on the LAN cannot keep the owner out."""
    code, _ = web.daemon.accounts.issue_setup_code()
    body = {"code": "AAAA-BBBB-CCCC", "username": "mallory", "password": ADMIN[1]}
    async with browser(web, source="127.0.0.2") as stranger:
        await stranger.page("/login")
        statuses = [(await stranger.call("POST", "/api/v1/setup", body))[0] for _ in range(8)]
        assert statuses == [403] * 5 + [429] * 3, statuses
        assert (await stranger.call("POST", "/api/v1/setup", {**body, "code": code}))[0] == 429
    failed = web.daemon.store.audit_log(20, "setup", result="failed")
    assert len(failed) == 5 and all("127.0.0.2" in e.detail for e in failed)
    async with browser(web) as owner:  # from 127.0.0.1
        await owner.page("/login")
        status, data, _ = await owner.call("POST", "/api/v1/setup",
                                           {"code": code, "username": "alice",
                                            "password": ADMIN[1]})
        assert status == 201 and data["role"] == "admin", data
    assert [u.username for u in web.daemon.store.users()] == ["alice"]


async def _setup_code_command(web: Lab) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "setup-code", "--config", str(web.config.source),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_setup_code_command_prints_a_new_code_until_set_up(web: Lab) -> None:
    status, out, err = await _setup_code_command(web)
    assert status == 0, err
    code = out.split("setup code: ")[1].split()[0]
    assert base_url(web) in out
    async with browser(web) as b:
        await b.page("/setup")
        status, _, _ = await b.call("POST", "/api/v1/setup", {
            "code": code, "username": ADMIN[0], "password": ADMIN[1]})
        assert status == 201
    status, out, err = await _setup_code_command(web)
    assert status == 1 and "admin account exists already" in err


async def test_password_change_needs_the_current_one_and_ends_other_sessions(web: Lab) -> None:
    add_user(web, *ADMIN)
    async with browser(web) as other, browser(web) as b:
        await other.login(*ADMIN)
        await b.login(*ADMIN)
        status, data, _ = await b.call("POST", "/api/v1/account/password",
                                       {"current_password": "not-it-at-all",
                                        "new_password": "Brand-New-Passphrase-9"})
        assert status == 403
        status, data, _ = await b.call("POST", "/api/v1/account/password",
                                       {"current_password": ADMIN[1],
                                        "new_password": "1q2w3e4r5t"})
        assert status == 400 and data["error"].startswith("new_password:")
        status, data, _ = await b.call("POST", "/api/v1/account/password",
                                       {"current_password": ADMIN[1],
                                        "new_password": "Brand-New-Passphrase-9"})
        assert status == 200
        assert (await b.call("GET", "/api/v1/account"))[0] == 200  # this session stays
        assert (await other.call("GET", "/api/v1/account"))[0] == 401  # others end
    async with browser(web) as b:
        assert (await b.login(ADMIN[0], ADMIN[1]))[0] == 401
        assert (await b.login(ADMIN[0], "Brand-New-Passphrase-9"))[0] == 201


async def test_ending_everything_logs_out_other_browsers_and_revokes_tokens(web: Lab) -> None:
    """A password change leaves API tokens working; "end everything" does not: every other
    session of the user ends and each of their tokens stops, and no one else's."""
    add_user(web, *ADMIN)
    add_user(web, *VIEWER, role="viewer")
    async with browser(web) as other, browser(web) as b, browser(web) as viewer:
        await other.login(*ADMIN)
        await b.login(*ADMIN)
        await viewer.login(*VIEWER)
        mine = (await b.call("POST", "/api/v1/tokens", {"name": "backup", "scope": "admin"}))[1]
        theirs = (await viewer.call("POST", "/api/v1/tokens", {"name": "ha", "scope": "read"}))[1]
        url = base_url(web) + "/api/v1/account"

        async def as_token(token: str) -> int:
            async with aiohttp.ClientSession() as http, http.get(
                    url, headers={"Authorization": f"Bearer {token}"}) as reply:
                return reply.status

        assert await as_token(mine["token"]) == 200
        async with aiohttp.ClientSession() as http, http.post(
                url + "/end-everywhere", json={"password": ADMIN[1]},
                headers={"Authorization": f"Bearer {mine['token']}"}) as reply:
            assert reply.status == 403  # a token cannot end its owner's sessions
        status, _, _ = await b.call("POST", "/api/v1/account/end-everywhere",
                                    {"password": "not-it-at-all"})
        assert status == 403
        status, data, _ = await b.call("POST", "/api/v1/account/end-everywhere",
                                       {"password": ADMIN[1]})
        assert status == 200 and data == {"sessions_ended": 1, "tokens_revoked": 1}
        assert (await b.call("GET", "/api/v1/account"))[0] == 200  # this session stays
        assert (await other.call("GET", "/api/v1/account"))[0] == 401
        assert await as_token(mine["token"]) == 401
        assert (await viewer.call("GET", "/api/v1/account"))[0] == 200  # others untouched
        assert await as_token(theirs["token"]) == 200
    [entry] = web.daemon.store.audit_log(action="account.end_all", result="ok")
    assert entry.target == ADMIN[0] and "1 API token(s) revoked" in entry.detail


async def test_totp_enrol_login_replay_and_recovery_codes(web: Lab) -> None:
    add_user(web, *ADMIN)
    async with browser(web) as b:
        await b.login(*ADMIN)
        status, begun, _ = await b.call("POST", "/api/v1/account/totp")
        assert status == 200 and begun["qr_svg"].startswith("<svg")
        assert begun["uri"].startswith("otpauth://totp/Home%20Gateway:alice?")
        totp = pyotp.TOTP(begun["secret"])
        status, data, _ = await b.call("POST", "/api/v1/account/totp/confirm",
                                       {"secret": begun["secret"], "code": "000000"})
        assert status == 400
        confirmed = totp.now()
        status, data, _ = await b.call("POST", "/api/v1/account/totp/confirm",
                                       {"secret": begun["secret"], "code": confirmed})
        assert status == 200 and len(data["recovery_codes"]) == 10
        recovery = data["recovery_codes"]
    async with browser(web) as b:
        status, data = await b.login(*ADMIN)
        assert status == 401 and data["second_factor"] is True
        # the code used to confirm is spent: the same time step never works twice (the very
        # code: totp.now() again would be the next step's once a 30 s step has ended)
        status, data = await b.login(*ADMIN, code=confirmed)
        assert status == 401 and data["error"] == "wrong or already used code"
        status, data = await b.login(*ADMIN, code=recovery[0])
        assert status == 201
        status, data = await b.login(*ADMIN, code=recovery[0])
        assert status == 401  # each recovery code works once
        status, data = await b.login(*ADMIN, code=totp.at(time.time() + 30))
        assert status == 201  # the next step (one step of clock drift is allowed)
        account = (await b.call("GET", "/api/v1/account"))[1]
        assert account["second_factor"] is True and account["recovery_codes_left"] == 9
        status, _, _ = await b.call("POST", "/api/v1/account/totp/disable",
                                    {"password": ADMIN[1]})
        assert status == 200
    raw = (web.config.gateway.state_dir / "gateway.db").read_bytes()
    assert all(code.encode() not in raw for code in recovery)


async def test_users_admin_only_and_last_admin_kept(web: Lab) -> None:
    add_user(web, *ADMIN)
    async with browser(web) as b:
        await b.login(*ADMIN)
        status, data, _ = await b.call("POST", "/api/v1/users", {
            "username": VIEWER[0], "role": "viewer", "password": VIEWER[1]})
        assert status == 201 and data["role"] == "viewer"
        status, data, _ = await b.call("POST", "/api/v1/users", {
            "username": VIEWER[0], "role": "viewer", "password": VIEWER[1]})
        assert status == 409
        status, data, _ = await b.call("POST", "/api/v1/users", {
            "username": "Bad Name", "role": "viewer", "password": VIEWER[1]})
        assert status == 400 and data["error"].startswith("username:")
        assert (await b.call("DELETE", f"/api/v1/users/{ADMIN[0]}"))[0] == 409
        users = (await b.call("GET", "/api/v1/users"))[1]["users"]
        assert [u["username"] for u in users] == [ADMIN[0], VIEWER[0]]
        assert (await b.call("DELETE", f"/api/v1/users/{VIEWER[0]}"))[0] == 200
        assert (await b.call("DELETE", f"/api/v1/users/{VIEWER[0]}"))[0] == 404


async def test_devices_commands_telemetry_and_audit(web: Lab) -> None:
    add_user(web, *ADMIN)
    await web.add_devices([("api-plug-1", "plug")], interval_s=0.3)
    agent = web.fleet.devices[0]
    async with browser(web) as b:
        await b.login(*ADMIN)
        for _ in range(50):
            devices = (await b.call("GET", "/api/v1/devices"))[1]["devices"]
            if devices[0]["online"]:
                break
            await asyncio.sleep(0.1)
        assert devices[0]["id"] == "api-plug-1" and devices[0]["online"]
        assert devices[0]["actions"] == {"set_power": ["on"]}
        status, data, _ = await b.call("POST", "/api/v1/devices/api-plug-1/commands",
                                       {"action": "set_power", "params": {"on": True}})
        assert status == 200 and data["result"]["status"] == "ok"
        assert agent.state["on"] is True
        status, data, _ = await b.call("POST", "/api/v1/devices/api-plug-1/commands",
                                       {"action": "set_target", "params": {"target": 20}})
        assert status == 400 and "not supported by a plug" in data["error"]
        status, data, _ = await b.call("POST", "/api/v1/devices/api-plug-1/commands",
                                       {"action": "explode", "params": {}})
        assert status == 400 and data["error"].startswith("action: expected one of:")
        await asyncio.sleep(1.2)  # one flush of readings to the store
        telemetry = (await b.call("GET", "/api/v1/devices/api-plug-1/telemetry?minutes=5"))[1]
        assert telemetry["points"] and "power_w" in telemetry["points"][-1]["values"]
        assert (await b.call("GET", "/api/v1/devices/nope-nope/telemetry"))[0] == 404
        audit = (await b.call("GET", "/api/v1/audit?action=command&target=api-plug-1"))[1]
        results = [e["result"] for e in audit["entries"]]
        assert results == ["rejected", "rejected", "ok"]
        assert audit["entries"][0]["detail"].startswith("action: expected one of:")
        assert all(e["actor"] == "web:alice" for e in audit["entries"])
        assert "(source admin)" in audit["entries"][1]["detail"]
        assert "command" in audit["actions"] and "login" in audit["actions"]
        status, data, _ = await b.call("POST", "/api/v1/devices",
                                       {"id": "new-bulb", "kind": "bulb", "name": "Hall"})
        assert status == 201 and data["credential"]["username"] == "new-bulb.1"
        assert (await b.call("POST", "/api/v1/devices",
                             {"id": "new-bulb", "kind": "bulb"}))[0] == 409
        started = time.monotonic()
        status, data, _ = await b.call("POST", "/api/v1/devices/new-bulb/commands",
                                       {"action": "set_power", "params": {"on": True}})
        assert status == 409 and data["error"] == "new-bulb has never connected"
        assert time.monotonic() - started < 2  # said at once, not after a timeout
        assert (await b.call("DELETE", "/api/v1/devices/new-bulb"))[0] == 200
        assert (await b.call("GET", "/api/v1/devices/new-bulb"))[0] == 404


async def test_events_stream_a_snapshot_when_a_device_reports(web: Lab) -> None:
    add_user(web, *ADMIN)
    async with browser(web) as b:
        await b.login(*ADMIN)
        timeout = aiohttp.ClientTimeout(total=20)
        async with b.http.get(b.base + "/api/v1/events", timeout=timeout) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            first = await _next_snapshot(r)
            assert first["devices"] == []
            await web.add_devices([("sse-bulb-1", "bulb")], interval_s=0.3)
            for _ in range(10):
                snap = await _next_snapshot(r)
                online = [d for d in snap["devices"] if d["online"]]
                if online:
                    break
            assert online[0]["id"] == "sse-bulb-1" and snap["status"]["devices"]["online"] == 1
            # logging out elsewhere ends the stream
            await b.call("DELETE", "/api/v1/session")
            rest = await asyncio.wait_for(r.content.read(), 5)
            assert b"event: end" in rest


async def _next_snapshot(response: aiohttp.ClientResponse) -> dict:
    while True:
        line = await asyncio.wait_for(response.content.readline(), 10)
        if line.startswith(b"data: ") and line.strip() != b"data: {}":
            return json.loads(line[6:])


async def test_openapi_document_describes_every_route(web: Lab) -> None:
    from gateway.web.api import ROUTES

    add_user(web, *ADMIN)
    async with browser(web) as b:
        await b.login(*ADMIN)
        status, doc, _ = await b.call("GET", "/api/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert str(route.status) in op["responses"]
        if route.access != "public":
            assert "401" in op["responses"] and "403" in op["responses"]
