"""The cloud relay against two real brokers: the gateway's own Mosquitto and the simulated
vendor cloud (a second Mosquitto with TLS and its own CA, `gateway.sim.cloud`)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.cloud.envelope import public_key_text
from gateway.daemon import Daemon
from gateway.mqtt import Backoff
from gateway.sim.cloud import CloudSim
from gateway.sim.devices import Fleet, SimDevice
from gateway.sim.lab import Lab, free_port, lab_config
from gateway.systemd import Notifier
from tests.integration.daemon_proc import Gateway
from tests.polling import eventually

DEVICES = [("bulb-1", "bulb"), ("plug-1", "plug"), ("thermo-1", "thermostat")]
LIMITED = Ed25519PrivateKey.generate()  # a second vendor key, for bulbs' power only


def limited_signer() -> str:
    return (f'\n[[cloud.signers]]\nkid = "bulbs-only"\npublic_key = '
            f'"{public_key_text(LIMITED.public_key())}"\ndevices = ["bulb-*"]\n'
            'actions = ["set_power"]\n')


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[CloudSim]:
    sim = CloudSim(tmp_path / "cloud")
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def gateway_with(tmp_path: Path, cloud: CloudSim, extra: str = "",
                       backoff: Backoff | None = None, cloud_extra: str = "") -> Lab:
    config = lab_config(tmp_path / "gw", extra=cloud.config_toml(cloud_extra) + extra)
    daemon = Daemon(config, notifier=Notifier({}), config_path=config.source)
    daemon.cloud.link_backoff = backoff
    await daemon.start()
    return Lab(daemon, Fleet([]))


@pytest.fixture
async def gw(tmp_path: Path, cloud: CloudSim) -> AsyncIterator[Lab]:
    web_port = free_port()
    # Reconnect within 2 s of the cloud's return (the real ceiling reaches 5 min).
    lab = await gateway_with(tmp_path, cloud, limited_signer()
                             + f'\n[web]\nlisten = ["127.0.0.1:{web_port}"]\n',
                             backoff=Backoff(0.2, 2.0, full_jitter=True))
    try:
        await lab.add_devices(DEVICES, interval_s=0.5)
        await cloud.wait_for(lambda: cloud.status == "online", 15)
        yield lab
    finally:
        await lab.stop()


def agent(lab: Lab, device_id: str) -> SimDevice:
    return next(d for d in lab.fleet.devices if d.id == device_id)


async def post_command(lab: Lab, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    url = lab.daemon.web.urls[0].rstrip("/") + "/api/v1/commands"
    async with aiohttp.ClientSession() as http, http.post(
            url, json=body, ssl=False, timeout=aiohttp.ClientTimeout(total=15)) as response:
        return response.status, await response.json()


# --- verification -------------------------------------------------------------------------


async def test_a_signed_command_reaches_the_device_and_its_result_the_cloud(
        gw: Lab, cloud: CloudSim) -> None:
    bulb = agent(gw, "bulb-1")
    result = await cloud.request("bulb-1", "set_brightness", {"brightness": 42})
    assert result["status"] == "ok", result
    assert bulb.state["brightness"] == 42 and bulb.commands_handled == 1
    assert result["device"] == "bulb-1" and result["source"] == "cloud"
    assert result["mid"] and isinstance(result["seq"], int)
    log = gw.daemon.store.command_log(5)
    assert (log[0].source, log[0].outcome, log[0].actor) == ("cloud", "ok", "cloud:sim-cloud")
    audit = gw.daemon.store.audit_log(5, "command", actor="cloud:sim-cloud")
    assert audit and audit[0].result == "ok" and audit[0].target == "bulb-1"
    # The desired state follows an accepted command, and the cloud hears the shadow.
    shadow = await cloud.wait_for(lambda: cloud.shadows.get("bulb-1") if cloud.shadows.get(
        "bulb-1", {}).get("reported", {}).get("brightness") == 42 else None)
    assert shadow["desired"]["brightness"]["value"] == 42
    assert shadow["desired"]["brightness"]["side"] == "cloud"


async def test_every_bad_command_is_rejected_with_its_reason_and_never_reaches_the_device(
        gw: Lab, cloud: CloudSim) -> None:
    now = time.time()
    replayed = cloud.command("bulb-1", "set_power", {"on": True})
    await cloud.send(replayed)
    assert (await cloud.wait_result(replayed["id"]))["status"] == "ok"
    handled = {d.id: d.commands_handled for d in gw.fleet.devices}
    stranger = Ed25519PrivateKey.generate()
    cases = {
        "bad-signature": cloud.command("bulb-1", "set_power", {"on": False}, key=stranger),
        "expired": cloud.command("bulb-1", "set_power", {"on": False}, iat=now - 600,
                                 exp=now - 300),
        "from-the-future": cloud.command("bulb-1", "set_power", {"on": False}, iat=now + 600),
        "unknown-key": cloud.command("bulb-1", "set_power", {"on": False}, kid="nobody",
                                     key=stranger),
        "out-of-scope": cloud.command("plug-1", "set_power", {"on": False}, kid="bulbs-only",
                                      key=LIMITED),
        "unknown-device": cloud.command("ghost-1", "set_power", {"on": False}),
        "bad-params": cloud.command("bulb-1", "set_brightness", {"brightness": 400}),
    }
    for envelope in cases.values():
        await cloud.send(envelope)
    await cloud.send(replayed)  # the very same message again
    await cloud.send_raw("cmd", b'{"v": 1, "id": "half-a-command"')
    for reason, envelope in cases.items():
        result = await cloud.wait_result(envelope["id"])
        assert (result["status"], result["reason"]) == ("rejected", reason), result
        assert result["message"]
    await cloud.wait_for(lambda: sum(1 for r in cloud.by_topic("cmd/result")
                                     if r.data and r.data.get("reason") == "replayed"))
    await cloud.wait_for(lambda: any(r.data and r.data.get("reason") == "malformed"
                                     for r in cloud.by_topic("cmd/result")))
    rejected = gw.daemon.store.audit_log(50, "command", result="rejected")
    details = " ".join(e.detail for e in rejected)
    for reason in [*cases, "replayed", "malformed"]:
        assert f": {reason}:" in details, reason
    outcomes = [(e.outcome, e.reason) for e in gw.daemon.store.command_log(20)]
    assert outcomes.count(("rejected", "replayed")) == 1
    await asyncio.sleep(0.5)  # anything that slipped through would have arrived by now
    assert {d.id: d.commands_handled for d in gw.fleet.devices} == handled
    assert agent(gw, "bulb-1").state["on"] is True  # no rejected "off" took effect


async def test_with_the_cloud_dead_a_signed_command_on_the_local_api_acts_within_a_second(
        gw: Lab, cloud: CloudSim) -> None:
    await cloud.kill()
    await eventually(lambda: gw.daemon.cloud.status()["state"] == "offline", 15,
                     "the gateway to notice the cloud is gone")
    bulb = agent(gw, "bulb-1")
    envelope = cloud.command("bulb-1", "set_brightness", {"brightness": 7})
    started = time.monotonic()
    status, body = await post_command(gw, envelope)
    took = time.monotonic() - started
    assert status == 200 and body["result"]["status"] == "ok", body
    assert bulb.state["brightness"] == 7
    assert took < 1.0, f"{took:.3f} s"
    entry = gw.daemon.store.command_log(1)[0]
    assert (entry.source, entry.outcome) == ("local-signed", "ok")
    # The same envelope again is a replay, on any path.
    status, body = await post_command(gw, envelope)
    assert status == 403 and body["result"]["reason"] == "replayed", body


async def test_an_outage_loses_nothing_and_the_backlog_arrives_in_order(
        tmp_path: Path, cloud: CloudSim) -> None:
    """A 2-minute outage: telemetry, results of the owner's app and a cloud schedule keep
    being produced; once the cloud is back all of it arrives, in order, once."""
    web_port = free_port()
    lab = await gateway_with(tmp_path, cloud, f'\n[web]\nlisten = ["127.0.0.1:{web_port}"]\n',
                             backoff=Backoff(0.5, 4.0, full_jitter=True),
                             cloud_extra="telemetry = true\ntelemetry_interval_s = 2\n")
    try:
        await lab.add_devices(DEVICES, interval_s=0.5)
        await cloud.wait_for(lambda: cloud.status == "online", 15)
        schedule = cloud.command("plug-1", "schedule.put", {
            "id": "every-minute", "when": "cron * * * * *", "action": "set_power",
            "params": {"on": True}})
        await cloud.send(schedule)
        assert (await cloud.wait_result(schedule["id"]))["status"] == "ok"
        await cloud.kill()
        outage_started = time.monotonic()
        sent: list[str] = []
        while time.monotonic() - outage_started < 120:
            envelope = cloud.command("bulb-1", "set_power", {"on": len(sent) % 2 == 0})
            status, body = await post_command(lab, envelope)
            assert status == 200, body
            sent.append(envelope["id"])
            await asyncio.sleep(10)
        spooled = lab.daemon.cloud.spool.stats(time.time())
        assert spooled["by_class"]["telemetry"] >= 50 and spooled["by_class"]["result"] >= 12
        runs = [e for e in lab.daemon.store.command_log(200) if e.source == "schedule"]
        assert len(runs) >= 1, "the schedule fired while the cloud was down"
        await cloud.restart()
        await cloud.wait_for(lambda: all(i in cloud.results for i in sent), 60)
        await cloud.wait_for(lambda: lab.daemon.cloud.spool.stats(time.time())["messages"]
                             == 0, 30)
        uplink = [r.data for r in cloud.uplink if r.data is not None]
        assert cloud.duplicates() == []
        seqs = [m["seq"] for m in uplink]
        assert seqs == sorted(seqs), "the backlog arrives in the order it was produced"
        results = [m for m in uplink if "status" in m and m.get("source") == "local-signed"]
        assert [m["id"] for m in results] == sent
        scheduled = [m for m in uplink if m.get("schedule") == "every-minute"]
        assert len(scheduled) >= len(runs)
        readings = [r for m in uplink if "readings" in m for r in m["readings"]]
        for device_id, _ in DEVICES:
            times = [r["ts"] for r in readings if r["device"] == device_id]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert times and max(gaps) < 5, f"{device_id}: a hole in its telemetry"
    finally:
        await lab.stop()


async def test_a_flood_keeps_the_spool_within_its_bounds(tmp_path: Path,
                                                         cloud: CloudSim) -> None:
    lab = await gateway_with(tmp_path, cloud, cloud_extra=(
        "telemetry = true\ntelemetry_interval_s = 1\nspool_max_bytes = 65536\n"))
    relay = lab.daemon.cloud
    try:
        await cloud.wait_for(lambda: cloud.status == "online", 15)
        await cloud.kill()
        envelope = cloud.command("bulb-1", "set_power", {"on": True})  # no such device yet
        await relay.submit_signed(json.dumps(envelope), "local-signed")
        await lab.add_devices([(f"flood-{i}", "sensor") for i in range(10)], interval_s=0.01)
        peak = 0
        for _ in range(40):
            await asyncio.sleep(0.25)
            peak = max(peak, relay.spool.bytes)
            assert relay.spool.bytes <= 65_536
        stats = relay.spool.stats(time.time())
        assert stats["bytes"] <= 65_536 and stats["evicted"]["telemetry"] > 0
        assert stats["by_class"]["result"] == 1 and stats["evicted"]["result"] == 0
        assert peak > 30_000, "the flood did fill the spool"
    finally:
        await lab.stop()


# --- reconnecting ---------------------------------------------------------------------------


async def test_the_link_backs_off_within_its_bounds_and_returns(tmp_path: Path,
                                                                cloud: CloudSim) -> None:
    """Time-compressed: a ceiling from 0.05 s to 0.4 s instead of 1 s to 5 min."""
    lab = await gateway_with(tmp_path, cloud, backoff=Backoff(0.05, 0.4, full_jitter=True))
    relay = lab.daemon.cloud
    try:
        await cloud.wait_for(lambda: cloud.status == "online", 15)
        await cloud.kill()
        await asyncio.sleep(4)
        downs = [h["ts"] for h in relay.link_history if h["event"] == "down"]
        assert len(downs) >= 8, "it keeps trying"
        gaps = [b - a for a, b in itertools.pairwise(downs)]
        assert max(gaps) < 0.4 + 0.3, gaps  # the ceiling plus a refused connect
        await cloud.restart()
        await cloud.wait_for(lambda: relay.status()["state"] == "connected", 5)
        assert (await cloud.request("bulb-1", "set_power", {"on": True}))["reason"] == (
            "unknown-device")
    finally:
        await lab.stop()


def test_full_jitter_backoff_stays_within_one_second_to_five_minutes() -> None:
    backoff = Backoff(1.0, 300.0, full_jitter=True)
    ceilings, delays = [], []
    for _ in range(40):
        ceilings.append(backoff.ceiling())
        delays.append(backoff.next_delay())
    assert ceilings[:4] == [1.0, 2.0, 4.0, 8.0] and ceilings[-1] == 300.0
    assert all(0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays) <= 300.0 and len(set(delays)) > 30  # jittered, not in lockstep


# --- shadows and schedules -------------------------------------------------------------------


async def test_shadows_converge_after_an_outage(gw: Lab, cloud: CloudSim) -> None:
    bulb = agent(gw, "bulb-1")
    await cloud.kill()
    await eventually(lambda: gw.daemon.cloud.status()["state"] == "offline", 15, "offline")
    cloud_wanted_off_at = time.time()
    await cloud.set_desired("bulb-1", {"on": False}, cloud_wanted_off_at)  # older: loses
    await asyncio.sleep(0.05)
    await gw.daemon.cloud.command("bulb-1", "set_power", {"on": True}, source="admin",
                                  actor="admin")  # local, newer
    await asyncio.sleep(0.05)
    await cloud.set_desired("bulb-1", {"brightness": 30})  # newest, on another key: wins
    await cloud.restart()
    await cloud.wait_for(lambda: bulb.state.get("brightness") == 30, 20)
    await cloud.wait_for(lambda: cloud.shadows.get("bulb-1", {}).get("desired", {}).get(
        "brightness", {}).get("value") == 30, 20)
    assert bulb.state["on"] is True, "the newer local change was kept"
    gateway_desired = {k: v["value"] for k, v in gw.daemon.cloud.shadow("bulb-1")[
        "desired"].items()}
    assert gateway_desired == cloud.desired_values("bulb-1") == {"on": True, "brightness": 30}
    reported = cloud.shadows["bulb-1"]["reported"]
    assert reported == {"on": True, "brightness": 30}  # what the device itself says
    audit = gw.daemon.store.audit_log(10, "shadow.desired")
    assert any("kept newer local ['on']" in e.detail for e in audit)


async def test_a_schedule_fires_while_the_cloud_is_down(gw: Lab, cloud: CloudSim) -> None:
    await cloud.kill()
    await eventually(lambda: gw.daemon.cloud.status()["state"] == "offline", 15, "offline")
    relay, plug = gw.daemon.cloud, agent(gw, "plug-1")
    assert plug.state["on"] is True
    relay.put_schedule("off-soon", "plug-1", "cron * * * * *", "set_power", {"on": False},
                       name="Plug off", source="admin", actor="admin")
    # Pretend it was made a minute ago, so the minute that just began is due now.
    gw.daemon.store.schedule_ran("off-soon", time.time() - 61, "")
    relay._schedules_changed.set()
    await eventually(lambda: plug.state["on"] is False, 10, "the schedule to switch it off")
    entry = next(e for e in gw.daemon.store.command_log(10) if e.source == "schedule")
    assert (entry.actor, entry.outcome) == ("schedule:off-soon", "ok")
    view = relay.schedule_view(time.time())
    assert view[0]["last_result"] == "ok" and view[0]["next_at"] > time.time()


# --- kill -9 ----------------------------------------------------------------------------------


def test_kill_9_while_spooling_loses_nothing(gateway: Gateway, tmp_path: Path) -> None:
    async def scenario() -> None:
        cloud = CloudSim(tmp_path / "cloud")
        await cloud.start()
        fleet = Fleet([])
        try:
            gateway.write_config(cloud.config_toml(
                "telemetry = true\ntelemetry_interval_s = 1\n"))
            gateway.launch()
            await asyncio.to_thread(gateway.wait_ready)
            for device_id, kind in DEVICES:
                added = gateway.device("add", device_id, "--kind", kind)
                shown = dict(re.findall(r"^(username|password): *(\S+)$", added.stdout,
                                        re.MULTILINE))
                fleet.devices.append(SimDevice(device_id, kind, gateway.endpoint(
                    shown["username"], shown["password"]), interval_s=0.05))
            await fleet.start()
            await cloud.wait_for(lambda: cloud.status == "online", 15)
            await cloud.kill()
            await asyncio.sleep(4)  # telemetry and shadows pile up in the spool
            os.kill(gateway.pid, signal.SIGKILL)
            await asyncio.to_thread(gateway.proc.wait)  # type: ignore[union-attr]
            db = sqlite3.connect(gateway.state_dir / "gateway.db")
            epoch = db.execute("SELECT value FROM settings WHERE key = 'cloud.spool_epoch'"
                               ).fetchone()[0]
            committed = {f"{epoch}-{seq}" for (seq,) in db.execute("SELECT seq FROM spool")}
            db.close()
            assert len(committed) >= 3
            await fleet.stop()
            await cloud.restart()
            gateway.launch()
            await asyncio.to_thread(gateway.wait_ready)
            arrived = await cloud.wait_for(
                lambda: committed <= {str(r.data["mid"]) for r in cloud.uplink} or None, 30)
            assert arrived
            assert cloud.duplicates() == []
            shown = gateway.cli("cloud", "status", "--config", str(gateway.config))
            assert shown.returncode == 0, shown.stderr
            assert "link:      connected to mqtts://127.0.0.1:" in shown.stdout
            assert "signers:   sim-cloud" in shown.stdout
        finally:
            await fleet.stop()
            await cloud.stop()
    asyncio.run(scenario())
