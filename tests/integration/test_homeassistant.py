"""The Home Assistant bridge against the gateway's real Mosquitto, with a client standing in
for Home Assistant: it logs in with Home Assistant's own credential, reads the retained
discovery configs, availability and states, announces its birth and sends commands."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.homeassistant.discovery import GATEWAY_STATE_TOPIC, availability_topic
from gateway.mqtt import Endpoint, Message, MqttSession
from gateway.sim.devices import SimDevice
from gateway.sim.lab import Lab, start_lab
from tests.polling import eventually

pytestmark = pytest.mark.integration

SCHEMA_FILE = Path(__file__).parents[2] / "gateway" / "homeassistant" / "discovery-schema.json"
DEVICES = [("plug-1", "plug"), ("bulb-1", "bulb"), ("thermo-1", "thermostat"),
           ("door-1", "door"), ("cam-1", "camera"), ("sensor-1", "sensor")]


class HomeAssistant:
    """What Home Assistant does on MQTT: subscribe to discovery and the gateway's tree,
    keep the latest (retained) payload per topic and every arrival."""

    def __init__(self, endpoint: Endpoint, prefix: str = "homeassistant") -> None:
        self.prefix = prefix
        self.latest: dict[str, bytes] = {}
        self.arrivals: list[Message] = []
        self.session = MqttSession(endpoint, client_id="ha-stand-in", on_message=self._on,
                                   subscriptions=[(f"{prefix}/#", 1), ("home-gateway/#", 1)])

    def _on(self, message: Message) -> None:
        self.arrivals.append(message)
        if message.payload:
            self.latest[message.topic] = message.payload
        else:
            self.latest.pop(message.topic, None)

    def configs(self) -> dict[str, dict[str, Any]]:
        return {t: json.loads(p) for t, p in self.latest.items()
                if t.startswith(f"{self.prefix}/") and t.endswith("/config")}

    def state(self, device_id: str) -> dict[str, Any]:
        raw = self.latest.get(f"home-gateway/{device_id}/state")
        return json.loads(raw) if raw else {}

    async def __aenter__(self) -> HomeAssistant:
        self.session.start()
        await self.session.wait_connected(10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.stop()


async def until(probe: Any, timeout: float = 10.0) -> Any:
    """`eventually`, naming what never came by the probe's own source line."""
    return await eventually(probe, timeout, inspect.getsource(probe).strip())


def ha_endpoint(lab: Lab) -> Endpoint:
    assert lab.daemon.ha_login is not None
    login = lab.daemon.ha_login.current
    return lab.endpoint(login["username"], login["password"])


def validate(topic: str, payload: dict[str, Any]) -> None:
    component = topic.split("/")[1]
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator({**schema, "$ref": f"#/components/{component}"}
                                    ).validate(payload)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    lab = await start_lab(tmp_path / "gw", extra_config="\n[homeassistant]\n"
                                                         "republish_jitter_s = 1\n")
    try:
        await lab.add_devices(DEVICES, interval_s=0.5)
        yield lab
    finally:
        await lab.stop()


async def test_every_device_and_the_gateway_appear_with_valid_configs(lab: Lab) -> None:
    wanted = lab.daemon.homeassistant.entities()
    async with HomeAssistant(ha_endpoint(lab)) as ha:
        await until(lambda: set(ha.configs()) == set(wanted))
        configs = ha.configs()
        for topic, payload in configs.items():
            validate(topic, payload)  # the schema written from Home Assistant's docs
            assert "object_id" not in payload
        unique = [p["unique_id"] for p in configs.values()]
        assert len(unique) == len(set(unique))
        kinds = {d: k for d, k in DEVICES}
        per_device = {d: [p for t, (owner, _) in wanted.items() if owner == d
                          for p in [configs[t]]] for d in kinds}
        for device_id, payloads in per_device.items():
            assert payloads, f"no entity for {device_id}"
            assert all(p["device"]["name"] == device_id for p in payloads)
        # Availability: the gateway's will and each device's presence, retained.
        await until(lambda: all(ha.latest.get(availability_topic(d)) == b"online"
                                     for d in kinds))
        assert ha.latest["home-gateway/status"] == b"online"
        await until(lambda: all(ha.state(d) for d in kinds))
        gateway = json.loads(ha.latest[GATEWAY_STATE_TOPIC])
        assert gateway["devices_online"] == len(DEVICES)


async def test_a_birth_message_republishes_everything(lab: Lab) -> None:
    wanted = lab.daemon.homeassistant.entities()
    async with HomeAssistant(ha_endpoint(lab)) as ha:
        await until(lambda: set(ha.configs()) == set(wanted))
        seen = len(ha.arrivals)
        await ha.session.publish("homeassistant/status", b"online", qos=1)
        fresh = lambda: {m.topic for m in ha.arrivals[seen:]}  # noqa: E731
        devices = [d for d, _ in DEVICES]
        # Configs, then availability, then states: the states are published last.
        await until(lambda: set(wanted) <= fresh())
        await until(lambda: {availability_topic(d) for d in devices} <= fresh())
        await until(lambda: {f"home-gateway/{d}/state" for d in devices} <= fresh())
        assert lab.daemon.homeassistant.last_birth["payload"] == "online"
        # Its will ("offline") is recorded but republishes nothing.
        seen = len(ha.arrivals)
        await ha.session.publish("homeassistant/status", b"offline", qos=1)
        await until(lambda: lab.daemon.homeassistant.last_birth["payload"] == "offline")
        await asyncio.sleep(2.0)
        assert not set(wanted) & fresh()


async def test_removing_a_device_removes_its_entities(lab: Lab) -> None:
    before = lab.daemon.homeassistant.entities()
    plug_topics = {t for t, (owner, _) in before.items() if owner == "plug-1"}
    assert plug_topics
    async with HomeAssistant(ha_endpoint(lab)) as ha:
        await until(lambda: set(ha.configs()) == set(before))
        await lab.daemon.devices.remove("plug-1")
        await until(lambda: not plug_topics & set(ha.configs()))
        # The removals were empty retained configs, the way Home Assistant deletes.
        assert all(any(m.topic == t and m.payload == b"" for m in ha.arrivals)
                   for t in plug_topics)
    # A Home Assistant that connects later sees no trace of it.
    async with HomeAssistant(ha_endpoint(lab)) as later:
        await until(lambda: len(later.configs()) == len(before) - len(plug_topics))
        await asyncio.sleep(0.5)
        assert not any("plug-1" in t for t in later.latest)


async def test_after_a_restart_no_stale_or_duplicate_entity_remains(tmp_path: Path) -> None:
    lab = await start_lab(tmp_path / "gw")
    try:
        await lab.add_devices(DEVICES[:3], interval_s=0.5)
        async with HomeAssistant(ha_endpoint(lab)) as ha:
            await until(lambda: len(ha.configs()) == len(lab.daemon.homeassistant
                                                              .entities()))
    finally:
        await lab.stop()
    # While the gateway is down, a device leaves the registry (as `home-gateway device
    # remove` does without a daemon).
    from gateway.devices.registry import Registry
    from gateway.store import Store
    store = Store(tmp_path / "gw" / "gateway.db")
    Registry(store).remove("bulb-1", "admin")
    store.close()
    lab = await start_lab(tmp_path / "gw")
    try:
        wanted = lab.daemon.homeassistant.entities()
        assert not any(owner == "bulb-1" for owner, _ in wanted.values())
        async with HomeAssistant(ha_endpoint(lab)) as ha:
            await until(lambda: set(ha.configs()) == set(wanted))
            await asyncio.sleep(1.0)  # anything stale would still be arriving
            configs = ha.configs()
            assert set(configs) == set(wanted)
            unique = [p["unique_id"] for p in configs.values()]
            assert len(unique) == len(set(unique))
            assert not any(t.startswith("home-gateway/bulb-1/") for t in ha.latest)
    finally:
        await lab.stop()


def agent(lab: Lab, device_id: str) -> SimDevice:
    return next(a for a in lab.fleet.devices if a.id == device_id)


async def test_a_command_on_a_set_topic_reaches_the_device_and_its_state_comes_back(
        lab: Lab) -> None:
    async with HomeAssistant(ha_endpoint(lab)) as ha:
        await until(lambda: "on" in ha.state("plug-1"))
        want = not ha.state("plug-1")["on"]
        await ha.session.publish("home-gateway/plug-1/on/set", b"ON" if want else b"OFF", 1)
        await until(lambda: agent(lab, "plug-1").state["on"] is want)
        await until(lambda: ha.state("plug-1").get("on") is want)
        await ha.session.publish("home-gateway/bulb-1/brightness/set", b"37", 1)
        await until(lambda: ha.state("bulb-1").get("brightness") == 37)
        await ha.session.publish("home-gateway/thermo-1/target/set", b"22.5", 1)
        await until(lambda: ha.state("thermo-1").get("target") == 22.5)
        await ha.session.publish("home-gateway/thermo-1/mode/set", b"cool", 1)
        await until(lambda: ha.state("thermo-1").get("mode") == "cool")
    audit = lab.daemon.store.audit_log(50, "command", actor="homeassistant")
    assert {(e.target, e.result) for e in audit} >= {("plug-1", "ok"), ("bulb-1", "ok"),
                                                     ("thermo-1", "ok")}
    assert all("source homeassistant" in e.detail for e in audit)


async def test_an_invalid_command_is_rejected_audited_and_never_forwarded(lab: Lab) -> None:
    bad = [("home-gateway/plug-1/on/set", b"MAYBE", "plug-1"),
           ("home-gateway/bulb-1/brightness/set", b"500", "bulb-1"),
           ("home-gateway/bulb-1/brightness/set", b"nan", "bulb-1"),
           ("home-gateway/thermo-1/mode/set", b"turbo", "thermo-1"),
           ("home-gateway/thermo-1/target/set", b"99", "thermo-1"),
           ("home-gateway/plug-1/firmware/set", b"evil.bin", "plug-1"),
           ("home-gateway/nobody/on/set", b"ON", "nobody"),
           ("home-gateway/door-1/open/set", b"ON", "door-1")]
    handled = {a.id: a.commands_handled for a in lab.fleet.devices}
    async with HomeAssistant(ha_endpoint(lab)) as ha:
        for topic, payload, _ in bad:
            await ha.session.publish(topic, payload, 1)
        await until(lambda: lab.daemon.homeassistant.commands["rejected"] == len(bad))
        await asyncio.sleep(0.5)
        assert not [m for m in ha.arrivals if m.topic.endswith("/cmd")]
    assert {a.id: a.commands_handled for a in lab.fleet.devices} == handled
    audit = lab.daemon.store.audit_log(50, "command", actor="homeassistant",
                                       result="rejected")
    assert sorted(e.target for e in audit) == sorted(t for _, _, t in bad)
    details = " | ".join(e.detail for e in audit)
    for word in ("MAYBE", "brightness", "nan", "mode", "target", "firmware", "nobody", "open"):
        assert word in details, (word, details)


async def test_home_assistant_login_reaches_only_its_trees(lab: Lab) -> None:
    plug = agent(lab, "plug-1")
    async with HomeAssistant(ha_endpoint(lab)) as ha:
        await until(lambda: ha.state("plug-1"))
        before = plug.commands_handled
        state = ha.state("plug-1")
        with contextlib.suppress(Exception):  # the broker refuses it (SUBACK 0x80)
            await ha.session.subscribe("devices/#", 1)
        # Not the devices' own topics: it hears nothing there and its commands go nowhere.
        await ha.session.publish("devices/plug-1/cmd", json.dumps(
            {"id": "x1", "action": "set_power", "params": {"on": not state["on"]}}), 1)
        # Nor forge a state Home Assistant's users would trust.
        await ha.session.publish("home-gateway/plug-1/state", b'{"on": "forged"}', 1, True)
        await asyncio.sleep(1.5)
        assert plug.commands_handled == before
        assert not [m for m in ha.arrivals if m.topic.startswith("devices/")]
        assert ha.state("plug-1").get("on") != "forged"


async def test_the_login_rotates_without_cutting_home_assistant_off(lab: Lab) -> None:
    login = lab.daemon.ha_login
    assert login is not None
    old = login.current
    new_username = await login.rotate("test")
    new = login.current
    assert new["username"] == new_username != old["username"]
    # The old login still works until Home Assistant has used the new one ...
    async with HomeAssistant(lab.endpoint(old["username"], old["password"])):
        pass
    async with HomeAssistant(lab.endpoint(new["username"], new["password"])):
        await until(lambda: login.previous is None)
    # ... and then it is gone.
    refused = MqttSession(lab.endpoint(old["username"], old["password"]), client_id="old",
                          on_message=lambda m: None)
    refused.start()
    try:
        await until(lambda: refused.last_error is not None)
        assert not refused.connected
    finally:
        await refused.stop()
    actions = [(e.result, e.actor) for e in lab.daemon.store.audit_log(
        10)]
    assert ("rotated", "test") in actions and ("switched", "homeassistant") in actions


async def test_the_gateway_joins_home_assistants_own_broker(tmp_path: Path) -> None:
    """homeassistant.broker = "external": a second, real Mosquitto stands in for Home
    Assistant's broker; the gateway publishes there and takes commands from there."""
    from gateway.broker.process import EmbeddedBroker
    from gateway.broker.render import GATEWAY_USERNAME, BrokerFiles, ListenerSpec
    from gateway.credentials.pki import Pki
    from gateway.credentials.secrets import load_or_create_login, write_private
    from gateway.sim.lab import free_port
    from gateway.store import Store

    port = free_port()
    store = Store(tmp_path / "ha-broker.db")
    theirs = EmbeddedBroker(BrokerFiles(tmp_path / "ha-broker"),
                            [ListenerSpec("127.0.0.1", port, False)],
                            executable="/usr/sbin/mosquitto", max_packet_size=1 << 20,
                            store=store, pki=Pki(tmp_path / "ha-pki"))
    await theirs.start()
    try:
        username, secret = load_or_create_login(theirs.files.gateway_secret, GATEWAY_USERNAME)
        write_private(tmp_path / "ha-password", secret + "\n")
        lab = await start_lab(tmp_path / "gw", extra_config=(
            '\n[homeassistant]\nbroker = "external"\nrepublish_jitter_s = 0\n'
            f'[homeassistant.external]\nhost = "127.0.0.1"\nport = {port}\n'
            f'username = "{username}"\npassword_file = "{tmp_path / "ha-password"}"\n'
            "tls = false\n"))
        try:
            assert lab.daemon.ha_login is None  # no Home Assistant login on our broker
            await lab.add_devices(DEVICES[:2], interval_s=0.5)
            wanted = lab.daemon.homeassistant.entities()
            async with HomeAssistant(Endpoint("127.0.0.1", port, username, secret)) as ha:
                await until(lambda: set(ha.configs()) == set(wanted))
                assert ha.latest["home-gateway/status"] == b"online"
                await until(lambda: "on" in ha.state("plug-1"))
                want = not ha.state("plug-1")["on"]
                await ha.session.publish("home-gateway/plug-1/on/set",
                                         b"ON" if want else b"OFF", 1)
                await until(lambda: ha.state("plug-1").get("on") is want)
                assert agent(lab, "plug-1").state["on"] is want
        finally:
            await lab.stop()
        # The gateway said goodbye on Home Assistant's broker too.
        async with HomeAssistant(Endpoint("127.0.0.1", port, username, secret)) as later:
            await until(lambda: later.latest.get("home-gateway/status") == b"offline")
    finally:
        await theirs.stop()
        store.close()
