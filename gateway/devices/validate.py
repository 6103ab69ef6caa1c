"""Validation of what devices send: pure functions, no I/O.

A device is untrusted input. A message is accepted only as a flat JSON object of scalar
readings with sane names and, if present, a sane timestamp; everything else is rejected
with a short reason that is counted and audited (never the payload itself).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_METRICS = 32
MAX_STRING = 64


class Invalid(ValueError):
    """A rejected message; str() is the reason, safe to log and audit. `code` is one of a
    fixed few categories, so counting by it stays bounded whatever a device sends."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True, slots=True)
class Limits:
    max_payload_bytes: int = 16384
    max_future_skew_s: float = 300.0
    max_age_s: float = 86400.0


@dataclass(frozen=True, slots=True)
class Reading:
    ts: float  # the device's timestamp, or arrival time when it sent none
    values: dict[str, bool | int | float | str | None]


def _reject_constant(name: str) -> Any:
    raise Invalid(f"{name} is not a valid number", "bad-value")


def _check_ts(value: Any, now: float, limits: Limits) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid("ts must be a number of seconds since 1970", "bad-ts")
    try:
        ts = float(value)
    except OverflowError:
        raise Invalid("ts is out of range", "bad-ts") from None
    if ts > now + limits.max_future_skew_s:
        raise Invalid(f"ts is {ts - now:.0f} s in the future", "bad-ts")
    if ts < now - limits.max_age_s:
        raise Invalid(f"ts is {now - ts:.0f} s old", "bad-ts")
    return ts


def _check_size(payload: bytes, limits: Limits) -> None:
    if len(payload) > limits.max_payload_bytes:
        raise Invalid(f"payload of {len(payload)} bytes exceeds {limits.max_payload_bytes}",
                      "too-large")


def parse_reading(payload: bytes, now: float, limits: Limits) -> Reading:
    """Parse telemetry or state. Raises Invalid with the reason."""
    _check_size(payload, limits)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("payload is not valid UTF-8", "not-utf8") from None
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except Invalid:
        raise
    except RecursionError:
        raise Invalid("payload is nested too deeply", "not-object") from None
    except ValueError as exc:
        raise Invalid(f"payload is not JSON ({exc.args[0].split(':')[0]})", "not-json") from None
    if not isinstance(document, dict):
        raise Invalid(f"payload must be a JSON object, not {type(document).__name__}", "not-object")
    if len(document) - ("ts" in document) > MAX_METRICS:
        raise Invalid(f"too many fields ({len(document)}; at most {MAX_METRICS})",
                      "too-many-fields")
    ts = _check_ts(document.pop("ts"), now, limits) if "ts" in document else now
    values: dict[str, bool | int | float | str | None] = {}
    for name, value in document.items():
        if not METRIC_NAME.fullmatch(name):
            raise Invalid(f"field name {name[:40]!r} is not allowed (expected [a-z][a-z0-9_]*)",
                          "bad-name")
        if isinstance(value, dict | list):
            raise Invalid(f"field {name!r} must be a number, boolean, string or null", "bad-value")
        if isinstance(value, float) and not math.isfinite(value):
            raise Invalid(f"field {name!r} is not a finite number", "bad-value")
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise Invalid(f"field {name!r} is longer than {MAX_STRING} characters", "bad-value")
        values[name] = value
    return Reading(ts, values)


def parse_command_result(payload: bytes, limits: Limits) -> dict[str, Any]:
    """A device's answer on cmd/result: {"id": str, "status": "ok"|"error", ...}."""
    _check_size(payload, limits)
    try:
        document = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Invalid("result is not a JSON object", "bad-result") from None
    if not isinstance(document, dict) or not isinstance(document.get("id"), str):
        raise Invalid("result must be a JSON object with a string id", "bad-result")
    if document.get("status") not in ("ok", "error"):
        raise Invalid('result status must be "ok" or "error"', "bad-result")
    return document
