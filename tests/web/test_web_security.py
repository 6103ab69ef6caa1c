"""The admin page's defences, against the real server: authentication on every route, CSRF
and Origin, security headers on every kind of response, sessions, throttling, roles."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from pathlib import Path

import aiohttp
import pytest
import yarl
from cryptography import x509

from gateway.sim.lab import Lab
from gateway.store import Discovered
from gateway.web.api import ROUTES
from gateway.web.app import CSP
from gateway.web.pages import PAGES
from tests.web.kit import ADMIN, VIEWER, Browser, add_user, base_url, browser, web_lab

pytestmark = pytest.mark.integration


@pytest.fixture
async def web(tmp_path: Path):
    async with web_lab(tmp_path / "state", users=True) as lab:
        await lab.add_devices([("sec-plug-1", "plug")], interval_s=0.5)
        yield lab


def _concrete(path: str) -> str:
    return (path.replace("{id}", "sec-plug-1").replace("{username}", VIEWER[0])
            .replace("{category}", "usage"))


async def test_every_route_needs_a_session(web: Lab) -> None:
    async with browser(web) as b:
        for route in ROUTES:
            if route.access == "public":
                continue
            status, data, _ = await b.call(route.method, _concrete(route.path), {})
            assert status == 401, (route.method, route.path, status, data)
            assert data == {"error": "log in first"}
        for page in PAGES:
            if page.access == "public":
                continue
            async with b.http.get(b.base + _concrete(page.path), allow_redirects=False) as r:
                assert r.status == 302, page.path
                assert r.headers["Location"].startswith("/login?next=")
    # nothing changed meanwhile: the device is still there, the viewer too
    assert web.daemon.store.device("sec-plug-1").status != "removed"
    assert web.daemon.store.user(VIEWER[0]) is not None


async def test_cross_origin_and_tokenless_posts_are_refused(web: Lab) -> None:
    async with browser(web) as b:
        assert (await b.login(*ADMIN))[0] == 201
        body = {"id": "evil-plug", "kind": "plug"}
        for headers, why in [
            ({"Origin": "http://evil.example"}, "Origin"),
            ({"Origin": "null"}, "Origin"),
            ({"Origin": b.base, "X-CSRF-Token": "forged"}, "X-CSRF-Token"),
            ({"Origin": b.base, "X-CSRF-Token": ""}, "X-CSRF-Token"),
        ]:
            status, data, _ = await b.call("POST", "/api/v1/devices", body, **headers)
            assert status == 403 and data["error"].startswith(why), (headers, data)
        # a form post from another site (no Origin header we control, no token)
        async with b.http.post(b.base + "/api/v1/devices", json=body) as r:
            assert r.status == 403
        assert web.daemon.store.device("evil-plug") is None
        status, _, _ = await b.call("POST", "/api/v1/devices", body)  # the real page's way
        assert status == 201


async def test_an_empty_authorization_header_does_not_skip_csrf(web: Lab) -> None:
    """A session cookie never authenticates a request that carries an Authorization header:
    an empty or blank one is refused, it does not turn a browser's change into an API
    client's (which needs no CSRF token)."""
    async with browser(web) as b:
        assert (await b.login(*ADMIN))[0] == 201
        for value in ("", " ", "Bearer", "Bearer "):
            for method, path, body in (("POST", "/api/v1/devices",
                                        {"id": "csrf-plug", "kind": "plug"}),
                                       ("POST", "/api/v1/enrollments", {"name": "csrf"})):
                async with b.http.request(method, b.base + path, json=body,
                                          headers={"Authorization": value}) as r:
                    assert r.status == 401, (value, path, r.status, await r.text())
                    assert (await r.json())["error"].startswith("Authorization:")
        assert web.daemon.store.device("csrf-plug") is None
        assert web.daemon.store.live_enrollments(time.time()) == []
        status, _, _ = await b.call("POST", "/api/v1/devices", {"id": "csrf-plug",
                                                                "kind": "plug"})
        assert status == 201  # the page's own way still works


async def test_dns_rebinding_host_is_refused(web: Lab) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(base_url(web) + "/login", headers={"Host": "evil.example"}) as r:
            assert r.status == 421


def _assert_security_headers(headers: aiohttp.typedefs.LooseHeaders, tls: bool = False) -> None:
    assert headers["Content-Security-Policy"] == CSP
    for part in ("default-src 'self'", "object-src 'none'", "base-uri 'none'",
                 "frame-ancestors 'none'"):
        assert part in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Server"] == "home-gateway"
    assert ("Strict-Transport-Security" in headers) == tls


async def test_headers_on_200_302_400_404_405_and_500(web: Lab, monkeypatch) -> None:
    async with browser(web) as b:
        seen = {}
        async with b.http.get(b.base + "/login") as r:
            seen[r.status] = r.headers
        async with b.http.get(b.base + "/", allow_redirects=False) as r:
            seen[r.status] = r.headers
        async with b.http.get(b.base + "/static/app.css") as r:
            _assert_security_headers(r.headers)
        assert (await b.login(*ADMIN))[0] == 201
        async with b.http.post(b.base + "/api/v1/devices", data=b"{not json",
                               headers={"Origin": b.base, "X-CSRF-Token": b.csrf,
                                        "Content-Type": "application/json"}) as r:
            assert (await r.json())["error"].startswith("body: not valid JSON")
            seen[r.status] = r.headers
        async with b.http.get(b.base + "/no/such/page") as r:
            seen[r.status] = r.headers
        async with b.http.put(b.base + "/api/v1/status") as r:
            seen[r.status] = r.headers
            assert "GET" in r.headers["Allow"]

        def broken() -> list:
            raise RuntimeError("disk on fire")
        monkeypatch.setattr(web.daemon.devices, "devices", broken)
        async with b.http.get(b.base + "/api/v1/devices") as r:
            seen[r.status] = r.headers
            text = await r.text()
            assert "disk on fire" not in text and "Traceback" not in text
    assert sorted(seen) == [200, 302, 400, 404, 405, 500]
    for status, headers in seen.items():
        _assert_security_headers(headers)
        assert "aiohttp" not in headers["Server"] and "Python" not in headers["Server"], status


async def test_unparsable_request_reveals_no_version(web: Lab) -> None:
    host, port = base_url(web).removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /api/v1/session HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Length: abc\r\n\r\n")
    await writer.drain()
    answer = (await asyncio.wait_for(reader.read(65536), 5)).decode(errors="replace")
    writer.close()
    assert re.match(r"HTTP/1\.[01] 400 ", answer), answer
    assert re.search(r"(?im)^server: home-gateway\r?$", answer)
    assert not re.search(r"aiohttp|python/|\d+\.\d+\.\d+", answer, re.I), answer


async def test_malformed_and_oversize_bodies_get_a_named_error(web: Lab) -> None:
    async with browser(web) as b:
        await b.login(*ADMIN)
        cases = [
            ({"id": "x1", "kind": "plug"}, 400, "id: expected 3 to 40 characters"),
            ({"id": "ok-id", "kind": "toaster"}, 400, "kind: expected one of:"),
            ({"id": "ok-id"}, 400, "kind: missing"),
            ({"id": "ok-id", "kind": "plug", "color": "red"}, 400, "color: unknown field"),
            ([1, 2], 400, "body: expected a JSON object"),
            ({"id": 5, "kind": "plug"}, 400, "id: expected a string"),
        ]
        for body, status, message in cases:
            got, data, _ = await b.call("POST", "/api/v1/devices", body)
            assert got == status and data["error"].startswith(message), (body, data)
        got, data, _ = await b.call("POST", "/api/v1/devices/sec-plug-1/commands",
                                    {"action": "set_power", "params": {"on": "yes"}})
        assert got == 400 and "parameter 'on': expected true or false" in data["error"]
        big = {"id": "big-plug", "kind": "plug", "name": "x" * 100_000}
        got, data, _ = await b.call("POST", "/api/v1/devices", big)
        assert got == 413 and data["error"].startswith("body: larger than")
        async with b.http.post(b.base + "/api/v1/devices", data="id=x",
                               headers={"Origin": b.base, "X-CSRF-Token": b.csrf}) as r:
            assert r.status == 415
        got, data, _ = await b.call("GET", "/api/v1/audit?limit=abc")
        assert got == 400 and data["error"].startswith("limit:")
        assert web.daemon.store.device("big-plug") is None


async def test_session_cookie_and_lifetime(web: Lab) -> None:
    accounts = web.daemon.accounts
    async with browser(web) as b:
        await b.page("/login")
        status, _, response = await b.call("POST", "/api/v1/session",
                                           {"username": ADMIN[0], "password": ADMIN[1]})
        assert status == 201
        cookie = response.headers["Set-Cookie"]
        assert cookie.startswith("hg_session=")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        token = b.http.cookie_jar.filter_cookies(yarl.URL(b.base))["hg_session"].value
        assert len(token) >= 43  # 256 bits
        assert accounts.store.session(token) is None  # only a digest is stored
        # a new session at each login
        await b.login(*ADMIN)
        second = b.http.cookie_jar.filter_cookies(yarl.URL(b.base))["hg_session"].value
        assert second != token
        assert (await b.call("GET", "/api/v1/account"))[0] == 200
        # idle for 31 minutes: gone
        real = accounts.clock
        accounts.clock = lambda: real() + 31 * 60
        assert (await b.call("GET", "/api/v1/account"))[0] == 401
        accounts.clock = real
        # active every 20 minutes, but 12 h after login: gone too
        await b.login(*ADMIN)
        start = real()
        for minutes in range(20, 12 * 60 + 21, 20):
            accounts.clock = lambda m=minutes: start + m * 60
            status = (await b.call("GET", "/api/v1/account"))[0]
            assert status == (200 if minutes < 12 * 60 else 401), minutes
        accounts.clock = real
        # logout ends the session on the server: the old cookie no longer works
        await b.login(*ADMIN)
        token = b.http.cookie_jar.filter_cookies(yarl.URL(b.base))["hg_session"].value
        assert (await b.call("DELETE", "/api/v1/session"))[0] == 200
    async with aiohttp.ClientSession(cookies={"hg_session": token}) as http:
        async with http.get(base_url(web) + "/api/v1/account") as r:
            assert r.status == 401


async def test_wrong_passwords_are_throttled_and_audited(web: Lab) -> None:
    accounts = web.daemon.accounts
    async with browser(web) as b:
        await b.page("/login")
        for _ in range(5):
            status, data, _ = await b.call("POST", "/api/v1/session",
                                           {"username": ADMIN[0], "password": "wrong-guess-123"})
            assert status == 401 and data["error"] == "wrong user name or password"
        status, data, response = await b.call(
            "POST", "/api/v1/session", {"username": ADMIN[0], "password": ADMIN[1]})
        assert status == 429 and 1 <= int(response.headers["Retry-After"]) <= 30
        assert "too many failed attempts" in data["error"]
        # per client address too: other account names from the same address
        status, _, _ = await b.call("POST", "/api/v1/session",
                                    {"username": VIEWER[0], "password": VIEWER[1]})
        assert status == 429
    failures = web.daemon.store.audit_log(50, "login", result="failed")
    assert len(failures) == 5 and all(e.target == ADMIN[0] for e in failures)
    assert web.daemon.store.audit_log(50, "login", result="throttled")
    every = " ".join(f"{e.actor} {e.target} {e.detail}" for e in web.daemon.store.audit_log(500))
    assert "wrong-guess-123" not in every and ADMIN[1] not in every
    # no permanent lockout: after the window the right password works again
    real = accounts.clock
    accounts.clock = lambda: real() + 15 * 60 + 1
    async with browser(web) as b:
        assert (await b.login(*ADMIN))[0] == 201
    accounts.clock = real


async def test_a_stranger_cannot_lock_the_owner_out_of_a_browser_that_logged_in_before(
        web: Lab) -> None:
    """Wrong guesses for an account throttle it for every browser that has never logged in
    to it (brute force stays slow from anywhere), but not the owner's known browser: its
    signed cookie is throttled on its own, and cannot be forged or moved to another user."""
    async with browser(web) as owner:  # 127.0.0.1
        assert (await owner.login(*ADMIN))[0] == 201
        known = owner.http.cookie_jar.filter_cookies(yarl.URL(owner.base))["hg_device"].value
        await owner.call("DELETE", "/api/v1/session")
        async with browser(web, source="127.0.0.2") as stranger:
            await stranger.page("/login")
            statuses = [(await stranger.call("POST", "/api/v1/session", {
                "username": ADMIN[0], "password": f"guess-{i}-xyz"}))[0] for i in range(7)]
            assert statuses == [401] * 5 + [429] * 2, statuses
        # A browser that never logged in to the account, from a third host: throttled.
        async with browser(web, source="127.0.0.3") as newcomer:
            assert (await newcomer.login(*ADMIN))[0] == 429
            # A forged cookie, or one made for another user, changes nothing.
            for forged in (known[:-4] + "0000", "1.2.3", ""):
                newcomer.http.cookie_jar.update_cookies({"hg_device": forged})
                assert (await newcomer.login(*ADMIN))[0] == 429, forged
        async with browser(web, source="127.0.0.3") as viewer:
            assert (await viewer.login(*VIEWER))[0] == 201
            cookie = viewer.http.cookie_jar.filter_cookies(yarl.URL(viewer.base))["hg_device"]
            await viewer.call("DELETE", "/api/v1/session")
            viewer.http.cookie_jar.update_cookies({"hg_device": cookie.value})
            assert (await viewer.login(*ADMIN))[0] == 429  # the viewer's cookie is not admin's
        # The owner's browser, which logged in before, gets in.
        assert (await owner.login(*ADMIN))[0] == 201
        # Its cookie buys no extra guesses: wrong passwords from it are throttled too.
        await owner.call("DELETE", "/api/v1/session")
        await owner.page("/login")  # the login form's token
        statuses = [(await owner.call("POST", "/api/v1/session", {
            "username": ADMIN[0], "password": f"typo-{i}-xyz"}))[0] for i in range(6)]
        assert statuses == [401] * 5 + [429], statuses


async def test_viewer_and_read_tokens_cannot_change_anything(web: Lab) -> None:
    async with browser(web) as b:
        await b.login(*VIEWER)
        assert (await b.call("GET", "/api/v1/devices"))[0] == 200
        for method, path, body in [
            ("POST", "/api/v1/devices", {"id": "v-plug", "kind": "plug"}),
            ("DELETE", "/api/v1/devices/sec-plug-1", None),
            ("POST", "/api/v1/devices/sec-plug-1/commands",
             {"action": "set_power", "params": {"on": True}}),
            ("GET", "/api/v1/users", None),
            ("POST", "/api/v1/users", {"username": "x", "role": "admin", "password": "p"}),
            ("POST", "/api/v1/tokens", {"name": "t", "scope": "admin"}),
        ]:
            status, data, _ = await b.call(method, path, body)
            assert status == 403, (method, path, data)
        async with b.http.get(b.base + "/users") as r:
            assert r.status == 403
    async with browser(web) as b:
        await b.login(*ADMIN)
        status, made, _ = await b.call("POST", "/api/v1/tokens", {"name": "ro", "scope": "read"})
        assert status == 201
    auth = {"Authorization": f"Bearer {made['token']}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(base_url(web) + "/api/v1/status") as r:
            assert r.status == 200
        async with http.delete(base_url(web) + "/api/v1/devices/sec-plug-1") as r:
            assert r.status == 403 and "read-only" in (await r.json())["error"]
        async with http.post(base_url(web) + "/api/v1/tokens",
                             json={"name": "more", "scope": "read"}) as r:
            assert r.status == 403  # tokens never manage accounts
    assert web.daemon.store.device("sec-plug-1").status != "removed"
    assert not web.daemon.store.user("x")


async def test_tls_listener_sets_hsts_and_host_prefixed_secure_cookie(tmp_path: Path) -> None:
    async with web_lab(tmp_path / "state", extra='tls = "always"\n') as lab:
        add_user(lab, *ADMIN)
        url = lab.daemon.web.urls[0].rstrip("/")
        assert url.startswith("https://127.0.0.1:")
        cert = x509.load_pem_x509_certificate(lab.daemon.web.cert.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        host = socket.gethostname().split(".")[0]
        assert {host, f"{host}.local"} <= set(san.get_values_for_type(x509.DNSName))
        assert "127.0.0.1" in {str(a) for a in san.get_values_for_type(x509.IPAddress)}
        assert oct(lab.daemon.web.key.stat().st_mode & 0o777) == "0o600"
        # Issued by the page's own, name-constrained CA, not by the one devices pin.
        assert lab.daemon.web.ca.ca_cert != lab.daemon.pki.ca_cert
        issuer = x509.load_pem_x509_certificate(lab.daemon.web.ca.ca_cert.read_bytes())
        assert cert.issuer == issuer.subject
        assert issuer.extensions.get_extension_for_class(x509.NameConstraints).critical
        context = ssl.create_default_context(cafile=str(lab.daemon.web.ca.ca_cert))
        connector = aiohttp.TCPConnector(ssl=context)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as http:
            b = Browser(http, url)
            async with http.get(url + "/login") as r:
                _assert_security_headers(r.headers, tls=True)
                assert r.headers["Strict-Transport-Security"].startswith("max-age=")
                assert "__Host-hg_pre=" in r.headers["Set-Cookie"]
            await b.page("/login")
            status, _, response = await b.call("POST", "/api/v1/session",
                                               {"username": ADMIN[0], "password": ADMIN[1]})
            assert status == 201
            cookie = response.headers["Set-Cookie"]
            assert cookie.startswith("__Host-hg_session=") and "Secure" in cookie
            assert "Domain" not in cookie and "Path=/" in cookie
            async with http.get(url + "/no/such") as r:
                assert r.status == 404
                _assert_security_headers(r.headers, tls=True)
        # plain HTTP to the TLS port gets nowhere
        plain = url.replace("https://", "http://")
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.get(plain + "/login", timeout=aiohttp.ClientTimeout(5)) as r:
                    await r.read()


async def test_api_tokens_are_hashed_at_rest_and_revocable(web: Lab) -> None:
    async with browser(web) as b:
        await b.login(*ADMIN)
        status, made, _ = await b.call("POST", "/api/v1/tokens",
                                       {"name": "backup", "scope": "admin"})
        assert status == 201 and made["token"].startswith("hgw_")
        listed = (await b.call("GET", "/api/v1/tokens"))[1]["tokens"]
        assert [t["name"] for t in listed] == ["backup"] and "token" not in listed[0]
        raw = (web.config.gateway.state_dir / "gateway.db").read_bytes()
        assert made["token"].encode() not in raw
        auth = {"Authorization": f"Bearer {made['token']}"}
        async with aiohttp.ClientSession(headers=auth) as http:
            async with http.post(b.base + "/api/v1/devices",
                                 json={"id": "token-plug", "kind": "plug"}) as r:
                assert r.status == 201  # no Origin or CSRF token needed: not a cookie
        assert (await b.call("DELETE", f"/api/v1/tokens/{made['id']}"))[0] == 200
        async with aiohttp.ClientSession(headers=auth) as http:
            async with http.get(b.base + "/api/v1/status") as r:
                assert r.status == 401
    actions = [e.action for e in web.daemon.store.audit_log(50)]
    assert "token.create" in actions and "token.revoke" in actions


async def test_expired_idle_sessions_are_purged_from_the_store(web: Lab) -> None:
    async with browser(web) as b:
        await b.login(*ADMIN)
    accounts = web.daemon.accounts
    real = accounts.clock
    accounts.clock = lambda: real() + 31 * 60
    assert accounts.expire_sessions() >= 1
    accounts.clock = real
    assert web.daemon.store.db.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0



async def test_invisible_characters_in_a_strangers_text_are_shown_escaped(web: Lab) -> None:
    """A device on the segment names itself with U+202E (right-to-left override) and U+200B
    (zero-width space): every page shows them as \\u202e and \\u200b, never as they are."""
    now = time.time()
    web.daemon.store.upsert_discovered(Discovered(
        key="mdns:plug\u202egnp.exe._http._tcp.local.", source="mdns",
        name="plug\u202egnp.exe._http._tcp.local.", type="_http._tcp.local.",
        addresses=("192.0.2.9",), port=80, txt={"model": "X\u200bY"}, mac=None,
        hostname="pl\u200bug", first_seen=now - 5, last_seen=now, present=True), 500)
    web.daemon.store.audit("system", "device.address", "learned", target="sec-plug-1",
                           detail="client id plug\u202egnp.exe")
    async with browser(web) as b:
        await b.login(*ADMIN)
        for path in ("/devices", "/audit"):
            status, html = await b.page(path)
            assert status == 200, path
            assert "\u202e" not in html and "\u200b" not in html, path
            assert "plug\\u202egnp.exe" in html, path
