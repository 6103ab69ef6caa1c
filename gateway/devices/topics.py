"""The device topic contract (DESIGN §6) and the broker ACLs that enforce it."""

from __future__ import annotations

import re

DEVICE_ID = re.compile(r"^[a-z0-9-]{3,40}$")

# Topics a device publishes (device -> gateway) and receives (gateway -> device).
DEVICE_SENDS = ("telemetry", "state", "cmd/result")
DEVICE_RECEIVES = ("cmd", "creds")

# The proof that a device switched credentials: devices/<id>/creds/ack/<version>, which
# only the login <id>.<version> may publish to (each login has its own role).
ACK_PREFIX = "creds/ack/"

# What the gateway's own session subscribes to.
GATEWAY_SUBSCRIPTIONS = (*(f"devices/+/{leaf}" for leaf in DEVICE_SENDS),
                         f"devices/+/{ACK_PREFIX}+", "enroll/+/hello")


def device_topic(device_id: str, leaf: str) -> str:
    return f"devices/{device_id}/{leaf}"


# The tree the gateway publishes for Home Assistant (states, availability) and takes its
# commands from (`<root>/<id>/<key>/set`).
HA_BRIDGE_ROOT = "home-gateway"


def bridge_state_topic(device_id: str) -> str:
    """Where the gateway republishes a device's validated state (Home Assistant's tree)."""
    return f"{HA_BRIDGE_ROOT}/{device_id}/state"


def ack_topic(device_id: str, version: int) -> str:
    return device_topic(device_id, f"{ACK_PREFIX}{version}")


def parse_device_topic(topic: str) -> tuple[str, str] | None:
    """`devices/<id>/<leaf>` -> (id, leaf) for a leaf a device may send (an ack's leaf keeps
    its version: "creds/ack/3"); else None."""
    parts = topic.split("/", 2)
    if len(parts) != 3 or parts[0] != "devices":
        return None
    leaf = parts[2]
    if leaf not in DEVICE_SENDS and not (
            leaf.startswith(ACK_PREFIX) and leaf[len(ACK_PREFIX):].isdigit()):
        return None
    if not DEVICE_ID.fullmatch(parts[1]):
        return None
    return parts[1], parts[2]


def enroll_topic(token_id: str, leaf: str) -> str:
    return f"enroll/{token_id}/{leaf}"


def parse_enroll_topic(topic: str) -> str | None:
    """`enroll/<token-id>/hello` -> the token id; else None."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "enroll" and parts[2] == "hello":
        return parts[1]
    return None


def _acls(sends: list[str], receives: list[str]) -> list[dict[str, object]]:
    """Literal topics only: Mosquitto 2.0.x dynamic security has no %c/%u substitution."""
    acls: list[dict[str, object]] = [
        {"acltype": "publishClientSend", "topic": topic, "allow": True} for topic in sends]
    for topic in receives:
        acls.append({"acltype": "subscribeLiteral", "topic": topic, "allow": True})
        acls.append({"acltype": "publishClientReceive", "topic": topic, "allow": True})
    return acls


def device_acls(device_id: str, version: int) -> list[dict[str, object]]:
    """What the login <id>.<version> may do: the device's own topics and its own ack."""
    return _acls([*(device_topic(device_id, leaf) for leaf in DEVICE_SENDS),
                  ack_topic(device_id, version)],
                 [device_topic(device_id, leaf) for leaf in DEVICE_RECEIVES])


def enrollment_acls(token_id: str) -> list[dict[str, object]]:
    """An enrollment login may only say hello and hear its answer."""
    return _acls([enroll_topic(token_id, "hello")], [enroll_topic(token_id, "creds")])
