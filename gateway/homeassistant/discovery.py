"""Home Assistant MQTT discovery: the configs the gateway publishes, and the commands back.

Pure functions only (no I/O): `bridge.py` publishes what these return. Every entity is
derived from the device kind's table (`gateway.devices.kinds.KINDS`) and the small tables
below, so a new kind needs entries here only for what Home Assistant shows differently:

- `METRICS`: how a telemetry key is shown (component, device class, unit, state class);
  a key not listed becomes a plain sensor;
- `COMPOSITES`: kinds whose keys Home Assistant shows as one richer entity (a thermostat
  is a `climate`, a bulb a `light`), and which keys that entity takes over;
- a settable bool key becomes a `switch`, a parameterless action a `button`.

Every state comes from the device's retained JSON state (`home-gateway/<id>/state`) through
a template that tolerates a missing key; every command goes to `home-gateway/<id>/<key>/set`
and is turned back into an (action, params) command by `parse_set`, then checked against
the kind's schema like any other command. `discovery-schema.json` (beside this file) is the
project's schema of what is published; the tests hold every payload to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from gateway.devices.kinds import KINDS, Kind, Param, check_command
from gateway.devices.topics import HA_BRIDGE_ROOT, bridge_state_topic

ORIGIN_NAME = "Home Gateway"
MANUFACTURER = "Home Gateway"
GATEWAY_STATUS_TOPIC = f"{HA_BRIDGE_ROOT}/status"  # the gateway's retained online/offline
GATEWAY_STATE_TOPIC = f"{HA_BRIDGE_ROOT}/_gateway/state"  # retained JSON: gateway_state()
SET_SUBSCRIPTION = f"{HA_BRIDGE_ROOT}/+/+/set"
ONLINE, OFFLINE = "online", "offline"
ON, OFF = "ON", "OFF"
PRESS = "PRESS"
MAX_SET_PAYLOAD = 64  # bytes: every valid command payload is far shorter
CONTROL_QOS = 1


def availability_topic(device_id: str) -> str:
    """Retained "online"/"offline": the device's presence."""
    return f"{HA_BRIDGE_ROOT}/{device_id}/availability"


def set_topic(device_id: str, key: str) -> str:
    """Where Home Assistant sends a command: a settable state key or an action's name."""
    return f"{HA_BRIDGE_ROOT}/{device_id}/{key}/set"


def node_id(gateway_id: str) -> str:
    """The discovery node id, and the prefix of every unique id this gateway publishes."""
    return f"hg_{gateway_id}"


@dataclass(frozen=True, slots=True)
class Entity:
    component: str  # "sensor", "binary_sensor", "switch", "light", "climate", "button"
    object_id: str  # [a-zA-Z0-9_-]+, unique within its device
    topic: str  # <prefix>/<component>/<node id>/<device id>_<object id>/config
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    id: str
    name: str
    kind: str
    model: str | None
    firmware: str | None
    mac: str | None


# -- tables ----------------------------------------------------------------------------


class Metric(NamedTuple):
    """How Home Assistant shows one telemetry key that no composite entity takes over."""

    component: str  # "sensor" or "binary_sensor" (a settable bool key is a switch anyway)
    device_class: str | None
    unit: str | None
    state_class: str | None
    name: str | None = None  # None: the key, capitalised, with "_" as spaces


METRICS: dict[str, Metric] = {
    "temperature": Metric("sensor", "temperature", "°C", "measurement"),
    "humidity": Metric("sensor", "humidity", "%", "measurement"),
    "battery": Metric("sensor", "battery", "%", "measurement"),
    "power_w": Metric("sensor", "power", "W", "measurement", "Power"),
    "energy_wh": Metric("sensor", "energy", "Wh", "total_increasing", "Energy"),
    "open": Metric("binary_sensor", "door", None, None, "Door"),
    "motion": Metric("binary_sensor", "motion", None, None),
    "heating": Metric("binary_sensor", "heat", None, None),
    "on": Metric("binary_sensor", "power", None, None, "Power"),
    "recording": Metric("binary_sensor", "running", None, None),
}

# The entity Home Assistant names after the device itself (its name is null): by object id.
MAIN_ENTITY: dict[str, str] = {
    "thermostat": "climate",
    "plug": "on",
    "bulb": "light",
    "door": "open",
}

THERMOSTAT_MIN_C, THERMOSTAT_MAX_C, THERMOSTAT_STEP_C = 5.0, 30.0, 0.5


# -- templates (Home Assistant's Jinja) -------------------------------------------------


def _ref(key: str) -> str:
    return f"value_json[{key!r}]"


def _value_template(key: str, missing: str = "none") -> str:
    """The key's value; `missing` (a Jinja expression) when absent or null. A rendered
    "None" is "unknown" to sensors and climate attributes; an empty result is ignored."""
    ref = _ref(key)
    return (f"{{{{ {ref} if {ref} is defined and {ref} is not none "
            f"else {missing} }}}}")


def _bool_template(key: str) -> str:
    """ON/OFF from a JSON bool; "None" (unknown) when absent."""
    ref = _ref(key)
    return (f"{{% if {ref} is defined and {ref} is not none %}}"
            f"{{{{ '{ON}' if {ref} else '{OFF}' }}}}{{% else %}}None{{% endif %}}")


def _action_template(mode_key: str, heating_key: str) -> str:
    mode, heating = _ref(mode_key), _ref(heating_key)
    return (f"{{% if {mode} is defined and {mode} == 'off' %}}off"
            f"{{% elif {heating} is defined and {heating} is not none %}}"
            f"{{{{ 'heating' if {heating} else 'idle' }}}}"
            f"{{% else %}}None{{% endif %}}")


# -- building entities -----------------------------------------------------------------


def _label(key: str) -> str:
    return key.replace("_", " ").capitalize()


def _availability(*topics: str) -> list[dict[str, str]]:
    return [{"topic": t, "payload_available": ONLINE, "payload_not_available": OFFLINE}
            for t in topics]


class _Builder:
    """Builds the entities of one device (or of the gateway) with the shared fields."""

    def __init__(self, prefix: str, node: str, stem: str, device: dict[str, Any],
                 origin: dict[str, Any], availability: list[dict[str, str]],
                 main: str | None, extra: Mapping[str, Any] | None = None) -> None:
        self.prefix, self.node, self.stem = prefix, node, stem
        self.device, self.origin, self.availability = device, origin, availability
        self.main, self.extra = main, dict(extra or {})
        self.entities: list[Entity] = []
        self.used: set[str] = set()

    def add(self, component: str, object_id: str, name: str | None,
            fields: Mapping[str, Any]) -> None:
        if object_id in self.used:
            return  # one entity per object id: the first (the richer) one wins
        self.used.add(object_id)
        slug = f"{self.stem}_{object_id}"
        payload: dict[str, Any] = {
            "name": None if object_id == self.main else name,
            "unique_id": f"{self.node}_{slug}",
            "default_entity_id": f"{component}.{self.node}_{slug.replace('-', '_')}",
            "device": self.device,
            "origin": self.origin,
            "availability": self.availability,
            "availability_mode": "all",
            **self.extra,
        }
        payload.update({k: v for k, v in fields.items() if v is not None})
        topic = f"{self.prefix}/{component}/{self.node}/{slug}/config"
        self.entities.append(Entity(component, object_id, topic, payload))


def _climate(b: _Builder, device_id: str, kind: Kind) -> set[str]:
    state = bridge_state_topic(device_id)
    modes = list(kind.actions[kind.settable["mode"]]["mode"].choices)
    target = kind.actions[kind.settable["target"]]["target"]
    b.add("climate", "climate", None, {
        "current_temperature_topic": state,
        "current_temperature_template": _value_template("temperature"),
        "current_humidity_topic": state if "humidity" in kind.metrics else None,
        "current_humidity_template": (_value_template("humidity")
                                      if "humidity" in kind.metrics else None),
        "temperature_command_topic": set_topic(device_id, "target"),
        "temperature_state_topic": state,
        "temperature_state_template": _value_template("target"),
        "mode_command_topic": set_topic(device_id, "mode"),
        "mode_state_topic": state,
        "mode_state_template": _value_template("mode", "''"),  # empty: ignored, not invalid
        "modes": modes,
        "action_topic": state,
        "action_template": _action_template("mode", "heating"),
        "min_temp": target.low if target.low is not None else THERMOSTAT_MIN_C,
        "max_temp": target.high if target.high is not None else THERMOSTAT_MAX_C,
        "temp_step": THERMOSTAT_STEP_C,
        "precision": 0.1,
        "temperature_unit": "C",
        "qos": CONTROL_QOS,
    })
    # humidity stays a sensor of its own as well (history, statistics)
    return {"temperature", "target", "mode", "heating"}


def _light(b: _Builder, device_id: str, kind: Kind) -> set[str]:
    state = bridge_state_topic(device_id)
    b.add("light", "light", None, {
        "command_topic": set_topic(device_id, "on"),
        "state_topic": state,
        "state_value_template": _bool_template("on"),
        "payload_on": ON,
        "payload_off": OFF,
        "brightness_command_topic": set_topic(device_id, "brightness"),
        "brightness_state_topic": state,
        # empty (ignored) when absent: the light would fail to parse "None"
        "brightness_value_template": _value_template("brightness", "''"),
        "brightness_scale": 100,
        "qos": CONTROL_QOS,
    })
    return {"on", "brightness"}


# kind -> builders of the entities that take several keys over (returning those keys)
COMPOSITES: dict[str, tuple[Callable[[_Builder, str, Kind], set[str]], ...]] = {
    "thermostat": (_climate,),
    "bulb": (_light,),
}


def _device_block(node: str, device: DeviceInfo) -> dict[str, Any]:
    block: dict[str, Any] = {
        "identifiers": [f"{node}_{device.id}"],
        "name": device.name,
        "manufacturer": MANUFACTURER,
        "model": device.model or device.kind.title(),
        "via_device": node,
    }
    if device.firmware:
        block["sw_version"] = device.firmware
    if device.mac:
        block["connections"] = [["mac", device.mac.lower()]]
    return block


def _origin(sw_version: str) -> dict[str, Any]:
    return {"name": ORIGIN_NAME, "sw_version": sw_version}


def device_entities(prefix: str, gateway_id: str, device: DeviceInfo,
                    sw_version: str) -> list[Entity]:
    """Every discovery config for one device (none for an unknown kind)."""
    kind = KINDS.get(device.kind)
    if kind is None:
        return []
    node = node_id(gateway_id)
    b = _Builder(prefix, node, device.id, _device_block(node, device), _origin(sw_version),
                 _availability(GATEWAY_STATUS_TOPIC, availability_topic(device.id)),
                 MAIN_ENTITY.get(kind.name))
    state = bridge_state_topic(device.id)
    taken: set[str] = set()
    for composite in COMPOSITES.get(kind.name, ()):
        taken |= composite(b, device.id, kind)
    for key, action in kind.settable.items():  # the remaining controls
        if key in taken:
            continue
        (param,) = kind.actions[action].values()
        if param.type is bool:
            name = (METRICS[key].name if key in METRICS else None) or _label(key)
            b.add("switch", key, name, {
                "command_topic": set_topic(device.id, key),
                "state_topic": state,
                "value_template": _bool_template(key),
                "payload_on": ON,
                "payload_off": OFF,
                "state_on": ON,
                "state_off": OFF,
                "qos": CONTROL_QOS,
            })
            taken.add(key)
    for key in kind.metrics:
        if key in taken:
            continue
        metric = METRICS.get(key, Metric("sensor", None, None, None))
        name = metric.name or _label(key)
        if metric.component == "binary_sensor":
            b.add("binary_sensor", key, name, {
                "state_topic": state,
                "value_template": _bool_template(key),
                "payload_on": ON,
                "payload_off": OFF,
                "device_class": metric.device_class,
            })
        else:
            b.add("sensor", key, name, {
                "state_topic": state,
                "value_template": _value_template(key),
                "device_class": metric.device_class,
                "unit_of_measurement": metric.unit,
                "state_class": metric.state_class,
            })
    for action, params in kind.actions.items():
        if not params:
            b.add("button", action, _label(action), {
                "command_topic": set_topic(device.id, action),
                "payload_press": PRESS,
                "device_class": "identify" if action == "identify" else None,
                "entity_category": "config" if action == "identify" else None,
                "qos": CONTROL_QOS,
            })
    return b.entities


# -- the gateway's own entities ------------------------------------------------------

FIREWALL_MODES = ("enforce", "render-only", "off")


def gateway_entities(prefix: str, gateway_id: str, sw_version: str,
                     gateway_name: str) -> list[Entity]:
    """The gateway's own diagnostics, all read from GATEWAY_STATE_TOPIC."""
    node = node_id(gateway_id)
    device = {"identifiers": [node], "name": gateway_name, "manufacturer": MANUFACTURER,
              "model": MANUFACTURER, "sw_version": sw_version}
    b = _Builder(prefix, node, "gateway", device, _origin(sw_version),
                 _availability(GATEWAY_STATUS_TOPIC), None,
                 {"entity_category": "diagnostic"})
    state = GATEWAY_STATE_TOPIC

    def binary(object_id: str, name: str, device_class: str) -> None:
        b.add("binary_sensor", object_id, name, {
            "state_topic": state, "value_template": _value_template(object_id, "'None'"),
            "payload_on": ON, "payload_off": OFF, "device_class": device_class})

    def sensor(object_id: str, name: str, **fields: Any) -> None:
        b.add("sensor", object_id, name, {
            "state_topic": state, "value_template": _value_template(object_id), **fields})

    binary("cloud", "Cloud link", "connectivity")
    sensor("firewall_mode", "Firewall mode", device_class="enum",
           options=list(FIREWALL_MODES))
    binary("firewall_problem", "Firewall health", "problem")
    sensor("blocked", "Inbound connections blocked", state_class="total_increasing",
           unit_of_measurement="connections")
    sensor("devices_online", "Devices online", state_class="measurement")
    sensor("spool", "Cloud spool depth", state_class="measurement",
           unit_of_measurement="messages")
    return b.entities


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) else None


def gateway_state(status: Mapping[str, Any]) -> dict[str, Any]:
    """The daemon's status (`Daemon.status()`) -> the JSON the gateway's entities read.

    A part missing from the status gives null (unknown in Home Assistant), never an error.
    """
    cloud = _get(status, "cloud", "state")
    firewall = _get(status, "firewall")
    mode = _get(firewall, "mode")
    healthy = _get(firewall, "healthy")
    problem: str | None = None
    if isinstance(mode, str):
        # Not enforcing, or enforcing badly: the devices are not (fully) protected.
        problem = ON if mode != "enforce" or healthy is not True else OFF
    return {
        "cloud": (ON if cloud == "connected" else OFF) if isinstance(cloud, str) else None,
        "firewall_mode": mode if mode in FIREWALL_MODES else None,
        "firewall_problem": problem,
        "blocked": _count(_get(firewall, "dropped", "inbound")),
        "devices_online": _count(_get(status, "devices", "online")),
        "spool": _count(_get(status, "cloud", "spool", "messages")),
    }


# -- commands from Home Assistant ---------------------------------------------------------


class SetError(ValueError):
    """A `set` message that is not a valid command; str() says what was wrong."""


def _keys(kind: Kind) -> list[str]:
    return sorted({*kind.settable, *(a for a, p in kind.actions.items() if not p)})


def _convert(key: str, param: Param, text: str) -> Any:
    if param.type is bool:
        word = text.lower()
        if word in ("on", "true"):
            return True
        if word in ("off", "false"):
            return False
        raise SetError(f"{key}: expected ON or OFF, got {text!r}")
    if param.type is str:
        return text  # checked against the choices below
    try:
        number = float(text)
    except ValueError:
        raise SetError(f"{key}: expected a number, got {text!r}") from None
    if not math.isfinite(number):
        raise SetError(f"{key}: expected a finite number, got {text!r}")
    if param.type is int:
        if not number.is_integer():
            raise SetError(f"{key}: expected a whole number, got {text!r}")
        return int(number)
    return number


def parse_set(kind: str, key: str, payload: bytes) -> tuple[str, dict[str, Any]]:
    """`home-gateway/<id>/<key>/set` with `payload` -> (action, params), checked against
    the kind's schema; SetError (naming the problem) for anything else."""
    spec = KINDS.get(kind)
    if spec is None:
        raise SetError(f"unknown device kind {kind!r}")
    if len(payload) > MAX_SET_PAYLOAD:
        raise SetError(f"{key}: payload too long ({len(payload)} bytes, at most "
                       f"{MAX_SET_PAYLOAD})")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SetError(f"{key}: payload is not UTF-8 text") from None
    action = spec.settable.get(key)
    if action is not None:
        ((name, param),) = spec.actions[action].items()
        params: dict[str, Any] = {name: _convert(key, param, text)}
    elif key in spec.actions and not spec.actions[key]:
        if text.upper() != PRESS:
            raise SetError(f"{key}: expected {PRESS}, got {text!r}")
        action, params = key, {}
    else:
        raise SetError(f"unknown key {key!r} for a {kind} (expected one of: "
                       f"{', '.join(_keys(spec))})")
    problem = check_command(kind, action, params)
    if problem:
        raise SetError(f"{key}: {problem}")
    return action, params
