"""What the gateway announces on which address, and how sightings match known devices."""

from __future__ import annotations

from dataclasses import replace

from gateway.config import parse_config
from gateway.discovery.service import matches, plan
from gateway.homeassistant.bridge import parse_set_topic
from gateway.store import Device, Discovered

CONFIG = """
[[broker.listeners]]
address = "127.0.0.1"
port = 1883
tls = false
[[broker.listeners]]
address = "192.168.50.1"
port = 8883
[[broker.listeners]]
address = "192.168.50.1"
port = 1883
tls = false
[[broker.listeners]]
address = "192.168.1.2"
port = 8884
[web]
listen = ["127.0.0.1:8080", "192.168.1.2:8443"]
[network]
uplink = "eth0"
iot = "wlan0"
iot_subnets = ["192.168.50.0/24"]
lan_subnets = ["192.168.1.0/24"]
"""


def test_each_service_is_announced_only_on_its_own_side() -> None:
    adverts, browse = plan(parse_config(CONFIG), "pi")
    announced = {(address, a.type, a.port) for address, a in adverts}
    assert announced == {
        ("192.168.1.2", "_home-gateway._tcp.local.", 8443),  # the admin page: LAN side
        ("192.168.50.1", "_secure-mqtt._tcp.local.", 8883),  # the broker: IoT side
        ("192.168.50.1", "_mqtt._tcp.local.", 1883),
    }
    assert browse == ["192.168.50.1"]  # only the IoT segment is browsed


def test_a_default_config_announces_nothing() -> None:
    adverts, browse = plan(parse_config(CONFIG.split("[web]")[0].split("[[broker.listeners]]\n"
                                                                       "address = \"192")[0]),
                           "pi")
    assert (adverts, browse) == ([], [])


def _device(id: str, mac: str | None, ip: str | None) -> Device:
    return Device(id=id, name=id, kind="plug", status="adopted", source="web", mac=mac, ip=ip,
                  created_at=0, first_seen=None, last_seen=None, invalid_messages=0, state={},
                  cred_version=0, model=None, firmware=None, rotation_days=None,
                  rotated_at=None, rotation_failures=0, rotation_retry_at=None,
                  rotation_result="", policy="quarantine", profile=None)


def test_sightings_match_known_devices_by_mac_or_address() -> None:
    devices = [_device("plug-1", "02:00:00:00:00:01", "192.168.50.11"),
               _device("cam-1", None, "192.168.50.12 fd50::12")]
    seen = Discovered(key="mdns:x", source="mdns", name="x", type="_http._tcp.local.",
                      addresses=("fd50::12",), port=80, txt={}, mac=None, hostname=None,
                      first_seen=0, last_seen=0, present=True)
    assert matches(seen, devices) == "cam-1"
    lease = replace(seen, key="dhcp:02:00:00:00:00:01", addresses=("192.168.50.99",),
                    mac="02:00:00:00:00:01")
    assert matches(lease, devices) == "plug-1"
    assert matches(replace(seen, addresses=("192.168.50.77",)), devices) is None


def test_set_topics_are_parsed_strictly() -> None:
    assert parse_set_topic("home-gateway/plug-1/on/set") == ("plug-1", "on")
    for bad in ("home-gateway/plug-1/on", "home-gateway/Plug/on/set", "home-gateway//on/set",
                "home-gateway/plug-1//set", "x/plug-1/on/set", "home-gateway/plug-1/a/b/set"):
        assert parse_set_topic(bad) is None, bad
