"""Device shadows: the state a device reports and the state its owners want.

Conflict rules (docs/cloud.md quotes them):
- reported: the device wins. Reported state is only ever what the device itself last
  said; neither the cloud nor a local command can write it.
- desired: per key, the newest change wins, by the time it was made (a local command's
  time on the gateway's clock; a cloud change's `changed_at`); on a tie the local change
  wins. The gateway applies a desired change that wins by commanding the device; a device
  that later reports something else (a button pressed) is not overruled until the next
  desired change.
After an outage the gateway sends each shadow whole, with each desired key's time and side,
so the cloud merges with the same rule and both sides converge.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LOCAL = "local"
CLOUD = "cloud"


def wins(ts: float, side: str, current: Mapping[str, Any] | None) -> bool:
    """Does a change (ts, side) replace the `current` desired entry of a key?"""
    if current is None:
        return True
    if ts != current["ts"]:
        return ts > float(current["ts"])
    return side == LOCAL or current["side"] != LOCAL


def merge_desired(desired: Mapping[str, Mapping[str, Any]], changes: Mapping[str, Any],
                  ts: float, side: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The desired state after `changes` made at `ts` on `side`, and the keys that took."""
    merged = {key: dict(entry) for key, entry in desired.items()}
    taken = []
    for key, value in changes.items():
        if wins(ts, side, merged.get(key)):
            merged[key] = {"value": value, "ts": ts, "side": side}
            taken.append(key)
    return merged, taken


def document(device_id: str, reported: Mapping[str, Any], reported_version: int,
             desired: Mapping[str, Mapping[str, Any]], desired_version: int) -> dict[str, Any]:
    """A whole shadow as sent on gw/<id>/shadow/reported."""
    return {"device": device_id, "reported": dict(reported),
            "reported_version": reported_version,
            "desired": {k: dict(v) for k, v in desired.items()},
            "desired_version": desired_version}
