"""The privacy export end to end: the real daemon and broker, simulated devices whose every
raw field carries a canary, consents, week closes, the ε ledger and both sinks.

A week is closed by moving the privacy service's clock past the week's end: readings are
collected in the real current week, then the service sees the next week begin.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import itertools
import json
import re
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.credentials.pki import Pki, issue_server_cert
from gateway.mqtt import Endpoint, MqttSession
from gateway.privacy.reports import CATEGORIES, WeekData, validate, week_of
from gateway.privacy.service import PrivacyService
from gateway.sim.lab import Lab, free_port, start_lab
from gateway.store import Discovered
from tests.polling import eventually

pytestmark = pytest.mark.integration

# -- canaries: every raw field a household's data has -----------------------------------------

CANARIES = {
    "mac": "de:ad:be:ef:4c:61",
    "ipv4": "192.0.2.173",
    "ipv6": "2001:db8:1::4c61",
    "serial": "SN-QX7Z93KD2",
    "host name": "raspi-attic-3f9a",
    "user name": "marguerite-holloway",
    "ssid": "HollowayFamilyWiFi",
    "latitude": "48.137154",
    "longitude": "11.575382",
    "postcode": "80331",
    "device name": "Marguerite's bedside lamp",
    "device name 2": "Attic heater by the skylight",
    "device id": "dev-7c3f9a2e51",
}
DEVICES = [  # (id, kind, name, mac, ip)
    (CANARIES["device id"], "plug", CANARIES["device name"], CANARIES["mac"],
     f"{CANARIES['ipv4']} {CANARIES['ipv6']}"),
    ("attic-thermostat", "thermostat", CANARIES["device name 2"], None, None),
    ("hall-bulb", "bulb", "Hall", None, None),
]


def canary_forms(value: str) -> dict[str, str]:
    """Every form a canary might leak in: raw, case-folded, without separators, hex, base64
    (standard and URL-safe), URL-encoded, and its unkeyed MD5, SHA-1 and SHA-256."""
    raw = value.encode()
    bare = re.sub(r"[^0-9a-z]", "", value.casefold())
    forms = {"raw": value, "casefold": value.casefold(), "no separators": bare,
             "hex": raw.hex(), "hex of bare": bare.encode().hex(),
             "base64": base64.b64encode(raw).decode().rstrip("="),
             "base64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
             "url-encoded": urllib.parse.quote(value, safe=""),
             "url-encoded plus": urllib.parse.quote_plus(value)}
    for name in ("md5", "sha1", "sha256"):
        for label, text in (("", value), (" of casefold", value.casefold()), (" of bare", bare)):
            forms[name + label] = hashlib.new(name, text.encode()).hexdigest()
    return forms


def leaks(exported: bytes) -> list[str]:
    """Every (canary, form) found in the exported bytes, searched case-insensitively."""
    text = exported.decode("utf-8", "replace").casefold()
    return [f"{name} as {form}" for name, value in CANARIES.items()
            for form, shown in canary_forms(value).items() if shown.casefold() in text]


def test_the_canary_search_finds_what_it_looks_for() -> None:
    """The search itself is not blind: each planted form is found."""
    for name, value in CANARIES.items():
        for form, shown in canary_forms(value).items():
            assert f"{name} as {form}" in leaks(f'{{"x":"{shown.upper()}"}}'.encode())


def canary_readings(kind: str) -> list[dict[str, Any]]:
    """Telemetry whose extra fields carry every canary, besides the kind's real metrics."""
    extra = {"ssid": CANARIES["ssid"], "hostname": CANARIES["host name"],
             "serial": CANARIES["serial"], "user": CANARIES["user name"],
             "lat": float(CANARIES["latitude"]), "lon": float(CANARIES["longitude"]),
             "postcode": CANARIES["postcode"], "mac": CANARIES["mac"],
             "ip": CANARIES["ipv4"], "ipv6": CANARIES["ipv6"], "name": CANARIES["device name"]}
    if kind == "plug":
        return [{**extra, "on": on, "power_w": 60 * on} for on in (False, True, False, True)]
    if kind == "thermostat":
        return [{**extra, "target": t, "temperature": 19.5} for t in (19, 21.5, 22)]
    return [{**extra, "on": on, "brightness": b} for on, b in ((False, 10), (True, 80))]


# -- the lab ---------------------------------------------------------------------------------

def privacy_config(**keys: Any) -> str:
    keys = {"region": "DE-BY", "window_s": 0, **keys}
    lines = ["[privacy]", *(f"{k} = {json.dumps(v)}" for k, v in keys.items())]
    return "\n".join(lines) + "\n[privacy.epsilon]\n" + "".join(
        f'{c} = "1/64"\n' for c in CATEGORIES)


@contextlib.asynccontextmanager
async def canary_lab(tmp: Path, extra: str) -> AsyncIterator[tuple[Lab, list[MqttSession]]]:
    """The gateway with canary-laden devices, each with its own MQTT session; all stopped
    afterwards, whatever happens."""
    lab = await start_lab(tmp / "gw", extra_config=extra)
    sessions: list[MqttSession] = []
    try:
        await _plant_canaries(lab, sessions)
        yield lab, sessions
    finally:
        for session in sessions:
            await session.stop()
        await lab.stop()


async def _plant_canaries(lab: Lab, sessions: list[MqttSession]) -> None:
    for device_id, kind, name, mac, ip in DEVICES:
        await lab.daemon.devices.add(device_id, kind, name=name, mac=mac, ip=ip,
                                     source="sim", actor=CANARIES["user name"])
        # What enrollment would record from the device's hello: model, firmware with serial.
        with lab.daemon.store.transaction() as db:
            db.execute("UPDATE devices SET model = ?, firmware = ? WHERE id = ?",
                       (f"Shelly Plug S {CANARIES['serial']}", f"2.1-{CANARIES['serial']}",
                        device_id))
        lab.daemon.devices.reload()
        username, secret = await lab.daemon.devices.issue_credential(device_id)
        session = MqttSession(Endpoint("127.0.0.1", lab.daemon.endpoint.port, username, secret),
                              client_id=device_id, on_message=lambda message: None)
        session.start()
        await session.wait_connected(10)
        sessions.append(session)
    from gateway.web import auth

    lab.daemon.store.add_user(CANARIES["user name"], "admin", auth.hash_password("x" * 20))
    # What discovery records from the network: a DHCP lease and an mDNS service.
    now = time.time()
    for source, name, kind, port, txt in (
            ("dhcp", CANARIES["host name"], "dhcp", None, {}),
            ("mdns", f"{CANARIES['device name']}._hap._tcp.local.", "_hap._tcp.local.", 80,
             {"id": CANARIES["serial"], "ssid": CANARIES["ssid"]})):
        lab.daemon.store.upsert_discovered(Discovered(
            key=f"{source}:{name}", source=source, name=name, type=kind,
            addresses=(CANARIES["ipv4"], CANARIES["ipv6"]), port=port, txt=txt,
            mac=CANARIES["mac"], hostname=CANARIES["host name"], first_seen=now,
            last_seen=now, present=True), 500)


@pytest.fixture
async def lab_with_canaries(tmp_path: Path) -> AsyncIterator[tuple[Lab, list[MqttSession]]]:
    async with canary_lab(tmp_path, privacy_config(link_reports=True)) as lab_and_sessions:
        yield lab_and_sessions


async def send_canary_week(lab: Lab, sessions: list[MqttSession]) -> None:
    """Every device sends its canary-laden readings and state; wait until all are in."""
    accepted = lab.daemon.devices.counters.accepted
    expected = 0
    for session, (device_id, kind, *_rest) in zip(sessions, DEVICES, strict=True):
        for reading in canary_readings(kind):
            await session.publish(f"devices/{device_id}/telemetry",
                                  json.dumps({"ts": time.time(), **reading}), qos=1)
            expected += 1
        await session.publish(f"devices/{device_id}/state", json.dumps(reading), qos=1,
                              retain=True)
        expected += 1
    await eventually(lambda: lab.daemon.devices.counters.accepted >= accepted + expected, 10,
                     "the canary readings to be accepted")


class FakeClock:
    """The privacy service's clock: real time until moved on; never goes back."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def next_week(self) -> None:
        self.offset += 7 * 86400

    def midweek(self) -> None:
        """On to Wednesday noon (UTC) of the next week: a week on from there and a day
        more stay in one week in any zone (seven days on from a Sunday and one more do not)."""
        now = datetime.fromtimestamp(self(), UTC)
        monday = datetime.combine(now.date() - timedelta(days=now.weekday()), dt_time(), UTC)
        self.offset += (monday + timedelta(days=9, hours=12)).timestamp() - self()


def take_over_the_clock(lab: Lab, consents: tuple[str, ...] = ()
                        ) -> tuple[PrivacyService, FakeClock]:
    """The privacy service on a clock the test moves, with these categories consented."""
    privacy, clock = lab.daemon.privacy, FakeClock()
    privacy.clock = clock
    for category in consents:
        privacy.set_consent(category, True, "alice")
    return privacy, clock


async def close_and_export(lab: Lab, clock: FakeClock) -> tuple[list[dict[str, Any]], str | None]:
    """End the collected week, release its reports and run the export at once."""
    privacy = lab.daemon.privacy
    clock.next_week()
    queued = privacy.close_week()
    return queued, await privacy.export_due()


def outbox_bytes(lab: Lab) -> bytes:
    outbox = lab.daemon.privacy.outbox
    if not outbox.exists():
        return b""
    return b"".join(p.read_bytes() for p in sorted(outbox.iterdir()))


# -- acceptance: canaries under every combination of consents --------------------------------

async def test_no_canary_leaves_under_any_combination_of_consents(
        lab_with_canaries: tuple[Lab, list[MqttSession]]) -> None:
    lab, sessions = lab_with_canaries
    privacy, clock = take_over_the_clock(lab)
    exported_before = b""
    for combo in itertools.chain.from_iterable(
            itertools.combinations(CATEGORIES, n) for n in range(len(CATEGORIES) + 1)):
        for category in CATEGORIES:
            privacy.set_consent(category, category in combo, CANARIES["user name"])
        if privacy.data is not None:
            privacy.data = WeekData(week_of(clock(), privacy.zone))
        await send_canary_week(lab, sessions)
        queued, result = await close_and_export(lab, clock)
        exported = outbox_bytes(lab)
        new = exported[len(exported_before):]
        exported_before = exported
        assert sorted(r["category"] for r in queued) == sorted(combo), privacy.last_error
        assert result == ("ok" if combo else None)
        lines = new.decode().splitlines()
        assert len(lines) == len(combo)
        for line in lines:
            report = json.loads(line)
            validate(report)
            assert report["region"] == "DE-BY" and len(report["pseudonym"]) == 32
        assert leaks(new) == [], f"consents {combo}"
    assert leaks(exported_before) == []
    # 15 non-empty combinations sent 32 reports; every one was charged to the ledger first.
    entries = privacy.ledger.entries()
    assert len(entries) == 32 == len(exported_before.splitlines())
    history = lab.daemon.store.exports(100)
    assert len(history) == 15 and all(h[5] == "ok" for h in history)


async def test_a_default_install_exports_nothing(tmp_path: Path) -> None:
    """No consent given: readings flow, weeks end, and not one byte is written or kept."""
    async with canary_lab(tmp_path, "") as (lab, sessions):
        privacy, clock = take_over_the_clock(lab)
        for _week in range(3):
            await send_canary_week(lab, sessions)
            queued, result = await close_and_export(lab, clock)
            assert queued == [] and result is None
        assert privacy.consented() == [] and privacy.data is None
        assert lab.daemon.store.setting("privacy.week") is None  # nothing collected either
        assert not (lab.config.gateway.state_dir / "privacy").exists()
        assert lab.daemon.store.queued_reports() == [] and lab.daemon.store.exports() == []
        status = privacy.status()
        assert status["state"] == "off" and status["queue"]["bytes"] == 0
        assert not any(c["granted"] for c in status["categories"])


# -- the HTTPS sink ----------------------------------------------------------------------------

class Collector:
    """The vendor's HTTPS endpoint: a real TLS server on loopback with its own CA."""

    def __init__(self, directory: Path) -> None:
        self.pki = Pki(directory / "pki")
        issue_server_cert(self.pki, directory / "server.crt", directory / "server.key",
                          ["localhost"], ["127.0.0.1"])
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(directory / "server.crt", directory / "server.key")
        self.port = free_port()
        self.bodies: list[bytes] = []
        self.failures = 0  # answer 503 this many times first
        self.attempts: list[float] = []
        self.runner: web.AppRunner | None = None

    async def receive(self, request: web.Request) -> web.Response:
        self.attempts.append(time.monotonic())
        body = await request.read()
        if self.failures > 0:
            self.failures -= 1
            return web.Response(status=503, text="busy")
        assert request.headers["Content-Type"] == "application/x-ndjson"
        self.bodies.append(body)
        return web.Response(status=204)

    async def __aenter__(self) -> Collector:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/reports", self.receive)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=self.context).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/reports"


async def test_the_https_sink_verifies_the_server_retries_and_delivers(tmp_path: Path) -> None:
    collector = Collector(tmp_path / "vendor")
    impostor = Collector(tmp_path / "impostor")  # a certificate from a CA we did not pin
    extra = privacy_config(sink="https", url=collector.url, ca_file=str(collector.pki.ca_cert),
                           retry_initial_s=1, retry_max_s=2)
    async with collector, impostor, canary_lab(tmp_path, extra) as (lab, sessions):
        privacy, clock = take_over_the_clock(lab, CATEGORIES)
        await send_canary_week(lab, sessions)
        collector.failures = 2
        queued, result = await close_and_export(lab, clock)
        assert len(queued) == 4 and result is not None and "HTTP 503" in result
        ids, preview, _ = privacy.next_export()
        assert len(ids) == 4  # kept for the next attempt
        assert privacy.retry_at > 0  # the next attempt waits (full jitter up to 1 s, then 2 s)
        for _ in range(20):
            clock.offset += 3
            if await privacy.export_due() == "ok":
                break
        assert collector.bodies == [preview], "the bytes sent are the bytes previewed"
        assert leaks(collector.bodies[0]) == []
        assert [h[5] for h in lab.daemon.store.exports()][:3] == [
            "ok", f"failed: {collector.url} answered HTTP 503",
            f"failed: {collector.url} answered HTTP 503"]
        assert privacy.next_export()[0] == []
        # A server whose certificate the pinned CA did not sign gets nothing.
        privacy.config = dataclasses.replace(privacy.config, url=impostor.url)
        privacy.data = WeekData(week_of(clock(), privacy.zone))
        await send_canary_week(lab, sessions)
        privacy.retry_at = 0.0
        queued, result = await close_and_export(lab, clock)
        assert result is not None and "certificate verify failed" in result.lower()
        assert impostor.bodies == [] and impostor.attempts == []


# -- the ledger stops the export --------------------------------------------------------------

async def test_the_ledger_stops_the_export_with_a_clear_message(tmp_path: Path) -> None:
    async with canary_lab(tmp_path, privacy_config(week_cap="1/32")) as (lab, sessions):
        privacy, clock = take_over_the_clock(lab, CATEGORIES)
        await send_canary_week(lab, sessions)

        # Past the cap: 1/64 each, 1/32 a week, so two of the four go and two are refused.
        queued, result = await close_and_export(lab, clock)
        assert [r["category"] for r in queued] == ["inventory", "usage"] and result == "ok"
        assert privacy.last_error and "weekly cap is 1/32" in privacy.last_error
        assert "'comfort'" in privacy.last_error  # the last one refused
        audit = lab.daemon.store.audit_log(action="privacy.release")
        assert [e.result for e in audit[:4]] == ["refused", "refused", "ok", "ok"]
        sent = outbox_bytes(lab)
        assert len(sent.splitlines()) == 2

        # A corrupt ledger: one released ε edited by hand. Nothing more is released or sent.
        ledger = privacy.ledger.path
        ledger.write_bytes(ledger.read_bytes().replace(b'"1/64"', b'"1/99"', 1))
        queued, result = await close_and_export(lab, clock)
        assert queued == [] and result is None and outbox_bytes(lab) == sent
        assert privacy.last_error and "corrupt" in privacy.last_error
        assert str(ledger) in privacy.last_error
        status = privacy.status()
        assert status["state"] == "error" and not status["ledger"]["ok"]
        audit = lab.daemon.store.audit_log(action="privacy.release")
        assert audit[0].result == "refused" and "corrupt" in audit[0].detail
        cli = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "gateway", "privacy", "status", "--config",
                             str(lab.config.source)], capture_output=True, text=True, timeout=30)
        assert cli.returncode == 1 and "corrupt" in cli.stdout

        # Unwritable: where the ledger should be there is a directory.
        ledger.unlink()
        ledger.mkdir()
        lab.daemon.store.set_setting("privacy.ledger_head", None)
        queued, result = await close_and_export(lab, clock)
        assert queued == [] and result is None and outbox_bytes(lab) == sent
        assert privacy.last_error and str(ledger) in privacy.last_error
        assert "cannot" in privacy.last_error

        # The clock went backwards: the ledger holds a release after the next week close.
        ledger.rmdir()
        privacy.ledger.charge(clock() + 8 * 86400, week_of(clock(), privacy.zone), "usage",
                              privacy.config.epsilon["usage"])
        lab.daemon.store.set_setting("privacy.ledger_head", None)
        queued, result = await close_and_export(lab, clock)
        assert queued == [] and result is None and outbox_bytes(lab) == sent
        assert privacy.last_error and "clock went backwards" in privacy.last_error


async def test_withdrawing_consent_purges_queued_reports_before_the_export(
        tmp_path: Path) -> None:
    async with canary_lab(tmp_path, privacy_config(window_s=86400)) as (lab, sessions):
        privacy, clock = take_over_the_clock(lab)
        clock.midweek()  # the export a day after the release must not close another week
        assert privacy.close_week() == []  # nothing consented yet, nothing released
        for category in ("usage", "inventory"):
            privacy.set_consent(category, True, "alice")
        await send_canary_week(lab, sessions)
        clock.next_week()
        assert len(privacy.close_week()) == 2
        ids, body, send_after = privacy.next_export()
        assert len(ids) == 2 and send_after is not None and send_after <= clock() + 86400
        # The CLI shows exactly these bytes.
        cli = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "gateway", "privacy", "preview", "--config",
                             str(lab.config.source)], capture_output=True, timeout=30)
        assert cli.returncode == 0 and cli.stdout == body and b"2 report(s)" in cli.stderr
        privacy.set_consent("usage", False, "alice")
        ids, body, _ = privacy.next_export()
        assert len(ids) == 1 and json.loads(body)["category"] == "inventory"
        audit = lab.daemon.store.audit_log(action="privacy.consent")
        assert audit[0].result == "withdrawn" and audit[0].target == "usage"
        assert "purged 1" in audit[0].detail and audit[0].actor == "alice"
        clock.offset += 86400
        assert await privacy.export_due() == "ok"
        assert b'"usage"' not in outbox_bytes(lab)
        assert await asyncio.to_thread(lambda: privacy.next_export()[0]) == []


async def test_pseudonyms_change_with_the_epoch_and_the_old_key_is_deleted(
        tmp_path: Path) -> None:
    extra = privacy_config(link_reports=True, pseudonym_epoch_days=14)
    async with canary_lab(tmp_path, extra) as (lab, _sessions):
        privacy, clock = take_over_the_clock(lab)
        # Releases (a week after each other) a minute into an epoch, then 7, 14 and 21 days on.
        clock.offset = 14 * 86400 - time.time() % (14 * 86400) - 7 * 86400 + 60
        privacy.set_consent("inventory", True, "alice")
        keys = lab.config.gateway.state_dir / "privacy" / "keys"
        names = []
        for _week in range(4):  # two weeks in each of two epochs
            queued, result = await close_and_export(lab, clock)
            assert result == "ok"
            names.append(queued[0]["pseudonym"])
            assert len(list(keys.iterdir())) == 1  # only the current epoch's key exists
            assert (keys / next(keys.iterdir()).name).stat().st_mode & 0o777 == 0o600
        assert names[0] == names[1] != names[2] == names[3]
        # When an epoch ends its key is gone even if nothing is released.
        old = next(keys.iterdir())
        clock.offset += 14 * 86400
        privacy._expire_keys(privacy._key_path(clock()))
        assert not old.exists()
        # Turning linking off deletes the key at once.
        privacy.configure(dataclasses.replace(
            lab.config, privacy=dataclasses.replace(lab.config.privacy, link_reports=False)))
        privacy._expire_keys(privacy._key_path(clock()))
        assert list(keys.iterdir()) == []
        queued, _ = await close_and_export(lab, clock)
        assert "pseudonym" not in queued[0]
