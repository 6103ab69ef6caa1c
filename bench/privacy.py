"""(h) Privacy: what a week's reports cost, and how fast the exact samplers draw.

- a week of 100 devices' telemetry at one reading per 10 s (6,048,000 readings; a day in
  --quick) folded into the week's aggregates with every category on, and the week's four
  reports released, against parsing the same readings' JSON, which the gateway does for
  every reading anyway;
- the exact samplers of gateway.privacy.samplers next to OpenDP's (Rust, called through its
  Python bindings) at the same parameters:

- discrete Laplace at scale 10 (a count of sensitivity 1 at epsilon = 1/10), one draw per
  call on both sides, the way a report draws its noise; and against OpenDP drawing noise for
  a vector of 10,000 zeros per call, its fastest path from Python;
- 5-ary randomized response at epsilon = 1/2, one draw per call (OpenDP has no vector form).

Each rate is time-boxed; the two sides take turns, two rounds, and the best round counts.
OpenDP is a test dependency only: without it the baselines are missing, with a note.

    python -m bench.privacy [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench.common import Figure, progress, table
from gateway.privacy.reports import CATEGORIES, Context, DeviceFacts, WeekData, accumulate, release
from gateway.privacy.samplers import discrete_laplace, randomized_response

SCALE = Fraction(10)
K, TRUE_INDEX, EPSILON = 5, 2, Fraction(1, 2)
CHUNK = 100  # our draws between two looks at the clock
OPENDP_BATCH = 10_000
ROUNDS = 2

Draw = Callable[[], int]  # draws some samples, returns how many


def rate(draw: Draw, seconds: float) -> float:
    """Samples per second drawn by calling `draw` for about `seconds`."""
    count = 0
    start = now = time.perf_counter()
    while now - start < seconds:
        count += draw()
        now = time.perf_counter()
    return count / (now - start)


def best_rates(draws: dict[str, Draw], seconds: float) -> dict[str, float]:
    """Each draw timed in turn, ROUNDS times; the best rate of each."""
    best = dict.fromkeys(draws, 0.0)
    for _ in range(ROUNDS):
        for name, draw in draws.items():
            best[name] = max(best[name], rate(draw, seconds))
    return best


def ours() -> dict[str, Draw]:
    def laplace() -> int:
        for _ in range(CHUNK):
            discrete_laplace(SCALE)
        return CHUNK

    def rr() -> int:
        for _ in range(CHUNK):
            randomized_response(TRUE_INDEX, K, EPSILON)
        return CHUNK

    return {"laplace": laplace, "rr": rr}


def opendp() -> dict[str, Draw]:
    """OpenDP's samplers at the same parameters (its scale and probability are floats)."""
    import opendp.prelude as dp  # a test dependency, not the gateway's

    dp.enable_features("contrib")
    one = dp.m.make_laplace(dp.atom_domain(T=int), dp.absolute_distance(T=int),
                            scale=float(SCALE))
    vector = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int),
                               scale=float(SCALE))
    e = math.exp(float(EPSILON))
    rr_mechanism = dp.m.make_randomized_response(list(range(K)), prob=e / (e + K - 1))
    zeros = [0] * OPENDP_BATCH

    def call(mechanism: Any, argument: Any) -> Draw:
        def draw() -> int:
            for _ in range(CHUNK):
                mechanism(argument)
            return CHUNK
        return draw

    def batch() -> int:
        vector(zeros)
        return OPENDP_BATCH

    return {"laplace": call(one, 0), "laplace batch": batch, "rr": call(rr_mechanism, TRUE_INDEX)}


def sampler_figures(quick: bool) -> list[Figure]:
    seconds = 0.5 if quick else 2.0
    mine = ours()
    try:
        theirs = opendp()
    except ImportError as exc:
        progress(f"privacy: no OpenDP baseline: {exc}")
        theirs, why = {}, "opendp not installed"
    else:
        why = ""
    laplace = best_rates({"ours": mine["laplace"]}
                         | ({"opendp": theirs["laplace"], "opendp batch": theirs["laplace batch"]}
                            if theirs else {}), seconds)
    rr = best_rates({"ours": mine["rr"]} | ({"opendp": theirs["rr"]} if theirs else {}), seconds)
    progress("privacy: " + ", ".join(f"{what} {name} {value:,.0f}/s" for what, rates in
                                     (("laplace", laplace), ("rr", rr))
                                     for name, value in rates.items()))
    name = f"discrete Laplace, scale {SCALE} (samples/s; base: opendp"
    rr_name = f"{K}-ary randomized response, ε = {EPSILON} (samples/s; base: opendp)"
    return [
        Figure(f"{name}, one per call)", laplace["ours"], laplace.get("opendp"), note=why),
        Figure(f"{name}, {OPENDP_BATCH:,} per call)", laplace["ours"],
               laplace.get("opendp batch"), note=why),
        Figure(rr_name, rr["ours"], rr.get("opendp"), note=why),
    ]


FLEET = {"plug": 40, "bulb": 30, "thermostat": 10, "door": 10, "sensor": 10}  # 100 devices
POOL = 1000  # distinct readings per kind, reused in turn


def reading_pool(kind: str) -> list[tuple[dict[str, Any], str]]:
    """Readings as a device of `kind` sends them: (values, the JSON payload)."""
    pool = []
    for i in range(POOL):
        values: dict[str, Any] = {
            "plug": {"on": i % 7 < 4, "power_w": (i % 7 < 4) * (40.0 + i % 90),
                     "energy_wh": 1000 + i},
            "bulb": {"on": i % 11 < 6, "brightness": 10 * (i % 10)},
            "thermostat": {"temperature": 18 + (i % 40) / 10, "humidity": 45,
                           "target": 19 + (i // 100) % 4, "heating": i % 3 == 0},
            "door": {"open": i % 13 == 0, "battery": 90},
            "sensor": {"temperature": 20.5, "humidity": 40 + i % 20, "battery": 80},
        }[kind]
        pool.append((values, json.dumps({"ts": 1_700_000_000 + 10 * i, **values})))
    return pool


def report_figures(quick: bool) -> list[Figure]:
    zone = ZoneInfo("Europe/Berlin")
    start = datetime.datetime(2026, 11, 16, tzinfo=zone).timestamp()  # a Monday
    steps = 8640 if quick else 7 * 8640  # one reading per 10 s
    devices = [(f"{kind}-{n}", kind) for kind, count in FLEET.items() for n in range(count)]
    pools = {kind: reading_pool(kind) for kind in FLEET}

    begin = time.perf_counter()
    for step in range(steps):
        for _device, kind in devices:
            json.loads(pools[kind][step % POOL][1])
    parse_s = time.perf_counter() - begin

    data = WeekData("2026-W47")
    begin = time.perf_counter()
    for step in range(steps):
        ts = start + 10 * step
        for device, kind in devices:
            accumulate(data, CATEGORIES, device, kind, ts, pools[kind][step % POOL][0], zone)
    facts = [DeviceFacts(kind, "Shelly Plug S", "1.2") for _device, kind in devices]
    reports = [release(c, Context("2026-W47", "DE", Fraction(1, 10)), data, facts)
               for c in CATEGORIES]
    fold_s = time.perf_counter() - begin
    readings = steps * len(devices)
    progress(f"privacy: {readings:,} readings folded in {fold_s:.1f} s "
             f"(JSON parse {parse_s:.1f} s), {len(reports)} reports")
    what = "a week" if not quick else "a day"
    return [Figure(f"privacy: {what} of 100 devices at 1/10 s -> 4 reports (s; base: JSON "
                   "parse of the same readings)", fold_s, parse_s),
            Figure("privacy: fold one reading (µs; base: its JSON parse)",
                   fold_s / readings * 1e6, parse_s / readings * 1e6)]


async def measure(tmp: Path, quick: bool) -> list[Figure]:
    return await asyncio.to_thread(lambda: report_figures(quick) + sampler_figures(quick))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.privacy",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args(argv)
    print(table(report_figures(args.quick) + sampler_figures(args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
