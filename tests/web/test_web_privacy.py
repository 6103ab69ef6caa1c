"""The privacy export over the admin API and pages, against a real gateway: the default
(everything off, nothing queued, an empty preview), consent given and withdrawn (audited,
withdrawing deletes the category's queued reports), refusals (unknown category, malformed
bodies, viewers, read-only tokens, CSRF), the preview being exactly the bytes the next
export sends, deleting the queue, the Privacy page and the dashboard tile."""

from __future__ import annotations

import html
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.privacy.reports import CATEGORIES, WeekData
from gateway.sim.lab import Lab
from gateway.web.accounts import Principal
from gateway.web.api import privacy_tile
from tests.web.kit import ADMIN, VIEWER, Browser, browser, web_lab

pytestmark = pytest.mark.integration


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    async with web_lab(tmp_path / "state", users=True) as lab:
        yield lab


async def preview(b: Browser) -> tuple[int, bytes, dict[str, str]]:
    async with b.http.get(b.base + "/api/v1/privacy/preview") as r:
        return r.status, await r.read(), dict(r.headers)


def queue_a_week(lab: Lab) -> list[dict[str, Any]]:
    """Release the reports of a week long gone for the consented categories, as the
    service does when a week ends: charged to the ledger, then queued."""
    lab.daemon.privacy.data = WeekData("2020-W01")
    return lab.daemon.privacy.close_week()


def pre_text(page: str) -> str | None:
    """The text of the page's <pre> of the next export's bytes, as a browser reads it."""
    found = re.search(r'<pre class="preview" id="preview-bytes">\n(.*?)</pre>', page, re.S)
    return html.unescape(found.group(1)) if found else None


async def test_everything_is_off_by_default(lab: Lab) -> None:
    async with browser(lab) as b:
        status, _, _ = await b.call("GET", "/api/v1/privacy")
        assert status == 401  # not logged in
        await b.login(*VIEWER)  # reading needs any login
        status, data, _ = await b.call("GET", "/api/v1/privacy")
        assert status == 200, data
        assert data["state"] == "off" and data["last_error"] is None
        assert [c["name"] for c in data["categories"]] == list(CATEGORIES)
        for c in data["categories"]:
            assert c["granted"] is False
            assert c["changed_at"] is None and c["changed_by"] is None
            assert re.fullmatch(r"\d+(/\d+)?", c["epsilon"]), c
            assert "Turning this off deletes" in c["text"]
        assert data["collecting"] is None
        assert data["ledger"]["ok"] is True and data["ledger"]["error"] is None
        budget = data["ledger"]["budget"]
        assert (budget["week_spent"], budget["year_spent"]) == ("0", "0")
        assert budget["week_left"] == budget["week_cap"]
        assert budget["year_left"] == budget["year_cap"]
        assert data["queue"] == {"reports": 0, "bytes": 0, "send_after": None,
                                 "retry_at": None}
        assert data["history"] == []
        assert data["sink"].startswith("file ")

        status, body, headers = await preview(b)
        assert (status, body) == (200, b"")
        assert headers["Content-Type"] == "application/x-ndjson"
        assert (headers["X-Reports"], headers["X-Send-After"]) == ("0", "")
        assert headers["Cache-Control"] == "no-store"

        _, status_data, _ = await b.call("GET", "/api/v1/status")
        assert status_data["privacy"]["state"] == "off"
        assert status_data["tiles"]["privacy"] == {
            "state": "off", "label": "Off", "detail": "no category consented",
            "categories": [], "queued": 0}

        code, page = await b.page("/privacy")
        assert code == 200
        assert page.count('class="consent"') == 4
        assert page.count('role="switch"') == 4 and " checked" not in page
        assert "Nothing is queued." in page and pre_text(page) is None
        assert "Nothing has been exported yet." in page
        assert 'id="privacy-error" role="alert" data-fragment hidden' in page
        assert 'href="/privacy" aria-current="page">Privacy</a>' in page
        # A viewer sees the switches, but cannot use them, and no delete button.
        assert page.count(" disabled>") == 4
        assert "Delete queued export data" not in page
        _, dashboard = await b.page("/")
        assert 'data-field="privacy-state">Off</p>' in dashboard
        assert 'href="/privacy">privacy</a>' in dashboard


async def test_consent_given_and_withdrawn_is_audited(lab: Lab) -> None:
    store = lab.daemon.store
    async with browser(lab) as b:
        await b.login(*ADMIN)
        status, data, _ = await b.call("PUT", "/api/v1/privacy/consent/usage",
                                       {"granted": True})
        assert (status, data) == (200, {"category": "usage", "granted": True, "purged": 0})
        [entry] = store.audit_log(1, "privacy.consent")
        assert (entry.actor, entry.result, entry.target) == ("web:alice", "granted", "usage")

        _, data, _ = await b.call("GET", "/api/v1/privacy")
        assert data["state"] == "on"
        usage = next(c for c in data["categories"] if c["name"] == "usage")
        assert usage["granted"] is True and usage["changed_by"] == "web:alice"
        assert usage["changed_at"] == pytest.approx(entry.ts, abs=5)
        assert [c["name"] for c in data["categories"] if c["granted"]] == ["usage"]
        assert data["collecting"] is not None  # the week is being collected now
        _, s, _ = await b.call("GET", "/api/v1/status")
        assert s["tiles"]["privacy"]["label"] == "On"
        assert s["tiles"]["privacy"]["detail"] == "usage on · 0 reports queued"

        status, data, _ = await b.call("PUT", "/api/v1/privacy/consent/energy",
                                       {"granted": True})
        assert status == 200
        _, s, _ = await b.call("GET", "/api/v1/status")
        assert s["tiles"]["privacy"]["detail"] == "usage, energy on · 0 reports queued"
        _, page = await b.page("/privacy")
        assert page.count(" checked") == 2
        assert page.count(" disabled>") == 0  # an admin's switches work
        assert "Delete queued export data" in page

        for category in ("usage", "energy"):
            status, data, _ = await b.call("PUT", f"/api/v1/privacy/consent/{category}",
                                           {"granted": False})
            assert (status, data) == (200, {"category": category, "granted": False,
                                            "purged": 0})
        entries = store.audit_log(10, "privacy.consent")
        assert [(e.actor, e.result, e.target) for e in entries] == [
            ("web:alice", "withdrawn", "energy"), ("web:alice", "withdrawn", "usage"),
            ("web:alice", "granted", "energy"), ("web:alice", "granted", "usage")]
        _, data, _ = await b.call("GET", "/api/v1/privacy")
        assert data["state"] == "off" and data["collecting"] is None
        assert not any(c["granted"] for c in data["categories"])


async def test_refusals(lab: Lab) -> None:
    store = lab.daemon.store
    async with browser(lab) as b:
        await b.login(*ADMIN)
        status, data, _ = await b.call("PUT", "/api/v1/privacy/consent/location",
                                       {"granted": True})
        assert status == 404
        assert data["error"] == ("no privacy category 'location' (expected one of: "
                                 "inventory, usage, energy, comfort)")
        for body, error in [({}, "granted: missing"),
                            ({"granted": "yes"}, "granted: expected true or false"),
                            ({"granted": 1}, "granted: expected true or false"),
                            ({"granted": None}, "granted: expected true or false"),
                            ({"granted": True, "why": "x"},
                             "why: unknown field (expected: granted)"),
                            ([True], "body: expected a JSON object")]:
            status, data, _ = await b.call("PUT", "/api/v1/privacy/consent/usage", body)
            assert (status, data["error"]) == (400, error), body
        headers = {"Origin": b.base, "X-CSRF-Token": b.csrf}
        async with b.http.put(b.base + "/api/v1/privacy/consent/usage", data="{granted",
                              headers={**headers, "Content-Type": "application/json"}) as r:
            assert r.status == 400
            assert (await r.json())["error"].startswith("body: not valid JSON")
        async with b.http.put(b.base + "/api/v1/privacy/consent/usage", data="granted=1",
                              headers={**headers, "Content-Type": "text/plain"}) as r:
            assert r.status == 415
        # A browser request without the page's CSRF token or from another site.
        status, data, _ = await b.call("PUT", "/api/v1/privacy/consent/usage",
                                       {"granted": True}, **{"X-CSRF-Token": "stale"})
        assert status == 403 and data["error"].startswith("X-CSRF-Token")
        status, data, _ = await b.call("DELETE", "/api/v1/privacy/queue",
                                       Origin="http://evil.example")
        assert status == 403 and data["error"].startswith("Origin")
    async with browser(lab) as b:
        await b.login(*VIEWER)
        for method, path, body in [("PUT", "/api/v1/privacy/consent/usage", {"granted": True}),
                                   ("DELETE", "/api/v1/privacy/queue", None)]:
            status, data, _ = await b.call(method, path, body)
            assert (status, data["error"]) == (403, "viewers can look but not change")
    # A read-only API token reads, but changes nothing.
    _, token = lab.daemon.accounts.create_token(Principal(ADMIN[0], "admin"), "ro", "read")
    async with browser(lab) as b:
        auth = {"Authorization": f"Bearer {token}"}
        status, data, _ = await b.call("GET", "/api/v1/privacy", **auth)
        assert status == 200 and data["state"] == "off"
        status, data, _ = await b.call("PUT", "/api/v1/privacy/consent/usage",
                                       {"granted": True}, **auth)
        assert (status, data["error"]) == (403, "this API token is read-only")
    assert store.audit_log(5, "privacy.consent") == []
    assert store.audit_log(5, "privacy.queue") == []
    assert store.consents() == {}


async def test_the_preview_is_exactly_what_the_next_export_sends(lab: Lab) -> None:
    privacy, store = lab.daemon.privacy, lab.daemon.store
    async with browser(lab) as b:
        await b.login(*ADMIN)
        for category in ("inventory", "usage", "energy"):
            status, _, _ = await b.call("PUT", f"/api/v1/privacy/consent/{category}",
                                        {"granted": True})
            assert status == 200
        queued = queue_a_week(lab)
        assert [r["category"] for r in queued] == ["inventory", "usage", "energy"]
        ids, body, send_after = privacy.next_export()
        assert len(ids) == 3 and body and send_after is not None

        status, got, headers = await preview(b)
        assert status == 200 and got == body  # byte for byte
        assert [json.loads(line)["category"] for line in got.decode().splitlines()] == [
            "inventory", "usage", "energy"]
        assert headers["X-Reports"] == "3"
        assert float(headers["X-Send-After"]) == send_after
        _, data, _ = await b.call("GET", "/api/v1/privacy")
        assert data["queue"]["reports"] == 3 and data["queue"]["bytes"] == len(body)
        assert data["queue"]["send_after"] == send_after
        assert data["ledger"]["ok"] and data["ledger"]["budget"]["year_spent"] != "0"
        _, s, _ = await b.call("GET", "/api/v1/status")
        assert s["tiles"]["privacy"]["detail"] == ("inventory, usage, energy on · "
                                                   "3 reports queued")
        _, page = await b.page("/privacy")
        assert pre_text(page) == body.decode()
        assert "Nothing is queued." not in page

        # Withdrawing one category deletes its queued report at once; the rest stays.
        status, data, _ = await b.call("PUT", "/api/v1/privacy/consent/usage",
                                       {"granted": False})
        assert (status, data) == (200, {"category": "usage", "granted": False, "purged": 1})
        [entry] = store.audit_log(1, "privacy.consent")
        assert (entry.result, entry.target, entry.detail) == (
            "withdrawn", "usage", "purged 1 queued report(s)")
        status, got, headers = await preview(b)
        lines = got.decode().splitlines(keepends=True)
        assert [json.loads(line)["category"] for line in lines] == ["inventory", "energy"]
        assert got == privacy.next_export()[1] and headers["X-Reports"] == "2"
        assert body.decode().splitlines(keepends=True)[::2] == lines  # the same bytes
        _, page = await b.page("/privacy")
        assert pre_text(page) == got.decode()

        # "Delete queued export data": everything queued goes, audited.
        status, data, _ = await b.call("DELETE", "/api/v1/privacy/queue")
        assert (status, data) == (200, {"purged": 2})
        [entry] = store.audit_log(1, "privacy.queue")
        assert (entry.actor, entry.result) == ("web:alice", "deleted")
        assert entry.detail.startswith("2 queued report(s)")
        status, got, headers = await preview(b)
        assert (status, got, headers["X-Reports"], headers["X-Send-After"]) == (
            200, b"", "0", "")
        _, page = await b.page("/privacy")
        assert "Nothing is queued." in page and pre_text(page) is None
        status, data, _ = await b.call("DELETE", "/api/v1/privacy/queue")
        assert (status, data) == (200, {"purged": 0})


async def test_the_history_and_a_broken_ledger_on_the_page(lab: Lab) -> None:
    store, privacy = lab.daemon.store, lab.daemon.privacy
    store.log_export(1_700_000_000.0, "file /var/lib/x", 2, 512, "energy,usage", "ok")
    store.log_export(1_700_000_100.0, "https https://example.invalid/r", 1, 99, "usage",
                     "failed: <script>alert(1)</script>")
    async with browser(lab) as b:
        await b.login(*ADMIN)
        _, data, _ = await b.call("GET", "/api/v1/privacy")
        assert [(h["reports"], h["bytes"], h["result"]) for h in data["history"]] == [
            (1, 99, "failed: <script>alert(1)</script>"), (2, 512, "ok")]
        _, page = await b.page("/privacy")
        assert "<script>alert" not in page  # escaped
        assert "failed: &lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "energy,usage" in page and "Nothing has been exported yet." not in page

        # A damaged ledger stops the export; the page and the dashboard say so first.
        ledger = privacy.dir / "ledger.jsonl"
        ledger.parent.mkdir(parents=True, exist_ok=True)
        ledger.write_text("not a ledger line\n")
        _, data, _ = await b.call("GET", "/api/v1/privacy")
        assert data["state"] == "error" and data["ledger"]["ok"] is False
        error = data["ledger"]["error"]
        assert str(ledger) in error and data["ledger"]["budget"] is None
        _, page = await b.page("/privacy")
        assert 'id="privacy-error" role="alert" data-fragment>' in page  # not hidden
        assert html.escape(error, quote=False) in page
        assert 'id="ledger-error"' in page
        _, s, _ = await b.call("GET", "/api/v1/status")
        assert s["tiles"]["privacy"]["state"] == "error"
        assert s["tiles"]["privacy"]["detail"] == f"export stopped: {error}"


def test_the_dashboard_tile() -> None:
    def status(granted: tuple[str, ...], queued: int, state: str,
               ledger_error: str | None = None, last_error: str | None = None
               ) -> dict[str, Any]:
        return {"state": state, "last_error": last_error,
                "categories": [{"name": c, "granted": c in granted} for c in CATEGORIES],
                "ledger": {"ok": ledger_error is None, "error": ledger_error},
                "queue": {"reports": queued}}

    assert privacy_tile(status((), 0, "off"))["detail"] == "no category consented"
    tile = privacy_tile(status(("usage", "energy"), 2, "on"))
    assert (tile["label"], tile["detail"]) == ("On", "usage, energy on · 2 reports queued")
    assert privacy_tile(status(("comfort",), 1, "on"))["detail"] == (
        "comfort on · 1 report queued")
    tile = privacy_tile(status(("usage",), 0, "error", last_error="the ledger is full"))
    assert (tile["state"], tile["label"], tile["detail"]) == (
        "error", "Error", "export stopped: the ledger is full")
    tile = privacy_tile(status((), 0, "error", ledger_error="corrupt at line 3",
                               last_error="older"))
    assert tile["detail"] == "export stopped: corrupt at line 3"


async def test_the_openapi_document_describes_the_privacy_operations(lab: Lab) -> None:
    async with browser(lab) as b:
        await b.login(*VIEWER)
        _, doc, _ = await b.call("GET", "/api/v1/openapi.json")
    paths = doc["paths"]
    assert set(paths["/api/v1/privacy"]) == {"get"}
    get = paths["/api/v1/privacy/preview"]["get"]["responses"]["200"]
    assert set(get["content"]) == {"application/x-ndjson"}
    assert set(get["headers"]) == {"X-Reports", "X-Send-After"}
    put = paths["/api/v1/privacy/consent/{category}"]["put"]
    assert put["parameters"][0]["schema"]["enum"] == list(CATEGORIES)
    assert {"400", "403", "404"} <= set(put["responses"])
    assert set(paths["/api/v1/privacy/queue"]) == {"delete"}
    assert doc["components"]["schemas"]["Status"]["properties"]["privacy"] == {
        "$ref": "#/components/schemas/Privacy"}
