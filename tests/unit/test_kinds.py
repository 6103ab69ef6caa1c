"""gateway.devices.kinds: command validation against each kind's table."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.devices.kinds import KINDS, Param, check_command

ACTIONS = [(kind.name, action) for kind in KINDS.values() for action in kind.actions]


def valid_values(param: Param) -> list[Any]:
    """Every value the schema promises to accept that is worth trying: choices and bounds."""
    if param.type is bool:
        return [True, False]
    if param.type is str:
        assert param.choices, "a string parameter needs choices"
        return list(param.choices)
    assert param.low is not None and param.high is not None
    if param.type is int:
        low, high = int(param.low), int(param.high)
        return [low, high, (low + high) // 2]
    return [param.low, param.high, (param.low + param.high) / 2, int(param.low)]


def valid_params(kind: str, action: str) -> dict[str, Any]:
    return {name: valid_values(p)[0] for name, p in KINDS[kind].actions[action].items()}


def numeric_params() -> list[tuple[str, str, str, Param]]:
    return [(k, a, n, p) for k, a in ACTIONS for n, p in KINDS[k].actions[a].items()
            if p.type in (int, float)]


def test_table_is_non_trivial() -> None:
    assert {"thermostat", "plug", "bulb", "door", "camera", "sensor"} <= set(KINDS)
    assert any(p.type is int for *_, p in numeric_params())
    assert any(p.type is float for *_, p in numeric_params())


@pytest.mark.parametrize(("kind", "action"), ACTIONS)
def test_every_valid_value_is_accepted(kind: str, action: str) -> None:
    schema = KINDS[kind].actions[action]
    assert check_command(kind, action, valid_params(kind, action)) is None
    for name, param in schema.items():
        for value in valid_values(param):
            params = {**valid_params(kind, action), name: value}
            assert check_command(kind, action, params) is None, (name, value)


def test_unknown_kind() -> None:
    assert check_command("toaster", "set_power", {"on": True}) == "unknown device kind 'toaster'"


def test_unknown_action_lists_supported_ones() -> None:
    problem = check_command("thermostat", "explode", {})
    assert problem == (
        "action 'explode' is not supported by a thermostat (expected one of: set_mode, set_target)"
    )
    # An action of another kind is not borrowed.
    assert check_command("door", "set_power", {"on": True}) is not None


@pytest.mark.parametrize(("kind", "action"), ACTIONS)
@pytest.mark.parametrize("params", [None, [], "on", 1, [["on", True]]])
def test_params_must_be_an_object(kind: str, action: str, params: Any) -> None:
    assert check_command(kind, action, params) == "params must be a JSON object"


@pytest.mark.parametrize(("kind", "action"), ACTIONS)
def test_unknown_parameter(kind: str, action: str) -> None:
    params = {**valid_params(kind, action), "zzz": 1}
    assert check_command(kind, action, params) == f"unknown parameter 'zzz' for {action}"


@pytest.mark.parametrize(("kind", "action"), [(k, a) for k, a in ACTIONS if KINDS[k].actions[a]])
def test_missing_parameter(kind: str, action: str) -> None:
    for name in KINDS[kind].actions[action]:
        params = valid_params(kind, action)
        del params[name]
        assert check_command(kind, action, params) == f"missing parameter {name!r} for {action}"


@pytest.mark.parametrize(("kind", "action", "name", "param"), numeric_params())
def test_numbers_reject_wrong_types_and_range(kind: str, action: str, name: str,
                                              param: Param) -> None:
    assert param.low is not None and param.high is not None

    def problem(value: Any) -> str | None:
        return check_command(kind, action, {**valid_params(kind, action), name: value})

    prefix = f"parameter {name!r}: "
    for value in (True, False, "20", None, [20], {"v": 20}, float("nan")):
        assert problem(value) == prefix + "expected a number", value
    out_of_range = prefix + f"expected a number from {param.low:g} to {param.high:g}"
    for value in (int(param.low) - 1, int(param.high) + 1, -(10**30), 10**30):
        assert problem(value) == out_of_range, value
    if param.type is float:
        for value in (param.low - 0.001, param.high + 0.001, float("inf"), float("-inf")):
            assert problem(value) == out_of_range, value
    else:
        for value in (param.low + 0.5, float(param.low), float("inf")):
            assert problem(value) == prefix + "expected a whole number", value


def test_brightness_must_be_whole() -> None:
    assert check_command("bulb", "set_brightness", {"brightness": 50.0}) == (
        "parameter 'brightness': expected a whole number")
    assert check_command("bulb", "set_brightness", {"brightness": 50.5}) == (
        "parameter 'brightness': expected a whole number")
    assert check_command("bulb", "set_brightness", {"brightness": 101}) == (
        "parameter 'brightness': expected a number from 0 to 100")


def test_booleans_reject_truthy_values() -> None:
    for kind, action in ACTIONS:
        for name, param in KINDS[kind].actions[action].items():
            if param.type is not bool:
                continue
            for value in (1, 0, "true", None):
                assert check_command(kind, action, {name: value}) == (
                    f"parameter {name!r}: expected true or false"), (kind, value)


def test_choices_are_exact() -> None:
    for value in ("HEAT", "heat ", "", 1, None, True):
        assert check_command("thermostat", "set_mode", {"mode": value}) == (
            "parameter 'mode': expected one of off, heat, cool, auto"), value
