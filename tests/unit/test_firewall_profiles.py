"""Profile files and the RFC 8520 MUD import."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from gateway.devices.kinds import KINDS
from gateway.firewall.model import Allow, DeviceRule, FirewallInput, Peer, Profile, Resolution
from gateway.firewall.mud import MudError, import_mud, load_mud
from gateway.firewall.profiles import (
    SHIPPED_DIR,
    ProfileError,
    load_profile,
    load_profiles,
    parse_profile,
    profile_to_toml,
)
from gateway.firewall.render import render_ruleset

MUD_FILE = Path(__file__).with_name("mud") / "thermostat.json"
ACE = "$.ietf-access-control-list:acls.acl[0].aces.ace"


# --- shipped profiles -----------------------------------------------------------------------


def test_every_simulator_kind_ships_a_small_commented_profile() -> None:
    profiles = load_profiles(SHIPPED_DIR)
    assert set(profiles) == set(KINDS)
    for name, profile in profiles.items():
        text = (SHIPPED_DIR / f"{name}.toml").read_text()
        assert len(text) < 2000 and text.startswith("# ")
        assert profile.description


def test_the_shipped_thermostat_reads_sensors() -> None:
    assert load_profile(SHIPPED_DIR / "thermostat.toml").peers == (
        Peer("udp", ((5683, 5683),), kind="sensor"),)


# --- parsing --------------------------------------------------------------------------------

FULL = """
description = "Vendor camera"
[[allow]]
host = "Clips.Vendor.Example."
protocol = "tcp"
ports = [443, "8000-8100", " 9000 "]
[[allow]]
cidr = "2001:db8::/32"
protocol = "icmp"
[[allow]]
cidr = "198.51.100.7"
protocol = "udp"
ports = ["0-65535"]
[[peer]]
device = "hall-sensor"
protocol = "udp"
ports = [5683]
[[peer]]
kind = "bulb"
protocol = "icmp"
"""


def test_a_full_profile_parses() -> None:
    profile = parse_profile(FULL, "cam.toml", "cam")
    assert profile == Profile(
        "cam",
        allow=(
            Allow("tcp", ((443, 443), (8000, 8100), (9000, 9000)), host="clips.vendor.example"),
            Allow("icmp", (), cidr=ip_network("2001:db8::/32")),
            Allow("udp", ((0, 65535),), cidr=ip_network("198.51.100.7/32")),
        ),
        peers=(Peer("udp", ((5683, 5683),), device="hall-sensor"),
               Peer("icmp", (), kind="bulb")),
        description="Vendor camera",
    )


def test_an_empty_profile_allows_nothing_beyond_the_gateway() -> None:
    assert parse_profile("", "x.toml", "x") == Profile("x")


@pytest.mark.parametrize(("text", "problem"), [
    ('[[allow]]\nhost = "a.example"\nprotocol = "tcp"\nports = [70000]',
     "p.toml:allow[0].ports[0]: integer 70000 is out of range (expected a port 0..65535 or a "
     'range "LOW-HIGH" with LOW <= HIGH)'),
    ('[[allow]]\nhost = "a.example"\nprotocol = "tcp"\nports = ["90-80"]',
     'p.toml:allow[0].ports[0]: string "90-80" is out of range'),
    ('[[allow]]\nhost = "a.example"\nprotocol = "tcp"\nports = [true]',
     "p.toml:allow[0].ports[0]: got boolean true"),
    ('[[allow]]\nhost = "a.example"\nprotocol = "tcp"',
     "p.toml:allow[0].ports: missing for tcp"),
    ('[[allow]]\nhost = "a.example"\nprotocol = "tcp"\nports = []',
     "p.toml:allow[0].ports: is empty"),
    ('[[allow]]\ncidr = "10.0.0.0/8"\nprotocol = "icmp"\nports = [1]',
     "p.toml:allow[0].ports: icmp has no ports"),
    ('[[allow]]\ncidr = "10.0.0.1/8"\nprotocol = "udp"\nports = [1]',
     'p.toml:allow[0].cidr: string "10.0.0.1/8" has host bits set (expected a network'),
    ('[[allow]]\ncidr = "ten"\nprotocol = "udp"\nports = [1]',
     'p.toml:allow[0].cidr: string "ten" is not an IP address or network'),
    ('[[allow]]\nhost = "bad_host!"\nprotocol = "udp"\nports = [1]',
     'p.toml:allow[0].host: got string "bad_host!" (expected a DNS name'),
    ('[[allow]]\nprotocol = "udp"\nports = [1]',
     "p.toml:allow[0]: has neither cidr nor host (expected exactly one of cidr or host)"),
    ('[[allow]]\nhost = "a.example"\ncidr = "10.0.0.0/8"\nprotocol = "udp"\nports = [1]',
     "p.toml:allow[0]: has both cidr and host"),
    ('[[allow]]\nhost = "a.example"\nprotocol = "sctp"\nports = [1]',
     'p.toml:allow[0].protocol: got string "sctp" (expected one of: "tcp", "udp", "icmp")'),
    ('[[allow]]\nhost = "a.example"\nports = [1]',
     "p.toml:allow[0].protocol: missing"),
    ('[[allow]]\nhots = "a.example"\nprotocol = "udp"\nports = [1]',
     'p.toml:allow[0].hots: unknown key — did you mean "host"? (expected one of: cidr, host,'),
    ('[[peer]]\nkind = "toaster"\nprotocol = "icmp"',
     'p.toml:peer[0].kind: got string "toaster" (expected one of: "bulb", "camera"'),
    ('[[peer]]\ndevice = "X"\nprotocol = "icmp"',
     'p.toml:peer[0].device: got string "X" (expected a device id ([a-z0-9-]{3,40}))'),
    ('[[allow]]\nhost = "a.example"\nprotocol = "tcp"\nports = [' + "1, " * 300 + "2]",
     "p.toml:allow[0].ports: has 301 entries (expected at most 256; use ranges)"),
    ("allow = 3", "p.toml:allow: got integer 3 (expected an array of tables ([[allow]]))"),
    ("allow = [3]", "p.toml:allow[0]: got integer 3 (expected a table ([[allow]]))"),
    ("description = 1", "p.toml:description: got integer 1 (expected a string)"),
    ("peers = []", 'p.toml:peers: unknown key — did you mean "peer"?'),
    ("[[allow]\n", "p.toml: TOML syntax error:"),
])
def test_each_problem_names_file_key_and_expectation(text: str, problem: str) -> None:
    with pytest.raises(ProfileError) as err:
        parse_profile(text, "p.toml", "p")
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_all_problems_are_reported_together() -> None:
    text = ('[[allow]]\nprotocol = "x"\n[[allow]]\nhost = "a.example"\nprotocol = "tcp"\n'
            'ports = [-1]\n[[peer]]\nkind = "sensor"\n')
    with pytest.raises(ProfileError) as err:
        parse_profile(text, "p.toml", "Bad Name")
    assert len(err.value.problems) == 5, err.value.problems
    assert err.value.problems[0].startswith('p.toml:(file name): profile name "Bad Name"')


def test_a_later_directory_overrides_and_problems_of_all_files_are_collected(
        tmp_path: Path) -> None:
    shipped, local = tmp_path / "shipped", tmp_path / "etc"
    shipped.mkdir()
    local.mkdir()
    (shipped / "cam.toml").write_text('description = "shipped"\n')
    (shipped / "plug.toml").write_text('description = "plug"\n')
    (local / "cam.toml").write_text('description = "mine"\n')
    profiles = load_profiles(shipped, local, tmp_path / "missing")
    assert profiles["cam"].description == "mine" and profiles["plug"].description == "plug"
    (local / "a.toml").write_text("allow = 1\n")
    (local / "b.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ProfileError) as err:
        load_profiles(shipped, local)
    assert len(err.value.problems) == 2
    assert err.value.problems[0].startswith(f"{local / 'a.toml'}:allow: got integer 1")
    assert err.value.problems[1].startswith(f"{local / 'b.toml'}: cannot read")


def test_profile_to_toml_round_trips() -> None:
    profile = parse_profile(FULL, "cam.toml", "cam")
    text = profile_to_toml(profile, header="written by a test\nline two")
    assert text.startswith("# written by a test\n# line two\n")
    assert parse_profile(text, "again.toml", "cam") == profile
    for path in sorted(SHIPPED_DIR.glob("*.toml")):
        shipped = load_profile(path)
        assert parse_profile(profile_to_toml(shipped), str(path), shipped.name) == shipped


# --- MUD import -----------------------------------------------------------------------------


def mud_doc() -> dict[str, Any]:
    return json.loads(MUD_FILE.read_text())


def test_a_real_mud_file_becomes_a_profile() -> None:
    imported = load_mud(MUD_FILE)
    assert imported.mud_url == "https://devices.thermo.example/mud/t200.json"
    profile = imported.profile
    assert profile.name == "thermostat"
    assert "Example Thermo T200" in profile.description
    assert profile.allow == (
        Allow("tcp", ((443, 443),), host="api.thermo.example"),
        Allow("tcp", ((8883, 8883),), host="mqtt.thermo.example"),
        Allow("udp", ((50000, 50100),), host="relay.thermo.example"),
        Allow("icmp", (), cidr=ip_network("192.0.2.0/24")),
    )  # the IPv6 ACL's api.thermo.example entry is the same allowance
    assert profile.peers == ()
    notes = "\n".join(imported.notes)
    assert f"{ACE}[4]: not imported: MUD class matches (local-networks)" in notes
    assert f"{ACE}[5]: not imported: the remote side initiates it" in notes
    assert ("$.ietf-access-control-list:acls.acl[1].aces.ace[1]: not imported: "
            "inbound connections are never allowed") in notes


def test_the_imported_profile_renders_and_nft_accepts_it() -> None:
    profile = load_mud(MUD_FILE, name="t200").profile
    inp = FirewallInput(
        uplink="eth0", iot="wlan0", iot_subnets=(ip_network("10.3.0.0/24"),),
        devices=(DeviceRule("t200", (ip_address("10.3.0.9"),), "restricted",
                            profile="t200"),),
        profiles={"t200": profile},
        dns={"api.thermo.example": Resolution((ip_address("198.51.100.4"),), 300)})
    script = render_ruleset(inp)
    assert "10.3.0.9 . 198.51.100.4 . tcp . 443 timeout 300s" in script
    assert "10.3.0.9 . 192.0.2.0/24" in script
    nft = shutil.which("nft") or "/usr/sbin/nft"
    if not Path(nft).exists() or shutil.which("unshare") is None:
        pytest.skip("nft and unshare are needed")
    result = subprocess.run(["unshare", "-rn", nft, "-c", "-f", "-"], input=script,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_port_operators_and_a_missing_port_become_ranges() -> None:
    doc = mud_doc()
    aces = doc["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"]
    ops = [({"operator": "lte", "port": 1023}, ((0, 1023),)),
           ({"operator": "gte", "port": 1024}, ((1024, 65535),)),
           ({"operator": "neq", "port": 22}, ((0, 21), (23, 65535))),
           ({"port": 25}, ((25, 25),))]
    for spec, ranges in ops:
        aces[0]["matches"]["tcp"]["destination-port"] = spec
        allow = import_mud(json.dumps(doc), "m.json", "m").profile.allow
        assert allow[0] == Allow("tcp", ranges, host="api.thermo.example")
    del aces[0]["matches"]["tcp"]["destination-port"]
    allow = import_mud(json.dumps(doc), "m.json", "m").profile.allow
    assert allow[0] == Allow("tcp", ((0, 65535),), host="api.thermo.example")


def test_entries_the_gateway_cannot_enforce_are_skipped_never_widened() -> None:
    doc = mud_doc()
    aces = doc["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"]
    aces[0]["matches"]["tcp"]["source-port"] = {"operator": "eq", "port": 5000}
    aces[1]["actions"]["forwarding"] = "drop"
    aces[2]["matches"]["ipv4"]["dscp"] = 10
    aces[3]["matches"]["icmp"] = {"type": 8}
    imported = import_mud(json.dumps(doc), "m.json", "m")
    # only the IPv6 api.thermo.example entry is left
    assert imported.profile.allow == (Allow("tcp", ((443, 443),), host="api.thermo.example"),)
    notes = "\n".join(imported.notes)
    for i, why in enumerate(["source-port", "drop/reject", "dscp", "ICMP type"]):
        assert f"{ACE}[{i}]:" in notes and why in notes


@pytest.mark.parametrize(("mutate", "problem"), [
    (lambda d: d["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"][0]["matches"]
     ["tcp"]["destination-port"].update(port="443"),
     f"m.json:{ACE}[0].matches.tcp.destination-port.port: got string \"443\" "
     "(expected an integer 0..65535)"),
    (lambda d: d["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"][2]["matches"]
     ["udp"]["destination-port"].update({"lower-port": 60000}),
     f"m.json:{ACE}[2].matches.udp.destination-port.upper-port: 50100 is below lower-port"),
    (lambda d: d["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"][0]["matches"]
     ["ipv4"].update({"ietf-acldns:dst-dnsname": "not a name"}),
     f"m.json:{ACE}[0].matches.ipv4.ietf-acldns:dst-dnsname: got string \"not a name\""),
    (lambda d: d["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"][0]["matches"]
     ["ipv4"].update(protocol=17),
     f"m.json:{ACE}[0].matches.ipv4.protocol: is 17 beside tcp matches"),
    (lambda d: d["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"][0]["matches"]
     .update(ipv6={}),
     f"m.json:{ACE}[0].matches.ipv6: does not match the ACL's type"),
    (lambda d: d["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"][0]["matches"]
     ["tcp"].update({"ietf-mud:direction-initiated": "sideways"}),
     f"m.json:{ACE}[0].matches.tcp.ietf-mud:direction-initiated: got string \"sideways\""),
    (lambda d: d["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"][0]
     .update(actions={"forwarding": "maybe"}),
     f"m.json:{ACE}[0].actions.forwarding: got string \"maybe\""),
    (lambda d: d["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"][0].pop("actions"),
     f"m.json:{ACE}[0].actions: missing"),
    (lambda d: d["ietf-access-control-list:acls"]["acl"][0].update(type="eth-acl-type"),
     "m.json:$.ietf-access-control-list:acls.acl[0].type: got string \"eth-acl-type\""),
    (lambda d: d["ietf-access-control-list:acls"]["acl"][1].update(name="mud-t200-v4fr"),
     "m.json:$.ietf-access-control-list:acls.acl[1].name: string \"mud-t200-v4fr\" is used "
     "twice"),
    (lambda d: d["ietf-mud:mud"]["from-device-policy"]["access-lists"]["access-list"][1]
     .update(name="nope"),
     "m.json:$.ietf-mud:mud.from-device-policy.access-lists.access-list[1].name: no ACL "
     'named "nope"'),
    (lambda d: d["ietf-mud:mud"].update({"mud-version": 2}),
     "m.json:$.ietf-mud:mud.mud-version: 2 is out of range (expected an integer 1..1)"),
    (lambda d: d["ietf-mud:mud"].update({"mud-url": "http://x.example/m.json"}),
     "m.json:$.ietf-mud:mud.mud-url: got string \"http://x.example/m.json\" "
     "(expected an https:// URL)"),
    (lambda d: d.pop("ietf-mud:mud"), "m.json:$.ietf-mud:mud: missing"),
    (lambda d: d["ietf-access-control-list:acls"]["acl"][0]["aces"].update(ace={}),
     "m.json:$.ietf-access-control-list:acls.acl[0].aces.ace: got an object"),
    (lambda d: d["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"].append(7),
     f"m.json:{ACE}[6]: got number 7 (expected an ACE object)"),
])
def test_a_malformed_mud_file_is_rejected_with_the_json_path(mutate: Any,
                                                              problem: str) -> None:
    doc = copy.deepcopy(mud_doc())
    mutate(doc)
    with pytest.raises(MudError) as err:
        import_mud(json.dumps(doc), "m.json", "m")
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_every_problem_of_a_mud_file_is_reported() -> None:
    doc = mud_doc()
    aces = doc["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"]
    aces[0]["matches"]["tcp"]["destination-port"]["port"] = -1
    aces[1]["matches"]["tcp"]["destination-port"]["operator"] = "between"
    doc["ietf-mud:mud"]["cache-validity"] = 0
    with pytest.raises(MudError) as err:
        import_mud(json.dumps(doc), "m.json", "m")
    assert len(err.value.problems) == 3, err.value.problems


@pytest.mark.parametrize(("text", "problem"), [
    ("{", "m.json:line 1, column 2: JSON syntax error"),
    ("[]", "m.json:$: got an array (expected a JSON object)"),
    (b"\xff", "m.json: cannot be read as JSON"),
    (" " * (1 << 20) + "{}", "m.json: 1048578 bytes"),
])
def test_what_is_not_a_mud_document_is_rejected(text: str | bytes, problem: str) -> None:
    with pytest.raises(MudError) as err:
        import_mud(text, "m.json", "m")
    assert err.value.problems[0].startswith(problem), err.value.problems


def test_a_mud_file_without_from_device_policy_allows_nothing() -> None:
    doc = mud_doc()
    del doc["ietf-mud:mud"]["from-device-policy"]
    imported = import_mud(json.dumps(doc), "m.json", "m")
    assert imported.profile.allow == ()
    assert any("no from-device-policy" in n for n in imported.notes)


def test_load_mud_names_the_profile_after_the_file(tmp_path: Path) -> None:
    path = tmp_path / "Acme Cam v2.json"
    path.write_text(MUD_FILE.read_text())
    assert load_mud(path).profile.name == "acme-cam-v2"
    with pytest.raises(MudError, match="cannot read"):
        load_mud(tmp_path / "missing.json")
    with pytest.raises(MudError, match="profile name"):
        import_mud(MUD_FILE.read_text(), "m.json", "Not Valid")
