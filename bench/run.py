"""Run the benchmarks and print one table: every figure next to its same-run baseline.

    python -m bench.run [--quick] [--only NAME ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import (
    cloud,
    command_rtt,
    firewall,
    homeassistant,
    memory,
    package,
    privacy,
    rotation,
    throughput,
    web,
)
from bench.common import Figure, environment, table

Measure = Callable[[Path, bool], Awaitable[list[Figure]]]
FIGURES: dict[str, Measure] = {
    "throughput": throughput.measure,
    "rtt": command_rtt.measure,
    "memory": memory.measure,
    "web": web.measure,
    "rotation": rotation.measure,
    "firewall": firewall.measure,
    "cloud": cloud.measure,
    "privacy": privacy.measure,
    "homeassistant": homeassistant.measure,
    "package": package.measure,
}
BUDGET_S = {"throughput": 150.0, "rtt": 90.0, "memory": 90.0, "web": 90.0,
            "rotation": 240.0, "firewall": 120.0, "cloud": 300.0,
            "privacy": 180.0, "homeassistant": 120.0, "package": 600.0}  # each stops by itself
QUICK_BUDGET_S = {**BUDGET_S, "rotation": 90.0, "firewall": 60.0, "cloud": 90.0,
                  "privacy": 60.0}


async def run(names: list[str], quick: bool) -> list[Figure]:
    figures: list[Figure] = []
    for name in names:
        print(f"{name} …", file=sys.stderr, flush=True)
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            budget = (QUICK_BUDGET_S if quick else BUDGET_S)[name]
            figures += await asyncio.wait_for(FIGURES[name](Path(tmp), quick), budget)
        print(f"{name}: {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (~30 s)")
    parser.add_argument("--only", action="append", choices=list(FIGURES), metavar="NAME",
                        help=f"run only this figure (repeatable): {', '.join(FIGURES)}")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    args = parser.parse_args(argv)
    env = environment()
    for key, value in env.items():
        print(f"{key + ':':14} {value}")
    print(f"{'run:':14} {'quick' if args.quick else 'full'}")
    print(flush=True)
    figures = asyncio.run(run(args.only or list(FIGURES), args.quick))
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "quick": args.quick,
                                         "figures": [f.as_dict() for f in figures]}, indent=2,
                                        ensure_ascii=False))
    return 0  # a missed target is a result, shown in the table, not a failure of the run


if __name__ == "__main__":
    sys.exit(main())
