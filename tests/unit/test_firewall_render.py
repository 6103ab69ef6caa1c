"""The pure nftables renderer: structure, flat rule count, and `nft -c` on real output."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from ipaddress import IPv4Network, ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.firewall.model import (
    DROP_CLASSES,
    Allow,
    DeviceRule,
    FirewallInput,
    Peer,
    Profile,
    Resolution,
    Services,
)
from gateway.firewall.render import (
    LOG_PREFIX,
    RenderError,
    _disjoint,
    check_input,
    count_rules,
    dns_names,
    parse_counters,
    render_dns_update,
    render_remove,
    render_ruleset,
)

NFT = shutil.which("nft") or "/usr/sbin/nft"
POLICIES = ("quarantine", "restricted", "open")

CLOUD = Profile(
    "cloud-cam",
    allow=(
        Allow("tcp", ((443, 443),), cidr=ip_network("198.51.100.0/24")),
        Allow("tcp", ((400, 500), (8000, 8100)), cidr=ip_network("198.51.100.128/25")),
        Allow("udp", ((123, 123),), host="pool.ntp.example"),
        Allow("tcp", ((8883, 8883),), host="mqtt.vendor.example"),
        Allow("icmp", (), cidr=ip_network("198.51.100.0/24")),
        Allow("icmp", (), cidr=ip_network("2001:db8:100::/48")),
        Allow("tcp", ((443, 443),), cidr=ip_network("2001:db8:100::/48")),
    ),
)
# Peers by kind make one element per pair: a household has a few hubs, not hundreds.
HUB = Profile("hub", peers=(Peer("udp", ((5683, 5683),), kind="sensor"),
                            Peer("icmp", (), device="dev-2")))
PROFILES = {"cloud-cam": CLOUD, "hub": HUB, "empty": Profile("empty")}


def devices(n: int, v4: bool = True, v6: bool = True) -> tuple[DeviceRule, ...]:
    """`n` devices with every policy, kind, MAC and profile combination represented.

    Policies cycle quarantine, restricted, open; kinds camera, sensor, plug, sensor; every
    fourth has no MAC. dev-1 (restricted) and dev-5 (open) are hubs, dev-7 is restricted
    with cloud-cam, dev-3 and dev-9 are quarantined sensors.
    """
    out = []
    for i in range(n):
        ips = []
        if v4:
            ips.append(ip_address(f"10.20.{i // 250}.{i % 250 + 2}"))
        if v6:
            ips.append(ip_address(f"fd20::{i + 2:x}"))
        policy = POLICIES[i % 3]
        out.append(DeviceRule(
            id=f"dev-{i}", ips=tuple(ips), policy=policy,  # type: ignore[arg-type]
            mac=None if i % 4 == 3 else f"02:00:00:00:{i // 256:02x}:{i % 256:02x}",
            profile=None if policy == "quarantine" else
            "hub" if i % 100 in (1, 5) else "cloud-cam" if i % 2 else "empty",
            kind=("camera", "sensor", "plug", "sensor")[i % 4]))
    return tuple(out)


def make_input(n: int = 3, v4: bool = True, v6: bool = True, iot: bool = True,
               **changes: object) -> FirewallInput:
    subnets = []
    if v4:
        subnets.append(ip_network("10.20.0.0/16"))
    if v6:
        subnets.append(ip_network("fd20::/64"))
    lan = [ip_network("192.168.1.0/24"), ip_network("fd00:1::/64")]
    inp = FirewallInput(
        uplink="eth0", iot="eth0.20" if iot else None,
        iot_subnets=tuple(subnets) if iot else (),
        lan_subnets=tuple(n for n in lan if (n.version == 4 and v4) or (n.version == 6 and v6)),
        services=Services(admin_tcp=(8080, 8443), ha_tcp=(8883,), device_tcp=(1883, 8884)),
        devices=devices(n, v4, v6) if iot else (),
        profiles=PROFILES,
        dns={"pool.ntp.example": Resolution((ip_address("203.0.113.5"),
                                             ip_address("2001:db8:5::5")), 300),
             "mqtt.vendor.example": Resolution((ip_address("203.0.113.9"),), 60)},
    )
    return replace(inp, **changes)  # type: ignore[arg-type]


def nft_check(script: str) -> None:
    """`nft -c -f -` in a throwaway network namespace (no host state is read or changed)."""
    if not os.path.exists(NFT) or shutil.which("unshare") is None:
        pytest.skip("nft and unshare are needed to check rulesets")
    cmd = ["unshare", "-n", NFT, "-c", "-f", "-"]
    if os.geteuid() != 0:
        cmd[1] = "-rn"
    result = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=60,
                            check=False)
    if result.returncode != 0 and "Operation not permitted" in result.stderr:
        pytest.skip(f"cannot run nft -c here: {result.stderr.strip()}")
    if result.returncode != 0 and "Message too long" in result.stderr and os.geteuid() != 0:
        # Without CAP_NET_ADMIN in the initial namespace nft cannot enlarge its netlink
        # buffer (SO_SNDBUFFORCE), so big rulesets can only be checked as root.
        pytest.skip("this ruleset is too big for nft -c without root")
    assert result.returncode == 0, result.stderr[:4000]


def chain(script: str, name: str) -> list[str]:
    """The rule lines of one chain of a rendered script."""
    match = re.search(rf"\n\tchain {name} {{\n(.*?)\n\t}}", script, re.S)
    assert match, f"no chain {name}"
    return [line.strip() for line in match[1].splitlines() if line.strip()]


def elements(script: str, name: str) -> list[str]:
    match = re.search(rf"\n\t(?:set|map) {name} {{\n(.*?)\n\t}}", script, re.S)
    assert match, f"no set {name}"
    body = match[1]
    if "elements = {" not in body:
        return []
    inner = body.split("elements = {", 1)[1].rsplit("}", 1)[0]
    return [e.strip() for e in inner.split(",\n") if e.strip()]


# --- nft accepts what we render -------------------------------------------------------------


@pytest.mark.parametrize("inp", [
    pytest.param(make_input(), id="dual-stack"),
    pytest.param(make_input(v4=False), id="ipv6-only"),
    pytest.param(make_input(v6=False), id="ipv4-only"),
    pytest.param(make_input(iot=False), id="no-iot-interface"),
    pytest.param(make_input(0), id="no-devices"),
    pytest.param(make_input(1000), id="1000-devices"),
    pytest.param(make_input(5, masquerade=False, dns={}), id="no-nat-no-dns"),
    pytest.param(make_input(5, services=Services()), id="no-services"),
])
def test_nft_accepts_the_rendered_ruleset(inp: FirewallInput) -> None:
    nft_check(render_ruleset(inp))


def test_nft_accepts_the_dns_update_after_the_ruleset() -> None:
    inp = make_input(8)
    moved = {"pool.ntp.example": Resolution((ip_address("203.0.113.6"),), 300)}
    update = render_dns_update(inp, moved)
    assert "delete element inet home_gateway dns_v4" in update
    assert "203.0.113.6 . udp . 123 timeout 300s" in update
    nft_check(render_ruleset(inp) + update)


# --- structure ------------------------------------------------------------------------------


def test_the_script_replaces_only_the_gateway_table_in_one_transaction() -> None:
    script = render_ruleset(make_input())
    lines = [ln for ln in script.splitlines() if ln and not ln.startswith("#")]
    assert lines[:3] == ["table inet home_gateway", "delete table inet home_gateway",
                         "table inet home_gateway {"]
    assert set(re.findall(r"\btable (\w+) (\w+)", script)) == {("inet", "home_gateway")}
    assert "flush ruleset" not in script
    assert render_remove() == "table inet home_gateway\ndelete table inet home_gateway\n"


@pytest.mark.parametrize("kwargs", [{}, {"v4": False}, {"iot": False}])
def test_the_rule_count_does_not_grow_with_the_devices(kwargs: dict[str, bool]) -> None:
    counts = {n: count_rules(render_ruleset(make_input(n, **kwargs))) for n in (10, 100, 1000)}
    assert len(set(counts.values())) == 1, counts
    big = render_ruleset(make_input(1000, **kwargs))
    if kwargs.get("iot", True):
        assert big.count('comment "dev-') == 1000 * (2 if kwargs.get("v4", True) else 1)


def test_every_drop_class_has_a_counter_a_log_prefix_and_is_used() -> None:
    script = render_ruleset(make_input())
    for cls in DROP_CLASSES:
        assert f"\tcounter {cls} {{ }}" in script
        assert chain(script, f"drop_{cls}") == [
            f'limit rate 10/minute burst 5 packets log prefix "{LOG_PREFIX.format(cls)}" '
            "level info",
            f'counter name "{cls}" drop',
        ]
        assert f"goto drop_{cls}" in script
    targets = set(re.findall(r"goto (\w+)", script))
    chains = set(re.findall(r"\tchain (\w+) \{", script))
    assert targets <= chains


def test_the_uplink_cannot_open_anything_toward_the_iot_side() -> None:
    script = render_ruleset(make_input())
    assert chain(script, "forward") == [
        "type filter hook forward priority filter; policy accept;",
        "ct state established,related accept",
        'iifname "eth0.20" goto from_iot',
        'oifname "eth0.20" goto to_iot',
    ]
    # ICMPv6 errors (packet-too-big above all) are all IPv6 needs; the rest is dropped.
    assert chain(script, "to_iot") == [
        "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, "
        "parameter-problem } accept",
        "goto drop_inbound",
    ]


def test_input_from_the_uplink_allows_only_lan_admin_and_ha_mdns_and_replies() -> None:
    rules = chain(render_ruleset(make_input()), "in_uplink")
    assert rules[0] == "ct state established,related accept"
    assert rules[-1] == "goto drop_inbound"
    accepts = [r for r in rules if r.endswith("accept")]
    tcp = [r for r in accepts if "tcp" in r]
    assert tcp == ["ip saddr @lan_v4 tcp dport @admin_tcp accept",
                   "ip6 saddr @lan_v6 tcp dport @admin_tcp accept",
                   "ip saddr @lan_v4 tcp dport @ha_tcp accept",
                   "ip6 saddr @lan_v6 tcp dport @ha_tcp accept"]
    assert [r for r in accepts if "udp" in r] == [
        "udp dport 5353 ip daddr 224.0.0.251 accept",
        "udp dport 5353 ip6 daddr ff02::fb accept",
        "ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept",
    ]
    assert "echo-request" not in " ".join(rules)


def test_input_from_devices_allows_their_services_and_not_the_admin_page() -> None:
    script = render_ruleset(make_input())
    rules = chain(script, "in_iot")
    text = "\n".join(rules)
    for needed in ("udp dport 67 accept", "udp dport 547 accept", "th dport 53 accept",
                   "udp dport 123 accept", "tcp dport @device_tcp accept",
                   "udp dport 5353 ip daddr 224.0.0.251 accept"):
        assert needed in text
    assert "admin_tcp" not in text and "ha_tcp" not in text
    assert rules.index("udp dport { 1900, 5351 } goto drop_upnp") < rules.index(
        "udp dport 67 accept")
    assert rules[-3:] == ["ip saddr @adopted_v4 goto drop_egress",
                          "ip6 saddr @adopted_v6 goto drop_egress", "goto drop_quarantine"]
    assert elements(script, "device_tcp") == ["1883", "8884"]
    assert elements(script, "admin_tcp") == ["8080", "8443"]


def test_devices_go_by_policy_and_unknown_addresses_are_quarantined() -> None:
    script = render_ruleset(make_input(3))
    assert chain(script, "from_iot") == [
        "udp dport { 1900, 5351 } goto drop_upnp",
        'oifname "eth0.20" goto lateral',
        "ip saddr vmap @policy_v4",
        "ip6 saddr vmap @policy_v6",
        "goto drop_quarantine",
    ]
    assert elements(script, "policy_v4") == [
        '10.20.0.2 comment "dev-0" : goto drop_quarantine',
        '10.20.0.3 comment "dev-1" : goto egress_restricted',
        '10.20.0.4 comment "dev-2" : accept',
    ]
    assert elements(script, "adopted_v6") == ["fd20::3", "fd20::4"]
    assert chain(script, "egress_restricted")[-1] == "goto drop_egress"


def test_a_blocked_device_reaches_nothing_not_even_the_gateway() -> None:
    inp = make_input(3)
    dev2 = replace(inp.devices[2], policy="blocked")  # was open; dev-1 (a hub) pings it
    script = render_ruleset(replace(inp, devices=(*inp.devices[:2], dev2)))
    assert elements(script, "blocked_v4") == ["10.20.0.4"]
    assert elements(script, "blocked_v6") == ["fd20::4"]
    assert '10.20.0.4 comment "dev-2" : goto drop_quarantine' in elements(script, "policy_v4")
    assert "fd20::4" not in elements(script, "adopted_v6")
    assert elements(script, "peer_icmp_v4") == []  # no longer a peer of the hub
    # Dropped before connection tracking and before the input chain's services.
    assert "ip saddr @blocked_v4 goto drop_quarantine" in chain(script, "pre_iot")


def test_restricted_devices_get_their_profile_as_disjoint_elements() -> None:
    script = render_ruleset(make_input(9))
    allow = elements(script, "allow_v4")
    # dev-7 is restricted with cloud-cam: 443 for the /24, 400-500 and 8000-8100 for the
    # upper /25, which already includes 443; the kernel rejects overlapping elements.
    assert allow == [
        "10.20.0.9 . 198.51.100.0/25 . tcp . 443",
        "10.20.0.9 . 198.51.100.128/25 . tcp . 400-500",
        "10.20.0.9 . 198.51.100.128/25 . tcp . 8000-8100",
    ]
    assert elements(script, "allow_icmp_v4") == ["10.20.0.9 . 198.51.100.0/24"]
    assert elements(script, "allow_v6") == ["fd20::9 . 2001:db8:100::/48 . tcp . 443"]
    assert elements(script, "dns_v4") == [
        "10.20.0.9 . 203.0.113.5 . udp . 123 timeout 300s",
        "10.20.0.9 . 203.0.113.9 . tcp . 8883 timeout 60s",
    ]
    assert elements(script, "dns_v6") == ["fd20::9 . 2001:db8:5::5 . udp . 123 timeout 300s"]
    # dev-8 is "open" with cloud-cam: the verdict map accepts its traffic, nothing listed.
    assert not any(e.startswith("10.20.0.10 ") for e in allow)


def test_lateral_pairs_come_from_profiles_and_skip_quarantined_devices() -> None:
    # The hubs dev-1 and dev-5, both sensors, may reach the other sensors on udp 5683 and
    # ping dev-2; the quarantined sensors dev-3 and dev-9 stay out of reach.
    script = render_ruleset(make_input(10))
    assert elements(script, "peer_v4") == [
        "10.20.0.3 . 10.20.0.7 . udp . 5683",
        "10.20.0.3 . 10.20.0.9 . udp . 5683",
        "10.20.0.7 . 10.20.0.3 . udp . 5683",
        "10.20.0.7 . 10.20.0.9 . udp . 5683",
    ]
    assert elements(script, "peer_icmp_v4") == ["10.20.0.3 . 10.20.0.4", "10.20.0.7 . 10.20.0.4"]
    assert chain(script, "lateral")[-1] == "goto drop_lateral"


def test_spoofing_checks_bind_addresses_to_macs() -> None:
    script = render_ruleset(make_input(4))
    assert elements(script, "bind_v4") == [
        "10.20.0.2 . 02:00:00:00:00:00", "10.20.0.3 . 02:00:00:00:00:01",
        "10.20.0.4 . 02:00:00:00:00:02",  # dev-3 has no known MAC: no binding
    ]
    assert elements(script, "iot_src_v4") == ["0.0.0.0", "10.20.0.0/16"]
    assert elements(script, "iot_src_v6") == ["::", "fd20::/64", "fe80::/10"]
    rules = chain(script, "pre_iot")
    assert rules[:4] == ["ip saddr @blocked_v4 goto drop_quarantine",
                         "ip6 saddr @blocked_v6 goto drop_quarantine",
                         "ip saddr . ether saddr @bind_v4 return",
                         "ip6 saddr . ether saddr @bind_v6 return"]
    assert all(r.endswith("goto drop_spoof") for r in rules[4:])
    assert chain(script, "prerouting")[0] == (
        "type filter hook prerouting priority raw; policy accept;")


def test_without_an_iot_interface_only_the_pi_is_protected() -> None:
    script = render_ruleset(make_input(iot=False, devices=devices(3)))
    for absent in ("forward", "prerouting", "in_iot", "postrouting", "policy_v4"):
        assert f" {absent} {{" not in script
    assert chain(script, "input") == [
        "type filter hook input priority filter; policy accept;",
        'iifname "eth0" goto in_uplink',
    ]
    assert all(f"counter {cls} {{ }}" in script for cls in DROP_CLASSES)


def test_masquerade_is_optional() -> None:
    assert chain(render_ruleset(make_input()), "postrouting")[1] == (
        'oifname "eth0" ip saddr @iot_v4 masquerade')
    assert "masquerade" not in render_ruleset(make_input(masquerade=False))


# --- bad input is refused, all problems at once --------------------------------------------


def test_bad_input_is_refused_with_every_problem() -> None:
    good = make_input(2)
    bad = replace(good, uplink='eth0"; flush ruleset', iot_subnets=(ip_network("10.99.0.0/24"),),
                  devices=(*good.devices,
                           DeviceRule("dev-0", (ip_address("10.20.0.3"),), "open",
                                      mac="02:00:00:00:00:01", profile="nope")))
    with pytest.raises(RenderError) as err:
        render_ruleset(bad)
    text = str(err.value)
    assert "uplink: interface name" in text
    assert "device 'dev-0': listed twice" in text
    assert "address 10.20.0.3 also belongs to 'dev-1'" in text
    assert "MAC 02:00:00:00:00:01 also belongs to 'dev-1'" in text
    assert "profile 'nope' is not loaded" in text
    assert "address 10.20.0.2 is outside the IoT subnets" in text
    assert "fd20::2" not in text or "outside" in text
    assert len(err.value.problems) >= 6


@pytest.mark.parametrize(("change", "problem"), [
    ({"iot": "eth0"}, "iot: the IoT interface must differ from the uplink"),
    ({"iot_subnets": ()}, "iot_subnets: empty"),
    ({"lan_subnets": (ip_network("10.20.5.0/24"),)},
     "iot_subnets: 10.20.0.0/16 overlaps the LAN subnet 10.20.5.0/24"),
    ({"services": Services(admin_tcp=(0,))}, "services.admin_tcp: port 0 out of range"),
    ({"log_per_minute": 0}, "log_per_minute: must be at least 1"),
    ({"dns": {"a.example": Resolution((), 0)}}, "timeout 0 s"),
    ({"profiles": {**PROFILES, "x": Profile("x", (Allow("icmp", ((1, 1),),
                                                        cidr=ip_network("10.0.0.0/8")),))}},
     "icmp has no ports"),
    ({"profiles": {**PROFILES, "x": Profile("x", (Allow("tcp", ()),))}},
     "expected exactly one of cidr or host"),
])
def test_each_input_problem_is_named(change: dict[str, object], problem: str) -> None:
    inp = replace(make_input(0), **change)  # type: ignore[arg-type]
    assert any(problem in p for p in check_input(inp)), check_input(inp)


# --- DNS names ------------------------------------------------------------------------------


def test_dns_names_lists_what_restricted_devices_need() -> None:
    assert dns_names(make_input(8)) == {"pool.ntp.example", "mqtt.vendor.example"}
    assert dns_names(make_input(7)) == frozenset()  # no restricted device uses cloud-cam


def test_dns_update_deletes_then_adds_and_is_empty_when_nothing_is_timed() -> None:
    inp = make_input(8)
    update = render_dns_update(inp, {"pool.ntp.example": Resolution(
        (ip_address("203.0.113.5"),), 120)})
    lines = update.splitlines()
    deletes = [i for i, ln in enumerate(lines) if ln.startswith("delete")]
    adds = [i for i, ln in enumerate(lines) if ln.startswith("add") and "1s }" not in ln]
    assert deletes and adds and max(deletes) < min(adds)
    # every delete is preceded by an add of the same element, so it cannot fail
    for i in deletes:
        assert lines[i - 1].replace("add", "delete", 1).replace(" timeout 1s", "") == lines[i]
    assert adds and all("timeout 120s" in lines[i] for i in adds)
    assert len(adds) == 1  # mqtt.vendor.example is gone, only the v4 NTP answer is left
    assert render_dns_update(make_input(1), {}) == ""
    assert render_dns_update(make_input(iot=False), {}) == ""


# --- counters -------------------------------------------------------------------------------


def test_parse_counters_reads_only_the_gateway_table() -> None:
    doc = {"nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"counter": {"family": "inet", "name": "inbound", "table": "home_gateway",
                     "handle": 1, "packets": 12, "bytes": 720}},
        {"counter": {"family": "inet", "name": "spoof", "table": "home_gateway",
                     "handle": 2, "packets": 0, "bytes": 0}},
        {"counter": {"family": "inet", "name": "inbound", "table": "other",
                     "handle": 1, "packets": 99, "bytes": 99}},
    ]}
    assert parse_counters(json.dumps(doc)) == {"inbound": (12, 720), "spoof": (0, 0)}


@pytest.mark.parametrize("text", [
    "not json", "[]", '{"nftables": 3}',
    '{"nftables": [{"counter": {"family": "inet", "table": "home_gateway", "name": "x",'
    ' "packets": "1", "bytes": 2}}]}',
])
def test_parse_counters_rejects_other_output(text: str) -> None:
    with pytest.raises(ValueError):
        parse_counters(text)


def test_count_rules_reads_nft_list_output_too() -> None:
    listing = ("table inet home_gateway {\n\tset s {\n\t\ttype ipv4_addr\n\t}\n"
               "\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n"
               "\t\tiifname \"eth0\" goto in_uplink\n\t}\n"
               "\tchain in_uplink {\n\t\tct state established accept\n\t\tdrop\n\t}\n}\n")
    assert count_rules(listing) == 3


# --- the disjoint elements are exactly the allowance ----------------------------------------

_nets = st.builds(lambda a, p: IPv4Network((a & ~((1 << (32 - p)) - 1), p)),
                  st.integers(0x0A000000, 0x0A0000FF), st.integers(24, 32))
_range = st.tuples(st.integers(0, 40), st.integers(0, 40)).map(lambda t: (min(t), max(t)))
_entry = st.tuples(_nets, st.lists(_range, min_size=1, max_size=3).map(tuple))


@settings(max_examples=150, deadline=None)
@given(st.lists(_entry, min_size=1, max_size=6))
def test_disjoint_elements_cover_exactly_the_same_points(entries: list) -> None:
    out = _disjoint(entries)
    # No two elements overlap (the kernel refuses that in a concatenated interval set).
    for i, (n1, r1) in enumerate(out):
        for n2, r2 in out[i + 1:]:
            assert not (n1.overlaps(n2) and r1[0] <= r2[1] and r2[0] <= r1[1])

    def covered(items: list, addr: int, port: int) -> bool:
        ip = ip_address(addr)
        return any(ip in n and any(lo <= port <= hi for lo, hi in rs) for n, rs in items)

    for addr in range(0x0A000000, 0x0A000100, 7):
        for port in range(0, 42, 5):
            assert covered(entries, addr, port) == covered(
                [(n, (r,)) for n, r in out], addr, port)
