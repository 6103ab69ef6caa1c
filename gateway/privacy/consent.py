"""The consent texts: what each category sends, to whom, how often, and at what privacy cost.

A household opts in category by category; each text is what it agrees to, so it is built
from the same config the exporter uses (recipient, sink, region, ε and the caps).
"""

from __future__ import annotations

from fractions import Fraction

from gateway.config import PrivacyConfig
from gateway.privacy.reports import BRANDS, ENERGY_BOUND, USAGE_BOUND

# What each category is about, in a few words (its text says it all).
TITLES = {
    "inventory": "Device inventory",
    "usage": "Device usage",
    "energy": "Energy by hour",
    "comfort": "Thermostat setpoints",
}
WHAT = {
    "inventory": (
        "Which kinds of device you have: once a week, one of your devices picked at random, "
        "described only by its kind (plug, bulb, …), its brand if it is one of "
        f"{len(BRANDS)} well-known brands (otherwise \"other\") and its firmware's major "
        "version. Each of the three is randomly replaced by another answer often enough "
        "that no single report can be trusted about your home."),
    "usage": (
        "How often a kind of device is used or adjusted: once a week, for one kind picked at "
        "random, the number of times its devices were switched on, opened, triggered or "
        f"adjusted that week (counted up to {USAGE_BOUND}), with random noise added."),
    "energy": (
        "How much power metered plugs draw by hour of the day: once a week, for one hour of "
        "the day picked at random, the average watt-hours your plugs used in that hour "
        f"(counted up to {ENERGY_BOUND} Wh), with random noise added."),
    "comfort": (
        "Which temperatures your thermostats are set to: once a week, the setpoint (in whole "
        "degrees) of one thermostat at one hour of the week picked at random, randomly "
        "replaced by another setpoint often enough that no single report can be trusted."),
}
NEVER = ("Never sent: names, addresses (MAC or IP), serial numbers, host names, user names, "
         "Wi-Fi names, your exact location or postcode, or any time finer than the hour of "
         "the day within a week.")


def show(epsilon: Fraction) -> str:
    """ε as a short decimal for people (the ledger keeps it exact)."""
    return f"{float(epsilon):.3g}"


def duration(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


def consent_text(category: str, config: PrivacyConfig) -> str:
    """The plain-language text a household agrees to when it turns `category` on."""
    if config.sink == "https":
        where = f"sent over HTTPS to {config.recipient} ({config.url})"
    else:
        where = f"written to a folder on this gateway for {config.recipient} to collect"
    region = ("no region" if config.region == "ZZ"
              else f"your region code {config.region} and nothing finer")
    return (
        f"{WHAT[category]} Each report also carries the week and {region}. It is {where}, "
        f"at a random moment within {duration(config.window_s)} after the week ends (Monday "
        "00:00). "
        f"Privacy budget: ε = {show(config.epsilon[category])} per week for this category "
        "(local differential privacy: smaller is more private); the gateway refuses to "
        f"release more than ε = {show(config.week_cap)} per week across all categories and "
        f"{show(config.year_cap)} per 365 days. {NEVER} "
        + ("Reports carry a pseudonym that changes every "
           f"{config.pseudonym_epoch_days} days, so the recipient can tell your reports of "
           "the same period apart from other homes' but not link periods. "
           if config.link_reports else "Reports carry no identifier of your home. ")
        + "Turning this off deletes the category's reports that have not left yet."
    )
