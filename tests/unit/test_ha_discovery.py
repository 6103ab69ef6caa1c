"""gateway.homeassistant.discovery: payloads held to the project's schema, and commands."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jinja2
import jsonschema  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.devices.kinds import KINDS, check_command
from gateway.devices.topics import DEVICE_ID, bridge_state_topic
from gateway.homeassistant import discovery
from gateway.homeassistant.discovery import (
    GATEWAY_STATE_TOPIC,
    GATEWAY_STATUS_TOPIC,
    SET_SUBSCRIPTION,
    DeviceInfo,
    Entity,
    SetError,
    availability_topic,
    device_entities,
    gateway_entities,
    gateway_state,
    node_id,
    parse_set,
    set_topic,
)

SCHEMA = json.loads((Path(discovery.__file__).parent / "discovery-schema.json").read_text())
PREFIX = "homeassistant"
GATEWAY_ID = "a1b2c3"
NODE = node_id(GATEWAY_ID)
VERSION = "0.1.0"
ID = re.compile(r"[a-zA-Z0-9_-]+")
COMPONENTS = ("sensor", "binary_sensor", "switch", "light", "climate", "button")


def info(kind: str, device_id: str | None = None, *, full: bool = True) -> DeviceInfo:
    return DeviceInfo(id=device_id or f"{kind}-1", name=f"Living room {kind}", kind=kind,
                      model="X-100" if full else None, firmware="1.4.2" if full else None,
                      mac="AA:BB:CC:00:11:22" if full else None)


def kind_entities(kind: str, *, full: bool = True) -> list[Entity]:
    return device_entities(PREFIX, GATEWAY_ID, info(kind, full=full), VERSION)


GATEWAY = gateway_entities(PREFIX, GATEWAY_ID, VERSION, "Home Gateway (hall)")
ALL = [(kind, e) for kind in KINDS for full in (True, False)
       for e in kind_entities(kind, full=full)] + [("gateway", e) for e in GATEWAY]


def validator(component: str) -> jsonschema.Draft202012Validator:
    schema = {**SCHEMA, "$ref": f"#/components/{component}"}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(component: str, payload: dict[str, Any]) -> list[str]:
    return [e.message for e in validator(component).iter_errors(payload)]


# -- the schema -----------------------------------------------------------------------


def test_schema_has_every_component() -> None:
    assert set(SCHEMA["components"]) == set(COMPONENTS)
    for component in COMPONENTS:
        assert SCHEMA["components"][component]["additionalProperties"] is False
        assert {"unique_id", "device", "availability"} <= set(
            SCHEMA["components"][component]["required"])


@pytest.mark.parametrize(("owner", "entity"), ALL,
                         ids=[f"{k}-{e.component}-{e.object_id}" for k, e in ALL])
def test_every_payload_validates(owner: str, entity: Entity) -> None:
    assert entity.component in COMPONENTS
    assert errors(entity.component, entity.payload) == []
    json.dumps(entity.payload)  # plain JSON


def _climate() -> dict[str, Any]:
    return next(e for e in kind_entities("thermostat") if e.component == "climate").payload


def _sensor() -> dict[str, Any]:
    return next(e for e in kind_entities("sensor") if e.object_id == "temperature").payload


def test_schema_rejects_deprecated_object_id() -> None:
    assert any("object_id" in m for m in errors("sensor", {**_sensor(), "object_id": "x"}))


def test_schema_rejects_missing_unique_id() -> None:
    payload = {k: v for k, v in _climate().items() if k != "unique_id"}
    assert any("'unique_id' is a required property" in m for m in errors("climate", payload))


def test_schema_rejects_bad_device_class() -> None:
    assert errors("sensor", {**_sensor(), "device_class": "temprature"})
    door = next(e for e in kind_entities("door") if e.component == "binary_sensor").payload
    assert errors("binary_sensor", {**door, "device_class": "temperature"})


def test_schema_rejects_unknown_key_and_bad_values() -> None:
    assert any("stat_topic" in m for m in errors("sensor", {**_sensor(), "stat_topic": "x"}))
    assert errors("sensor", {**_sensor(), "unit_of_measurement": "%"})  # °C for temperature
    assert errors("sensor", {**_sensor(), "state_class": "growing"})
    assert errors("sensor", {k: v for k, v in _sensor().items() if k != "state_topic"})
    assert errors("climate", {**_climate(), "modes": ["heat", "boil"]})
    assert errors("climate", {**_climate(), "device": {**_climate()["device"], "modle": "x"}})
    assert errors("climate", {**_climate(), "origin": {"sw_version": "1"}})
    assert errors("climate", {**_climate(), "availability": []})
    assert errors("climate", {**_climate(), "default_entity_id": "sensor.x"})


# -- ids and topics -------------------------------------------------------------------


@pytest.mark.parametrize(("owner", "entity"), ALL,
                         ids=[f"{k}-{e.component}-{e.object_id}" for k, e in ALL])
def test_ids_and_topics(owner: str, entity: Entity) -> None:
    p = entity.payload
    assert ID.fullmatch(entity.object_id)
    assert ID.fullmatch(p["unique_id"])
    assert "object_id" not in p
    stem = "gateway" if owner == "gateway" else f"{owner}-1"
    assert p["unique_id"] == f"{NODE}_{stem}_{entity.object_id}"
    assert entity.topic == f"{PREFIX}/{entity.component}/{NODE}/{stem}_{entity.object_id}/config"
    _, component, node, object_id, leaf = entity.topic.split("/")
    assert (component, node, leaf) == (entity.component, NODE, "config")
    assert ID.fullmatch(node) and ID.fullmatch(object_id)
    assert p["default_entity_id"] == (
        f"{entity.component}.{NODE}_{stem.replace('-', '_')}_{entity.object_id}")
    assert p["origin"] == {"name": discovery.ORIGIN_NAME, "sw_version": VERSION}
    assert p["availability_mode"] == "all"
    topics = [a["topic"] for a in p["availability"]]
    assert topics == ([GATEWAY_STATUS_TOPIC] if owner == "gateway"
                      else [GATEWAY_STATUS_TOPIC, availability_topic(stem)])
    if owner == "gateway":
        assert p["device"]["identifiers"] == [NODE]
        assert p["entity_category"] == "diagnostic"
        assert p["state_topic"] == GATEWAY_STATE_TOPIC
    else:
        assert p["device"]["identifiers"] == [f"{NODE}_{stem}"]
        assert p["device"]["via_device"] == NODE
        state_topics = [v for k, v in p.items() if k.endswith("_topic")
                        and "command" not in k]
        assert all(t == bridge_state_topic(stem) for t in state_topics)
    if any(k.endswith("command_topic") for k in p):
        assert p["qos"] == 1


def _check_unique(entities: list[Entity]) -> None:
    for attr in ("unique_id", "default_entity_id"):
        values = [e.payload[attr] for e in entities]
        assert len(values) == len(set(values)), attr
    assert len({e.topic for e in entities}) == len(entities)


def test_unique_ids_unique_across_kinds_and_gateway() -> None:
    _check_unique([*GATEWAY, *(e for kind in KINDS for e in kind_entities(kind))])
    for kind in KINDS:  # even a device called "gateway" cannot clash with the gateway
        _check_unique([*GATEWAY, *device_entities(PREFIX, GATEWAY_ID, info(kind, "gateway"),
                                                  VERSION)])


def test_entities_per_kind() -> None:
    def summary(kind: str) -> list[tuple[str, str, str | None]]:
        return [(e.component, e.object_id, e.payload["name"]) for e in kind_entities(kind)]

    assert summary("thermostat") == [("climate", "climate", None),
                                     ("sensor", "humidity", "Humidity")]
    assert summary("plug") == [("switch", "on", None), ("sensor", "power_w", "Power"),
                               ("sensor", "energy_wh", "Energy")]
    assert summary("bulb") == [("light", "light", None)]
    assert summary("door") == [("binary_sensor", "open", None),
                               ("sensor", "battery", "Battery"),
                               ("button", "identify", "Identify")]
    assert summary("camera") == [("switch", "recording", "Recording"),
                                 ("binary_sensor", "motion", "Motion")]
    assert summary("sensor") == [("sensor", "temperature", "Temperature"),
                                 ("sensor", "humidity", "Humidity"),
                                 ("sensor", "battery", "Battery"),
                                 ("button", "identify", "Identify")]
    assert device_entities(PREFIX, GATEWAY_ID, info("toaster"), VERSION) == []


def test_device_block() -> None:
    full = kind_entities("plug")[0].payload["device"]
    assert full == {"identifiers": [f"{NODE}_plug-1"], "name": "Living room plug",
                    "manufacturer": "Home Gateway", "model": "X-100", "sw_version": "1.4.2",
                    "via_device": NODE, "connections": [["mac", "aa:bb:cc:00:11:22"]]}
    bare = kind_entities("plug", full=False)[0].payload["device"]
    assert bare["model"] == "Plug"
    assert "sw_version" not in bare and "connections" not in bare


def test_climate_and_light_details() -> None:
    c = _climate()
    assert c["temperature_command_topic"] == set_topic("thermostat-1", "target")
    assert c["mode_command_topic"] == set_topic("thermostat-1", "mode")
    assert c["modes"] == ["off", "heat", "cool", "auto"]
    assert (c["min_temp"], c["max_temp"], c["temp_step"]) == (5, 30, 0.5)
    light = kind_entities("bulb")[0].payload
    assert light["command_topic"] == set_topic("bulb-1", "on")
    assert light["brightness_command_topic"] == set_topic("bulb-1", "brightness")
    assert light["brightness_scale"] == 100


def test_set_subscription_matches_set_topics() -> None:
    pattern = re.compile(re.escape(SET_SUBSCRIPTION).replace(r"\+", "[^/]+"))
    for kind in KINDS:
        for e in kind_entities(kind):
            for k, v in e.payload.items():
                if k.endswith("command_topic"):
                    assert pattern.fullmatch(v), v


# -- templates -----------------------------------------------------------------------

def render(template: str, state: dict[str, Any]) -> str:
    """Roughly what Home Assistant does with a value template and a JSON payload."""
    return str(jinja2.Environment().from_string(template).render(value_json=state))


def test_templates_tolerate_missing_keys() -> None:
    for kind in KINDS:
        for e in kind_entities(kind):
            for k, v in e.payload.items():
                if k.endswith("template"):
                    assert render(v, {"ts": 1.7e9}) in ("None", ""), (kind, k)
    c = _climate()
    state = {"temperature": 21.5, "target": 20.0, "mode": "heat", "heating": True,
             "humidity": 40}
    assert render(c["current_temperature_template"], state) == "21.5"
    assert render(c["temperature_state_template"], state) == "20.0"
    assert render(c["mode_state_template"], state) == "heat"
    assert render(c["action_template"], state) == "heating"
    assert render(c["action_template"], {**state, "heating": False}) == "idle"
    assert render(c["action_template"], {**state, "mode": "off"}) == "off"
    switch = kind_entities("plug")[0].payload
    assert render(switch["value_template"], {"on": True}) == switch["state_on"]
    assert render(switch["value_template"], {"on": False}) == switch["state_off"]
    light = kind_entities("bulb")[0].payload
    assert render(light["state_value_template"], {"on": True}) == "ON"
    assert render(light["brightness_value_template"], {"brightness": 40}) == "40"


def test_gateway_templates_read_gateway_state() -> None:
    state = gateway_state(STATUS)
    for e in GATEWAY:
        assert render(e.payload["value_template"], state) == str(state[e.object_id])
        assert render(e.payload["value_template"], {}) == "None"


# -- the gateway's state ------------------------------------------------------------

STATUS: dict[str, Any] = {  # the shape of Daemon.status()
    "healthy": True,
    "uptime_s": 812.4,
    "broker": {"mode": "managed", "running": True, "pid": 4242, "restarts": 0,
               "connected": True},
    "devices": {"total": 7, "online": 5},
    "credentials": {"rotating": 0, "gateway_login": "gateway", "alerts": [],
                    "enrollments_open": 0, "logins_refused": 2, "plaintext_listeners": []},
    "firewall": {"mode": "enforce", "summary": "firewall enforcing (42 rules)",
                 "healthy": True, "enforcing": True, "problem": "", "last_apply": 1.7e9,
                 "last_apply_ms": 31.5, "last_reason": "start", "applies": 3, "failures": 0,
                 "drift_repairs": 0, "last_drift": "", "last_drift_at": None, "rules": 42,
                 "elements": 12, "warnings": [],
                 "dropped": {"inbound": 17, "quarantine": 0, "egress": 3, "lateral": 1,
                             "upnp": 0, "spoof": 0},
                 "dns": {}},
    "cloud": {"state": "connected", "url": "mqtts://cloud.example:8883", "gateway_id": "gw-1",
              "connected_since": 1.7e9, "connections": 1, "last_error": None, "history": [],
              "spool": {"messages": 12, "bytes": 3400, "max_bytes": 10_000_000,
                        "oldest_age_s": 4.2, "max_age_s": 86400, "by_class": {},
                        "evicted": {}},
              "signers": [], "telemetry": "full"},
    "privacy": {},
    "web": {"urls": [], "setup_pending": False},
    "messages": {"accepted": 100, "rejected": 2, "unknown": 0, "commands": 4,
                 "rejected_by_reason": {}},
}


def test_gateway_state() -> None:
    assert gateway_state(STATUS) == {"cloud": "ON", "firewall_mode": "enforce",
                                     "firewall_problem": "OFF", "blocked": 17,
                                     "devices_online": 5, "spool": 12}
    assert set(gateway_state(STATUS)) == {e.object_id for e in GATEWAY}
    json.dumps(gateway_state(STATUS))


def test_gateway_state_problems_and_missing_parts() -> None:
    unhealthy = {**STATUS, "firewall": {**STATUS["firewall"], "healthy": False},
                 "cloud": {**STATUS["cloud"], "state": "offline"}}
    state = gateway_state(unhealthy)
    assert (state["firewall_problem"], state["cloud"]) == ("ON", "OFF")
    render_only = {**STATUS, "firewall": {**STATUS["firewall"], "mode": "render-only"}}
    assert gateway_state(render_only)["firewall_problem"] == "ON"
    assert gateway_state({}) == dict.fromkeys(gateway_state(STATUS))
    assert gateway_state({"firewall": None, "cloud": "x", "devices": {"online": "5"}}) == (
        dict.fromkeys(gateway_state(STATUS)))


# -- commands from Home Assistant ---------------------------------------------------


def ha_payloads(key: str, payload: dict[str, Any]) -> list[bytes]:
    """What Home Assistant may send on `key`'s command topic, from the entity's config."""
    if key == "command_topic" and "payload_press" in payload:
        return [payload["payload_press"].encode()]
    if key == "command_topic":
        return [payload["payload_on"].encode(), payload["payload_off"].encode()]
    if key == "mode_command_topic":
        return [m.encode() for m in payload["modes"]]
    if key == "temperature_command_topic":
        low, high, step = payload["min_temp"], payload["max_temp"], payload["temp_step"]
        return [str(float(low)).encode(), str(float(high)).encode(),
                str(low + step).encode()]
    if key == "brightness_command_topic":
        return [b"0", b"40", str(payload["brightness_scale"]).encode()]
    raise AssertionError(f"no Home Assistant payload known for {key}")


COMMANDS = [(kind, e.component, k, v, body)
            for kind in KINDS for e in kind_entities(kind)
            for k, v in e.payload.items() if k.endswith("command_topic")
            for body in ha_payloads(k, e.payload)]


@pytest.mark.parametrize(("kind", "component", "field", "topic", "body"), COMMANDS)
def test_every_command_topic_parses(kind: str, component: str, field: str, topic: str,
                                    body: bytes) -> None:
    root, device_id, key, leaf = topic.split("/")
    assert (root, leaf) == ("home-gateway", "set") and DEVICE_ID.fullmatch(device_id)
    action, params = parse_set(kind, key, body)
    assert check_command(kind, action, params) is None


def test_every_settable_key_and_button_is_exposed() -> None:
    for kind, spec in KINDS.items():
        keys = {t.split("/")[2] for e in kind_entities(kind)
                for k, t in e.payload.items() if k.endswith("command_topic")}
        assert keys == set(spec.settable) | {a for a, p in spec.actions.items() if not p}


@pytest.mark.parametrize(("kind", "key", "body", "expected"), [
    ("plug", "on", b"ON", ("set_power", {"on": True})),
    ("plug", "on", b" off\n", ("set_power", {"on": False})),
    ("plug", "on", b"true", ("set_power", {"on": True})),
    ("bulb", "brightness", b"40", ("set_brightness", {"brightness": 40})),
    ("bulb", "brightness", b"40.0", ("set_brightness", {"brightness": 40})),
    ("thermostat", "target", b"21.5", ("set_target", {"target": 21.5})),
    ("thermostat", "target", b"21", ("set_target", {"target": 21.0})),
    ("thermostat", "mode", b"cool", ("set_mode", {"mode": "cool"})),
    ("door", "identify", b"PRESS", ("identify", {})),
])
def test_parse_set(kind: str, key: str, body: bytes, expected: tuple[str, Any]) -> None:
    assert parse_set(kind, key, body) == expected


@pytest.mark.parametrize(("kind", "key", "body", "words"), [
    ("toaster", "on", b"ON", ["unknown device kind", "toaster"]),
    ("plug", "power_w", b"5", ["unknown key 'power_w'", "expected one of: on"]),
    ("thermostat", "heating", b"ON", ["'heating'", "mode, target"]),
    ("door", "open", b"ON", ["'open'", "identify"]),
    ("plug", "on", b"x" * 65, ["too long", "65 bytes"]),
    ("plug", "on", b"\xff\xfe", ["not UTF-8"]),
    ("plug", "on", b"1", ["on: expected ON or OFF", "'1'"]),
    ("plug", "on", b"", ["expected ON or OFF"]),
    ("bulb", "brightness", b"bright", ["brightness: expected a number"]),
    ("bulb", "brightness", b"40.5", ["brightness: expected a whole number"]),
    ("bulb", "brightness", b"101", ["brightness", "from 0 to 100"]),
    ("bulb", "brightness", b"nan", ["brightness: expected a finite number"]),
    ("thermostat", "target", b"inf", ["target: expected a finite number"]),
    ("thermostat", "target", b"31", ["target", "from 5 to 30"]),
    ("thermostat", "mode", b"HEAT", ["mode", "expected one of off, heat, cool, auto"]),
    ("thermostat", "mode", b"boil", ["mode", "expected one of"]),
    ("door", "identify", b"ON", ["identify: expected PRESS"]),
])
def test_parse_set_rejects(kind: str, key: str, body: bytes, words: list[str]) -> None:
    with pytest.raises(SetError) as caught:
        parse_set(kind, key, body)
    for word in words:
        assert word in str(caught.value)


@given(st.sampled_from([*KINDS, "toaster"]),
       st.one_of(st.sampled_from(["on", "brightness", "target", "mode", "identify",
                                  "recording", "set_power", "heating"]), st.text()),
       st.one_of(st.binary(max_size=80), st.text(max_size=70).map(str.encode),
                 st.floats().map(lambda f: str(f).encode()),
                 st.integers().map(lambda i: str(i).encode())))
def test_parse_set_only_raises_set_error(kind: str, key: str, body: bytes) -> None:
    try:
        action, params = parse_set(kind, key, body)
    except SetError as exc:
        assert str(exc)
    else:
        assert check_command(kind, action, params) is None
