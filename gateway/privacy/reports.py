"""Weekly privacy reports: raw telemetry -> weekly aggregates -> clipping -> noise -> report.

Everything here is pure. A Pi sees one household, so each report is a local-DP release
about that household's week (DESIGN §6):

- `WeekData` accumulates, from the readings the household's devices send, only what the
  consented categories need (`accumulate`), in the household's time zone.
- `household_values` turns a closed week (and the device list) into the per-household
  values of one category, clipped to the documented bounds.
- `release` perturbs them (exact discrete Laplace for counts and sums, randomized response
  for categories) and `validate` checks the result against the report schema: only the
  allowlisted keys, each value from its fixed domain. A report names no device, address,
  person, place finer than the configured region, or time finer than an hour-of-day bucket
  of an ISO week.

Numeric categories release one cell per week, chosen uniformly by `secrets` and independent
of the data, so the noise scale is one cell's bound over ε rather than the whole vector's:
the vendor's aggregator averages each cell over the households that drew it.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from gateway.devices.kinds import KINDS
from gateway.privacy import samplers

SCHEMA = "home-gateway/privacy-report/1"
CATEGORIES = ("inventory", "usage", "energy", "comfort")

# -- domains and bounds (documented in docs/privacy.md; changing one changes SCHEMA) --------

KIND_NAMES = tuple(sorted(KINDS))
# A public list of device brands; anything else is "other". Each brand with the words that
# name it in a device's model string.
BRANDS: Mapping[str, tuple[str, ...]] = {
    "aqara": ("aqara",), "arlo": ("arlo",), "bosch": ("bosch",), "ecobee": ("ecobee",),
    "eufy": ("eufy",), "eve": ("eve",), "fritz": ("fritz", "avm"), "govee": ("govee",),
    "homematic": ("homematic", "eq3"), "honeywell": ("honeywell", "resideo"),
    "ikea": ("ikea", "tradfri", "dirigera"), "lifx": ("lifx",), "meross": ("meross",),
    "nest": ("nest", "google"), "netatmo": ("netatmo",), "nuki": ("nuki",),
    "philips-hue": ("hue", "philips", "signify"), "ring": ("ring",), "shelly": ("shelly",),
    "somfy": ("somfy",), "sonoff": ("sonoff", "itead"), "tado": ("tado",),
    "tp-link": ("tplink", "kasa", "tapo"), "tuya": ("tuya", "smartlife"), "wiz": ("wiz",),
    "yale": ("yale",),
}
INVENTORY_DOMAINS: Mapping[str, tuple[str, ...]] = {
    "kind": ("none", *KIND_NAMES),
    "brand": ("none", *BRANDS, "other"),
    "firmware": ("none", "unknown", *(str(n) for n in range(10)), "10+"),
}
SETPOINTS = ("none", "<16", *(str(c) for c in range(16, 26)), ">25")  # °C, whole degrees
COMFORT_DOMAINS: Mapping[str, tuple[str, ...]] = {"setpoint": SETPOINTS}

USAGE_BOUND = 100  # uses and adjustments of one kind's devices in a week
ENERGY_BOUND = 1000  # Wh in one hour of the day, averaged over the week's days
USAGE_CELLS = KIND_NAMES
METERED_KINDS = tuple(k for k in KIND_NAMES if "power_w" in KINDS[k].metrics)
ENERGY_CELLS = tuple(f"{kind}/{hour:02d}" for kind in METERED_KINDS for hour in range(24))

# Boolean readings whose rise counts as a use; numeric ones whose change is an adjustment.
USE_EDGES = ("on", "open", "motion", "recording")
ADJUSTMENTS = ("target", "brightness")
MAX_POWER_GAP_S = 900  # a reading's power counts at most this long (a device that went quiet)
MAX_POWER_W = 100_000  # a plug reading more than this is broken, not a heater

WEEK_RE = re.compile(r"\d{4}-W\d{2}")
REGION_RE = re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,3})?")
UNKNOWN_REGION = "ZZ"  # ISO 3166 user-assigned: "not stated"


class ReportError(ValueError):
    """A report breaks its schema; the message lists every problem."""


def week_of(ts: float, zone: ZoneInfo) -> str:
    """The ISO week label ("2026-W47") of a moment in the household's zone."""
    year, week, _ = datetime.datetime.fromtimestamp(ts, zone).isocalendar()
    return f"{year}-W{week:02d}"


def week_start(week: str, zone: ZoneInfo) -> float:
    """The POSIX time at which ISO week `week` begins (Monday 00:00) in the zone."""
    year, number = int(week[:4]), int(week[6:])
    day = datetime.date.fromisocalendar(year, number, 1)
    return datetime.datetime.combine(day, datetime.time(), zone).timestamp()


# -- 1. accumulate: readings -> the week's data ----------------------------------------------

@dataclass
class WeekData:
    """What a household's week has produced so far, kept only for consented categories.

    Local state, never exported: device ids appear here to pair readings, not in reports.
    """

    week: str
    uses: dict[str, int] = field(default_factory=dict)  # kind -> uses and adjustments
    energy_mwh: dict[str, list[int]] = field(default_factory=dict)  # kind -> 24 hourly sums
    days: int = 0  # bitmask of weekdays with energy readings (0 = Monday)
    setpoints: dict[str, dict[str, float]] = field(default_factory=dict)  # device -> hour -> °C
    last: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> last readings

    def to_json(self) -> dict[str, Any]:
        return {"week": self.week, "uses": self.uses, "energy_mwh": self.energy_mwh,
                "days": self.days, "setpoints": self.setpoints, "last": self.last}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WeekData:
        return cls(week=str(data["week"]), uses=dict(data["uses"]),
                   energy_mwh={k: list(v) for k, v in data["energy_mwh"].items()},
                   days=int(data["days"]),
                   setpoints={k: dict(v) for k, v in data["setpoints"].items()},
                   last={k: dict(v) for k, v in data["last"].items()})


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return float(value)


def accumulate(data: WeekData, wanted: Iterable[str], device_id: str, kind: str, ts: float,
               values: Mapping[str, Any], zone: ZoneInfo) -> None:
    """Add one accepted reading of `device_id` (a `kind`) taken at `ts` to the week's data.

    `wanted` names the consented categories; nothing is kept for the others. Readings from
    another week are ignored (the caller closes a week before starting the next).
    """
    wanted = set(wanted)
    local = datetime.datetime.fromtimestamp(ts, zone)
    year, week, weekday = local.isocalendar()
    if f"{year}-W{week:02d}" != data.week:
        return
    last = data.last.setdefault(device_id, {})
    if "usage" in wanted:
        changed = sum(1 for key in USE_EDGES if values.get(key) is True and last.get(key) is False)
        changed += sum(1 for key in ADJUSTMENTS if key in values and key in last
                       and values[key] != last[key])
        if changed:
            data.uses[kind] = data.uses.get(kind, 0) + changed
    if "energy" in wanted and kind in METERED_KINDS:
        power = _number(values.get("power_w"))
        since = _number(last.get("ts"))
        if power is not None and since is not None and 0 <= power <= MAX_POWER_W and ts > since:
            seconds = min(ts - since, MAX_POWER_GAP_S)
            hours = data.energy_mwh.setdefault(kind, [0] * 24)
            hours[local.hour] += round(power * seconds * 1000 / 3600)
            data.days |= 1 << (weekday - 1)
    if "comfort" in wanted and kind == "thermostat":
        target = _number(values.get("target"))
        if target is not None:
            hour_of_week = (weekday - 1) * 24 + local.hour
            data.setpoints.setdefault(device_id, {})[str(hour_of_week)] = target
    for key in (*USE_EDGES, *ADJUSTMENTS, "power_w"):
        if key in values:
            last[key] = values[key]
    if "power_w" in values:
        last["ts"] = ts


# -- 2. per-household values of a closed week, clipped --------------------------------------

@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What the inventory may look at of one adopted device (names and addresses not)."""

    kind: str
    model: str | None
    firmware: str | None


def brand_of(model: str | None) -> str:
    """The brand from the public list that the model string names, else "other"."""
    words = set(re.split(r"[^a-z0-9]+", (model or "").lower().replace("tp-link", "tplink")))
    for brand, names in BRANDS.items():
        if words.intersection(names):
            return brand
    return "other"


def firmware_major(firmware: str | None) -> str:
    """The firmware's major version bucket: "0" … "9", "10+" or "unknown"."""
    match = re.search(r"\d+", firmware or "")
    if match is None:
        return "unknown"
    major = int(match[0][:6])
    return "10+" if major >= 10 else str(major)


def setpoint_bucket(celsius: float) -> str:
    whole = math.floor(celsius + 0.5)
    if whole < 16:
        return "<16"
    return ">25" if whole > 25 else str(whole)


def clip(value: int, bound: int) -> int:
    return max(0, min(bound, value))


def usage_values(data: WeekData) -> dict[str, int]:
    """Uses per kind in the week, each clipped to [0, USAGE_BOUND]."""
    return {kind: clip(data.uses.get(kind, 0), USAGE_BOUND) for kind in USAGE_CELLS}


def energy_values(data: WeekData) -> dict[str, int]:
    """Wh per metered kind and hour of day, averaged over the days measured, clipped."""
    days = max(1, bin(data.days).count("1"))
    return {f"{kind}/{hour:02d}": clip(data.energy_mwh.get(kind, [0] * 24)[hour] // (1000 * days),
                                       ENERGY_BOUND)
            for kind in METERED_KINDS for hour in range(24)}


def inventory_items(devices: Sequence[DeviceFacts]) -> list[dict[str, str]]:
    """One entry per adopted device, each field from its domain."""
    return [{"kind": d.kind if d.kind in KIND_NAMES else "none", "brand": brand_of(d.model),
             "firmware": firmware_major(d.firmware)} for d in devices]


def comfort_items(data: WeekData) -> list[dict[str, str]]:
    """One entry per thermostat-hour of the week that has a setpoint."""
    return [{"setpoint": setpoint_bucket(target)} for hours in data.setpoints.values()
            for target in hours.values()]


# -- 3. noise: the release ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Context:
    """What every report of a household carries besides its values."""

    week: str
    region: str
    epsilon: Fraction
    pseudonym: str | None = None  # only when the household links its reports


def _header(category: str, ctx: Context, mechanism: str) -> dict[str, Any]:
    report: dict[str, Any] = {"schema": SCHEMA, "category": category, "week": ctx.week,
                              "region": ctx.region, "epsilon": str(ctx.epsilon),
                              "mechanism": mechanism}
    if ctx.pseudonym is not None:
        report["pseudonym"] = ctx.pseudonym
    return report


def _one_cell(category: str, ctx: Context, values: Mapping[str, int], bound: int,
              uniform: Callable[[int], int]) -> dict[str, Any]:
    cells = tuple(values)
    cell = cells[uniform(len(cells))]  # drawn independently of the data
    scale = Fraction(bound) / ctx.epsilon
    return {**_header(category, ctx, "discrete-laplace"), "cell": cell, "bound": bound,
            "scale": str(scale), "value": values[cell] + samplers.discrete_laplace(scale)}


def _one_item(category: str, ctx: Context, items: Sequence[Mapping[str, str]],
              domains: Mapping[str, tuple[str, ...]],
              uniform: Callable[[int], int]) -> dict[str, Any]:
    item = items[uniform(len(items))] if items else {name: "none" for name in domains}
    each = field_epsilon(category, ctx.epsilon)  # sequential composition over the fields
    fields = {name: domain[samplers.randomized_response(domain.index(item[name]), len(domain),
                                                          each)]
              for name, domain in domains.items()}
    return {**_header(category, ctx, "randomized-response"), "fields": fields}


def release(category: str, ctx: Context, data: WeekData, devices: Sequence[DeviceFacts],
            uniform: Callable[[int], int] = samplers.uniform) -> dict[str, Any]:
    """The noisy report of one category for a closed week; validated before it is returned."""
    if category == "inventory":
        report = _one_item(category, ctx, inventory_items(devices), INVENTORY_DOMAINS, uniform)
    elif category == "usage":
        report = _one_cell(category, ctx, usage_values(data), USAGE_BOUND, uniform)
    elif category == "energy":
        report = _one_cell(category, ctx, energy_values(data), ENERGY_BOUND, uniform)
    elif category == "comfort":
        report = _one_item(category, ctx, comfort_items(data), COMFORT_DOMAINS, uniform)
    else:
        raise ValueError(f"unknown privacy category {category!r}")
    validate(report)
    return report


def pseudonym(key: bytes) -> str:
    """The household's pseudonym under one epoch's key (HMAC-SHA-256, 128 bits shown)."""
    return hmac.new(key, b"home-gateway household", hashlib.sha256).hexdigest()[:32]


# -- 4. the schema --------------------------------------------------------------------------

_COMMON = {"schema", "category", "week", "region", "epsilon", "mechanism"}
_SHAPES: Mapping[str, tuple[str, set[str]]] = {
    "inventory": ("randomized-response", {"fields"}),
    "comfort": ("randomized-response", {"fields"}),
    "usage": ("discrete-laplace", {"cell", "bound", "scale", "value"}),
    "energy": ("discrete-laplace", {"cell", "bound", "scale", "value"}),
}
_CELLS = {"usage": (USAGE_CELLS, USAGE_BOUND), "energy": (ENERGY_CELLS, ENERGY_BOUND)}
_DOMAINS = {"inventory": INVENTORY_DOMAINS, "comfort": COMFORT_DOMAINS}
_FRACTION_RE = re.compile(r"[1-9][0-9]{0,8}(/[1-9][0-9]{0,8})?")
MAX_VALUE = 10**9


def epsilon_of(report: Mapping[str, Any]) -> Fraction:
    return Fraction(report["epsilon"])


def domains_of(category: str) -> Mapping[str, tuple[str, ...]]:
    """The randomized-response fields of a category and their domains ({} for the others)."""
    return _DOMAINS.get(category, {})


def field_epsilon(category: str, epsilon: Fraction) -> Fraction:
    """The ε each randomized-response field of a report gets (they share the category's)."""
    return epsilon / len(_DOMAINS[category])


def _problems(report: Any) -> list[str]:
    if not isinstance(report, dict):
        return ["a report must be a JSON object"]
    category = str(report.get("category"))
    if category not in _SHAPES:
        return [f"unknown category {category!r} (expected one of {', '.join(CATEGORIES)})"]
    mechanism, own = _SHAPES[category]
    allowed = _COMMON | own | {"pseudonym"}
    problems = [f"key {k!r} is not allowed" for k in sorted(set(report) - allowed, key=str)]
    problems += [f"key {k!r} is missing" for k in sorted((_COMMON | own) - set(report))]
    if problems:
        return problems
    checks = [
        (report["schema"] == SCHEMA, f"schema must be {SCHEMA!r}"),
        (report["mechanism"] == mechanism, f"mechanism must be {mechanism!r}"),
        (isinstance(report["week"], str) and WEEK_RE.fullmatch(report["week"]) is not None,
         "week must look like 2026-W47"),
        (isinstance(report["region"], str) and REGION_RE.fullmatch(report["region"]) is not None,
         "region must be an ISO 3166 code such as DE or DE-BY"),
        (isinstance(report["epsilon"], str) and _FRACTION_RE.fullmatch(report["epsilon"])
         is not None, "epsilon must be a positive fraction such as 1/10"),
        ("pseudonym" not in report or (isinstance(report["pseudonym"], str)
                                       and re.fullmatch(r"[0-9a-f]{32}", report["pseudonym"])
                                       is not None), "pseudonym must be 32 hex digits"),
    ]
    if category in _CELLS:
        cells, bound = _CELLS[category]
        value = report["value"]
        checks += [
            (report["cell"] in cells, f"cell {report['cell']!r} is not a {category} cell"),
            (report["bound"] == bound and type(report["bound"]) is int, f"bound must be {bound}"),
            (type(value) is int and abs(value) <= MAX_VALUE, "value must be a whole number"),
        ]
        if all(ok for ok, _ in checks):
            checks.append((report["scale"] == str(Fraction(bound) / epsilon_of(report)),
                           "scale must be bound / epsilon"))
    else:
        domains = _DOMAINS[category]
        fields = report["fields"]
        if not isinstance(fields, dict) or set(fields) != set(domains):
            checks.append((False, f"fields must be exactly {', '.join(domains)}"))
        else:
            checks += [(fields[name] in domain, f"fields.{name} {fields[name]!r} is not allowed")
                       for name, domain in domains.items()]
    return [problem for ok, problem in checks if not ok]


def validate(report: Any) -> None:
    """Raise ReportError unless `report` holds exactly the allowlisted fields of its schema."""
    problems = _problems(report)
    if problems:
        raise ReportError("; ".join(problems))
