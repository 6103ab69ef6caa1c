"""Device kinds: what each kind reports and which commands it accepts.

One table serves the simulator, command validation (local, cloud, Home Assistant)
and, later, discovery payloads, so a kind is described in exactly one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Param:
    """One command parameter: a bool, a number in [low, high], or one of `choices`."""

    type: type
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> str | None:
        """Return a problem description, or None when `value` is acceptable."""
        if self.type is bool:
            return None if isinstance(value, bool) else "expected true or false"
        if self.type is str:
            if not isinstance(value, str) or value not in self.choices:
                return f"expected one of {', '.join(self.choices)}"
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "expected a number"
        if value != value:  # NaN
            return "expected a number"
        if self.type is int and not isinstance(value, int):
            return "expected a whole number"
        if self.low is not None and self.high is not None and not self.low <= value <= self.high:
            return f"expected a number from {self.low:g} to {self.high:g}"
        return None


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    telemetry_interval_s: float  # how often a real device of this kind reports
    metrics: tuple[str, ...]  # telemetry keys besides "ts"
    actions: Mapping[str, Mapping[str, Param]]
    # State keys a command sets, and the one-parameter action that sets each: the shadow's
    # desired state is made of these (and a command on them updates it).
    settable: Mapping[str, str] = field(default_factory=dict)

    def command_for(self, key: str, value: Any) -> tuple[str, dict[str, Any]] | None:
        """The (action, params) that sets state `key` to `value`, or None."""
        action = self.settable.get(key)
        if action is None:
            return None
        (param,) = self.actions[action]
        return action, {param: value}

    def state_set_by(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The desired state a command on this kind asks for ({} when it sets none)."""
        return {key: params[param] for key, act in self.settable.items() if act == action
                for param in self.actions[act] if param in params}


_ON = {"on": Param(bool)}

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "thermostat",
            30.0,
            ("temperature", "humidity", "target", "heating"),
            {
                "set_target": {"target": Param(float, 5, 30)},
                "set_mode": {"mode": Param(str, choices=("off", "heat", "cool", "auto"))},
            },
            {"target": "set_target", "mode": "set_mode"},
        ),
        Kind("plug", 10.0, ("power_w", "energy_wh", "on"), {"set_power": _ON},
             {"on": "set_power"}),
        Kind(
            "bulb",
            60.0,
            ("on", "brightness"),
            {"set_power": _ON, "set_brightness": {"brightness": Param(int, 0, 100)}},
            {"on": "set_power", "brightness": "set_brightness"},
        ),
        Kind("door", 60.0, ("open", "battery"), {"identify": {}}),
        Kind("camera", 15.0, ("motion", "recording"), {"set_recording": _ON},
             {"recording": "set_recording"}),
        Kind("sensor", 60.0, ("temperature", "humidity", "battery"), {"identify": {}}),
    )
}


def check_command(kind: str, action: str, params: Any) -> str | None:
    """Validate a command against its device kind; return the problem or None."""
    spec = KINDS.get(kind)
    if spec is None:
        return f"unknown device kind {kind!r}"
    schema = spec.actions.get(action)
    if schema is None:
        return f"action {action!r} is not supported by a {kind} (expected one of: " + ", ".join(
            sorted(spec.actions)
        ) + ")"
    if not isinstance(params, dict):
        return "params must be a JSON object"
    unknown = sorted(set(params) - set(schema))
    if unknown:
        return f"unknown parameter {unknown[0]!r} for {action}"
    for name, param in schema.items():
        if name not in params:
            return f"missing parameter {name!r} for {action}"
        problem = param.check(params[name])
        if problem:
            return f"parameter {name!r}: {problem}"
    return None
