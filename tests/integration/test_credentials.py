"""Credential rotation and enrollment against a real Mosquitto and simulated devices.

Every device here is a SimDevice with its own login; the old login of a rotated device
is tried for real afterwards and must be refused by the broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.mqtt import Endpoint, Message, MqttError, MqttSession, make_client
from gateway.sim.devices import SimDevice, enroll, enrolled_device, fleet_ids
from gateway.sim.lab import Lab, start_lab
from tests.polling import eventually

pytestmark = pytest.mark.integration

FAST_RETRY = """
[credentials]
ack_timeout_s = 2
retry_initial_s = 1
alert_after = 2
"""


async def login_refused(endpoint: Endpoint, client_id: str) -> bool:
    """One connection attempt, no retry: True when the broker refuses the login."""
    try:
        async with make_client(endpoint, client_id):
            return False
    except MqttError:
        return True


def audit(lab: Lab, action: str, target: str | None = None) -> list[tuple[str, str]]:
    return [(e.result, e.detail) for e in lab.daemon.store.audit_log(500, action, target=target)]


@pytest.fixture
async def fast_lab(tmp_path: Path) -> AsyncIterator[Lab]:
    running = await start_lab(tmp_path / "state", extra_config=FAST_RETRY)
    try:
        yield running
    finally:
        await running.stop()


async def test_rotating_fifty_devices_at_once_locks_none_out(lab: Lab) -> None:
    agents = await lab.add_devices(fleet_ids(["plug", "sensor", "thermostat"], 50),
                                   interval_s=1.0)
    old = {a.id: a.session.endpoint for a in agents}
    started = await lab.daemon.rotator.rotate_all("test")
    assert sorted(started) == sorted(old)

    await eventually(lambda: not lab.daemon.store.rotations(), 30, "every rotation to finish")
    for agent in agents:
        assert agent.connected, agent.id
        assert agent.username == f"{agent.id}.2"
        assert agent.longest_offline_s < 5.0, (agent.id, agent.longest_offline_s)
        device = lab.daemon.store.device(agent.id)
        assert device is not None and device.rotation_result == "ok"
    creds = lab.daemon.store.credentials()
    assert {c.username for c in creds} == {f"{a.id}.2" for a in agents}
    assert {c.state for c in creds} == {"active"}
    # Every old login is refused by the broker now, each tried for real.
    refused = await asyncio.gather(*(login_refused(ep, device_id)
                                     for device_id, ep in old.items()))
    assert all(refused)
    entries = lab.daemon.store.audit_log(500, "credential.rotate")
    assert len([e for e in entries if e.target in old]) == 100  # started + ok, per device
    # "Rotate all" includes the gateway's own login.
    assert [e.result for e in entries if e.target == "home-gateway"] == ["ok"]
    await asyncio.sleep(1.5)  # devices keep working: telemetry still flows
    assert all(lab.daemon.devices.is_online(a.id, within_s=1.5) for a in agents)


async def test_a_device_offline_during_rotation_keeps_its_login_and_finishes_later(
        lab: Lab) -> None:
    [agent] = await lab.add_devices([("porch-plug", "plug")], interval_s=0.5)
    old = agent.session.endpoint
    await agent.stop()
    await lab.daemon.rotator.rotate(["porch-plug"], "manual", "test")
    await asyncio.sleep(3)  # the offer goes nowhere: nothing is decided while it is away
    rotation = lab.daemon.store.rotation("porch-plug")
    assert rotation is not None and rotation.step == "offered"
    assert not await login_refused(old, "porch-plug"), "the old login must still work"

    await agent.start()  # back with its old login: the gateway offers again
    await eventually(lambda: lab.daemon.store.rotation("porch-plug") is None, 15,
                     "the rotation to finish after the device returned")
    assert agent.username == "porch-plug.2" and agent.connected
    assert await login_refused(old, "porch-plug")


async def test_a_device_dropping_offline_mid_rotation_is_never_locked_out(lab: Lab) -> None:
    [agent] = await lab.add_devices([("attic-sensor", "sensor")], interval_s=0.5)
    agent.offline_on_offer_s = 2.0  # goes away when the offer arrives, once
    await lab.daemon.rotator.rotate(["attic-sensor"], "manual", "test")
    await eventually(lambda: not agent.connected, 5, "the device to drop offline")
    await eventually(lambda: lab.daemon.store.rotation("attic-sensor") is None, 20,
                     "the rotation to finish once the device is back")
    assert agent.username == "attic-sensor.2" and agent.connected
    assert agent.offers_seen >= 2


async def test_a_device_that_never_acknowledges_keeps_its_login_and_raises_an_alert(
        fast_lab: Lab) -> None:
    lab = fast_lab
    [agent] = await lab.add_devices([("stubborn-bulb", "bulb")], interval_s=0.3)
    agent.acknowledge = False
    await lab.daemon.rotator.rotate(["stubborn-bulb"], "manual", "test")

    def alerted() -> bool:
        return "stubborn-bulb" in lab.daemon.status()["credentials"]["alerts"]

    await eventually(alerted, 20, "the rotation alert")
    results = [r for r, _ in audit(lab, "credential.rotate", "stubborn-bulb")]
    assert results.count("failed") == 1 and results.count("alert") == 1, results
    device = lab.daemon.store.device("stubborn-bulb")
    assert device is not None and device.rotation_result.startswith("alert:")
    assert device.rotation_failures >= 2
    # The old login was never touched: still the only active one, still accepted.
    assert agent.connected and agent.username == "stubborn-bulb.1"
    active = [c.username for c in lab.daemon.store.credentials("stubborn-bulb")
              if c.state == "active"]
    assert active == ["stubborn-bulb.1"]
    # A device that starts cooperating clears the alert at the next attempt.
    agent.acknowledge = True
    await lab.daemon.rotator.rotate(["stubborn-bulb"], "manual", "test")
    await eventually(lambda: not alerted(), 15, "the alert to clear")
    assert agent.username.startswith("stubborn-bulb.") and agent.username != "stubborn-bulb.1"


async def test_a_device_cannot_read_another_devices_offer(lab: Lab) -> None:
    victim, thief = await lab.add_devices([("front-door", "door"), ("cheap-camera", "camera")],
                                          interval_s=0.5)
    stolen: list[Message] = []
    spy = MqttSession(thief.session.endpoint, client_id="cheap-camera",
                      on_message=stolen.append,
                      subscriptions=[("devices/front-door/creds", 1), ("devices/+/creds", 1),
                                     ("#", 1)])
    await thief.stop()  # the spy takes over the thief's login and client id
    async with spy:
        await spy.wait_connected(5)
        await lab.daemon.rotator.rotate(["front-door"], "manual", "test")
        await eventually(lambda: lab.daemon.store.rotation("front-door") is None, 15,
                         "the victim's rotation")
        await asyncio.sleep(0.5)
    assert victim.username == "front-door.2"
    assert [m.topic for m in stolen if "front-door" in m.topic] == []


async def test_enrollment_gives_a_new_device_its_own_login(lab: Lab) -> None:
    ticket = await lab.daemon.enrollments.create("test", name="Garden sensor")
    assert len(ticket.token.split(".", 1)[1]) >= 22  # at least 128 bits of secret
    agent = await enrolled_device(lab.endpoint(), ticket.token, "sensor", model="GS-1",
                                  firmware="2.4.1", mac="AA:BB:CC:00:11:22")
    lab.fleet.devices.append(agent)
    await agent.start()
    await lab.wait_seen([agent.id])

    def used() -> bool:
        enrollment = lab.daemon.store.enrollment(ticket.id)
        return enrollment is not None and enrollment.state == "used"

    await eventually(used, 10, "the enrollment to be used")
    device = lab.daemon.store.device(agent.id)
    assert device is not None
    assert (device.name, device.kind, device.model, device.firmware, device.mac,
            device.source, device.status) == ("Garden sensor", "sensor", "GS-1", "2.4.1",
                                              "aa:bb:cc:00:11:22", "enrolled", "adopted")
    assert agent.username == f"{agent.id}.1"
    # Used: the token's login is gone, so the same token is refused by the broker.
    with pytest.raises(TimeoutError):
        await enroll(lab.endpoint(), ticket.token, {"kind": "sensor"}, timeout=3)
    assert ("ok", agent.id) in audit(lab, "enrollment.close")
    # The refused login is audited (by address) within a status interval.
    await eventually(lambda: audit(lab, "mqtt.login_refused"), 10, "a refused-login audit")

    # Rotation works for an enrolled device like for any other.
    await lab.daemon.rotator.rotate([agent.id], "manual", "test")
    await eventually(lambda: lab.daemon.store.rotation(agent.id) is None, 15, "rotation")
    assert agent.username == f"{agent.id}.2"


async def test_expired_and_wrong_tokens_are_refused(lab: Lab) -> None:
    expired = await lab.daemon.enrollments.create("test", ttl_s=1)
    await eventually(lambda: (e := lab.daemon.store.enrollment(expired.id)) is not None
                     and e.state == "expired", 5, "the enrollment to expire")
    with pytest.raises(TimeoutError):
        await enroll(lab.endpoint(), expired.token, {"kind": "plug"}, timeout=3)
    live = await lab.daemon.enrollments.create("test")
    wrong = live.id + ".not-the-secret-at-all-0000000"
    with pytest.raises(TimeoutError):
        await enroll(lab.endpoint(), wrong, {"kind": "plug"}, timeout=3)
    assert [s for s, _ in audit(lab, "enrollment.close", expired.id)] == ["expired"]
    assert lab.daemon.store.devices() == []
    await eventually(lambda: audit(lab, "mqtt.login_refused"), 10, "a refused-login audit")


async def test_a_bad_hello_is_answered_audited_and_creates_nothing(lab: Lab) -> None:
    ticket = await lab.daemon.enrollments.create("test")
    answer = await enroll(lab.endpoint(), ticket.token, {"kind": "toaster"})
    assert answer["status"] == "error" and "kind" in answer["error"]
    answer = await enroll(lab.endpoint(), ticket.token, {"kind": "plug", "serial": "x"})
    assert answer == {"status": "error", "error": "unknown field(s) in hello: serial"}
    assert lab.daemon.store.devices() == []
    rejected = audit(lab, "enrollment.hello", ticket.id)
    assert [r for r, _ in rejected] == ["rejected", "rejected"]
    # The token still works for a proper hello.
    answer = await enroll(lab.endpoint(), ticket.token, {"kind": "plug"})
    assert answer["status"] == "ok" and answer["username"].endswith(".1")


async def test_no_device_secret_is_at_rest_after_enrollment_and_rotation(
        tmp_path: Path) -> None:
    lab = await start_lab(tmp_path / "state")
    try:
        ticket = await lab.daemon.enrollments.create("test")
        agent = await enrolled_device(lab.endpoint(), ticket.token, "thermostat")
        lab.fleet.devices.append(agent)
        first = agent.session.endpoint.password
        await agent.start()
        await lab.wait_seen([agent.id])
        await lab.daemon.rotator.rotate([agent.id], "manual", "test")
        await eventually(lambda: lab.daemon.store.rotation(agent.id) is None, 15, "rotation")
        second = agent.session.endpoint.password
        assert agent.username == f"{agent.id}.2"
    finally:
        await lab.stop()  # the broker saves its persistence file on the way out
    secrets = {"enrollment token": ticket.token.split(".", 1)[1], "first login": first,
               "rotated login": second}
    scanned = 0
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            scanned += 1
            for what, secret in secrets.items():
                assert secret is not None
                assert secret.encode() not in data, f"the {what} secret is in {path}"
    assert scanned >= 5  # the database (+ WAL), broker files, PKI


async def test_broker_listener_without_tls_is_only_what_the_config_asks(
        tmp_path: Path) -> None:
    """A TLS device listener: plain MQTT on its port fails, TLS with the gateway's CA works,
    and the broker listens on exactly the configured ports."""
    from gateway.sim.lab import free_port
    port = free_port()
    lab = await start_lab(tmp_path / "state", extra_config=(
        f'\n[[broker.listeners]]\naddress = "127.0.0.1"\nport = {port}\ntls = true\n'))
    try:
        await lab.daemon.devices.add("tls-plug", "plug", source="test")
        username, secret = await lab.daemon.devices.issue_credential("tls-plug")
        plain = Endpoint("127.0.0.1", port, username, secret)
        try:  # no plain MQTT on a TLS listener: refused, or no answer at all
            refused = await asyncio.wait_for(login_refused(plain, "tls-plug"), 3)
        except TimeoutError:
            refused = True
        assert refused
        tls = Endpoint("localhost", port, username, secret, lab.daemon.pki.ssl_context())
        agent = SimDevice("tls-plug", "plug", tls, interval_s=0.5)
        lab.fleet.devices.append(agent)
        await agent.start()
        await lab.wait_seen(["tls-plug"])
        broker = lab.daemon.broker
        assert broker is not None and broker.pid is not None
        assert listening_ports(broker.pid) == {lab.daemon.endpoint.port, port}
        assert lab.daemon.status()["credentials"]["plaintext_listeners"] == []
    finally:
        await lab.stop()


def listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state owned by process `pid` (from /proc, no tools needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = str(fd.readlink()) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports



async def test_the_gateways_own_login_is_rotated_the_same_way(tmp_path: Path) -> None:
    state = tmp_path / "state"
    lab = await start_lab(state)
    secret_file = state / "broker" / "gateway.secret"
    try:
        [agent] = await lab.add_devices([("hall-plug", "plug")], interval_s=0.3)
        old = lab.daemon.session.endpoint
        assert old.username == "home-gateway"
        started = await lab.daemon.rotator.rotate_all("test")  # devices and the gateway
        assert started == ["hall-plug"]
        assert lab.daemon.session.connected
        assert lab.daemon.session.endpoint.username == "home-gateway:1"
        assert secret_file.read_text().split()[0] == "home-gateway:1"
        assert secret_file.stat().st_mode & 0o777 == 0o600
        assert not (state / "broker" / "gateway.secret.next").exists()
        assert await login_refused(old, "old-gateway-login")
        # The gateway still does its job with the new login: the device's rotation ends.
        await eventually(lambda: lab.daemon.store.rotation("hall-plug") is None, 15,
                         "the device's rotation")
        assert agent.username == "hall-plug.2"
        result = await lab.daemon.devices.send_command("hall-plug", "set_power", {"on": False},
                                                       source="admin")
        assert result["status"] == "ok"
        assert ("ok", "home-gateway:1 in use; home-gateway deleted") in audit(
            lab, "credential.rotate", "home-gateway")
    finally:
        await lab.stop()
    # A next login left behind by a crash before it was proven is discarded at start, and
    # the gateway starts with the login its file names.
    (state / "broker" / "gateway.secret.next").write_text("home-gateway:2 never-proven\n")
    lab = await start_lab(state)
    try:
        assert lab.daemon.session.endpoint.username == "home-gateway:1"
        assert not (state / "broker" / "gateway.secret.next").exists()
        assert lab.daemon.status()["healthy"]
    finally:
        await lab.stop()
