"""(h) Privacy: how fast the exact samplers of gateway.privacy.samplers draw, next to OpenDP's
(Rust, called through its Python bindings) at the same parameters.

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
import math
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

from bench.common import Figure, progress, table
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


async def measure(tmp: Path, quick: bool) -> list[Figure]:
    return await asyncio.to_thread(sampler_figures, quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.privacy",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args(argv)
    print(table(sampler_figures(args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
