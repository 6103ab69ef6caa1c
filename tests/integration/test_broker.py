"""The daemon against the real Mosquitto it starts: auth, ACLs, restarts, bad input."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway import mqtt
from gateway.broker.render import GATEWAY_USERNAME, enrollment_client_id, enrollment_username
from gateway.credentials.secrets import load_or_create_login
from gateway.devices.topics import bridge_state_topic, device_topic
from gateway.mqtt import Endpoint, Message, MqttSession
from gateway.sim.lab import Lab, free_port, start_lab
from tests.hostile.corpus import HOSTILE_CLIENT_IDS


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait until predicate() holds; return the seconds it took or fail naming `what`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def refused(endpoint: Endpoint, client_id: str = "probe") -> str:
    """Connect once; return the broker's refusal, or fail if it let us in."""
    client = mqtt.make_client(endpoint, client_id)
    try:
        async with client:
            pass
    except mqtt.MqttError as exc:
        return str(exc)
    pytest.fail(f"broker accepted {endpoint.username!r}")


class Recorder:
    """A client that remembers every message it receives."""

    def __init__(self, endpoint: Endpoint, client_id: str, topics: list[str]) -> None:
        self.messages: list[Message] = []
        self.session = MqttSession(endpoint, client_id=client_id,
                                   on_message=self.messages.append,
                                   subscriptions=[(t, 1) for t in topics])

    def on(self, topic: str) -> list[Message]:
        return [m for m in self.messages if m.topic == topic]


async def test_anonymous_and_wrong_password_refused(lab: Lab) -> None:
    reason = await refused(lab.endpoint())
    assert "authori" in reason.lower() or "not authorised" in reason.lower() or reason
    await lab.add_devices([("plug-a", "plug")], interval_s=60)
    await refused(lab.endpoint("plug-a.1", "wrong-password"))
    await refused(lab.endpoint("home-gateway", "guess"))


async def test_hostile_client_ids_change_no_presence_and_no_one_elses_audit(lab: Lab) -> None:
    """Client ids that spell the broker's own log phrases, from a login that may choose its
    id and from strangers with a wrong password: plug-1 stays online, and every refusal is
    counted once, against the address it came from."""
    await lab.add_devices([("plug-1", "plug")], interval_s=60)
    gateway_login = lab.endpoint(*load_or_create_login(lab.daemon.files.gateway_secret,
                                                       GATEWAY_USERNAME))
    before = lab.daemon.refused_total
    for client_id in HOSTILE_CLIENT_IDS:
        async with mqtt.make_client(gateway_login, client_id):
            pass  # comes and goes under that id
        await refused(lab.endpoint("nobody", "wrong"), client_id)
    await until(lambda: lab.daemon.refused_total - before == len(HOSTILE_CLIENT_IDS), 5,
                "every refused login counted")
    await asyncio.sleep(0.3)  # anything the log would still change, it has changed by now
    assert lab.daemon.refused_total - before == len(HOSTILE_CLIENT_IDS)
    assert "plug-1" in lab.daemon.devices.connected
    assert set(lab.daemon.refused_logins) <= {"127.0.0.1"}
    actors = {e.actor for e in lab.daemon.store.audit_log(200, "mqtt.login_refused")}
    assert actors <= {"mqtt:127.0.0.1"}, actors


async def test_a_token_login_cannot_take_over_the_gateways_or_a_devices_session(
        lab: Lab) -> None:
    """An enrollment token's login is pinned to its own client id: with the gateway's or a
    device's id it is refused, and both sessions stay up."""
    await lab.add_devices([("plug-1", "plug")], interval_s=60)
    ticket = await lab.daemon.enrollments.create("admin", name="stranger")
    token_id, secret = ticket.token.split(".", 1)
    login = lab.endpoint(enrollment_username(token_id), secret)
    for stolen in ("home-gateway", "plug-1", f"enroll-{token_id}"):
        assert mqtt.login_refused(await refused(login, stolen)), stolen
    async with mqtt.make_client(login, enrollment_client_id(token_id)):
        pass  # its own id works
    await asyncio.sleep(0.3)
    assert {"home-gateway", "plug-1"} <= lab.daemon.devices.connected
    assert lab.daemon.session.connected


async def test_device_cannot_touch_another_devices_topics(lab: Lab) -> None:
    a, b = await lab.add_devices([("dev-a", "plug"), ("dev-b", "plug")], interval_s=60)
    await lab.fleet.wait_connected()
    # A's login cannot take B's client id (which would cut B off), nor any other id.
    for client_id in ("dev-b", "dev-a-2"):
        client = mqtt.make_client(a.endpoint, client_id)
        with pytest.raises(mqtt.MqttError):
            async with client:
                pass
    assert b.connected and b.session.connections == 1
    # A (now a spy) listens on B's topics and on everything; B on its own command topic.
    await a.stop()
    spy = Recorder(a.endpoint, "dev-a", ["devices/dev-b/#", "#", "$CONTROL/#"])
    async with spy.session:
        await spy.session.wait_connected(5)
        # A tries to write B's topics: telemetry into B's history and a command to B.
        await spy.session.publish(device_topic("dev-b", "telemetry"), b'{"power_w": 999}', 1)
        await spy.session.publish(device_topic("dev-b", "cmd"),
                                  b'{"id": "x", "action": "set_power", "params": {"on": false}}')
        # B's own traffic and a real command to B, which A must not see.
        result = await lab.daemon.devices.send_command("dev-b", "set_power", {"on": True},
                                                       source="test")
        assert result["status"] == "ok"
        await asyncio.sleep(0.5)
    seen = {m.topic for m in spy.messages}
    assert not any(t.startswith("devices/dev-b/") for t in seen), seen
    assert not any(t.startswith("$CONTROL") for t in seen), seen
    assert b.state["on"] is True  # only the gateway's command arrived
    assert b.commands_handled == 1
    assert lab.daemon.devices._live["dev-b"].state.get("power_w") != 999


async def test_broker_killed_is_restarted_and_devices_return(lab: Lab) -> None:
    agents = await lab.add_devices([("therm-1", "thermostat"), ("plug-1", "plug")],
                                   interval_s=0.2)
    await lab.fleet.wait_connected()
    broker = lab.daemon.broker
    assert broker is not None and broker.pid is not None
    old_pid = broker.pid
    connections = [a.session.connections for a in agents]
    os.kill(old_pid, signal.SIGKILL)
    took = await until(lambda: broker.running and broker.pid != old_pid, 5,
                       "the broker to be restarted")
    assert took < 5
    await until(lambda: all(a.session.connections > c for a, c in zip(agents, connections,
                                                                      strict=True)),
                10, "the devices to reconnect")
    await until(lambda: lab.daemon.healthy, 10, "the daemon to be healthy again")
    accepted = lab.daemon.devices.counters.accepted
    await until(lambda: lab.daemon.devices.counters.accepted > accepted + 4, 5,
                "telemetry to flow again")
    # The credentials came back from the database, and the restart is audited.
    assert broker.restarts == 1
    assert any(e.action == "broker.restart" for e in lab.daemon.store.audit_log())
    result = await lab.daemon.devices.send_command("plug-1", "set_power", {"on": False},
                                                   source="test")
    assert result["status"] == "ok"


MALFORMED = {
    "not json": b"hello",
    "1 MB": b'{"x": "' + b"a" * 1_000_000 + b'"}',
    "deep nesting": b"[" * 50_000 + b"]" * 50_000,
    "deep object": b'{"a":' * 500 + b"1" + b"}" * 500,
    "NaN": b'{"temperature": NaN}',
    "Infinity": b'{"temperature": Infinity}',
    "overflow": b'{"temperature": 1e999}',
    "list": b"[1, 2]",
    "string": b'"21.5"',
    "nested value": b'{"temperature": {"c": 21}}',
    "bad ts": b'{"ts": "now", "temperature": 21}',
    "future ts": b'{"ts": 99999999999, "temperature": 21}',
    "bool ts": b'{"ts": true}',
    "invalid utf-8": b'{"name": "\xff\xfe"}',
    "bad name": b'{"Temperature!": 1}',
    "empty": b"",
}


async def test_malformed_payloads_are_dropped_counted_and_audited(lab: Lab) -> None:
    (agent,) = await lab.add_devices([("sensor-1", "sensor")], interval_s=60)
    await lab.fleet.wait_connected()
    watcher = Recorder(lab.daemon.endpoint, "watcher", [bridge_state_topic("sensor-1")])
    async with watcher.session:
        await watcher.session.wait_connected(5)
        for payload in MALFORMED.values():
            await agent.session.publish(device_topic("sensor-1", "telemetry"), payload, qos=1)
        # A good reading after the garbage is still processed, in order.
        await agent.session.publish(device_topic("sensor-1", "telemetry"),
                                    json.dumps({"ts": time.time(), "temperature": 19.5}), 1)
        await until(lambda: any(b"19.5" in m.payload
                                for m in watcher.on(bridge_state_topic("sensor-1"))),
                    5, "the valid reading to be republished")
    devices = lab.daemon.devices
    assert devices.counters.rejected == len(MALFORMED)
    assert devices._live["sensor-1"].invalid == len(MALFORMED)
    assert lab.daemon.healthy
    assert agent.connected  # bad payloads do not cost the device its session
    # Nothing of the garbage reached the republished state.
    state = json.loads(watcher.on(bridge_state_topic("sensor-1"))[-1].payload)
    assert state["temperature"] == 19.5
    # Audited, rate-limited: one entry for the burst, naming the device and the count.
    devices.flush()
    entries = lab.daemon.store.audit_log(action="message.invalid")
    assert len(entries) == 1
    assert entries[0].target == "sensor-1"
    assert "1 dropped" in entries[0].detail  # the first is audited at once, the rest later
    stored = lab.daemon.store.device("sensor-1")
    assert stored is not None and stored.invalid_messages == len(MALFORMED)


async def test_oversized_packet_is_refused_by_the_broker(lab: Lab) -> None:
    (agent,) = await lab.add_devices([("cam-1", "camera")], interval_s=60)
    await lab.fleet.wait_connected()
    limit = lab.config.broker.max_packet_size
    connections = agent.session.connections
    assert agent.session.publish_nowait(device_topic("cam-1", "telemetry"), b"x" * (limit + 10))
    # The broker dropped the sender; the device reconnects by itself; the gateway never saw it.
    await until(lambda: agent.session.connections > connections, 15, "the device to reconnect")
    assert lab.daemon.healthy
    assert lab.daemon.devices.counters.rejected == 0


async def test_command_round_trip_and_rejection(lab: Lab) -> None:
    (bulb,) = await lab.add_devices([("bulb-1", "bulb")], interval_s=60)
    await lab.fleet.wait_connected()
    devices = lab.daemon.devices
    result = await devices.send_command("bulb-1", "set_brightness", {"brightness": 40},
                                        source="admin")
    assert result["status"] == "ok" and bulb.state["brightness"] == 40
    from gateway.devices.service import CommandRejected

    for action, params, reason in [
        ("set_brightness", {"brightness": 400}, "from 0 to 100"),
        ("set_target", {"target": 20}, "not supported"),
        ("set_power", {}, "missing parameter"),
    ]:
        with pytest.raises(CommandRejected, match=reason):
            await devices.send_command("bulb-1", action, params, source="admin")
    with pytest.raises(CommandRejected, match="unknown device"):
        await devices.send_command("nope-1", "set_power", {"on": True}, source="admin")
    assert bulb.commands_handled == 1  # rejected commands never reached the device
    outcomes = [(e.target, e.result) for e in lab.daemon.store.audit_log(action="command")]
    assert outcomes.count(("bulb-1", "rejected")) == 3 and ("bulb-1", "ok") in outcomes


async def test_removed_device_loses_access_and_its_state(lab: Lab) -> None:
    (plug,) = await lab.add_devices([("plug-9", "plug")], interval_s=0.2)
    await lab.fleet.wait_connected()
    await lab.daemon.devices.remove("plug-9")
    await until(lambda: not plug.connected, 5, "the removed device to be disconnected")
    await refused(plug.endpoint)
    stored = lab.daemon.store.device("plug-9")
    assert stored is not None and stored.status == "removed"


async def test_secrets_on_disk(lab: Lab) -> None:
    (agent,) = await lab.add_devices([("door-1", "door")], interval_s=60)
    files = lab.daemon.files
    assert files.gateway_secret.stat().st_mode & 0o777 == 0o600
    assert files.dynsec.stat().st_mode & 0o777 == 0o600
    secret = agent.endpoint.password
    assert secret
    for path in lab.config.gateway.state_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


async def test_adapter_keeps_retained_messages_and_resubscribes(lab: Lab) -> None:
    """The adapter's guarantees, on whichever client generation this venv has."""
    gateway = lab.daemon.endpoint
    await lab.daemon.session.publish("home-gateway/test/retained", b"kept", 1, retain=True)
    listener = Recorder(gateway, "listener", ["home-gateway/test/#"])
    async with listener.session:
        await listener.session.wait_connected(5)
        # A retained message delivered right after SUBSCRIBE is not lost (asyncio_mqtt 0.16).
        await until(lambda: bool(listener.on("home-gateway/test/retained")), 5,
                    "the retained message")
        broker = lab.daemon.broker
        assert broker is not None and broker.pid is not None
        os.kill(broker.pid, signal.SIGKILL)
        await until(lambda: listener.session.connections >= 2, 15, "a reconnect")
        await lab.daemon.session.wait_connected(10)
        await lab.daemon.session.publish("home-gateway/test/live", b"after", 1)
        await until(lambda: bool(listener.on("home-gateway/test/live")), 5,
                    "a message after reconnecting (resubscribed)")


async def test_tls_listener_uses_the_gateway_ca(tmp_path: Path) -> None:
    port = free_port()
    lab = await start_lab(tmp_path / "state", extra_config=(
        f'\n[[broker.listeners]]\naddress = "127.0.0.1"\nport = {port}\ntls = true\n'))
    try:
        (agent,) = await lab.add_devices([("tls-plug", "plug")], interval_s=60)
        secure = Endpoint("127.0.0.1", port, agent.endpoint.username, agent.endpoint.password,
                          lab.daemon.pki.ssl_context())
        await agent.stop()
        recorder = Recorder(secure, "tls-plug", ["devices/tls-plug/cmd"])
        async with recorder.session:
            await recorder.session.wait_connected(5)
            await recorder.session.publish(device_topic("tls-plug", "telemetry"),
                                           b'{"power_w": 12.5}', 1)
            await until(lambda: lab.daemon.devices._live["tls-plug"].state.get("power_w")
                        == 12.5, 5, "telemetry over TLS")
        # Plain MQTT on the TLS port, and TLS with a CA the gateway did not make, both fail.
        await refused(Endpoint("127.0.0.1", port, agent.endpoint.username,
                               agent.endpoint.password))
        await refused(Endpoint("127.0.0.1", port, agent.endpoint.username,
                               agent.endpoint.password, ssl.create_default_context()))
        assert (lab.daemon.pki.ca_key.stat().st_mode & 0o777) == 0o600
        assert (lab.daemon.files.server_key.stat().st_mode & 0o777) == 0o600
    finally:
        await lab.stop()


async def test_reload_adopts_and_removes_declared_devices(lab: Lab) -> None:
    source = lab.config.source
    original = source.read_text()
    source.write_text(original + '\n[[devices]]\nid = "porch-light"\nkind = "bulb"\n'
                      'name = "Porch light"\nmac = "AA-BB-CC-DD-EE-01"\n')
    await lab.daemon.reload()
    device = lab.daemon.store.device("porch-light")
    assert device is not None and device.status == "adopted" and device.name == "Porch light"
    assert device.mac == "aa:bb:cc:dd:ee:01"
    username, secret = await lab.daemon.devices.issue_credential("porch-light")
    porch = Recorder(lab.endpoint(username, secret), "porch-light", [])
    async with porch.session:
        await porch.session.wait_connected(5)
        # An invalid file is rejected and changes nothing.
        source.write_text(original + "\n[[devices]]\nid = 'X'\n")
        await lab.daemon.reload()
        assert lab.daemon.store.device("porch-light").status == "adopted"  # type: ignore[union-attr]
        assert lab.daemon.store.audit_log(action="config.reload")[0].result == "rejected"
        # Dropping the device from the file removes it and ends its session.
        source.write_text(original)
        await lab.daemon.reload()
        await until(lambda: not porch.session.connected, 5, "the undeclared device to be cut off")
    assert lab.daemon.store.device("porch-light").status == "removed"  # type: ignore[union-attr]
    await refused(lab.endpoint(username, secret))
