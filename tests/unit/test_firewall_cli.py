"""`home-gateway firewall render` and `import-mud`: what an admin runs before the daemon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.firewall.profiles import load_profile
from gateway.firewall.render import count_rules
from gateway.store import Store

MUD = Path(__file__).parent / "mud" / "thermostat.json"


def write_config(tmp_path: Path, network: str) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n'
                      '[[broker.listeners]]\naddress = "127.0.0.1"\nport = 1883\n'
                      f'[firewall]\nprofiles_dir = "{tmp_path / "profiles"}"\n{network}')
    return config


NETWORK = """[network]
uplink = "eth0"
iot = "wlan0"
iot_subnets = ["192.168.50.0/24"]
lan_subnets = ["192.168.1.0/24"]
"""


def test_render_prints_the_ruleset_with_the_registry_devices(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, NETWORK)
    assert main(["firewall", "render", "--config", str(config)]) == 0
    empty = capsys.readouterr().out
    assert "no device registry" in empty and "table inet home_gateway {" in empty

    (tmp_path / "state").mkdir()
    store = Store(tmp_path / "state" / "gateway.db")
    store.add_device("hall-cam", "Hall", "camera", status="adopted", source="cli",
                     ip="192.168.50.9")
    store.set_device_policy("hall-cam", "restricted", None)
    store.close()
    assert main(["firewall", "render", "--config", str(config)]) == 0
    script = capsys.readouterr().out
    assert '192.168.50.9 comment "hall-cam" : goto egress_restricted' in script
    assert count_rules(script) == count_rules(empty), "devices are elements, not rules"


def test_render_without_an_uplink_says_there_is_nothing_to_render(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "")
    assert main(["firewall", "render", "--config", str(config)]) == 2
    assert "network.uplink is not set" in capsys.readouterr().err


def test_a_mud_file_becomes_a_profile_in_the_profiles_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, NETWORK)
    assert main(["firewall", "import-mud", str(MUD), "--name", "t200",
                 "--config", str(config)]) == 0
    out = capsys.readouterr()
    target = tmp_path / "profiles" / "t200.toml"
    assert f"wrote {target}" in out.out
    assert "direction-initiated to-device" in out.err  # what was left out, and why
    profile = load_profile(target)
    assert any(a.host == "api.thermo.example" for a in profile.allow)
    assert main(["firewall", "render", "--config", str(config)]) == 0  # it loads


def test_a_malformed_mud_file_is_refused_with_the_json_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(MUD.read_text())
    acl = doc["ietf-access-control-list:acls"]["acl"][0]
    acl["aces"]["ace"][0]["matches"]["ipv4"]["protocol"] = "six"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    assert main(["firewall", "import-mud", str(bad), "--output", "-"]) == 2
    err = capsys.readouterr().err
    assert "$.ietf-access-control-list:acls.acl[0].aces.ace[0].matches" in err
