"""The gateway's nftables policy, proven with real traffic between network namespaces.

Every probe is a real TCP connection or UDP datagram that only counts as reached when the
server's echo comes back; every negative case has a positive control showing the server
answers when the policy allows it. See conftest.py for the picture.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from gateway.firewall.model import Resolution
from gateway.firewall.render import count_rules, render_dns_update, render_remove, render_ruleset
from tests.netns.conftest import (
    ADMIN,
    ATTACKER,
    ATTACKER6,
    BROKER,
    CLOUD,
    CLOUD6,
    CLOUD_NAME,
    CLOUD_OTHER,
    CLOUD_OTHER6,
    DEV,
    DEVICE_TCP,
    DEVICE_UDP,
    DEVICES,
    DNS_NEW,
    DNS_NEW6,
    DNS_OLD,
    DNS_OLD6,
    GW_IOT,
    GW_IOT6,
    GW_UP,
    GW_UP6,
    HA,
    LAN_HOST,
    LAN_HOST6,
    NFT,
    NOT_A_SERVICE,
    ROUTER,
    ROUTER6,
    Lab,
    Net,
    firewall_input,
    require_root,
)

pytestmark = pytest.mark.netns

CAM, SENSOR, PLUG, BULB, STRANGER = (DEV[r] for r in ("cam", "sensor", "plug", "bulb",
                                                       "stranger"))


def tcp(dst: str, port: int, src: str | None = None, token: str | None = None) -> dict[str, Any]:
    return {"proto": "tcp", "dst": dst, "port": port, "src": src, "token": token}


def udp(dst: str, port: int, src: str | None = None, token: str | None = None) -> dict[str, Any]:
    return {"proto": "udp", "dst": dst, "port": port, "src": src, "token": token}


def from_attacker(probes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**p, "src": ATTACKER6 if ":" in p["dst"] else ATTACKER} for p in probes]


def in_parallel(lab: Lab, runs: dict[str, list[dict[str, Any]]]) -> dict[str, list[bool]]:
    """Probes from several namespaces at once (one negative probe costs its timeout)."""
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        futures = {role: pool.submit(lab.probe, role, probes) for role, probes in runs.items()}
        return {role: f.result() for role, f in futures.items()}


def rise(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
         cls: str) -> int:
    return after[cls][0] - before[cls][0]


def test_no_inbound_connection_reaches_a_device(lab: Lab) -> None:
    probes = [tcp(a, p) for d in DEVICES for a in (d.v4, d.v6) for p in DEVICE_TCP]
    probes += [udp(a, p) for d in DEVICES for a in (d.v4, d.v6) for p in DEVICE_UDP]
    # Control: every server answers the gateway itself, whose own traffic is not filtered.
    assert all(lab.probe("gw", probes))
    before = lab.counters()
    got = in_parallel(lab, {"wan": probes, "lan": probes})
    got["internet"] = lab.probe("wan", from_attacker(probes))
    for where, results in got.items():
        reached = [p for p, ok in zip(probes, results, strict=True) if ok]
        assert not reached, f"from {where}: {reached}"
    assert rise(before, lab.counters(), "inbound") >= 3 * len(probes)


def test_a_sweep_of_every_tcp_port_opens_none(lab: Lab) -> None:
    # Control: run on the device itself, the sweep finds exactly its listening ports. (Not
    # from gw: 65,535 refused connections there would fill its conntrack table. From
    # 127.0.0.1, so that no socket of the sweep can connect to another one.)
    control = lab.sweep("cam", CAM.v4, src="127.0.0.1")
    assert control["open"] == sorted(DEVICE_TCP)
    assert control["refused"] == 65535 - len(DEVICE_TCP)
    before = lab.counters()
    started = time.monotonic()
    result = lab.sweep("wan", CAM.v4)
    assert time.monotonic() - started < 45
    assert result["open"] == [] and result["refused"] == 0
    assert result["silent"] == 65535
    assert rise(before, lab.counters(), "inbound") >= 65535


def test_a_restricted_device_reaches_its_allowlist_and_nothing_else(lab: Lab) -> None:
    allowed = [tcp(CLOUD, 8443), udp(CLOUD, 9999), tcp(CLOUD6, 8443), udp(CLOUD6, 9999),
               tcp(DNS_OLD, 8883), tcp(DNS_OLD6, 8883),  # by DNS name
               tcp(GW_IOT, BROKER), udp(GW_IOT, 53), tcp(GW_IOT6, BROKER)]
    outside = [tcp(CLOUD, 8444), tcp(CLOUD, 80), udp(CLOUD, 123), tcp(CLOUD_OTHER, 8443),
               udp(CLOUD_OTHER, 9999), tcp(CLOUD6, 8444), tcp(CLOUD_OTHER6, 8443),
               tcp(DNS_NEW, 8883), tcp(LAN_HOST, 22), tcp(LAN_HOST6, 22), tcp(ROUTER, 80)]
    at_gateway = [tcp(GW_IOT, ADMIN), tcp(GW_UP, ADMIN), tcp(GW_IOT6, ADMIN),
                  tcp(GW_IOT, NOT_A_SERVICE)]
    before = lab.counters()
    got = in_parallel(lab, {"cam": allowed + outside + at_gateway, "bulb": outside})
    assert got["cam"] == [True] * len(allowed) + [False] * (len(outside) + len(at_gateway))
    assert all(got["bulb"]), "control: an open device reaches the same destinations"
    assert rise(before, lab.counters(), "egress") >= len(outside) + len(at_gateway)


def test_a_dns_name_allowance_follows_its_address(lab: Lab) -> None:
    probes = [tcp(DNS_OLD, 8883), tcp(DNS_NEW, 8883), tcp(DNS_OLD6, 8883), tcp(DNS_NEW6, 8883)]
    assert lab.probe("cam", probes) == [True, False, True, False]

    # The name moves: only the DNS sets change, in one transaction.
    old = firewall_input()
    moved = {CLOUD_NAME: Resolution((ip_address(DNS_NEW), ip_address(DNS_NEW6)), 600)}
    update = render_dns_update(old, moved)
    assert "table" not in update.replace("inet home_gateway", "")
    lab.nft(update)
    assert lab.probe("cam", probes) == [False, True, False, True]

    # Answers are timed: refreshed before the timeout they keep working, otherwise they
    # expire even if the daemon is gone.
    current = firewall_input(moved)
    short = {CLOUD_NAME: Resolution((ip_address(DNS_NEW),), 2)}
    lab.nft(render_dns_update(current, short))
    set_at = time.monotonic()
    time.sleep(1.0)
    lab.nft(render_dns_update(firewall_input(short), short))  # the refresh
    refreshed_at = time.monotonic()
    time.sleep(max(0.0, set_at + 2.5 - time.monotonic()))
    assert lab.probe("cam", [tcp(DNS_NEW, 8883)]) == [True], "the refresh kept it"
    time.sleep(max(0.0, refreshed_at + 2.5 - time.monotonic()))
    assert lab.probe("cam", [tcp(DNS_NEW, 8883), tcp(DNS_NEW6, 8883)]) == [False, False]


def test_quarantined_and_unknown_devices_reach_only_the_gateway_services(lab: Lab) -> None:
    services = [tcp(GW_IOT, BROKER), tcp(GW_IOT6, BROKER), udp(GW_IOT, 53), tcp(GW_IOT, 53),
                udp(GW_IOT6, 53), udp(GW_IOT, 123), udp(GW_IOT6, 123), udp(GW_IOT, 67)]
    denied = [tcp(GW_IOT, ADMIN), tcp(GW_IOT6, ADMIN), tcp(GW_UP, ADMIN), tcp(GW_IOT, HA),
              tcp(GW_IOT, NOT_A_SERVICE), tcp(CLOUD, 8443), udp(CLOUD, 9999),
              tcp(CLOUD6, 8443), tcp(LAN_HOST, 22), udp(LAN_HOST, 5000), tcp(ROUTER, 80)]
    before = lab.counters()
    got = in_parallel(lab, {"plug": services + denied, "stranger": services + denied})
    for role, results in got.items():
        assert results == [True] * len(services) + [False] * len(denied), role
    assert rise(before, lab.counters(), "quarantine") >= 2 * len(denied)


def test_device_to_device_only_where_a_profile_allows_the_pair(lab: Lab) -> None:
    assert all(lab.probe("gw", [tcp(SENSOR.v4, 7000), tcp(CAM.v4, 7000), tcp(PLUG.v4, 7000)]))
    allowed = [tcp(SENSOR.v4, 7000), tcp(SENSOR.v6, 7000)]  # cam's profile: peer kind sensor
    before = lab.counters()
    got = in_parallel(lab, {
        "cam": [*allowed, tcp(SENSOR.v4, 22), udp(SENSOR.v4, 5683), tcp(PLUG.v4, 7000),
                tcp(BULB.v4, 7000)],
        "sensor": [tcp(CAM.v4, 7000), tcp(CAM.v6, 7000)],
        "bulb": [tcp(SENSOR.v4, 7000), tcp(CAM.v6, 22)],
        "plug": [tcp(CAM.v4, 7000)],
        "stranger": [tcp(SENSOR.v4, 7000)],
    })
    assert got.pop("cam") == [True, True, False, False, False, False]
    assert not any(ok for results in got.values() for ok in results), got
    assert rise(before, lab.counters(), "lateral") >= 10


def test_upnp_and_nat_pmp_toward_the_router_are_dropped(lab: Lab) -> None:
    upnp = [udp(ROUTER, 1900), udp(ROUTER, 5351), udp(ROUTER6, 1900), udp(ROUTER6, 5351)]
    assert all(lab.probe("gw", upnp)), "control: the router answers on both ports"
    before = lab.counters()
    got = lab.probe("bulb", [*upnp, udp(GW_IOT, 1900), udp(GW_IOT, 5351),
                             udp(ROUTER, 123), udp(CLOUD, 9999)])
    # The bulb is "open": everything else toward the router and the internet passes.
    assert got == [False] * 6 + [True, True]
    assert rise(before, lab.counters(), "upnp") >= 6


def test_spoofed_source_addresses_are_dropped(net: Net, lab: Lab) -> None:
    def token() -> str:
        return f"spoof-{secrets.token_hex(6)}"

    honest = token()
    assert lab.probe("cam", [udp(CLOUD, 9999, token=honest)]) == [True]
    assert net.seen("wan", honest), "control: the server logs what reaches it"
    cases = {
        # an unknown MAC using a bound address
        "stranger": [udp(CLOUD, 9999, src=CAM.v4, token=token()),
                     udp(CLOUD6, 9999, src=CAM.v6, token=token())],
        # a bound MAC using an address that is not its own
        "sensor": [udp(CLOUD, 9999, src="10.91.0.77", token=token())],
        # addresses from outside the IoT subnets (the bulb is "open": only this stops it)
        "bulb": [udp(CLOUD, 9999, src="172.31.5.5", token=token()),
                 udp(CLOUD6, 9999, src=LAN_HOST6, token=token()),
                 udp(GW_IOT, 53, src=LAN_HOST, token=token())],
    }
    before = lab.counters()
    got = in_parallel(lab, cases)
    after = lab.counters()
    assert not any(ok for results in got.values() for ok in results)
    for probes in cases.values():
        for p in probes:
            assert not net.seen("wan", p["token"]) and not net.seen("gw", p["token"]), p
    assert rise(before, after, "spoof") >= sum(len(p) for p in cases.values())
    assert rise(before, after, "quarantine") == 0


def test_the_lan_reaches_the_admin_page_and_devices_do_not(lab: Lab) -> None:
    lan_ok = [tcp(GW_UP, ADMIN), tcp(GW_UP6, ADMIN), tcp(GW_UP, HA), tcp(GW_UP6, HA)]
    lan_denied = [tcp(GW_UP, NOT_A_SERVICE), tcp(GW_UP, BROKER), tcp(GW_UP6, BROKER),
                  udp(GW_UP, 53)]
    device_denied = [tcp(GW_IOT, ADMIN), tcp(GW_IOT6, ADMIN), tcp(GW_UP, ADMIN),
                     tcp(GW_UP6, ADMIN), tcp(GW_IOT, HA)]
    before = lab.counters()
    got = in_parallel(lab, {
        "lan": lan_ok + lan_denied,
        "wan": from_attacker([tcp(GW_UP, ADMIN), tcp(GW_UP6, ADMIN), tcp(GW_UP, HA)]),
        "cam": device_denied, "bulb": device_denied, "plug": device_denied,
    })
    assert got.pop("lan") == [True] * len(lan_ok) + [False] * len(lan_denied)
    assert not any(ok for results in got.values() for ok in results), got
    assert rise(before, lab.counters(), "inbound") >= len(lan_denied) + 3


def test_replies_to_device_initiated_connections_flow(lab: Lab) -> None:
    got = in_parallel(lab, {
        "bulb": [tcp(CLOUD_OTHER, 80), tcp(CLOUD_OTHER6, 80), udp(CLOUD_OTHER, 9999),
                 udp(CLOUD_OTHER6, 9999), tcp(LAN_HOST, 22), udp(LAN_HOST6, 5000)],
        "cam": [tcp(CLOUD, 8443), udp(CLOUD6, 9999), tcp(SENSOR.v6, 7000)],
    })
    assert all(got["bulb"]) and all(got["cam"]), got


def test_every_drop_class_counter_rises(lab: Lab) -> None:
    before = lab.counters()
    in_parallel(lab, {
        "wan": [tcp(CAM.v4, 22)],  # inbound
        "plug": [tcp(CLOUD, 8443)],  # quarantine
        "cam": [tcp(CLOUD_OTHER, 8443)],  # egress
        "sensor": [tcp(CAM.v4, 7000)],  # lateral
        "bulb": [udp(ROUTER, 1900)],  # upnp
        "stranger": [udp(CLOUD, 9999, src=CAM.v4)],  # spoof
    })
    after = lab.counters()
    for cls in ("inbound", "quarantine", "egress", "lateral", "upnp", "spoof"):
        assert rise(before, after, cls) >= 1, cls
        assert after[cls][1] > before[cls][1], cls


def test_the_ruleset_replaces_only_its_own_table(lab: Lab) -> None:
    lab.nft("table inet someone_else {\n chain c {\n type filter hook input priority 10\n"
            " counter\n }\n}\n")
    try:
        lab.apply()
        listed = lab.exec("gw", NFT, "list", "table", "inet", "home_gateway").stdout
        assert count_rules(listed) == count_rules(render_ruleset(firewall_input()))
        lab.nft(render_remove())
        lab.nft(render_remove())  # removing an absent table is fine too
        tables = lab.exec("gw", NFT, "list", "tables").stdout
        assert "someone_else" in tables and "home_gateway" not in tables
    finally:
        lab.nft("table inet someone_else\ndelete table inet someone_else\n")


def test_a_failed_apply_changes_nothing(lab: Lab) -> None:
    def listing() -> str:  # without the timers of the DNS sets' elements
        text = lab.exec("gw", NFT, "-s", "list", "table", "inet", "home_gateway").stdout
        return re.sub(r" expires \S+", "", text)

    before = listing()
    # One bad rule near the end of an otherwise new ruleset: nothing of it may land.
    broken = render_ruleset(firewall_input(dns={})).replace(
        "goto drop_egress\n\t}", "goto no_such_chain\n\t}")
    assert broken != render_ruleset(firewall_input(dns={}))
    result = lab.exec("gw", NFT, "-f", "-", input=broken, check=False)
    assert result.returncode != 0 and "no_such_chain" in result.stderr
    assert listing() == before
    assert lab.probe("cam", [tcp(DNS_OLD, 8883)]) == [True]


def test_the_lab_cleans_up_after_a_failure(tmp_path: Path) -> None:
    require_root()
    lab = Lab(f"hg-{secrets.token_hex(3)}", tmp_path)
    pid = 0
    with pytest.raises(RuntimeError, match="boom"):
        try:
            for role in ("a", "b"):
                lab.sh("ip", "netns", "add", lab.ns(role))
                lab.namespaces.append(lab.ns(role))
            lab.spawn_server("a", [7], [], [])
            pid = lab.processes[0].pid
            raise RuntimeError("boom")
        finally:
            lab.close()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           timeout=10, check=True).stdout
    assert lab.prefix not in names
    assert pid and not Path(f"/proc/{pid}").exists()
