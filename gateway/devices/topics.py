"""The device topic contract (DESIGN §6) and the broker ACLs that enforce it."""

from __future__ import annotations

import re

DEVICE_ID = re.compile(r"^[a-z0-9-]{3,40}$")

# Topics a device publishes (device -> gateway) and receives (gateway -> device).
DEVICE_SENDS = ("telemetry", "state", "cmd/result", "creds/ack")
DEVICE_RECEIVES = ("cmd", "creds")

# What the gateway's own session subscribes to.
GATEWAY_SUBSCRIPTIONS = tuple(f"devices/+/{leaf}" for leaf in DEVICE_SENDS)


def device_topic(device_id: str, leaf: str) -> str:
    return f"devices/{device_id}/{leaf}"


def bridge_state_topic(device_id: str) -> str:
    """Where the gateway republishes a device's validated state (Home Assistant's tree)."""
    return f"home-gateway/{device_id}/state"


def parse_device_topic(topic: str) -> tuple[str, str] | None:
    """`devices/<id>/<leaf>` -> (id, leaf) for a leaf a device may send; else None."""
    parts = topic.split("/", 2)
    if len(parts) != 3 or parts[0] != "devices" or parts[2] not in DEVICE_SENDS:
        return None
    if not DEVICE_ID.fullmatch(parts[1]):
        return None
    return parts[1], parts[2]


def device_role(device_id: str) -> str:
    return f"device-{device_id}"


def device_acls(device_id: str) -> list[dict[str, object]]:
    """Literal topics only: Mosquitto 2.0.x dynamic security has no %c/%u substitution."""
    acls: list[dict[str, object]] = [
        {"acltype": "publishClientSend", "topic": device_topic(device_id, leaf), "allow": True}
        for leaf in DEVICE_SENDS
    ]
    for leaf in DEVICE_RECEIVES:
        topic = device_topic(device_id, leaf)
        acls.append({"acltype": "subscribeLiteral", "topic": topic, "allow": True})
        acls.append({"acltype": "publishClientReceive", "topic": topic, "allow": True})
    return acls
