"""What the firewall renderer needs to know, independent of the config module.

The daemon builds a `FirewallInput` from its config, the device inventory in the store, the
loaded profiles and the current DNS answers; `gateway.firewall.render` turns it into one
nft script. Everything here is immutable and holds only validated, normalized values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Literal, TypeAlias

__all__ = [
    "ADOPTED",
    "DROP_CLASSES",
    "HOST_NAME",
    "POLICIES",
    "PROTOCOLS",
    "TABLE",
    "Allow",
    "DeviceRule",
    "FirewallInput",
    "IPAddress",
    "IPNetwork",
    "Peer",
    "Policy",
    "PortRange",
    "Profile",
    "Protocol",
    "Resolution",
    "Services",
]

TABLE = "home_gateway"  # the only nft table the gateway ever creates, changes or deletes

IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network
Protocol: TypeAlias = Literal["tcp", "udp", "icmp"]
Policy: TypeAlias = Literal["quarantine", "restricted", "open", "blocked"]
PortRange: TypeAlias = tuple[int, int]  # inclusive: (443, 443) is one port

PROTOCOLS: tuple[Protocol, ...] = ("tcp", "udp", "icmp")
POLICIES: tuple[Policy, ...] = ("quarantine", "restricted", "open", "blocked")
ADOPTED: tuple[Policy, ...] = ("restricted", "open")  # may leave the segment, have peers

# A DNS name as profiles and MUD files give it: lower case, no trailing dot (RFC 6991's
# domain-name, which allows "_").
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?"
HOST_NAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")

# One named counter and one log prefix per class; docs/firewall.md says what each means.
DROP_CLASSES = ("inbound", "quarantine", "egress", "lateral", "upnp", "spoof", "flood")


@dataclass(frozen=True, slots=True)
class Allow:
    """One destination a device may open connections to: exactly one of `cidr` or `host`.

    `ports` is empty for ICMP and non-empty for TCP and UDP.
    """

    protocol: Protocol
    ports: tuple[PortRange, ...] = ()
    cidr: IPNetwork | None = None
    host: str | None = None  # a DNS name, lower case, without the trailing dot


@dataclass(frozen=True, slots=True)
class Peer:
    """Another local device this device may open connections to: by `device` id or `kind`."""

    protocol: Protocol
    ports: tuple[PortRange, ...] = ()
    device: str | None = None
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    allow: tuple[Allow, ...] = ()
    peers: tuple[Peer, ...] = ()
    description: str = ""


@dataclass(frozen=True, slots=True)
class DeviceRule:
    """One inventory device as the firewall sees it.

    `mac` (lower case, colon-separated) binds every address in `ips` to that MAC; None means
    no binding is known. `profile` names an entry of `FirewallInput.profiles`.
    """

    id: str
    ips: tuple[IPAddress, ...]
    policy: Policy
    mac: str | None = None
    profile: str | None = None
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class Services:
    """TCP ports of the gateway's own services, by who may reach them."""

    admin_tcp: tuple[int, ...] = ()  # the admin page: from the LAN subnets only
    ha_tcp: tuple[int, ...] = ()  # the broker listener Home Assistant uses: LAN subnets only
    device_tcp: tuple[int, ...] = ()  # the broker listener for devices: IoT side only


@dataclass(frozen=True, slots=True)
class Resolution:
    """The current answer for one DNS name; its elements expire after `timeout_s`."""

    addresses: tuple[IPAddress, ...]
    timeout_s: int


@dataclass(frozen=True, slots=True)
class FirewallInput:
    uplink: str  # interface toward the home LAN and the internet
    iot: str | None  # interface of the IoT segment; None: a single-homed Pi protects itself
    iot_subnets: tuple[IPNetwork, ...] = ()
    lan_subnets: tuple[IPNetwork, ...] = ()
    services: Services = field(default_factory=Services)
    devices: tuple[DeviceRule, ...] = ()
    profiles: Mapping[str, Profile] = field(default_factory=dict)
    dns: Mapping[str, Resolution] = field(default_factory=dict)  # host name -> answer
    masquerade: bool = True  # IPv4 from the IoT subnets leaves the uplink with the Pi's address
    log_per_minute: int = 10  # log lines per drop class and minute (burst 5)
