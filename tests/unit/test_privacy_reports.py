"""The privacy pipeline (pure): accumulate -> clip -> noise -> allowlisted report, and the
vendor's aggregator on 5,000 synthetic households."""

from __future__ import annotations

import datetime
import json
import random
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest

from gateway.privacy import reports as r
from gateway.privacy.aggregate import aggregate, contributions
from gateway.privacy.reports import (
    Context,
    DeviceFacts,
    ReportError,
    WeekData,
    accumulate,
    release,
    validate,
)

ZONE = ZoneInfo("Europe/Berlin")
WEEK = "2026-W47"  # Monday 16 November 2026
MONDAY = datetime.datetime(2026, 11, 16, tzinfo=ZONE).timestamp()
ALL = r.CATEGORIES


def at(day: int, hour: int, minute: int = 0) -> float:
    return MONDAY + day * 86400 + hour * 3600 + minute * 60


def test_weeks_are_iso_weeks_in_the_household_zone() -> None:
    assert r.week_of(MONDAY, ZONE) == WEEK
    assert r.week_of(MONDAY - 1, ZONE) == "2026-W46"  # Sunday 23:59:59 in Berlin
    assert r.week_start(WEEK, ZONE) == MONDAY


def test_usage_counts_rises_and_adjustments_per_kind() -> None:
    data = WeekData(WEEK)
    for i, on in enumerate([False, True, True, False, True]):
        accumulate(data, ALL, "plug-1", "plug", at(0, 8, i), {"on": on, "power_w": 5}, ZONE)
    for i, target in enumerate([20, 20, 21.5, 19]):
        accumulate(data, ALL, "th-1", "thermostat", at(1, 8, i), {"target": target}, ZONE)
    assert data.uses == {"plug": 2, "thermostat": 2}
    assert r.usage_values(data)["plug"] == 2 and r.usage_values(data)["bulb"] == 0


def test_energy_integrates_power_into_the_hour_of_day_and_averages_over_days() -> None:
    data = WeekData(WEEK)
    for day in (0, 1):  # off until 10:00, then 600 W for an hour, on two days
        accumulate(data, ALL, "plug-1", "plug", at(day, 10), {"power_w": 0}, ZONE)
        for minute in range(10, 61, 10):
            accumulate(data, ALL, "plug-1", "plug", at(day, 10, minute) - (minute == 60),
                       {"power_w": 600}, ZONE)
    values = r.energy_values(data)
    assert values["plug/10"] == pytest.approx(600, abs=1)
    assert values["plug/03"] == 0
    # A device that went quiet for hours counts at most MAX_POWER_GAP_S of its last power.
    quiet = WeekData(WEEK)
    accumulate(quiet, ALL, "p", "plug", at(2, 1), {"power_w": 3600}, ZONE)
    accumulate(quiet, ALL, "p", "plug", at(2, 9), {"power_w": 3600}, ZONE)
    assert r.energy_values(quiet)["plug/09"] == r.MAX_POWER_GAP_S  # 3600 W * 900 s = 900 Wh


def test_energy_is_clipped_to_its_bound() -> None:
    data = WeekData(WEEK)
    accumulate(data, ALL, "p", "plug", at(0, 5, 0), {"power_w": 90000}, ZONE)
    accumulate(data, ALL, "p", "plug", at(0, 5, 15), {"power_w": 90000}, ZONE)
    assert r.energy_values(data)["plug/05"] == r.ENERGY_BOUND


def test_comfort_keeps_the_setpoint_of_each_thermostat_hour() -> None:
    data = WeekData(WEEK)
    accumulate(data, ALL, "th", "thermostat", at(0, 7, 5), {"target": 19.0}, ZONE)
    accumulate(data, ALL, "th", "thermostat", at(0, 7, 55), {"target": 21.4}, ZONE)
    accumulate(data, ALL, "th", "thermostat", at(6, 23), {"target": 30}, ZONE)
    assert data.setpoints == {"th": {"7": 21.4, str(6 * 24 + 23): 30.0}}
    assert r.comfort_items(data) == [{"setpoint": "21"}, {"setpoint": ">25"}]


def test_only_consented_categories_collect_anything() -> None:
    data = WeekData(WEEK)
    accumulate(data, ["usage"], "th", "thermostat", at(0, 7), {"target": 19.0}, ZONE)
    accumulate(data, ["usage"], "p", "plug", at(0, 7), {"power_w": 10, "on": True}, ZONE)
    accumulate(data, ["usage"], "p", "plug", at(0, 8), {"power_w": 10, "on": True}, ZONE)
    assert data.setpoints == {} and data.energy_mwh == {}


def test_readings_of_another_week_are_ignored() -> None:
    data = WeekData(WEEK)
    accumulate(data, ALL, "p", "plug", MONDAY - 60, {"on": False}, ZONE)
    accumulate(data, ALL, "p", "plug", MONDAY + 7 * 86400, {"on": True}, ZONE)
    assert data.last == {} and data.uses == {}


def test_week_data_survives_json() -> None:
    data = WeekData(WEEK)
    accumulate(data, ALL, "p", "plug", at(0, 1), {"power_w": 10, "on": False}, ZONE)
    accumulate(data, ALL, "p", "plug", at(0, 2), {"power_w": 10, "on": True}, ZONE)
    accumulate(data, ALL, "t", "thermostat", at(0, 2), {"target": 20}, ZONE)
    again = WeekData.from_json(json.loads(json.dumps(data.to_json())))
    assert again == data


@pytest.mark.parametrize(("model", "brand"), [
    ("Shelly Plug S", "shelly"), ("TP-Link Tapo P100", "tp-link"), ("Hue White A19", "philips-hue"),
    ("IKEA TRADFRI bulb", "ikea"), ("SimPlug 2", "other"), (None, "other"), ("", "other"),
])
def test_brands_come_from_the_public_list_else_other(model: str | None, brand: str) -> None:
    assert r.brand_of(model) == brand


@pytest.mark.parametrize(("firmware", "major"), [
    ("1.4.2", "1"), ("v2.0", "2"), ("10.1", "10+"), ("20250101", "10+"), ("beta", "unknown"),
    (None, "unknown"),
])
def test_firmware_reduces_to_its_major_version(firmware: str | None, major: str) -> None:
    assert r.firmware_major(firmware) == major


def test_every_category_releases_a_valid_report_holding_only_its_fields() -> None:
    data = WeekData(WEEK)
    accumulate(data, ALL, "p", "plug", at(0, 1), {"power_w": 10, "on": True}, ZONE)
    devices = [DeviceFacts("plug", "Shelly Plug", "1.2"), DeviceFacts("bulb", None, None)]
    ctx = Context(WEEK, "DE-BY", Fraction(1, 10))
    for category in ALL:
        report = release(category, ctx, data, devices)
        validate(report)
        assert report["category"] == category and report["week"] == WEEK
        assert report["epsilon"] == "1/10" and report["region"] == "DE-BY"
        if category in ("usage", "energy"):
            assert set(report) == {*r._COMMON, "cell", "bound", "scale", "value"}
            assert report["scale"] == str(report["bound"] * 10)
        else:
            assert set(report) == {*r._COMMON, "fields"}
    linked = release("usage", Context(WEEK, "DE", Fraction(1, 2), r.pseudonym(b"k" * 32)),
                     data, devices)
    assert len(linked["pseudonym"]) == 32


def good_report() -> dict[str, object]:
    return {"schema": r.SCHEMA, "category": "usage", "week": WEEK, "region": "ZZ",
            "epsilon": "1/10", "mechanism": "discrete-laplace", "cell": "plug", "bound": 100,
            "scale": "1000", "value": -37}


@pytest.mark.parametrize(("change", "problem"), [
    ({"device": "plug-1"}, "key 'device' is not allowed"),
    ({"ts": 1700000000}, "key 'ts' is not allowed"),
    ({"cell": "plug-1"}, "not a usage cell"),
    ({"value": 3.5}, "whole number"),
    ({"value": True}, "whole number"),
    ({"scale": "10"}, "bound / epsilon"),
    ({"bound": 1000}, "bound must be 100"),
    ({"region": "DE-80331"}, "ISO 3166"),
    ({"week": "2026-11-16"}, "2026-W47"),
    ({"epsilon": "0.1"}, "positive fraction"),
    ({"pseudonym": "alice"}, "32 hex"),
    ({"category": "location"}, "unknown category"),
    ({"mechanism": "none"}, "mechanism"),
])
def test_the_schema_rejects_anything_off_the_allowlist(change: dict[str, object],
                                                       problem: str) -> None:
    validate(good_report())
    with pytest.raises(ReportError, match=problem):
        validate({**good_report(), **change})
    with pytest.raises(ReportError, match="missing"):
        validate({k: v for k, v in good_report().items() if k != "value"})
    rr = {**good_report(), "category": "comfort", "mechanism": "randomized-response"}
    for key in ("cell", "bound", "scale", "value"):
        del rr[key]
    validate({**rr, "fields": {"setpoint": "21"}})
    with pytest.raises(ReportError, match="setpoint"):
        validate({**rr, "fields": {"setpoint": "21.5"}})
    with pytest.raises(ReportError, match="exactly"):
        validate({**rr, "fields": {"setpoint": "21", "name": "Living room"}})


def test_randomized_response_contributions_are_unbiased_indicators() -> None:
    report = {"category": "comfort", "mechanism": "randomized-response", "epsilon": "1",
              "fields": {"setpoint": "21"}}
    values = contributions(report)
    assert set(values) == {f"setpoint={s}" for s in r.SETPOINTS}
    assert sum(values.values()) == pytest.approx(1.0)  # the debiased shares still sum to 1
    assert values["setpoint=21"] > 1 > 0 > values["setpoint=20"]


# -- the aggregator on 5,000 synthetic households ------------------------------------------

MODELS = ["Shelly Plug S", "Tapo P100", "Hue White", "TRADFRI bulb", "Nest Learning", "tado V3",
          "SimPlug", "Acme Cam", "Aqara door", None]
REGIONS = ["DE-BY", "DE-BE", "FR", "NL"]


def synthetic_household(rng: random.Random) -> tuple[WeekData, list[DeviceFacts]]:
    """A household's devices and week, with its own habits (not i.i.d. across homes)."""
    devices = [DeviceFacts(rng.choice(r.KIND_NAMES), rng.choice(MODELS),
                           rng.choice(["1.0", "2.3", "v3", "11.0", None]))
               for _ in range(rng.choice([0, 1, 2, 3, 5, 8]))]
    data = WeekData(WEEK)
    habit = rng.uniform(0.2, 3)
    for d in devices:
        data.uses[d.kind] = data.uses.get(d.kind, 0) + int(rng.expovariate(1 / (20 * habit)))
    if any(d.kind == "plug" for d in devices):
        evening = rng.uniform(50, 400)
        data.energy_mwh["plug"] = [int(1000 * 7 * (evening if 17 <= h <= 22 else evening / 5)
                                       * rng.uniform(0.5, 1.5)) for h in range(24)]
        data.days = 0b1111111
    for i, d in enumerate(devices):
        if d.kind == "thermostat":
            base = rng.choice([18, 19.5, 20, 21, 22, 24])
            data.setpoints[f"t{i}"] = {str(h): base + (2 if 6 <= h % 24 <= 9 else 0)
                                       for h in range(0, 168, rng.choice([1, 3]))}
    return data, devices


def truths(households: list[tuple[WeekData, list[DeviceFacts]]]) -> dict[tuple[str, str], float]:
    """The mean over households of the clipped quantity each cell estimates."""
    sums: dict[tuple[str, str], float] = {}
    n = len(households)

    def add(category: str, cell: str, value: float) -> None:
        sums[(category, cell)] = sums.get((category, cell), 0.0) + value / n

    for data, devices in households:
        for kind, value in r.usage_values(data).items():
            add("usage", kind, value)
        for cell, value in r.energy_values(data).items():
            add("energy", cell, value)
        for category, items, domains in (
                ("inventory", r.inventory_items(devices), r.INVENTORY_DOMAINS),
                ("comfort", r.comfort_items(data), r.COMFORT_DOMAINS)):
            for name, domain in domains.items():
                for answer in domain:
                    share = (sum(item[name] == answer for item in items) / len(items) if items
                             else float(answer == "none"))
                    add(category, f"{name}={answer}", share)
    return sums


def test_the_aggregator_covers_the_truth_at_its_stated_rate_on_5000_households() -> None:
    rng = random.Random(7)  # the synthetic population only; the noise comes from secrets
    households = [synthetic_household(rng) for _ in range(5000)]
    epsilon = Fraction(1, 2)
    reports = []
    for i, (data, devices) in enumerate(households):
        ctx = Context(WEEK, REGIONS[i % len(REGIONS)], epsilon)
        reports += [release(c, ctx, data, devices) for c in r.CATEGORIES]
    truth = truths(households)
    estimates = aggregate(reports, k=10, confidence=0.95)
    shown = [e for e in estimates if not e.suppressed]
    # Rare answers' share cells are suppressed by their noisy estimates, so how many are
    # shown varies from run to run (seen: 59 to 72 of 91); at least half always are.
    assert len(shown) >= len(estimates) // 2, "most cells stand on enough households"
    covered = [e.low <= truth[(e.category, e.cell)] <= e.high for e in shown]
    rate, n = sum(covered) / len(covered), len(covered)
    # 95 % intervals: the share covering their truth is 0.95 within binomial error.
    assert rate >= 0.95 - 3 * (0.95 * 0.05 / n) ** 0.5, (rate, n)
    # The intervals are honest about the noise: none is narrower than the noise alone allows.
    for e in shown:
        if e.category == "usage":
            noise_sd = 2 ** 0.5 * r.USAGE_BOUND / float(epsilon)
            assert e.high - e.low >= 2 * 1.9 * noise_sd / e.households ** 0.5 * 0.9
    # Every household's report is counted once per category.
    assert sum(e.households for e in estimates if e.category == "usage") == 5000


def test_cells_behind_fewer_than_k_households_are_suppressed() -> None:
    rng = random.Random(3)
    reports = []
    for i in range(400):
        data, devices = synthetic_household(rng)
        region = "LU" if i < 6 else "DE"  # only six households in Luxembourg
        reports += [release(c, Context(WEEK, region, Fraction(1)), data, devices)
                    for c in ("usage", "comfort")]
    estimates = aggregate(reports, k=10, by_region=True)
    lu = [e for e in estimates if e.region == "LU"]
    assert lu and all(e.suppressed and e.estimate is None and e.low is None for e in lu)
    de = [e for e in estimates if e.region == "DE" and e.category == "usage"]
    assert de and all(e.households < 10 for e in de if e.suppressed)
    assert any(not e.suppressed for e in de)
    # A share that the estimate puts below k households is suppressed too.
    rare = [e for e in estimates if e.region == "DE" and e.category == "comfort"
            and not e.suppressed]
    assert all(e.estimate * e.households >= 10 for e in rare)


def test_the_aggregate_command_reads_files_names_bad_lines_and_suppresses(tmp_path) -> None:
    import subprocess
    import sys

    rng = random.Random(5)
    lines = []
    for i in range(300):
        data, devices = synthetic_household(rng)
        region = "LU" if i < 4 else "DE"
        lines += [json.dumps(release(c, Context(WEEK, region, Fraction(1, 2)), data, devices))
                  for c in ("usage", "comfort")]
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("\n".join(lines[:300]) + "\n")
    bad = {**json.loads(lines[300]), "device": "kitchen-plug"}
    second.write_text("\n".join([*lines[300:], json.dumps(bad), "not json"]) + "\n")
    run = subprocess.run([sys.executable, "-m", "gateway", "privacy", "aggregate", str(first),
                          str(second), "--by-region", "--json"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert f"{second}:{len(lines) - 300 + 1}: rejected: key 'device' is not allowed" in run.stderr
    assert f"{second}:{len(lines) - 300 + 2}: rejected:" in run.stderr
    assert "600 report(s) used, 2 rejected" in run.stderr
    estimates = json.loads(run.stdout)
    lu = [e for e in estimates if e["region"] == "LU"]
    assert lu and all(e["suppressed"] and e["estimate"] is None for e in lu)
    assert any(not e["suppressed"] for e in estimates if e["region"] == "DE")
    table = subprocess.run([sys.executable, "-m", "gateway", "privacy", "aggregate", str(first)],
                           capture_output=True, text=True, timeout=60)
    assert "95% interval" in table.stdout and "suppressed" in table.stdout
