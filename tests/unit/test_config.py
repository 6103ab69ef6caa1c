"""gateway.config: the typed result, the defaults, and one exact line per problem."""

from __future__ import annotations

import dataclasses
import pickle
import time
from datetime import timedelta
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import (
    DEFAULT_CONFIG_PATH,
    BrokerConfig,
    CloudConfig,
    Config,
    ConfigError,
    CredentialsConfig,
    DeviceDecl,
    DiscoveryConfig,
    ExternalBroker,
    FirewallConfig,
    GatewayConfig,
    HomeAssistantConfig,
    Listener,
    NetworkConfig,
    PrivacyConfig,
    SchedulesConfig,
    TelemetryConfig,
    WebConfig,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "bad_configs"
CASES = sorted(p.stem for p in CORPUS.glob("*.toml"))

MINIMAL = """\
[gateway]
state_dir = "/tmp/x"
[[broker.listeners]]
address = "127.0.0.1"
port = 1883
"""
LISTENER = '[[broker.listeners]]\naddress = "127.0.0.1"\nport = 1883\n'


def problems(text: str, path: str = "<string>") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path)
    return info.value.problems


# --- the corpus of bad files ----------------------------------------------------------------


def test_corpus_is_complete() -> None:
    assert len(CASES) >= 18
    expected = sorted(p.stem for p in CORPUS.glob("*.expected"))
    assert expected == CASES, "every NAME.toml needs a NAME.expected and vice versa"


@pytest.mark.parametrize("name", CASES)
def test_bad_config(name: str) -> None:
    path = CORPUS / f"{name}.toml"
    expected = (CORPUS / f"{name}.expected").read_text(encoding="utf-8").splitlines()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    got = [line.replace(str(path), "PATH") for line in info.value.problems]
    assert sorted(got) == sorted(line for line in expected if line)
    assert str(info.value) == "\n".join(info.value.problems)


# --- valid files --------------------------------------------------------------------------


def test_minimal_config_gets_the_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config == Config(
        gateway=GatewayConfig(state_dir=Path("/tmp/x"), runtime_dir=None, log_level="info"),
        broker=BrokerConfig(
            mode="embedded",
            executable="/usr/sbin/mosquitto",
            max_packet_size=1048576,
            listeners=(Listener(address="127.0.0.1", port=1883, tls=False),),
            external=None,
        ),
        credentials=CredentialsConfig(rotation_days=30, ack_timeout_s=600,
                                      offline_wait_s=604800, retry_initial_s=300,
                                      alert_after=3, enrollment_minutes=15),
        web=WebConfig(listen=(), tls="auto"),
        telemetry=TelemetryConfig(
            max_payload_bytes=16384,
            history_size=360,
            max_future_skew_s=300,
            max_age_s=86400,
            invalid_audit_interval_s=60,
        ),
        network=NetworkConfig(uplink=None, iot=None, iot_subnets=(), lan_subnets=()),
        firewall=FirewallConfig(mode="enforce", nft="/usr/sbin/nft",
                                profiles_dir=Path("/etc/home-gateway/profiles"),
                                log_per_minute=10, check_interval_s=30),
        cloud=CloudConfig(host=None, port=8883, gateway_id=None, ca_file=None, username=None,
                          password_file=None, cert_file=None, key_file=None, keepalive_s=60,
                          command_timeout_s=10, max_clock_skew_s=60,
                          max_command_lifetime_s=3600, telemetry=False,
                          telemetry_interval_s=60, spool_max_bytes=16777216,
                          spool_max_age_s=604800, backoff_initial_s=1, backoff_max_s=300,
                          signers=()),
        schedules=SchedulesConfig(timezone=None, missed_grace_s=900),
        privacy=PrivacyConfig(
            region="ZZ", recipient="the device maker named by your installer", sink="file",
            directory=None, url=None, ca_file=None, window_s=21600, retry_initial_s=60,
            retry_max_s=21600, timeout_s=30,
            epsilon={c: Fraction(1, 10) for c in ("inventory", "usage", "energy", "comfort")},
            week_cap=Fraction(1), year_cap=Fraction(26), link_reports=False,
            pseudonym_epoch_days=30),
        homeassistant=HomeAssistantConfig(enabled=True, prefix="homeassistant", broker="gateway",
                                          external=None, name="Home Gateway",
                                          republish_jitter_s=5),
        discovery=DiscoveryConfig(mdns=True, dhcp=True,
                                  dhcp_leases=Path("/var/lib/misc/dnsmasq.leases")),
        devices=(),
        source=Path("<string>"),
    )
    assert config.cloud.url is None  # no link unless asked for


def test_privacy_budgets_stay_exact() -> None:
    config = parse_config(LISTENER + """
[privacy]
region = "DE-BY"
sink = "https"
url = "https://collect.example.com/reports"
week_cap = "1/3"
year_cap = 17
[privacy.epsilon]
usage = 0.3
energy = "1/7"
""")
    p = config.privacy
    assert p.epsilon["usage"] == Fraction(3, 10)  # the decimal as written, not a binary float
    assert p.epsilon["energy"] == Fraction(1, 7) and p.epsilon["comfort"] == Fraction(1, 10)
    assert p.week_cap == Fraction(1, 3) and p.year_cap == 17
    for bad in ('"http://collect.example.com"', '"https://user:pw@host/x"', '"ftp://h"'):
        assert "privacy.url" in problems(LISTENER + f"[privacy]\nurl = {bad}\n")[0]


def test_cloud_link_and_signers() -> None:
    config = parse_config(LISTENER + """
[cloud]
url = "mqtts://[2001:db8::1]"
gateway_id = "home-1"
ca_file = "/etc/home-gateway/cloud-ca.pem"
cert_file = "gw.crt"
key_file = "gw.key"

[[cloud.signers]]
kid = "vendor-2026"
public_key = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
devices = ["bulb-*"]
actions = ["set_power"]
""")
    assert config.cloud.url == "mqtts://[2001:db8::1]:8883"
    assert config.cloud.host == "2001:db8::1"
    assert config.cloud.signers[0].devices == ("bulb-*",)
    assert config.cloud.signers[0].actions == ("set_power",)


def test_default_state_dir() -> None:
    assert parse_config(LISTENER).gateway.state_dir == Path("/var/lib/home-gateway")


def test_result_is_frozen() -> None:
    config = parse_config(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.broker.mode = "external"  # type: ignore[misc]


def test_shipped_config_loads_with_safe_defaults() -> None:
    path = REPO / "config" / "gateway.toml"
    shipped = load_config(path)
    defaults = parse_config(LISTENER)
    assert shipped.source == path
    assert shipped.gateway == dataclasses.replace(defaults.gateway,
                                                  runtime_dir=Path("/run/home-gateway"))
    # Not 1883: Debian's stock mosquitto.service has 127.0.0.1:1883.
    assert shipped.broker == dataclasses.replace(
        defaults.broker, listeners=(Listener("127.0.0.1", 1884, False),))
    assert shipped.web == WebConfig(listen=("127.0.0.1:8080",), tls="auto")
    assert shipped.telemetry == defaults.telemetry
    assert shipped.privacy == defaults.privacy  # no consent lives in the config file
    assert shipped.devices == ()


def test_shipped_config_examples_are_valid() -> None:
    """Uncommenting the examples gives a valid config (external mode needs the table)."""
    text = (REPO / "config" / "gateway.toml").read_text(encoding="utf-8")
    shipped, example = '\nlisten = ["127.0.0.1:8080"] ', '\n# listen = ["127.0.0.1:8080", '
    assert shipped in text and example in text
    text = text.replace(shipped, "\n# shipped: ").replace(example, example.replace("# ", ""))
    example_devices = text[text.index("# [[devices]]") :]
    text += "\n" + "\n".join(line.removeprefix("# ") for line in example_devices.splitlines())
    config = parse_config(text)
    assert config.gateway.runtime_dir == Path("/run/home-gateway")
    assert config.web.listen == ("127.0.0.1:8080", "192.168.1.2:8443")
    assert [d.id for d in config.devices] == ["living-room-thermostat"]


def test_default_config_path() -> None:
    assert Path("/etc/home-gateway/gateway.toml") == DEFAULT_CONFIG_PATH


def test_everything_set() -> None:
    config = parse_config(
        """
        [gateway]
        state_dir = "/srv/gw"
        runtime_dir = "/run/gw"
        log_level = "debug"

        [broker]
        mode = "external"
        executable = "/opt/mosquitto"
        max_packet_size = 1024

        [broker.external]
        host = "mqtt.example.net"
        username = "gw"
        password_file = "/etc/gw/pw"
        ca_file = "/etc/gw/ca.pem"

        [web]
        listen = ["127.0.0.1:8080", "[::1]:8443", "localhost:9000"]

        [telemetry]
        max_payload_bytes = 64
        history_size = 100000
        max_future_skew_s = 0
        max_age_s = 31536000
        invalid_audit_interval_s = 86400

        [[devices]]
        id = "thermo-1"
        name = "Hall"
        kind = "thermostat"
        mac = "AA:BB:CC:DD:EE:0F"
        ip = "192.168.50.20"

        [[devices]]
        id = "cam-1"
        kind = "camera"
        ip = "FE80:0::1"
        """
    )
    assert config.gateway == GatewayConfig(Path("/srv/gw"), Path("/run/gw"), "debug")
    assert config.broker == BrokerConfig(
        mode="external",
        executable="/opt/mosquitto",
        max_packet_size=1024,
        listeners=(),
        external=ExternalBroker(
            host="mqtt.example.net",
            port=8883,
            username="gw",
            password_file=Path("/etc/gw/pw"),
            tls=True,
            ca_file=Path("/etc/gw/ca.pem"),
        ),
    )
    assert config.web.listen == ("127.0.0.1:8080", "[::1]:8443", "localhost:9000")
    assert config.telemetry == TelemetryConfig(64, 100000, 0, 31536000, 86400)
    assert config.devices == (
        DeviceDecl("thermo-1", "Hall", "thermostat", "aa:bb:cc:dd:ee:0f", "192.168.50.20", None,
                   None, None),
        DeviceDecl("cam-1", "cam-1", "camera", None, "fe80::1", None, None, None),
    )


@pytest.mark.parametrize(("tls", "port"), [("true", 8883), ("false", 1883)])
def test_external_port_default_follows_tls(tls: str, port: int) -> None:
    config = parse_config(
        f'[broker]\nmode = "external"\n[broker.external]\nhost = "h"\nusername = "u"\n'
        f'password_file = "/p"\ntls = {tls}\n'
    )
    assert config.broker.external is not None
    assert config.broker.external.port == port
    assert config.broker.external.ca_file is None


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("aa:bb:cc:dd:ee:ff", "aa:bb:cc:dd:ee:ff"),
        ("AA:BB:CC:DD:EE:FF", "aa:bb:cc:dd:ee:ff"),
        ("aa-bb-cc-dd-ee-ff", "aa:bb:cc:dd:ee:ff"),
        ("0A-1b-2C-3d-4E-5f", "0a:1b:2c:3d:4e:5f"),
    ],
)
def test_mac_is_normalised(written: str, stored: str) -> None:
    config = parse_config(
        f'{LISTENER}[[devices]]\nid = "plug-1"\nkind = "plug"\nmac = "{written}"\n'
    )
    assert config.devices[0].mac == stored


def test_addresses_are_normalised() -> None:
    config = parse_config(
        '[[broker.listeners]]\naddress = "0:0:0:0:0:0:0:1"\nport = 1883\n'
        '[[devices]]\nid = "plug-1"\nkind = "plug"\nip = "2001:DB8::0:1"\n'
    )
    assert config.broker.listeners[0].address == "::1"
    assert config.devices[0].ip == "2001:db8::1"


def test_device_name_defaults_to_id() -> None:
    config = parse_config(f'{LISTENER}[[devices]]\nid = "plug-1"\nkind = "plug"\n')
    assert config.devices[0] == DeviceDecl("plug-1", "plug-1", "plug", None, None, None, None,
                                           None)


def test_listeners_ignored_by_external_mode_are_allowed() -> None:
    config = parse_config(
        f'{LISTENER}[broker]\nmode = "external"\n[broker.external]\nhost = "h"\n'
        'username = "u"\npassword_file = "/p"\n'
    )
    assert config.broker.mode == "external"


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc" / "home-gateway"
    folder.mkdir(parents=True)
    path = folder / "gateway.toml"
    path.write_text(
        f'[gateway]\nstate_dir = "state"\nruntime_dir = "../run"\n{LISTENER}'
        '[broker.external]\nhost = "h"\nusername = "u"\npassword_file = "pw"\n'
        'ca_file = "/abs/ca.pem"\n'
        '[broker]\nmode = "external"\n',
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.gateway.state_dir == folder / "state"
    assert config.gateway.runtime_dir == folder / "../run"
    assert config.broker.external is not None
    assert config.broker.external.password_file == folder / "pw"
    assert config.broker.external.ca_file == Path("/abs/ca.pem")


def test_relative_path_given_as_relative_config_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "gateway.toml").write_text(
        f'[gateway]\nstate_dir = "state"\n{LISTENER}', encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    config = load_config("conf/gateway.toml")
    assert config.gateway.state_dir == tmp_path / "conf" / "state"
    assert config.source == Path("conf/gateway.toml")


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_config(path).gateway.state_dir == Path("/tmp/x")


# --- unreadable files -----------------------------------------------------------------------


def test_cannot_read_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.problems == [
        f"{tmp_path}: cannot read: is a directory (expected a readable UTF-8 file)"
    ]


def test_cannot_read_a_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}: cannot read: no such file or directory (expected a readable UTF-8 file)"
    ]


def test_cannot_read_a_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[gateway]\nstate_dir = "/tmp/caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}: cannot read: not valid UTF-8 (byte 31) (expected a readable UTF-8 file)"
    ]


def test_cannot_read_a_path_with_nul(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(f"{tmp_path}/a\0b")
    assert info.value.problems[0].endswith("(expected a readable UTF-8 file)")
    assert ": cannot read: " in info.value.problems[0]


# --- messages -------------------------------------------------------------------------------


def test_path_is_shown_as_given() -> None:
    assert problems("", "etc/gw.toml") == [
        "etc/gw.toml:broker.listeners: missing (expected at least one [[broker.listeners]] "
        'table when broker.mode = "embedded")'
    ]


def test_empty_file_is_invalid_only_for_the_missing_listener() -> None:
    assert problems("") == [
        "<string>:broker.listeners: missing (expected at least one [[broker.listeners]] "
        'table when broker.mode = "embedded")'
    ]


def test_syntax_error_without_position() -> None:
    assert problems("a = " + "1" * 5000) == [
        "<string>: TOML syntax error: Exceeds the limit (4300 digits) for integer string "
        "conversion (expected valid TOML)"
    ]
    assert problems("a = " + "[" * 100_000) == [
        "<string>: TOML syntax error: nested too deeply (expected valid TOML)"
    ]


def test_odd_keys_and_values_stay_on_one_line() -> None:
    lines = problems(f'"we\\nird\\"key" = 1\n{LISTENER}[broker]\nmode = "a\\u2028b{"x" * 100}"\n')
    assert lines == [
        '<string>:"we\\nird\\"key": unknown key '
        "(expected one of: broker, cloud, credentials, devices, discovery, firewall, gateway, "
        "homeassistant, network, privacy, schedules, telemetry, web)",
        '<string>:broker.mode: "a\\u2028b' + "x" * 57 + '"... is not allowed '
        '(expected one of: "embedded", "external")',
    ]


def test_values_of_secret_keys_are_hidden() -> None:
    from gateway.config import _show

    assert _show("hunter2", "broker.external.password") == "(hidden)"
    assert _show("hunter2", "web.api_token") == "(hidden)"
    assert _show("/etc/pw", "broker.external.password_file") == '"/etc/pw"'
    lines = problems(
        '[broker]\nmode = "external"\n[broker.external]\nhost = "h"\nusername = "u"\n'
        'password_file = "/p"\npassword = "hunter2"\n'
    )
    assert not any("hunter2" in line for line in lines)


def test_config_error_survives_pickle() -> None:
    error = ConfigError(["a: one (expected x)", "a: two (expected y)"])
    copy = pickle.loads(pickle.dumps(error))
    assert copy.problems == error.problems
    assert str(copy) == "a: one (expected x)\na: two (expected y)"


def test_many_problems_are_quick() -> None:
    text = LISTENER + "".join(
        f'[[devices]]\nid = "Device {i}"\nkind = "kind-{i}"\nmac = "{i}"\nunknown_{i} = 1\n'
        for i in range(2000)
    )
    start = time.monotonic()
    lines = problems(text)
    assert time.monotonic() - start < 5
    assert len(lines) == 4 * 2000


# --- properties -----------------------------------------------------------------------------


def check_outcome(text: str) -> None:
    """parse_config returns a Config or raises ConfigError with well-formed lines."""
    try:
        parse_config(text)
    except ConfigError as error:
        assert error.problems
        for line in error.problems:
            assert line.startswith("<string>:")
            assert "\n" not in line and "\r" not in line
            assert "(expected " in line


@settings(max_examples=300, deadline=timedelta(seconds=1), database=None)
@given(st.text())
def test_arbitrary_text_gives_config_error_only(text: str) -> None:
    check_outcome(text)


FRAGMENTS = [
    "[gateway]",
    "[broker]",
    "[[broker.listeners]]",
    "[broker.external]",
    "[web]",
    "[telemetry]",
    "[[devices]]",
    "[mqtt]",
    'address = "127.0.0.1"',
    'address = "::1"',
    'address = "localhost"',
    "port = 1883",
    'port = "1883"',
    "port = 0",
    "port = true",
    "tls = true",
    'mode = "external"',
    'mode = "embeded"',
    'host = "mqtt.example.net"',
    'username = "gw"',
    'password_file = "pw"',
    'id = "plug-1"',
    'id = "Bad Id"',
    'kind = "plug"',
    'kind = "toaster"',
    'mac = "AA-BB-CC-DD-EE-FF"',
    'mac = "nope"',
    'ip = "10.0.0.5"',
    'listen = ["127.0.0.1:8080", "garbage", 5]',
    "history_size = 10",
    "max_age_s = 5",
    'state_dir = "state"',
    'log_level = "info"',
    "listeners = 5",
    "devices = []",
    "external = {}",
    "x = 1",
    "= broken",
]


@settings(max_examples=300, deadline=timedelta(seconds=1), database=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30))
def test_config_like_text_gives_config_or_config_error(lines: list[str]) -> None:
    check_outcome("\n".join(lines))
