"""The pure parts of running the firewall: what it is rendered from, how a table read back
is compared with what was rendered, and the DNS timing."""

from __future__ import annotations

import dataclasses
from ipaddress import ip_address, ip_network
from pathlib import Path

from gateway.config import parse_config
from gateway.firewall.dns import element_timeout, refresh_in
from gateway.firewall.inventory import build_input, learn_address, services
from gateway.firewall.manager import manifest, normalize_listing
from gateway.firewall.model import Allow, Profile, Resolution
from gateway.firewall.render import render_ruleset
from gateway.store import Device

NETWORK = """
[[broker.listeners]]
address = "127.0.0.1"
port = 1883
[[broker.listeners]]
address = "192.168.50.1"
port = 8883
[[broker.listeners]]
address = "192.168.1.2"
port = 1884
[[broker.listeners]]
address = "::"
port = 9883
[web]
listen = ["192.168.1.2:8443", "127.0.0.1:8080"]
[network]
uplink = "eth0"
iot = "wlan0"
iot_subnets = ["192.168.50.0/24", "fd00:50::/64"]
lan_subnets = ["192.168.1.0/24"]
"""
PROFILES = {
    "camera": Profile("camera"),
    "cloud": Profile("cloud", allow=(Allow("tcp", ((443, 443),), host="api.example.com"),)),
}


def device(id: str, kind: str = "camera", ip: str | None = "192.168.50.10",
           policy: str = "quarantine", profile: str | None = None,
           status: str = "adopted", mac: str | None = None) -> Device:
    mac = mac or f"02:00:00:00:00:{int(id.rsplit('-', 1)[1]):02x}"
    return Device(id, id, kind, status, "cli", mac, ip, 0.0, None, None, 0, {},
                  1, None, None, None, None, 0, None, "", policy, profile)


def test_services_come_from_where_each_listener_is() -> None:
    config = parse_config(NETWORK)
    s = services(config)
    assert s.admin_tcp == (8443,)  # loopback is not firewalled
    assert s.device_tcp == (8883, 9883)  # in the IoT subnets, or everywhere
    assert s.ha_tcp == (1884, 9883)  # the LAN side, or everywhere


def test_devices_are_placed_by_address_policy_and_profile() -> None:
    config = parse_config(NETWORK)
    inventory = build_input(config, [
        device("cam-1", ip="192.168.50.10 fd00:50::10", policy="restricted"),  # kind profile
        device("cam-2", ip=None, policy="restricted"),
        device("cam-3", ip="10.0.0.3"),
        device("cam-4", ip="192.168.50.14", policy="restricted", profile="nope"),
        device("cam-5", ip="192.168.50.15", policy="restricted", profile="cloud"),
        device("cam-6", ip="192.168.50.16", status="removed"),
        device("cam-7", ip="192.168.50.15"),  # cam-5's address
        device("cam-8", ip="192.168.50.18", mac="02:00:00:00:00:01"),  # cam-1's MAC
    ], PROFILES, {"api.example.com": Resolution((ip_address("203.0.113.7"),), 90)})
    rules = {d.id: d for d in inventory.input.devices}
    assert sorted(rules) == ["cam-1", "cam-4", "cam-5"]
    assert rules["cam-1"].ips == (ip_address("192.168.50.10"), ip_address("fd00:50::10"))
    assert rules["cam-1"].profile == "camera" and rules["cam-1"].policy == "restricted"
    assert rules["cam-4"].policy == "quarantine", "a missing profile fails closed"
    assert rules["cam-5"].profile == "cloud"
    assert inventory.unplaced == ("cam-2",)
    assert list(inventory.problems) == ["cam-3", "cam-4", "cam-7", "cam-8"]
    assert "no profile 'nope'" in inventory.problems["cam-4"]
    assert "192.168.50.15 (also cam-5)" in inventory.problems["cam-7"]
    assert "02:00:00:00:00:01 (also cam-1)" in inventory.problems["cam-8"]
    assert inventory.warnings()[0].startswith("device cam-3: 10.0.0.3 outside")
    assert inventory.input.iot_subnets == (ip_network("192.168.50.0/24"),
                                           ip_network("fd00:50::/64"))
    script = render_ruleset(inventory.input)
    assert "203.0.113.7" in script  # the DNS answer went in


def test_a_single_homed_pi_has_no_devices_in_its_ruleset() -> None:
    config = parse_config(NETWORK.replace('iot = "wlan0"\n', ""))
    inventory = build_input(config, [device("cam-1")], PROFILES, {})
    assert inventory.input.iot is None and inventory.input.devices == ()


def test_the_manifest_reads_scripts_and_listings_alike() -> None:
    config = parse_config(NETWORK)
    inp = build_input(config, [device("cam-1", policy="restricted", profile="cloud")],
                      PROFILES, {"api.example.com": Resolution((ip_address("203.0.113.7"),),
                                                               90)}).input
    script = render_ruleset(inp)
    want = manifest(script)
    assert want["chain in_iot"] > 5 and want["counter spoof"] == 1
    assert want["map policy_v4"] == 1 and want["set lan_v4"] == 1
    assert not any(k.startswith("set dns_") for k in want), "timed sets change by themselves"
    # nft's own formatting of the same set: one line, different spacing.
    listing = script.replace("\t\telements = {\n\t\t\t192.168.1.0/24\n\t\t}",
                             "\t\telements = { 192.168.1.0/24 }")
    assert listing != script and manifest(listing) == want
    # A rule gone, or an element gone, shows.
    assert manifest(script.replace("\t\tudp dport 123 accept\n", "")) != want
    two = dataclasses.replace(inp, lan_subnets=(ip_network("192.168.1.0/24"),
                                                ip_network("192.168.2.0/24")))
    assert manifest(render_ruleset(two))["set lan_v4"] == 2


def test_drift_comparison_ignores_only_what_changes_by_itself() -> None:
    listing = """table inet home_gateway {
	set dns_v4 {
		type ipv4_addr . ipv4_addr . inet_proto . inet_service
		flags interval,timeout
		elements = { 192.168.50.10 . 203.0.113.7 . tcp . 443 timeout 3m expires 2m58s }
	}
	set adopted_v4 {
		type ipv4_addr
		elements = { 192.168.50.10 }
	}
}"""
    later = listing.replace("expires 2m58s", "expires 1m2s").replace("203.0.113.7", "1.2.3.4")
    assert normalize_listing(later) == normalize_listing(listing)
    changed = listing.replace("elements = { 192.168.50.10 }", "elements = { 192.168.50.11 }")
    assert normalize_listing(changed) != normalize_listing(listing)
    assert "flags interval,timeout" in normalize_listing(listing)


def test_dns_answers_are_refreshed_well_before_their_elements_expire() -> None:
    for ttl in (0, 2, 30, 300, 86400):
        assert refresh_in(ttl) < element_timeout(ttl)
        assert element_timeout(ttl) >= ttl + 60
    assert refresh_in(0) == 1.0  # never a tight loop
    assert refresh_in(300) == 150


def test_shipped_profiles_cover_every_device_kind() -> None:
    from gateway.devices.kinds import KINDS
    from gateway.firewall.profiles import SHIPPED_DIR, load_profiles

    assert set(KINDS) <= set(load_profiles(SHIPPED_DIR)), Path(SHIPPED_DIR)


def test_a_device_is_placed_where_its_broker_login_came_from_once_per_family() -> None:
    nets = ["192.168.50.0/24", "fd00:50::/64"]
    assert learn_address(None, "192.168.50.7", nets) == "192.168.50.7"
    assert learn_address("192.168.50.7", "fd00:50::7", nets) == "192.168.50.7 fd00:50::7"
    assert learn_address("192.168.50.7", "192.168.50.8", nets) is None  # never replaced
    assert learn_address(None, "127.0.0.1", nets) is None  # not the IoT segment
    assert learn_address(None, "192.168.1.5", nets) is None
    assert learn_address(None, "not-an-address", nets) is None
