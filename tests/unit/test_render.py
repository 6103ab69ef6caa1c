"""gateway.broker.render and gateway.devices.topics: the broker's config, its auth file and the
device topic contract they enforce."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.broker.render import (
    GATEWAY_ROLE,
    GATEWAY_USERNAME,
    BrokerFiles,
    ListenerSpec,
    certificate_addresses,
    client_address,
    gateway_acls,
    render_dynsec,
    render_mosquitto_conf,
)
from gateway.credentials.pki import TLS12_CIPHERS
from gateway.credentials.secrets import PasswordHash, hash_password
from gateway.devices.topics import (
    DEVICE_RECEIVES,
    DEVICE_SENDS,
    device_acls,
    device_topic,
    parse_device_topic,
)
from gateway.store import Credential, Enrollment

PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
GATEWAY_SECRET = "gateway-secret-Zq81xPxkL0aa"
DEVICE_SECRETS = {"kitchen-plug": "plug-secret-Hh72kk1pQ", "hall-door": "door-secret-99aZbQ"}


def conf_lines(tmp_path: Path, listeners: list[ListenerSpec], *, run_as_root: bool = False,
               max_packet_size: int = 65536) -> list[str]:
    text = render_mosquitto_conf(BrokerFiles(tmp_path), listeners, max_packet_size, PLUGIN,
                                 run_as_root)
    assert text.endswith("\n")
    return text.splitlines()


# --- mosquitto.conf --------------------------------------------------------------------------


def test_conf_is_closed_and_self_contained(tmp_path: Path) -> None:
    lines = conf_lines(tmp_path, [ListenerSpec("127.0.0.1", 1883, False)], max_packet_size=4242)
    assert "allow_anonymous false" in lines
    assert "per_listener_settings false" in lines
    assert "allow_anonymous true" not in lines
    assert f"plugin {PLUGIN}" in lines
    assert f"plugin_opt_config_file {tmp_path / 'dynamic-security.json'}" in lines
    assert "max_packet_size 4242" in lines
    assert "persistence true" in lines
    [location] = [line for line in lines if line.startswith("persistence_location ")]
    assert Path(location.split(" ", 1)[1]) == tmp_path
    assert "user root" not in lines
    assert [line for line in lines if line.startswith("listener")] == ["listener 1883 127.0.0.1"]


def test_one_listener_line_per_listener(tmp_path: Path) -> None:
    listeners = [ListenerSpec("127.0.0.1", 1883, False), ListenerSpec("::1", 1884, False),
                 ListenerSpec("192.168.50.1", 8883, False), ListenerSpec("::", 1885, False)]
    lines = conf_lines(tmp_path, listeners)
    assert [line for line in lines if line.startswith("listener")] == [
        "listener 1883 127.0.0.1", "listener 1884 ::1", "listener 8883 192.168.50.1",
        "listener 1885 ::"]


def test_run_as_root_adds_user_root(tmp_path: Path) -> None:
    lines = conf_lines(tmp_path, [ListenerSpec("127.0.0.1", 1883, False)], run_as_root=True)
    assert lines.count("user root") == 1


def test_tls_listener_gets_its_certificate(tmp_path: Path) -> None:
    listeners = [ListenerSpec("127.0.0.1", 1883, False), ListenerSpec("10.0.0.1", 8883, True),
                 ListenerSpec("::1", 1884, False)]
    lines = conf_lines(tmp_path, listeners)
    start = lines.index("listener 8883 10.0.0.1")
    assert lines[start + 1:start + 6] == [
        "max_connections 1000",
        f"certfile {tmp_path / 'server.crt'}", f"keyfile {tmp_path / 'server.key'}",
        "tls_version tlsv1.2", f"ciphers {TLS12_CIPHERS}"]
    assert lines[start + 6] == "listener 1884 ::1"
    assert sum(line.startswith(("certfile", "keyfile")) for line in lines) == 2


def test_plain_listeners_have_no_tls(tmp_path: Path) -> None:
    lines = conf_lines(tmp_path, [ListenerSpec("127.0.0.1", 1883, False)])
    assert not [line for line in lines if line.startswith(("certfile", "keyfile", "tls_"))]


def test_certificate_addresses() -> None:
    assert certificate_addresses([ListenerSpec("127.0.0.1", 1883, False)]) == [
        "127.0.0.1", "::1"]
    listeners = [ListenerSpec("0.0.0.0", 8883, True), ListenerSpec("192.168.50.1", 8884, True),
                 ListenerSpec("10.9.9.9", 1883, False), ListenerSpec("::", 8885, True)]
    assert certificate_addresses(listeners) == ["127.0.0.1", "192.168.50.1", "::1"]


def test_client_address() -> None:
    assert client_address(ListenerSpec("0.0.0.0", 1883, False)) == "127.0.0.1"
    assert client_address(ListenerSpec("::", 1883, False)) == "::1"
    assert client_address(ListenerSpec("192.168.50.1", 1883, False)) == "192.168.50.1"
    assert client_address(ListenerSpec("::1", 1883, False)) == "::1"
    assert client_address(ListenerSpec("fd00:0::1", 1883, False)) == "fd00::1"


# --- dynamic-security.json -------------------------------------------------------------------


def credential(device_id: str, version: int = 1) -> Credential:
    return Credential(f"{device_id}.{version}", device_id,
                      hash_password(DEVICE_SECRETS[device_id]), 0.0, version, "active")


@pytest.fixture
def dynsec_text() -> str:
    return render_dynsec(hash_password(GATEWAY_SECRET),
                         [credential("kitchen-plug", 3), credential("hall-door")])


@pytest.fixture
def dynsec(dynsec_text: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(dynsec_text)
    return document


def client(doc: dict[str, Any], username: str) -> dict[str, Any]:
    [found] = [c for c in doc["clients"] if c["username"] == username]
    return found


def role(doc: dict[str, Any], rolename: str) -> dict[str, Any]:
    [found] = [r for r in doc["roles"] if r["rolename"] == rolename]
    return found


def expected_device_acls(device_id: str, version: int) -> set[tuple[str, str, bool]]:
    acls = {("publishClientSend", f"devices/{device_id}/{leaf}", True)
            for leaf in ("telemetry", "state", "cmd/result", f"creds/ack/{version}")}
    for leaf in ("cmd", "creds"):
        acls.add(("subscribeLiteral", f"devices/{device_id}/{leaf}", True))
        acls.add(("publishClientReceive", f"devices/{device_id}/{leaf}", True))
    return acls


def test_default_access_is_deny(dynsec: dict[str, Any]) -> None:
    default = dynsec["defaultACLAccess"]
    assert default["publishClientSend"] is False
    assert default["publishClientReceive"] is False
    assert default["subscribe"] is False


def test_gateway_client_has_gateway_role(dynsec: dict[str, Any]) -> None:
    gw = client(dynsec, GATEWAY_USERNAME)
    assert gw["roles"] == [{"rolename": GATEWAY_ROLE}]
    assert PasswordHash(gw["password"], gw["salt"], gw["iterations"]).verify(GATEWAY_SECRET)
    acls = {(a["acltype"], a["topic"]) for a in role(dynsec, GATEWAY_ROLE)["acls"]}
    for acltype in ("publishClientSend", "publishClientReceive", "subscribePattern"):
        assert (acltype, "#") in acls
        assert (acltype, "$CONTROL/dynamic-security/#") in acls
    assert role(dynsec, GATEWAY_ROLE)["acls"] == gateway_acls()


@pytest.mark.parametrize(("device_id", "version"), [("kitchen-plug", 3), ("hall-door", 1)])
def test_device_role_is_exactly_its_own_topics(dynsec: dict[str, Any], device_id: str,
                                               version: int) -> None:
    """Each login has its own role: the device's topics plus the ack only it may send."""
    username = f"{device_id}.{version}"
    dev = client(dynsec, username)
    assert dev["roles"] == [{"rolename": f"login:{username}"}]
    assert dev["clientid"] == device_id
    acls = role(dynsec, f"login:{username}")["acls"]
    got = [(a["acltype"], a["topic"], a["allow"]) for a in acls]
    assert len(got) == len(set(got))
    assert set(got) == expected_device_acls(device_id, version)
    for acl in acls:
        assert "#" not in acl["topic"] and "+" not in acl["topic"]
        assert acl["acltype"] != "subscribePattern"


def test_roles_and_clients_match_credentials(dynsec: dict[str, Any]) -> None:
    assert sorted(c["username"] for c in dynsec["clients"]) == sorted(
        [GATEWAY_USERNAME, "kitchen-plug.3", "hall-door.1"])
    assert sorted(r["rolename"] for r in dynsec["roles"]) == sorted(
        [GATEWAY_ROLE, "login:kitchen-plug.3", "login:hall-door.1"])


def test_two_logins_of_one_device_differ_only_in_their_ack() -> None:
    doc = json.loads(render_dynsec(hash_password(GATEWAY_SECRET),
                                   [credential("hall-door", 1), credential("hall-door", 2)]))
    one = {a["topic"] for a in role(doc, "login:hall-door.1")["acls"]}
    two = {a["topic"] for a in role(doc, "login:hall-door.2")["acls"]}
    assert one ^ two == {"devices/hall-door/creds/ack/1", "devices/hall-door/creds/ack/2"}


def test_enrollment_login_may_only_say_hello_and_hear_its_answer() -> None:
    enrollment = Enrollment("0a1b2c3d4e", hash_password("token-secret"), None, None, "admin",
                            0.0, 900.0, "open", 0)
    doc = json.loads(render_dynsec(hash_password(GATEWAY_SECRET), [], [enrollment]))
    login = client(doc, "enroll:0a1b2c3d4e")
    assert login["clientid"] == "enroll:0a1b2c3d4e"  # no takeover of another's session
    assert PasswordHash(login["password"], login["salt"], login["iterations"]).verify(
        "token-secret")
    acls = {(a["acltype"], a["topic"]) for a in role(doc, "login:enroll:0a1b2c3d4e")["acls"]}
    assert acls == {("publishClientSend", "enroll/0a1b2c3d4e/hello"),
                    ("subscribeLiteral", "enroll/0a1b2c3d4e/creds"),
                    ("publishClientReceive", "enroll/0a1b2c3d4e/creds")}
    assert "token-secret" not in json.dumps(doc)


def test_no_plaintext_password(dynsec_text: str, dynsec: dict[str, Any]) -> None:
    for secret in (GATEWAY_SECRET, *DEVICE_SECRETS.values()):
        assert secret not in dynsec_text
    for device_id, secret in DEVICE_SECRETS.items():
        [dev] = [c for c in dynsec["clients"] if c["username"].startswith(device_id + ".")]
        stored = PasswordHash(dev["password"], dev["salt"], dev["iterations"])
        assert stored.verify(secret)
        assert not stored.verify(GATEWAY_SECRET)


def test_no_devices_renders_gateway_only() -> None:
    doc = json.loads(render_dynsec(hash_password(GATEWAY_SECRET), []))
    assert [c["username"] for c in doc["clients"]] == [GATEWAY_USERNAME]
    assert [r["rolename"] for r in doc["roles"]] == [GATEWAY_ROLE]


# --- topics ----------------------------------------------------------------------------------


def test_device_acls_have_no_wildcards_and_cover_the_contract() -> None:
    acls = device_acls("abc", 7)
    assert {(a["acltype"], a["topic"], a["allow"])
            for a in acls} == expected_device_acls("abc", 7)
    assert all("#" not in str(a["topic"]) and "+" not in str(a["topic"]) for a in acls)
    assert set(DEVICE_SENDS) == {"telemetry", "state", "cmd/result"}
    assert set(DEVICE_RECEIVES) == {"cmd", "creds"}


@pytest.mark.parametrize("leaf", ["telemetry", "state", "cmd/result", "creds/ack/1",
                                  "creds/ack/42"])
def test_parse_device_topic_accepts_device_leaves(leaf: str) -> None:
    assert parse_device_topic(device_topic("kitchen-plug", leaf)) == ("kitchen-plug", leaf)
    assert parse_device_topic(f"devices/abc/{leaf}") == ("abc", leaf)
    assert parse_device_topic(f"devices/{'a' * 40}/{leaf}") == ("a" * 40, leaf)


@pytest.mark.parametrize("topic", [
    "devices/x-y-z/cmd",  # gateway -> device
    "devices/x-y-z/creds",  # gateway -> device
    "devices/ab/telemetry",  # id too short
    f"devices/{'a' * 41}/telemetry",  # id too long
    "devices/Kitchen/telemetry",  # uppercase
    "devices/kit_chen/telemetry",  # underscore
    "devices/kit.chen/telemetry",
    "devices/+/telemetry",
    "devices/#",
    "devices//telemetry",
    "devices/abc/telemetry/extra",  # extra level
    "devices/abc/cmd/result/x",
    "devices/abc/state/",
    "devices/abc",
    "devices",
    "",
    "/devices/abc/telemetry",
    "device/abc/telemetry",
    "home-gateway/abc/state",
    "$CONTROL/dynamic-security/v1",
])
def test_parse_device_topic_rejects(topic: str) -> None:
    assert parse_device_topic(topic) is None


def test_parse_device_topic_rejects_newline_in_id() -> None:
    assert parse_device_topic("devices/abc\n/telemetry") is None
