"""The gateway's nftables policy, applied by the daemon itself, proven with real traffic
between network namespaces.

Every probe is a real TCP connection or UDP datagram that only counts as reached when the
server's echo comes back (for the gateway's own services, the daemon's broker and admin
page: when the TCP handshake completes); every negative case has a positive control showing
the server answers when the policy allows it. See conftest.py for the picture.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gateway.firewall.model import DROP_CLASSES
from gateway.firewall.render import MAX_CONNECTIONS_PER_HOST, count_rules, render_remove
from tests.hostile.flood import flooding
from tests.integration.daemon_proc import REPO
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
    SETTLE_S,
    VENDOR,
    Lab,
    Net,
    require_root,
)
from tests.polling import wait_until

pytestmark = pytest.mark.netns

CAM, SENSOR, PLUG, BULB, STRANGER = (DEV[r] for r in ("cam", "sensor", "plug", "bulb",
                                                       "stranger"))


def tcp(dst: str, port: int, src: str | None = None, token: str | None = None) -> dict[str, Any]:
    return {"proto": "tcp", "dst": dst, "port": port, "src": src, "token": token}


def udp(dst: str, port: int, src: str | None = None, token: str | None = None) -> dict[str, Any]:
    return {"proto": "udp", "dst": dst, "port": port, "src": src, "token": token}


def svc(dst: str, port: int) -> dict[str, Any]:
    """A connection to one of the daemon's own TCP services: reached when it is accepted."""
    return {**tcp(dst, port), "connect": True}


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


def audited(net: Net, action: str, result: str) -> list[str]:
    """The details of the daemon's audit entries for `action` with `result`."""
    from gateway.store import Store

    store = Store(net.gateway.state_dir / "gateway.db")
    try:
        return [e.detail for e in store.audit_log(200, action, result=result)]
    finally:
        store.close()


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
               svc(GW_IOT, BROKER), udp(GW_IOT, 53), svc(GW_IOT6, BROKER)]
    outside = [tcp(CLOUD, 8444), tcp(CLOUD, 80), udp(CLOUD, 123), tcp(CLOUD_OTHER, 8443),
               udp(CLOUD_OTHER, 9999), tcp(CLOUD6, 8444), tcp(CLOUD_OTHER6, 8443),
               tcp(DNS_NEW, 8883), tcp(LAN_HOST, 22), tcp(LAN_HOST6, 22), tcp(ROUTER, 80)]
    at_gateway = [svc(GW_UP, ADMIN), svc(GW_UP6, ADMIN), svc(GW_UP, HA),
                  tcp(GW_IOT, NOT_A_SERVICE)]
    before = lab.counters()
    got = in_parallel(lab, {"cam": allowed + outside + at_gateway, "bulb": outside})
    assert got["cam"] == [True] * len(allowed) + [False] * (len(outside) + len(at_gateway))
    assert all(got["bulb"]), "control: an open device reaches the same destinations"
    assert rise(before, lab.counters(), "egress") >= len(outside) + len(at_gateway)


def test_a_dns_name_allowance_follows_its_address(net: Net, lab: Lab) -> None:
    probes = [tcp(DNS_OLD, 8883), tcp(DNS_NEW, 8883), tcp(DNS_OLD6, 8883), tcp(DNS_NEW6, 8883)]
    assert lab.probe("cam", probes) == [True, False, True, False]
    applies = net.firewall()["applies"]

    # The name moves: within about half its TTL the daemon re-resolves it and changes only
    # the DNS sets; the old addresses stop working, the new ones start.
    net.point(CLOUD_NAME, DNS_NEW, DNS_NEW6)
    wait_until(lambda: lab.probe("cam", probes) == [False, True, False, True], SETTLE_S,
               "the allowance to follow the name to its new addresses")
    status = net.firewall()
    assert status["dns"][CLOUD_NAME]["addresses"] == [DNS_NEW, DNS_NEW6]
    assert status["applies"] == applies, "a DNS change is not a whole new ruleset"

    # A name that no longer resolves allows nothing.
    net.point(CLOUD_NAME)
    wait_until(lambda: lab.probe("cam", probes) == [False] * 4, SETTLE_S,
               "the allowance to end with the name's addresses")


def test_quarantined_and_unknown_devices_reach_only_the_gateway_services(lab: Lab) -> None:
    services = [svc(GW_IOT, BROKER), svc(GW_IOT6, BROKER), udp(GW_IOT, 53), tcp(GW_IOT, 53),
                udp(GW_IOT6, 53), udp(GW_IOT, 123), udp(GW_IOT6, 123), udp(GW_IOT, 67)]
    denied = [svc(GW_UP, ADMIN), svc(GW_UP6, ADMIN), svc(GW_UP, HA),
              tcp(GW_IOT, NOT_A_SERVICE), tcp(CLOUD, 8443), udp(CLOUD, 9999),
              tcp(CLOUD6, 8443), tcp(LAN_HOST, 22), udp(LAN_HOST, 5000), tcp(ROUTER, 80)]
    before = lab.counters()
    got = in_parallel(lab, {"plug": services + denied, "stranger": services + denied})
    for role, results in got.items():
        assert results == [True] * len(services) + [False] * len(denied), role
    assert rise(before, lab.counters(), "quarantine") >= 2 * len(denied)


def test_adopting_and_blocking_a_device_change_what_it_reaches(net: Net, lab: Lab) -> None:
    probes = [tcp(CLOUD, 8443), tcp(CLOUD_OTHER, 8443), svc(GW_IOT, BROKER), udp(GW_IOT, 53)]
    assert lab.probe("plug", probes) == [False, False, True, True], "quarantined"

    result = net.set_policy("plug", "restricted", "lab-cam")  # adopt with a profile
    assert result["applied"] is True
    assert lab.probe("plug", probes) == [True, False, True, True]

    result = net.set_policy("plug", "blocked")
    assert result["applied"] is True
    before = lab.counters()
    assert lab.probe("plug", probes) == [False, False, False, False]
    assert rise(before, lab.counters(), "quarantine") >= len(probes), "dropped by the rules"
    assert any("quarantine -> restricted" in d for d in audited(net, "device.policy", "ok"))

    # A policy the config file sets cannot be changed from outside it.
    with pytest.raises(Exception, match="set in the config file"):
        net.set_policy("cam", "open")


LOGIN = r"""
import asyncio, ssl, sys
sys.path.insert(0, sys.argv[1])
from gateway.mqtt import Endpoint, make_client
host, port, user, password, ca = sys.argv[2:7]
topic = sys.argv[7] if len(sys.argv) > 7 else None  # then publish there, QoS 1 (acknowledged)
async def main():
    tls = ssl.create_default_context(cafile=ca)
    async with make_client(Endpoint(host, int(port), user, password, tls), "newbie") as client:
        if topic:
            await client.publish(topic, b'{"motion": true}', qos=1)
        await asyncio.sleep(0.5)
asyncio.run(asyncio.wait_for(main(), 20))
print("connected")
"""


def test_a_registered_device_is_placed_where_its_broker_login_comes_from(
        net: Net, lab: Lab) -> None:
    newbie = DEV["newbie"]
    probes = [tcp(CLOUD, 8443), tcp(CLOUD_OTHER, 8443)]
    added = net.gateway.device("add", "newbie", "--kind", "camera")  # no address given
    assert added.returncode == 0, added.stderr
    try:
        fields = dict(line.split(":", 1) for line in added.stdout.splitlines() if ":" in line)
        assert lab.probe("newbie", probes) == [False, False], "unknown: quarantined"
        # The device logs in to the broker's device listener over TLS, as a device does.
        ca = net.gateway.state_dir / "pki" / "ca.crt"
        done = lab.exec("newbie", sys.executable, "-c", LOGIN, str(REPO), GW_IOT, str(BROKER),
                        fields["username"].strip(), fields["password"].strip(), str(ca),
                        timeout=40)
        assert "connected" in done.stdout
        wait_until(lambda: "newbie" in {d["id"] for d in net.firewall_devices()
                                        if newbie.v4 in d["addresses"]},
                   SETTLE_S, "the gateway to learn newbie's address")
        assert any(newbie.v4 in d for d in audited(net, "device.address", "learned"))
        net.set_policy("newbie", "restricted", "lab-cam")  # adopt it
        assert lab.probe("newbie", probes) == [True, False]
    finally:
        net.gateway.device("remove", "newbie")
        # Let that re-apply land now, not in the middle of the next test (a whole new
        # table restarts the counters it compares).
        wait_until(lambda: 'comment "newbie"' not in (lab.listing() or 'comment "newbie"'),
                   SETTLE_S, "newbie's removal to reach the ruleset")


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
    lan_ok = [svc(GW_UP, ADMIN), svc(GW_UP6, ADMIN), svc(GW_UP, HA), svc(GW_UP6, HA)]
    # The device listener (on the IoT side) and anything else are not for the LAN.
    lan_denied = [tcp(GW_UP, NOT_A_SERVICE), svc(GW_IOT, BROKER), svc(GW_IOT6, BROKER),
                  udp(GW_UP, 53)]
    device_denied = [svc(GW_UP, ADMIN), svc(GW_UP6, ADMIN), svc(GW_UP, HA), svc(GW_UP6, HA)]
    before = lab.counters()
    got = in_parallel(lab, {
        "lan": lan_ok + lan_denied,
        "wan": from_attacker([svc(GW_UP, ADMIN), svc(GW_UP6, ADMIN), svc(GW_UP, HA)]),
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


def test_every_drop_class_counter_rises(net: Net, lab: Lab) -> None:
    before = lab.counters()
    shown = net.firewall()["dropped"]
    in_parallel(lab, {
        "wan": [tcp(CAM.v4, 22)],  # inbound
        "plug": [tcp(CLOUD, 8443)],  # quarantine
        "cam": [tcp(CLOUD_OTHER, 8443)],  # egress
        "sensor": [tcp(CAM.v4, 7000)],  # lateral
        "bulb": [udp(ROUTER, 1900)],  # upnp
        "stranger": [udp(CLOUD, 9999, src=CAM.v4)],  # spoof
    })
    after = lab.counters()
    classes = ("inbound", "quarantine", "egress", "lateral", "upnp", "spoof")
    assert set(DROP_CLASSES) - set(classes) == {"flood"}  # the flood test's own
    for cls in classes:
        assert rise(before, after, cls) >= 1, cls
        assert after[cls][1] > before[cls][1], cls
    # The daemon reports them too (it reads them at each check, every second here).
    wait_until(lambda: all(net.firewall()["dropped"][c] > shown[c] for c in classes),
               SETTLE_S, "the daemon's status to show every class rising")


def settled(net: Net) -> int:
    """The firewall's apply count once it has not changed for 3 s."""
    def still() -> int | None:
        before = net.firewall()["applies"]
        time.sleep(3)
        return before if net.firewall()["applies"] == before else None
    result: int = wait_until(still, SETTLE_S, "the firewall to settle")
    return result


def test_one_host_cannot_take_the_brokers_connections(net: Net, lab: Lab) -> None:
    """A hostile device holds thousands of idle connections open to the broker's device
    listener (Mosquitto keeps one that never sends CONNECT for ~95 s): the firewall holds
    it to its share, and a device that enrols meanwhile logs in and publishes."""
    before = lab.counters()
    stranger = DEV["stranger"]
    added = net.gateway.device("add", "newbie", "--kind", "camera")
    assert added.returncode == 0, added.stderr
    try:
        fields = dict(line.split(":", 1) for line in added.stdout.splitlines() if ":" in line)
        ca = net.gateway.state_dir / "pki" / "ca.crt"
        login = (sys.executable, "-c", LOGIN, str(REPO), GW_IOT, str(BROKER),
                 fields["username"].strip(), fields["password"].strip(), str(ca))
        # Its first login and report place it in the ruleset (a whole new table, whose
        # connection counts start afresh: see docs/firewall.md); the flood comes after.
        assert "connected" in lab.exec("newbie", *login, "devices/newbie/telemetry",
                                       timeout=40).stdout
        wait_until(lambda: "newbie" in {d["id"] for d in net.firewall_devices()
                                        if DEV["newbie"].v4 in d["addresses"]},
                   SETTLE_S, "the gateway to learn newbie's address")
        applies = settled(net)
        prefix = ("ip", "netns", "exec", lab.ns("stranger"))
        with flooding(GW_IOT, BROKER, stranger.v4, 2000, 60, "idle", prefix) as flood:
            time.sleep(3)
            held = lab.exec("gw", "ss", "-Htn", "state", "established",
                            f"( sport = :{BROKER} and dst {stranger.v4} )").stdout
            # The flood changed nothing in the table (an apply would count afresh). Read
            # before newbie's first report, which may itself re-apply (its record changes).
            status = net.firewall()
            assert status["applies"] == applies, (status["last_reason"], net.firewall_devices())
            done = lab.exec("newbie", *login, "devices/newbie/telemetry", timeout=40)
        assert "connected" in done.stdout, done.stderr
        assert len(held.splitlines()) <= MAX_CONNECTIONS_PER_HOST, held
        assert flood["most_held"] <= MAX_CONNECTIONS_PER_HOST, flood  # the rest: dropped
        assert rise(before, lab.counters(), "flood") > 0
        # Once it stops, the stranger is an ordinary host again within 10 s.
        wait_until(lambda: lab.probe("stranger", [svc(GW_IOT, BROKER)]) == [True], 10,
                   "the stranger to reach the broker again")
    finally:
        net.gateway.device("remove", "newbie")
        wait_until(lambda: 'comment "newbie"' not in (lab.listing() or 'comment "newbie"'),
                   SETTLE_S, "newbie's removal to reach the ruleset")
        settled(net)  # nothing of this test re-applies the table during the next one


def test_the_ruleset_replaces_only_its_own_table(net: Net, lab: Lab) -> None:
    lab.nft("table inet someone_else {\n chain c {\n type filter hook input priority 10\n"
            " counter\n }\n}\n")
    try:
        applies = net.firewall()["applies"]
        net.gateway.reload()  # SIGHUP: the daemon renders and applies its table again
        status = wait_until(lambda: (lambda s: s if s["applies"] > applies else None)(
            net.firewall()), SETTLE_S, "the daemon to apply its table again")
        assert status["healthy"] and status["drift_repairs"] == 0
        listed = lab.listing()
        assert listed is not None and count_rules(listed) == status["rules"]
        tables = lab.exec("gw", NFT, "list", "tables").stdout
        assert "someone_else" in tables and "home_gateway" in tables
    finally:
        lab.nft("table inet someone_else\ndelete table inet someone_else\n")


def test_a_ruleset_that_fails_to_apply_leaves_the_previous_one_enforced(
        net: Net, lab: Lab) -> None:
    before = lab.listing()
    probes = [tcp(CLOUD, 8443), tcp(CLOUD_OTHER, 80), tcp(DNS_OLD, 8883)]
    assert lab.probe("plug", probes) == [False, False, False]
    net.fault.write_text("fail")
    result = net.set_policy("plug", "open")  # would let the plug out
    assert result["applied"] is False
    status = net.firewall()
    assert not status["healthy"] and "injected fault" in status["problem"]
    assert status["enforcing"], "the last good ruleset is still in force"
    assert lab.listing() == before
    assert lab.probe("plug", probes) == [False, False, False]
    assert lab.probe("cam", [tcp(DNS_OLD, 8883)]) == [True], "the rest keeps working"
    assert any("injected fault" in d for d in audited(net, "firewall.apply", "failed"))
    net.gateway.notify.wait_for(lambda d: "firewall UNHEALTHY" in d.fields.get("STATUS", ""),
                                5, "STATUS=… firewall UNHEALTHY")
    # The fault goes away: the daemon retries by itself and the new policy lands.
    net.fault.unlink()
    net.healthy()
    assert lab.probe("plug", probes) == [True, True, True]


def test_a_table_that_reads_back_wrong_is_rolled_back(net: Net, lab: Lab) -> None:
    assert lab.probe("cam", [tcp(GW_IOT, NOT_A_SERVICE)]) == [False]
    failures = net.firewall()["failures"]
    net.fault.write_text("tamper")  # the next apply lands with one rule too many
    net.set_policy("plug", "open")
    status = net.firewall()
    assert status["failures"] == failures + 1
    assert "reads back different" in status["problem"] or status["healthy"]
    status = net.healthy()  # rolled back, then retried without the fault
    listing = lab.listing()
    assert listing is not None and f"dport {NOT_A_SERVICE} accept" not in listing
    assert lab.probe("cam", [tcp(GW_IOT, NOT_A_SERVICE)]) == [False]


def test_a_deleted_or_changed_table_is_detected_and_repaired(net: Net, lab: Lab) -> None:
    repairs = net.firewall()["drift_repairs"]
    lab.nft(render_remove())  # someone deletes the table by hand
    status = wait_until(lambda: (lambda s: s if s["drift_repairs"] > repairs and s["healthy"]
                                 else None)(net.firewall()), SETTLE_S, "the table restored")
    assert status["last_drift"] == "the table was deleted"
    assert lab.listing() is not None
    assert lab.probe("wan", [tcp(CAM.v4, 22)]) == [False]
    assert lab.probe("cam", [tcp(CLOUD, 8443)]) == [True]

    # Someone opens a port into a device by hand.
    lab.nft("add rule inet home_gateway to_iot tcp dport 22 accept\n")
    status = wait_until(lambda: (lambda s: s if s["drift_repairs"] > repairs + 1
                                 and s["healthy"] else None)(net.firewall()), SETTLE_S,
                        "the changed table restored")
    assert status["last_drift"] == "the table was changed"
    assert "tcp dport 22 accept" not in (lab.listing() or "")
    assert lab.probe("wan", [tcp(CAM.v4, 22)]) == [False]
    details = audited(net, "firewall.drift", "repaired")
    assert "the table was deleted" in details and "the table was changed" in details


def test_status_and_cli_report_the_firewall(net: Net, lab: Lab) -> None:
    done = net.gateway.cli("firewall", "status", "--config", str(net.gateway.config))
    assert done.returncode == 0, done.stderr
    assert "firewall enforcing" in done.stdout and "inbound" in done.stdout
    as_json = json.loads(net.gateway.cli("firewall", "status", "--json", "--config",
                                         str(net.gateway.config)).stdout)
    assert as_json["mode"] == "enforce" and as_json["healthy"] is True
    rendered = net.gateway.cli("firewall", "render", "--config", str(net.gateway.config))
    assert rendered.returncode == 0, rendered.stderr
    assert count_rules(rendered.stdout) == as_json["rules"]
    assert 'comment "cam"' in rendered.stdout
    statuses = [d.fields["STATUS"] for d in net.gateway.notify.received if "STATUS" in d.fields]
    assert any("firewall enforcing" in line for line in statuses), statuses


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


def test_the_cloud_link_goes_out_and_nothing_comes_in(net: Net, lab: Lab) -> None:
    """The vendor's cloud lives in wan. The gateway's outbound link reaches it through the
    enforcing firewall and carries its commands both ways; the cloud's own address opens
    no connection to the gateway or to a device."""
    status = wait_until(lambda: (lambda c: c if c["state"] == "connected" else None)(
        net.control("cloud.status")), SETTLE_S, "the cloud link to connect")
    assert status["url"] == f"mqtts://{VENDOR}:8884"
    # A command from the cloud arrives over the link and its result goes back: the bulb is
    # declared but has never connected to the broker, so the gateway answers "offline".
    def results() -> list[dict[str, Any]]:
        lines = net.cloud_out.read_text().splitlines()
        return [json.loads(x.split(": ", 1)[1]) for x in lines if x.startswith("cmd/result: ")]
    result = wait_until(results, SETTLE_S, "a result back at the cloud")[0]
    assert (result["device"], result["status"], result["source"]) == ("bulb", "offline",
                                                                      "cloud")
    assert "status: online" in net.cloud_out.read_text()
    # Inbound from the very host the gateway talks to: nothing opens.
    probes = [svc(GW_UP, ADMIN), svc(GW_UP, HA), svc(GW_UP, 8884), svc(GW_UP, 22),
              tcp(GW_UP, NOT_A_SERVICE), svc(GW_IOT, BROKER), tcp(BULB.v4, 80),
              tcp(CAM.v4, 22), udp(BULB.v4, 5000)]
    assert lab.probe("wan", [{**p, "src": VENDOR} for p in probes]) == [False] * len(probes)
    swept = lab.sweep("wan", GW_UP, src=VENDOR)
    assert swept["open"] == [], swept
    # The link is still up: the gateway's own connection was never the one dropped.
    assert net.control("cloud.status")["state"] == "connected"
