"""FirewallInput -> one nft script for `table inet home_gateway`, and back from nft's counters.

Everything here is pure. The script replaces the gateway's table and nothing else in one
transaction (`nft -f`): it creates the table (so the delete cannot fail), deletes it and
declares it anew. Devices only ever appear as set and map elements, so the number of rules
is the same for 0 and for 1,000 devices. docs/firewall.md describes the policy.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeVar

from gateway.firewall.model import (
    ADOPTED,
    DROP_CLASSES,
    HOST_NAME,
    POLICIES,
    PROTOCOLS,
    TABLE,
    DeviceRule,
    FirewallInput,
    IPAddress,
    IPNetwork,
    PortRange,
    Profile,
    Resolution,
)

__all__ = [
    "LOG_PREFIX",
    "RenderError",
    "check_input",
    "count_rules",
    "dns_names",
    "parse_counters",
    "render_dns_update",
    "render_remove",
    "render_ruleset",
]

LOG_PREFIX = "home-gateway drop {}: "  # one per drop class, for journalctl -k | grep

_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # quoted in the script: no quotes, no spaces
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")  # shown in element comments
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")

# ICMPv6 that IPv6 cannot work without (RFC 4890); errors also pass as "related".
# A host's open connections to the gateway's listeners (a device needs one, a browser ~6
# and an event stream per tab, Home Assistant two); the hosts counted at once.
MAX_CONNECTIONS_PER_HOST = 32
CONNECTION_HOSTS = 65535
_ICMPV6_ERRORS = "destination-unreachable, packet-too-big, time-exceeded, parameter-problem"
_ICMPV6_LINK = ("nd-neighbor-solicit, nd-neighbor-advert, mld-listener-query, "
                "mld-listener-report, mld-listener-done, mld2-listener-report")
_ICMPV4_ERRORS = "destination-unreachable, time-exceeded, parameter-problem"
_UPNP_UDP = "1900, 5351"  # SSDP, NAT-PMP/PCP


class RenderError(ValueError):
    """The input cannot be rendered; `problems` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# --- checking the input ---------------------------------------------------------------------


def check_input(inp: FirewallInput) -> list[str]:
    """Every reason `inp` cannot be rendered, one line each; empty when it can."""
    problems: list[str] = []
    for key, name in (("uplink", inp.uplink), ("iot", inp.iot)):
        if name is not None and not _IFNAME.fullmatch(name):
            problems.append(f"{key}: interface name {name!r} is not valid "
                            "(expected 1 to 15 of A-Z a-z 0-9 _ . -)")
    if inp.iot is not None and inp.iot == inp.uplink:
        problems.append("iot: the IoT interface must differ from the uplink")
    if inp.iot is not None and not inp.iot_subnets:
        problems.append("iot_subnets: empty (expected the IoT segment's IPv4/IPv6 subnets)")
    for iot_net in inp.iot_subnets if inp.iot is not None else ():
        for lan_net in inp.lan_subnets:
            if iot_net.version == lan_net.version and iot_net.overlaps(lan_net):
                problems.append(f"iot_subnets: {iot_net} overlaps the LAN subnet {lan_net}")
    for key, ports in (("admin_tcp", inp.services.admin_tcp), ("ha_tcp", inp.services.ha_tcp),
                       ("device_tcp", inp.services.device_tcp)):
        problems += [f"services.{key}: port {p!r} out of range (expected 1 to 65535)"
                     for p in ports if not 1 <= p <= 65535]
    if inp.log_per_minute < 1:
        problems.append("log_per_minute: must be at least 1")
    for name, profile in sorted(inp.profiles.items()):
        problems += _check_profile(name, profile)
    for host, answer in sorted(inp.dns.items()):
        if answer.timeout_s < 1:
            problems.append(f"dns[{host!r}]: timeout {answer.timeout_s} s (expected >= 1)")
    if inp.iot is not None:
        problems += _check_devices(inp)
    return problems


def _check_profile(name: str, profile: Profile) -> list[str]:
    problems: list[str] = []
    rules: list[tuple[str, str, tuple[PortRange, ...]]] = []
    for i, allow in enumerate(profile.allow):
        where = f"profile {name!r} allow[{i}]"
        rules.append((where, allow.protocol, allow.ports))
        if (allow.cidr is None) == (allow.host is None):
            problems.append(f"{where}: expected exactly one of cidr or host")
        if allow.host is not None and not HOST_NAME.fullmatch(allow.host):
            problems.append(f"{where}: host {allow.host!r} is not a DNS name")
    for i, peer in enumerate(profile.peers):
        where = f"profile {name!r} peers[{i}]"
        rules.append((where, peer.protocol, peer.ports))
        if (peer.device is None) == (peer.kind is None):
            problems.append(f"{where}: expected exactly one of device or kind")
    for where, protocol, ports in rules:
        if protocol not in PROTOCOLS:
            problems.append(f"{where}: protocol {protocol!r} (expected tcp, udp or icmp)")
        elif protocol == "icmp" and ports:
            problems.append(f"{where}: icmp has no ports")
        elif protocol != "icmp" and not ports:
            problems.append(f"{where}: {protocol} needs ports")
        problems += [f"{where}: port range {lo}-{hi} (expected 0 <= low <= high <= 65535)"
                     for lo, hi in ports if not 0 <= lo <= hi <= 65535]
    return problems


def _check_devices(inp: FirewallInput) -> list[str]:
    problems: list[str] = []
    seen_id: set[str] = set()
    owner_ip: dict[IPAddress, str] = {}
    owner_mac: dict[str, str] = {}
    for dev in inp.devices:
        where = f"device {dev.id!r}"
        if not _DEVICE_ID.fullmatch(dev.id):
            problems.append(f"{where}: id is not valid (expected letters, digits, _ . : -)")
        if dev.id in seen_id:
            problems.append(f"{where}: listed twice")
        seen_id.add(dev.id)
        if dev.policy not in POLICIES:
            problems.append(f"{where}: policy {dev.policy!r} "
                            "(expected quarantine, restricted, open or blocked)")
        if dev.profile is not None and dev.profile not in inp.profiles:
            problems.append(f"{where}: profile {dev.profile!r} is not loaded")
        if dev.mac is not None:
            if not _MAC.fullmatch(dev.mac):
                problems.append(f"{where}: MAC {dev.mac!r} (expected aa:bb:cc:dd:ee:ff)")
            elif dev.mac in owner_mac and owner_mac[dev.mac] != dev.id:
                problems.append(f"{where}: MAC {dev.mac} also belongs to {owner_mac[dev.mac]!r}")
            owner_mac.setdefault(dev.mac, dev.id)
        for ip in dev.ips:
            if ip in owner_ip and owner_ip[ip] != dev.id:
                problems.append(f"{where}: address {ip} also belongs to {owner_ip[ip]!r}")
            owner_ip.setdefault(ip, dev.id)
            if not any(ip in net for net in inp.iot_subnets if net.version == ip.version):
                # Its packets would be dropped as spoofed: say so instead of rendering that.
                problems.append(f"{where}: address {ip} is outside the IoT subnets")
    return problems


# --- port ranges and address/port rectangles -----------------------------------------------


def _merge(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    """Overlapping and adjacent port ranges merged, sorted."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


_N = TypeVar("_N", IPv4Network, IPv6Network)


def _disjoint(entries: Sequence[tuple[_N, tuple[PortRange, ...]]]) -> list[tuple[_N, PortRange]]:
    """The same (network x ports) coverage as `entries`, as non-overlapping elements.

    The kernel refuses overlapping elements in a concatenated interval set, and profiles
    may well name 10.0.0.0/8 and 10.1.0.0/16 with different ports. CIDRs nest or are
    disjoint, so each network keeps its ancestors' ports and gives up its sub-networks.
    Sorted by address, a network's ancestors are a stack: this runs in O(n log n).
    """
    own: dict[_N, list[PortRange]] = {}
    for entry_net, entry_ranges in entries:
        own.setdefault(entry_net, []).extend(entry_ranges)
    nets: list[_N] = sorted(own, key=lambda n: (int(n.network_address), n.prefixlen))
    effective: dict[_N, tuple[PortRange, ...]] = {}
    kept: dict[_N, list[_N]] = {}  # a kept network -> its nearest kept sub-networks
    stack: list[_N] = []  # the ancestors of the current network, outermost first
    for node in nets:
        while stack and not _contains(stack[-1], node):
            stack.pop()
        above = effective[stack[-1]] if stack else ()
        mine = _merge(own[node] + list(above))
        effective[node] = mine
        stack.append(node)
        if above and mine == above:
            continue  # adds nothing to what an enclosing network already allows
        kept[node] = []
        parent = next((a for a in reversed(stack[:-1]) if a in kept), None)
        if parent is not None:
            kept[parent].append(node)
    out: list[tuple[_N, PortRange]] = []
    for node, children in kept.items():
        pieces = [node]
        for sub in children:
            pieces = [q for p in pieces for q in _exclude(p, sub)]
        out += [(piece, r) for piece in pieces for r in effective[node]]
    return sorted(out, key=lambda e: (int(e[0].network_address), e[0].prefixlen, e[1]))


def _contains(outer: _N, inner: _N) -> bool:
    shift = outer.max_prefixlen - outer.prefixlen
    return (inner.prefixlen >= outer.prefixlen
            and int(inner.network_address) >> shift == int(outer.network_address) >> shift)


def _exclude(net: _N, sub: _N) -> list[_N]:
    if sub.subnet_of(net):
        return list(net.address_exclude(sub))
    return [] if net.subnet_of(sub) else [net]


# --- elements -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Element:
    text: str
    timeout_s: int | None = None

    def render(self) -> str:
        if self.timeout_s is None:
            return self.text
        return f"{self.text} timeout {self.timeout_s}s"


@functools.lru_cache(maxsize=1 << 16)  # the same addresses recur in many elements
def _fmt_net(net: IPNetwork) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _fmt_ports(r: PortRange) -> str:
    return str(r[0]) if r[0] == r[1] else f"{r[0]}-{r[1]}"


@functools.lru_cache(maxsize=1 << 16)
def _host_net(ip: IPAddress) -> IPNetwork:
    return ipaddress.ip_network(ip)


# Key of a rectangle group: (source address, protocol); ICMP groups use protocol "icmp".
_Group = dict[tuple[IPAddress, str], list[tuple[IPNetwork, tuple[PortRange, ...]]]]
# (source, protocol, resolved address) -> seconds. Two names answering the same address
# for one device share the longer timeout.
_Timeouts = dict[tuple[IPAddress, str, IPAddress], int]


def _ports_elements(groups: _Group, version: int,
                    timeouts: _Timeouts | None = None) -> list[_Element]:
    """`src . dst . proto . port` elements of one family from rectangle groups."""
    out: list[tuple[tuple[int, int, int, int, str], _Element]] = []
    for (src, proto), rects in groups.items():
        if src.version != version or proto == "icmp":
            continue
        for net, r in _disjoint_any(rects):
            timeout = None
            if timeouts is not None:
                timeout = timeouts[(src, proto, net.network_address)]
            text = f"{src} . {_fmt_net(net)} . {proto} . {_fmt_ports(r)}"
            key = (int(src), int(net.network_address), net.prefixlen, r[0], proto)
            out.append((key, _Element(text, timeout)))
    return [e for _, e in sorted(out, key=lambda x: x[0])]


def _icmp_elements(groups: _Group, version: int,
                   timeouts: _Timeouts | None = None) -> list[_Element]:
    """`src . dst` elements of one family for the ICMP allowances in `groups`."""
    out: list[tuple[tuple[int, int, int], _Element]] = []
    for (src, proto), rects in groups.items():
        if src.version != version or proto != "icmp":
            continue
        nets = [n for n, _ in rects]
        # Timed elements stay one per address, each with its own timeout.
        for net in set(nets) if timeouts is not None else _collapse(nets):
            timeout = None
            if timeouts is not None:
                timeout = timeouts[(src, proto, net.network_address)]
            key = (int(src), int(net.network_address), net.prefixlen)
            out.append((key, _Element(f"{src} . {_fmt_net(net)}", timeout)))
    return [e for _, e in sorted(out, key=lambda x: x[0])]


def _disjoint_any(rects: list[tuple[IPNetwork, tuple[PortRange, ...]]],
                  ) -> list[tuple[IPNetwork, PortRange]]:
    v4 = [(n, r) for n, r in rects if isinstance(n, IPv4Network)]
    v6 = [(n, r) for n, r in rects if isinstance(n, IPv6Network)]
    return [*_disjoint(v4), *_disjoint(v6)]


def _collapse(nets: list[IPNetwork]) -> list[IPNetwork]:
    v4 = [n for n in nets if isinstance(n, IPv4Network)]
    v6 = [n for n in nets if isinstance(n, IPv6Network)]
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


def _same_family(ips: Iterable[IPAddress], version: int) -> list[IPAddress]:
    return [ip for ip in ips if ip.version == version]


def _egress_groups(inp: FirewallInput) -> tuple[_Group, _Group, _Timeouts]:
    """Allowances of restricted devices: by CIDR, by resolved DNS name (+ their timeouts)."""
    static: _Group = {}
    dns: _Group = {}
    timeouts: _Timeouts = {}
    for dev in inp.devices:
        if dev.policy != "restricted" or dev.profile is None:
            continue
        for allow in inp.profiles[dev.profile].allow:
            for src in dev.ips:
                if allow.cidr is not None and allow.cidr.version == src.version:
                    static.setdefault((src, allow.protocol), []).append(
                        (allow.cidr, allow.ports))
                answer = inp.dns.get(allow.host) if allow.host is not None else None
                if answer is None:
                    continue
                for dst in _same_family(answer.addresses, src.version):
                    dns.setdefault((src, allow.protocol), []).append(
                        (_host_net(dst), allow.ports))
                    key = (src, allow.protocol, dst)
                    timeouts[key] = max(timeouts.get(key, 0), answer.timeout_s)
    return static, dns, timeouts


def _lateral_groups(inp: FirewallInput) -> _Group:
    """Device -> device pairs that an adopted device's profile allows (to adopted ones)."""
    reachable = [d for d in inp.devices if d.policy in ADOPTED]
    by_id = {d.id: d for d in reachable}
    by_kind: dict[str, list[DeviceRule]] = {}
    for d in reachable:
        if d.kind is not None:
            by_kind.setdefault(d.kind, []).append(d)
    groups: _Group = {}
    for dev in reachable:
        if dev.profile is None:
            continue
        for peer in inp.profiles[dev.profile].peers:
            if peer.kind is not None:
                targets = by_kind.get(peer.kind, [])
            else:
                targets = [by_id[peer.device]] if peer.device in by_id else []
            for target in targets:
                if target.id == dev.id:
                    continue
                for src in dev.ips:
                    for dst in _same_family(target.ips, src.version):
                        groups.setdefault((src, peer.protocol), []).append(
                            (_host_net(dst), peer.ports))
    return groups


def dns_names(inp: FirewallInput) -> frozenset[str]:
    """The DNS names the daemon must keep resolved for the current inventory."""
    names: set[str] = set()
    for dev in inp.devices:
        profile = inp.profiles.get(dev.profile) if dev.profile is not None else None
        if dev.policy == "restricted" and profile is not None:
            names.update(a.host for a in profile.allow if a.host is not None)
    return frozenset(names)


# --- the script -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Set:
    name: str
    type: str
    flags: tuple[str, ...] = ()
    elements: tuple[_Element, ...] = ()
    is_map: bool = False
    size: int | None = None

    def render(self) -> list[str]:
        kind = "map" if self.is_map else "set"
        lines = [f"\t{kind} {self.name} {{", f"\t\ttype {self.type}"]
        if self.size is not None:
            lines.append(f"\t\tsize {self.size}")
        if self.flags:
            lines.append(f"\t\tflags {', '.join(self.flags)}")
        if self.elements:
            lines.append("\t\telements = {")
            body = [f"\t\t\t{e.render()}" for e in self.elements]
            lines.append(",\n".join(body))
            lines.append("\t\t}")
        lines.append("\t}")
        return lines


def _addr_set(name: str, version: int, items: Iterable[IPAddress | IPNetwork],
              interval: bool = False) -> _Set:
    kind = "ipv4_addr" if version == 4 else "ipv6_addr"
    nets = {ipaddress.ip_network(i) for i in items if i.version == version}
    ordered = sorted(nets, key=lambda n: (int(n.network_address), n.prefixlen))
    return _Set(name, kind, ("interval",) if interval else (),
                tuple(_Element(_fmt_net(n)) for n in ordered))


def _port_set(name: str, ports: Iterable[int]) -> _Set:
    return _Set(name, "inet_service", (), tuple(_Element(str(p)) for p in sorted(set(ports))))


def _device_sets(inp: FirewallInput) -> list[_Set]:
    sets: list[_Set] = []
    devices = sorted(inp.devices, key=lambda d: d.id)
    verdicts = {"quarantine": "goto drop_quarantine", "restricted": "goto egress_restricted",
                "open": "accept", "blocked": "goto drop_quarantine"}
    static, _, _ = _egress_groups(inp)
    lateral = _lateral_groups(inp)
    dns_sets = {s.name: s for s in _dns_sets(inp)}
    for v, addr in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        policy = sorted(((ip, d) for d in devices for ip in _same_family(d.ips, v)),
                        key=lambda x: int(x[0]))
        sets.append(_Set(f"policy_v{v}", f"{addr} : verdict", (), tuple(
            _Element(f"{ip} comment \"{d.id}\" : {verdicts[d.policy]}") for ip, d in policy),
            is_map=True))
        adopted = [ip for d in devices if d.policy in ADOPTED for ip in d.ips]
        sets.append(_addr_set(f"adopted_v{v}", v, adopted))
        blocked = [ip for d in devices if d.policy == "blocked" for ip in d.ips]
        sets.append(_addr_set(f"blocked_v{v}", v, blocked))
        bound = [(ip, d.mac) for d in devices if d.mac for ip in _same_family(d.ips, v)]
        sets.append(_addr_set(f"bound_ip_v{v}", v, [ip for ip, _ in bound]))
        sets.append(_Set(f"bound_mac_v{v}", "ether_addr", (), tuple(
            _Element(m) for m in sorted({m for _, m in bound}))))
        sets.append(_Set(f"bind_v{v}", f"{addr} . ether_addr", (), tuple(
            _Element(f"{ip} . {m}") for ip, m in sorted(bound, key=lambda x: int(x[0])))))
        quad = f"{addr} . {addr} . inet_proto . inet_service"
        pair = f"{addr} . {addr}"
        sets += [
            _Set(f"allow_v{v}", quad, ("interval",), tuple(_ports_elements(static, v))),
            _Set(f"allow_icmp_v{v}", pair, ("interval",), tuple(_icmp_elements(static, v))),
            dns_sets[f"dns_v{v}"],
            dns_sets[f"dns_icmp_v{v}"],
            _Set(f"peer_v{v}", quad, ("interval",), tuple(_ports_elements(lateral, v))),
            _Set(f"peer_icmp_v{v}", pair, ("interval",), tuple(_icmp_elements(lateral, v))),
        ]
    return sets


def _dns_sets(inp: FirewallInput) -> list[_Set]:
    """The timed sets of addresses resolved from profile host names."""
    _, dns, timeouts = _egress_groups(inp)
    sets = []
    for v, addr in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        sets += [
            _Set(f"dns_v{v}", f"{addr} . {addr} . inet_proto . inet_service",
                 ("interval", "timeout"), tuple(_ports_elements(dns, v, timeouts))),
            _Set(f"dns_icmp_v{v}", f"{addr} . {addr}", ("interval", "timeout"),
                 tuple(_icmp_elements(dns, v, timeouts))),
        ]
    return sets


def _connection_limit(ports: str) -> list[str]:
    """New connections to `ports` beyond a host's share: one host (a hostile device, a LAN
    machine) cannot take every connection a listener has (the broker's, the admin page's)."""
    return [f"tcp dport {ports} ct state new add @conns_v{v} {{ {family} saddr ct count over "
            f"{MAX_CONNECTIONS_PER_HOST} }} goto drop_flood"
            for v, family in ((4, "ip"), (6, "ip6"))]


def _drop_chain(cls: str, per_minute: int) -> list[str]:
    prefix = LOG_PREFIX.format(cls)
    return [
        f"\tchain drop_{cls} {{",
        f"\t\tlimit rate {per_minute}/minute burst 5 packets "
        f'log prefix "{prefix}" level info',
        f'\t\tcounter name "{cls}" drop',
        "\t}",
    ]


def _chain(name: str, rules: Sequence[str], hook: str | None = None) -> list[str]:
    lines = [f"\tchain {name} {{"]
    if hook is not None:
        lines.append(f"\t\t{hook}")
    lines += [f"\t\t{r}" for r in rules]
    lines.append("\t}")
    return lines


def render_ruleset(inp: FirewallInput) -> str:
    """The complete nft script for the gateway's table; raises RenderError on bad input."""
    problems = check_input(inp)
    if problems:
        raise RenderError(problems)
    up = f'"{inp.uplink}"'
    sets = [
        _addr_set("lan_v4", 4, inp.lan_subnets, interval=True),
        _addr_set("lan_v6", 6, inp.lan_subnets, interval=True),
        _port_set("admin_tcp", inp.services.admin_tcp),
        _port_set("ha_tcp", inp.services.ha_tcp),
        # Each host's open connections to the gateway's services (connlimit per element).
        _Set("conns_v4", "ipv4_addr", ("dynamic",), size=CONNECTION_HOSTS),
        _Set("conns_v6", "ipv6_addr", ("dynamic",), size=CONNECTION_HOSTS),
    ]
    chains = [_drop_chain(cls, inp.log_per_minute) for cls in DROP_CLASSES]
    input_dispatch = [f"iifname {up} goto in_uplink"]
    if inp.iot is not None:
        iot = f'"{inp.iot}"'
        input_dispatch.append(f"iifname {iot} goto in_iot")
        sets += [
            _addr_set("iot_v4", 4, inp.iot_subnets, interval=True),
            _addr_set("iot_v6", 6, inp.iot_subnets, interval=True),
            # Sources a host on the IoT segment may use besides its subnets: DHCP's
            # 0.0.0.0, link-local and the :: of duplicate address detection.
            _addr_set("iot_src_v4", 4, [*inp.iot_subnets, IPv4Address(0)], interval=True),
            _addr_set("iot_src_v6", 6, [*inp.iot_subnets, IPv6Network("fe80::/10"),
                                        IPv6Address(0)], interval=True),
            _port_set("device_tcp", inp.services.device_tcp),
            *_device_sets(inp),
        ]
        chains += _iot_chains(up, iot, inp.masquerade)
    chains += [
        _chain("input", input_dispatch,
               "type filter hook input priority filter; policy accept;"),
        _chain("in_uplink", [
            "ct state established,related accept",
            f"icmpv6 type {{ {_ICMPV6_ERRORS}, nd-router-advert, {_ICMPV6_LINK} }} accept",
            f"icmp type {{ {_ICMPV4_ERRORS} }} accept",
            "meta l4proto igmp accept",
            "udp dport 5353 ip daddr 224.0.0.251 accept",
            "udp dport 5353 ip6 daddr ff02::fb accept",
            "ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept",  # DHCPv6 client
            *_connection_limit("@admin_tcp"),
            *_connection_limit("@ha_tcp"),
            "ip saddr @lan_v4 tcp dport @admin_tcp accept",
            "ip6 saddr @lan_v6 tcp dport @admin_tcp accept",
            "ip saddr @lan_v4 tcp dport @ha_tcp accept",
            "ip6 saddr @lan_v6 tcp dport @ha_tcp accept",
            "meta pkttype { broadcast, multicast } drop",  # background noise, not an attempt
            "goto drop_inbound",
        ]),
    ]
    lines = [
        "# Rendered by home-gateway from its inventory and profiles; edits are overwritten.",
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        *(f"\tcounter {cls} {{ }}" for cls in DROP_CLASSES),
    ]
    for s in sets:
        lines += s.render()
    for chain in chains:
        lines += chain
    return "\n".join([*lines, "}", ""])


def _iot_chains(up: str, iot: str, masquerade: bool) -> list[list[str]]:
    """The chains that only exist when the Pi has an IoT interface."""
    chains = [
        _chain("prerouting", [
            f"iifname {iot} goto pre_iot",
            f"iifname {up} ip saddr @iot_v4 goto drop_spoof",
            f"iifname {up} ip6 saddr @iot_v6 goto drop_spoof",
        ], "type filter hook prerouting priority raw; policy accept;"),
        _chain("pre_iot", [
            # A blocked device reaches nothing, not even the gateway's services; before
            # connection tracking, so its open connections end too.
            "ip saddr @blocked_v4 goto drop_quarantine",
            "ip6 saddr @blocked_v6 goto drop_quarantine",
            # Most packets come from a device on its own bound address and MAC: one lookup
            # settles it (every packet passes here, established or not).
            "ip saddr . ether saddr @bind_v4 return",
            "ip6 saddr . ether saddr @bind_v6 return",
            "ip saddr != @iot_src_v4 goto drop_spoof",
            "ip6 saddr != @iot_src_v6 goto drop_spoof",
            # A bound address must come from its MAC ...
            "ip saddr @bound_ip_v4 goto drop_spoof",
            "ip6 saddr @bound_ip_v6 goto drop_spoof",
            # ... and a bound MAC must use its own addresses.
            "ether saddr @bound_mac_v4 ip saddr != 0.0.0.0 goto drop_spoof",
            "ether saddr @bound_mac_v6 ip6 saddr != { ::, fe80::/10 } goto drop_spoof",
        ]),
        _chain("in_iot", [
            "ct state established,related accept",
            f"icmpv6 type {{ {_ICMPV6_ERRORS}, nd-router-solicit, {_ICMPV6_LINK}, "
            "echo-request } accept",
            f"icmp type {{ {_ICMPV4_ERRORS}, echo-request }} accept",  # connectivity checks
            "meta l4proto igmp accept",
            f"udp dport {{ {_UPNP_UDP} }} goto drop_upnp",
            "udp dport 67 accept",  # DHCPv4 server
            "ip6 saddr fe80::/10 udp dport 547 accept",  # DHCPv6 server
            "meta l4proto { tcp, udp } th dport 53 accept",  # DNS
            "udp dport 123 accept",  # NTP
            *_connection_limit("@device_tcp"),
            "tcp dport @device_tcp accept",  # the broker's device listener
            "udp dport 5353 ip daddr 224.0.0.251 accept",
            "udp dport 5353 ip6 daddr ff02::fb accept",
            "meta pkttype { broadcast, multicast } drop",
            "ip saddr @adopted_v4 goto drop_egress",
            "ip6 saddr @adopted_v6 goto drop_egress",
            "goto drop_quarantine",
        ]),
        _chain("forward", [
            "ct state established,related accept",
            f"iifname {iot} goto from_iot",
            f"oifname {iot} goto to_iot",
        ], "type filter hook forward priority filter; policy accept;"),
        _chain("to_iot", [
            f"icmpv6 type {{ {_ICMPV6_ERRORS} }} accept",
            "goto drop_inbound",
        ]),
        _chain("from_iot", [
            f"udp dport {{ {_UPNP_UDP} }} goto drop_upnp",
            f"oifname {iot} goto lateral",
            "ip saddr vmap @policy_v4",
            "ip6 saddr vmap @policy_v6",
            "goto drop_quarantine",  # an address the inventory does not know
        ]),
        _chain("lateral", [
            "ip saddr . ip daddr . meta l4proto . th dport @peer_v4 accept",
            "ip6 saddr . ip6 daddr . meta l4proto . th dport @peer_v6 accept",
            "meta l4proto icmp ip saddr . ip daddr @peer_icmp_v4 accept",
            "meta l4proto ipv6-icmp ip6 saddr . ip6 daddr @peer_icmp_v6 accept",
            "goto drop_lateral",
        ]),
        _chain("egress_restricted", [
            "ip saddr . ip daddr . meta l4proto . th dport @allow_v4 accept",
            "ip6 saddr . ip6 daddr . meta l4proto . th dport @allow_v6 accept",
            "ip saddr . ip daddr . meta l4proto . th dport @dns_v4 accept",
            "ip6 saddr . ip6 daddr . meta l4proto . th dport @dns_v6 accept",
            "meta l4proto icmp ip saddr . ip daddr @allow_icmp_v4 accept",
            "meta l4proto ipv6-icmp ip6 saddr . ip6 daddr @allow_icmp_v6 accept",
            "meta l4proto icmp ip saddr . ip daddr @dns_icmp_v4 accept",
            "meta l4proto ipv6-icmp ip6 saddr . ip6 daddr @dns_icmp_v6 accept",
            "goto drop_egress",
        ]),
    ]
    if masquerade:
        chains.append(_chain("postrouting", [f"oifname {up} ip saddr @iot_v4 masquerade"],
                             "type nat hook postrouting priority srcnat; policy accept;"))
    return chains


def render_remove() -> str:
    """An nft script that removes the gateway's table (and succeeds when it is absent)."""
    return f"table inet {TABLE}\ndelete table inet {TABLE}\n"


def render_dns_update(inp: FirewallInput, dns: Mapping[str, Resolution]) -> str:
    """nft commands moving the DNS-name sets from the answers in `inp.dns` to `dns`; "" when
    there are no timed elements before or after.

    `inp` must be what the table was last rendered or updated from. Apply the result with
    `nft -f` (one transaction); if it fails (the table was changed behind our back), render
    the whole ruleset again. Every current
    element is first re-added (a no-op unless it expired meanwhile, so the delete cannot
    fail) and deleted, then every new element is added with a fresh timeout: a kept
    address keeps working, a dropped one stops, and the kernel never sees two overlapping
    elements.
    """
    if inp.iot is None:
        return ""
    new_inp = replace(inp, dns=dns)
    problems = check_input(new_inp)
    if problems:
        raise RenderError(problems)
    old_sets = {s.name: s for s in _dns_sets(inp)}
    new_sets = {s.name: s for s in _dns_sets(new_inp)}
    if all(not old_sets[n].elements and not new_sets[n].elements for n in old_sets):
        return ""
    lines: list[str] = []
    target = f"inet {TABLE}"
    for name, old in sorted(old_sets.items()):
        for e in old.elements:
            lines.append(f"add element {target} {name} {{ {e.text} timeout 1s }}")
            lines.append(f"delete element {target} {name} {{ {e.text} }}")
    for name, new in sorted(new_sets.items()):
        lines += [f"add element {target} {name} {{ {e.render()} }}" for e in new.elements]
    return "\n".join(lines) + "\n"


# --- reading back ---------------------------------------------------------------------------


def parse_counters(text: str) -> dict[str, tuple[int, int]]:
    """{counter name: (packets, bytes)} of the gateway's table from `nft -j list counters`.

    Counters of other tables are ignored. Raises ValueError when `text` is not that JSON.
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"nft output is not JSON: {exc}") from None
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ValueError('nft output has no "nftables" list')
    out: dict[str, tuple[int, int]] = {}
    for item in items:
        counter = item.get("counter") if isinstance(item, dict) else None
        if not isinstance(counter, dict):
            continue
        if counter.get("table") != TABLE or counter.get("family") != "inet":
            continue
        name, packets, size = counter.get("name"), counter.get("packets"), counter.get("bytes")
        if (not isinstance(name, str) or type(packets) is not int or type(size) is not int
                or packets < 0 or size < 0):
            raise ValueError(f"malformed counter in nft output: {counter!r}")
        out[name] = (packets, size)
    return out


def count_rules(script: str) -> int:
    """Rules in an nft script or `nft list` output: lines inside chain blocks, without the
    base-chain declaration, comments and blank lines."""
    count = 0
    in_chain = False
    for raw in script.splitlines():
        line = raw.strip()
        if not in_chain:
            in_chain = line.startswith("chain ") and line.endswith("{")
        elif line == "}":
            in_chain = False
        elif line and not line.startswith(("#", "type ")):
            count += 1
    return count
