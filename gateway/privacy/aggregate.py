"""The vendor's side: many households' reports -> estimates with confidence intervals.

Every report is turned into unbiased per-household values, and each cell's estimate is
their mean with a normal (CLT) interval from their sample spread, so noise, the random
choice of cell and the households' own differences are all inside the interval:

- discrete-Laplace reports: the value of the one cell the household drew (the noise has
  mean 0); a cell's estimate is the mean over the households that drew it, an unbiased
  estimate of the mean over all households because the draw is independent of the data.
- randomized-response reports: for each field and each answer j, (1[y = j] - q) / (p - q)
  with p = e^ε / (e^ε + k - 1) the chance of telling the truth and q = 1 / (e^ε + k - 1),
  the standard debiasing; its mean estimates the share of households' items answering j.

Estimates are of the clipped quantities (reports.py documents the bounds). A cell is
suppressed when fewer than `k` households stand behind it: fewer than k reports, or, for a
share, fewer than k households by the estimate itself.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.privacy.reports import domains_of, epsilon_of, field_epsilon

UNITS = {"usage": "uses per week", "energy": "Wh per hour of day", "inventory": "share",
         "comfort": "share"}


@dataclass(frozen=True, slots=True)
class Estimate:
    category: str
    week: str
    region: str  # "*" when regions are pooled
    cell: str  # "plug", "plug/07", "kind=plug", "setpoint=21"
    households: int  # reports behind the cell
    estimate: float | None  # None when suppressed
    low: float | None
    high: float | None
    unit: str

    @property
    def suppressed(self) -> bool:
        return self.estimate is None

    def as_json(self) -> dict[str, Any]:
        return {"category": self.category, "week": self.week, "region": self.region,
                "cell": self.cell, "households": self.households, "estimate": self.estimate,
                "low": self.low, "high": self.high, "unit": self.unit,
                "suppressed": self.suppressed}


def contributions(report: Mapping[str, Any]) -> dict[str, float]:
    """A validated report's unbiased per-household values, by cell."""
    if report["mechanism"] == "discrete-laplace":
        return {report["cell"]: float(report["value"])}
    epsilon = epsilon_of(report)
    values: dict[str, float] = {}
    for name, domain in domains_of(report["category"]).items():
        k = len(domain)
        e = math.exp(field_epsilon(report["category"], epsilon))
        p, q = e / (e + k - 1), 1 / (e + k - 1)
        for answer in domain:
            values[f"{name}={answer}"] = ((report["fields"][name] == answer) - q) / (p - q)
    return values


def aggregate(reports: Iterable[Mapping[str, Any]], *, k: int = 10,
              confidence: float = 0.95, by_region: bool = False) -> list[Estimate]:
    """Estimates per (category, week, region or "*", cell) from validated reports."""
    cells: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    for report in reports:
        region = report["region"] if by_region else "*"
        for cell, value in contributions(report).items():
            cells[(report["category"], report["week"], region, cell)].append(value)
    z = statistics.NormalDist().inv_cdf((1 + confidence) / 2)
    estimates = []
    for (category, week, region, cell), values in sorted(cells.items()):
        n = len(values)
        mean = statistics.fmean(values)
        share = UNITS[category] == "share"
        if n < max(k, 2) or (share and mean * n < k):
            estimates.append(Estimate(category, week, region, cell, n, None, None, None,
                                      UNITS[category]))
            continue
        half = z * statistics.stdev(values) / math.sqrt(n)
        estimates.append(Estimate(category, week, region, cell, n, mean, mean - half,
                                  mean + half, UNITS[category]))
    return estimates


def table(estimates: Iterable[Estimate], confidence: float) -> str:
    """A plain-text table for the command line."""
    rows = [("category", "week", "region", "cell", "households", "estimate",
             f"{confidence:.0%} interval", "unit")]
    for e in estimates:
        shown = ("suppressed", "") if e.suppressed else (
            f"{e.estimate:.3f}", f"{e.low:.3f} … {e.high:.3f}")
        rows.append((e.category, e.week, e.region, e.cell, str(e.households), *shown, e.unit))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)
