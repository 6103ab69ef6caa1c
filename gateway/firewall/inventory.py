"""Config + device registry + profiles + DNS answers -> the renderer's `FirewallInput`.

Pure: the daemon (and `home-gateway firewall render`) call it with what they have read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.config import Config, is_loopback, split_listen
from gateway.firewall.model import (
    DeviceRule,
    FirewallInput,
    IPAddress,
    Profile,
    Resolution,
    Services,
)
from gateway.firewall.profiles import SHIPPED_DIR
from gateway.store import Device

__all__ = ["Inventory", "build_input", "device_profile", "learn_address", "profile_dirs",
           "services"]


def profile_dirs(config: Config) -> tuple[Path, Path]:
    """Where profiles come from: the shipped ones, then the local folder, whose files
    replace shipped ones of the same name."""
    return SHIPPED_DIR, config.firewall.profiles_dir


def device_profile(device: Device) -> str:
    """A device's profile: the one it was given, else the one named after its kind."""
    return device.profile or device.kind


def learn_address(known: str | None, address: str, iot_subnets: Iterable[str]) -> str | None:
    """A device's addresses after its broker login connected from `address`, or None when
    nothing changes: an address inside the IoT subnets is recorded only while the device
    has none of that family (a known address is never replaced behind the admin's back;
    its MAC binding would drop packets from another one anyway)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if not any(ip in ipaddress.ip_network(n) for n in iot_subnets):
        return None
    addresses = known.split() if known else []
    if any(ipaddress.ip_address(a).version == ip.version for a in addresses):
        return None
    return " ".join([*addresses, str(ip)])


def services(config: Config) -> Services:
    """The gateway's TCP services, by who may reach them.

    The admin page: every non-loopback `web.listen` port, from the LAN subnets. The
    broker: a listener on an address in the IoT subnets serves devices; on a wildcard
    address both sides; anywhere else (not loopback) the LAN side, which is where Home
    Assistant connects.
    """
    admin = sorted({port for host, port in map(split_listen, config.web.listen)
                    if not is_loopback(host)})
    device_tcp: set[int] = set()
    ha_tcp: set[int] = set()
    iot_nets = [ipaddress.ip_network(n) for n in config.network.iot_subnets]
    if config.broker.mode == "embedded":
        for listener in config.broker.listeners:
            address = ipaddress.ip_address(listener.address)
            if address.is_loopback:
                continue
            if address.is_unspecified:
                device_tcp.add(listener.port)
                ha_tcp.add(listener.port)
            elif any(address in net for net in iot_nets):
                device_tcp.add(listener.port)
            else:
                ha_tcp.add(listener.port)
    return Services(admin_tcp=tuple(admin), ha_tcp=tuple(sorted(ha_tcp)),
                    device_tcp=tuple(sorted(device_tcp)))


@dataclass(frozen=True, slots=True)
class Inventory:
    """What the firewall is rendered from, and why some devices are not in it."""

    input: FirewallInput
    problems: Mapping[str, str]  # device id -> why it is not placed as its policy says
    unplaced: tuple[str, ...]  # device ids without a known address

    def warnings(self) -> list[str]:
        return [f"device {device_id}: {problem}" for device_id, problem in self.problems.items()]


def build_input(config: Config, devices: Iterable[Device], profiles: Mapping[str, Profile],
                dns: Mapping[str, Resolution]) -> Inventory:
    """The renderer's input. A device whose profile does not exist falls back to quarantine
    (fail closed) and is reported; a device without an address cannot be placed (its
    traffic is that of an unknown address: quarantined)."""
    net = config.network
    assert net.uplink is not None, "no firewall without network.uplink"
    iot_nets = [ipaddress.ip_network(n) for n in net.iot_subnets]
    rules: list[DeviceRule] = []
    problems: dict[str, str] = {}
    unplaced: list[str] = []
    owner: dict[str, str] = {}  # address or MAC -> the device that has it
    for device in sorted(devices, key=lambda d: d.id):
        if device.status == "removed":
            continue
        if not device.addresses:
            unplaced.append(device.id)
            continue
        ips: list[IPAddress] = [ipaddress.ip_address(a) for a in device.addresses]
        outside = [str(ip) for ip in ips if not any(ip in n for n in iot_nets)]
        if outside:
            problems[device.id] = (f"{', '.join(outside)} outside network.iot_subnets "
                                   "(left out of the firewall)")
            continue
        # One device's bad row must not stop the whole firewall: leave it out (its traffic
        # is then that of an unknown device: quarantined) and say why.
        claims = [*map(str, ips), *([device.mac] if device.mac else [])]
        taken = [f"{c} (also {owner[c]})" for c in claims if c in owner]
        if taken:
            problems[device.id] = f"{', '.join(taken)} (left out of the firewall)"
            continue
        owner.update(dict.fromkeys(claims, device.id))
        policy = device.policy
        profile: str | None = device_profile(device)
        if profile not in profiles:
            if policy == "restricted":
                problems[device.id] = (f"no profile {profile!r}; quarantined until it exists "
                                       f"(profiles: {', '.join(sorted(profiles))})")
                policy = "quarantine"
            profile = None
        rules.append(DeviceRule(id=device.id, ips=tuple(ips), policy=policy,  # type: ignore[arg-type]
                                mac=device.mac, profile=profile, kind=device.kind))
    inp = FirewallInput(
        uplink=net.uplink, iot=net.iot,
        iot_subnets=tuple(iot_nets),
        lan_subnets=tuple(ipaddress.ip_network(n) for n in net.lan_subnets),
        services=services(config),
        devices=tuple(rules) if net.iot is not None else (),
        profiles=dict(profiles), dns=dict(dns),
        log_per_minute=config.firewall.log_per_minute)
    return Inventory(inp, problems, tuple(unplaced))
