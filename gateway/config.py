"""The gateway's TOML config file: read it, check every key, return typed settings.

The schema is declarative. Each table is a `Table` that maps its key names to a `Key`
(a value spec plus a default) and names the dataclass it builds. To add a setting, add one
`Key` to its table and a field to that table's dataclass; to add a table, declare a `Table`
and add it to `_ROOT`.

All problems are collected, never just the first, and reported one per line as
``PATH:KEY: problem (expected ...)``, where KEY is a dotted path such as
``broker.listeners[0].port``.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import re
import tomllib
import urllib.parse
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from gateway.cloud.envelope import load_public_key
from gateway.devices.kinds import KINDS

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "BrokerConfig",
    "CloudConfig",
    "Config",
    "ConfigError",
    "DeviceDecl",
    "ExternalBroker",
    "FirewallConfig",
    "GatewayConfig",
    "Listener",
    "NetworkConfig",
    "PrivacyConfig",
    "SchedulesConfig",
    "SignerDecl",
    "TelemetryConfig",
    "WebConfig",
    "is_loopback",
    "load_config",
    "parse_config",
    "split_listen",
]

DEFAULT_CONFIG_PATH = Path("/etc/home-gateway/gateway.toml")


class ConfigError(Exception):
    """The config cannot be used. `problems` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))

    def __reduce__(self) -> tuple[Any, ...]:  # keep `problems` intact through pickle
        return (type(self), (self.problems,))


# --- the typed result ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    state_dir: Path
    runtime_dir: Path | None  # None: decided at run time
    log_level: str


@dataclass(frozen=True, slots=True)
class Listener:
    address: str  # a normalized IPv4 or IPv6 literal
    port: int
    tls: bool


@dataclass(frozen=True, slots=True)
class ExternalBroker:
    host: str
    port: int
    username: str
    password_file: Path
    tls: bool
    ca_file: Path | None


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    mode: str  # "embedded" or "external"
    executable: str
    max_packet_size: int
    listeners: tuple[Listener, ...]
    external: ExternalBroker | None


@dataclass(frozen=True, slots=True)
class CredentialsConfig:
    rotation_days: int
    ack_timeout_s: int
    offline_wait_s: int
    retry_initial_s: int
    alert_after: int
    enrollment_minutes: int


@dataclass(frozen=True, slots=True)
class WebConfig:
    listen: tuple[str, ...]  # "host:port" strings, as written
    tls: str  # "auto" (TLS unless loopback) or "always"


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    max_payload_bytes: int
    history_size: int
    max_future_skew_s: int
    max_age_s: int
    invalid_audit_interval_s: int


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    uplink: str | None  # None: not configured, so there is nothing to firewall
    iot: str | None  # None: a single-homed Pi; only the Pi itself is protected
    iot_subnets: tuple[str, ...]  # normalized CIDRs, e.g. "192.168.50.0/24"
    lan_subnets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FirewallConfig:
    mode: str  # "enforce" or "render-only"
    nft: str  # the nft program
    profiles_dir: Path  # local profiles; a file here replaces a shipped one of its name
    log_per_minute: int
    check_interval_s: int  # how often the table is read back to find drift


@dataclass(frozen=True, slots=True)
class SignerDecl:
    kid: str
    public_key: str  # base64url of the raw 32-byte Ed25519 key, checked
    devices: tuple[str, ...]  # shell-style patterns of device ids
    actions: tuple[str, ...]  # shell-style patterns of actions


@dataclass(frozen=True, slots=True)
class CloudConfig:
    host: str | None  # None: no cloud link (local control and the signed local API remain)
    port: int
    gateway_id: str | None
    ca_file: Path | None
    username: str | None
    password_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    keepalive_s: int
    command_timeout_s: int
    max_clock_skew_s: int
    max_command_lifetime_s: int
    telemetry: bool
    telemetry_interval_s: int
    spool_max_bytes: int
    spool_max_age_s: int
    backoff_initial_s: int  # reconnect delays: full jitter under a ceiling that doubles
    backoff_max_s: int  # from backoff_initial_s up to backoff_max_s
    signers: tuple[SignerDecl, ...]

    @property
    def url(self) -> str | None:
        if self.host is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtts://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SchedulesConfig:
    timezone: str | None  # an IANA name; None: the system's (/etc/localtime)
    missed_grace_s: int


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    region: str  # ISO 3166 code, the finest place a report names; "ZZ": not stated
    recipient: str  # who receives the reports: the consent texts name them
    sink: str  # "file" (JSON Lines in `directory`) or "https" (POST to `url`)
    directory: Path | None  # None: <state_dir>/privacy/outbox
    url: str | None
    ca_file: Path | None  # the HTTPS sink's CA; None: the system's
    window_s: int  # a week's reports leave at a random moment within this after it closes
    retry_initial_s: int
    retry_max_s: int
    timeout_s: int
    epsilon: Mapping[str, Fraction]  # per category and week
    week_cap: Fraction  # ε per week across categories
    year_cap: Fraction  # ε per 365 days
    link_reports: bool  # reports carry a pseudonym that changes every epoch
    pseudonym_epoch_days: int


@dataclass(frozen=True, slots=True)
class HomeAssistantConfig:
    enabled: bool  # publish discovery, mirror states and take Home Assistant's commands
    prefix: str  # the discovery prefix Home Assistant listens on
    broker: str  # "gateway": Home Assistant logs in to the gateway's broker; "external"
    external: ExternalBroker | None  # Home Assistant's own broker, which the gateway joins
    name: str  # the gateway's device name in Home Assistant
    republish_jitter_s: int  # after Home Assistant's birth, wait a random 0..this


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    mdns: bool  # announce the gateway's services and browse the IoT segment
    dhcp: bool  # read dnsmasq's leases for the IoT segment's MACs, addresses and names
    dhcp_leases: Path


@dataclass(frozen=True, slots=True)
class DeviceDecl:
    id: str
    name: str
    kind: str
    mac: str | None  # lower-case, colon-separated
    ip: str | None  # normalized IPv4/IPv6 literals, space-separated
    rotation_days: int | None  # None: credentials.rotation_days
    policy: str | None  # None: as set on the admin page (new devices start quarantined)
    profile: str | None  # None: the profile named after the device's kind


@dataclass(frozen=True, slots=True)
class Config:
    gateway: GatewayConfig
    broker: BrokerConfig
    credentials: CredentialsConfig
    web: WebConfig
    telemetry: TelemetryConfig
    network: NetworkConfig
    firewall: FirewallConfig
    cloud: CloudConfig
    schedules: SchedulesConfig
    privacy: PrivacyConfig
    homeassistant: HomeAssistantConfig
    discovery: DiscoveryConfig
    devices: tuple[DeviceDecl, ...]
    source: Path


# --- reporting ----------------------------------------------------------------------------


class _Invalid(Exception):
    """Raised by `Spec.convert`: the value has the right type but is not acceptable."""


class _Bad:
    """Stands in for a value whose problem has been reported.

    A bad table keeps its parsed `values`, so checks across list items (duplicates) still
    see the good ones.
    """

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self.values: Mapping[str, Any] = values or {}


_BAD = _Bad()

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SECRET = re.compile(r"pass|secret|token|private", re.IGNORECASE)
_SHOW_MAX = 60  # longest value shown in a message, in characters
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class _Ctx:
    """What one parse needs besides the data: where the file is and the problems so far."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir  # relative paths in the file are relative to this
        self.problems: list[str] = []

    def report(self, key: str, problem: str, expected: str) -> None:
        self.problems.append(f"{self.source}:{key}: {problem} (expected {expected})")


def _quote(text: str) -> str:
    """`text` in double quotes, on one line, shortened when long."""
    out = []
    for ch in text[:_SHOW_MAX]:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"' + ("..." if len(text) > _SHOW_MAX else "")


def _join(prefix: str, name: str) -> str:
    """The dotted key path of `name` inside `prefix`, quoting names that need it."""
    part = name if _BARE_KEY.fullmatch(name) else _quote(name)
    return f"{prefix}.{part}" if prefix else part


def _show(value: Any, key: str = "") -> str:
    """`value` as it may appear in a message; hidden when `key` looks like a secret."""
    last = key.rsplit(".", 1)[-1]
    if _SECRET.search(last) and not last.endswith(("_file", "_dir", "_path")):
        return "(hidden)"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, datetime.date | datetime.time):
        text = value.isoformat()
    else:
        text = str(value)
    return text if len(text) <= _SHOW_MAX else text[:_SHOW_MAX] + "..."


def _describe(value: Any, key: str) -> str:
    """The TOML type of `value` and, for scalars, the value: 'string "1883"'."""
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    for cls, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (datetime.datetime, "date-time"),
        (datetime.date, "date"),
        (datetime.time, "time"),
    ):
        if isinstance(value, cls):
            return f"{name} {_show(value, key)}"
    return type(value).__name__


# --- value specs --------------------------------------------------------------------------


class Spec:
    """How one value is checked and converted.

    Subclasses set `types` (the TOML types accepted) and `expected` (what the message says
    after "expected"), and override `convert` to check the value and return what to store.
    """

    types: tuple[type, ...] = ()
    expected: str = ""

    def parse(self, value: Any, ctx: _Ctx, key: str) -> Any:
        """The converted value, or `_BAD` after reporting the problem."""
        if not isinstance(value, self.types) or (
            isinstance(value, bool) and bool not in self.types
        ):
            ctx.report(key, f"wrong type: got {_describe(value, key)}", self.expected)
            return _BAD
        try:
            return self.convert(value, ctx)
        except _Invalid as problem:
            ctx.report(key, f"{_show(value, key)} {problem}", self.expected)
            return _BAD

    def convert(self, value: Any, ctx: _Ctx) -> Any:
        return value


class Boolean(Spec):
    types = (bool,)
    expected = "true or false"


class Integer(Spec):
    types = (int,)

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self.expected = f"an integer from {low} to {high}"

    def convert(self, value: Any, ctx: _Ctx) -> Any:
        if not self.low <= value <= self.high:
            raise _Invalid("is out of range")
        return value


class Text(Spec):
    types = (str,)

    def __init__(self, expected: str, max_len: int = 1024, pattern: str | None = None) -> None:
        self.expected = expected
        self.max_len = max_len
        self.pattern = re.compile(pattern) if pattern else None

    def convert(self, value: Any, ctx: _Ctx) -> Any:
        if not value:
            raise _Invalid("is empty")
        if len(value) > self.max_len:
            raise _Invalid(f"is {len(value)} characters long")
        if self.pattern and not self.pattern.fullmatch(value):
            raise _Invalid("is not valid")
        return value


class Choice(Spec):
    types = (str,)

    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.expected = "one of: " + ", ".join(f'"{c}"' for c in choices)

    def convert(self, value: Any, ctx: _Ctx) -> Any:
        if value not in self.choices:
            raise _Invalid("is not allowed")
        return value


class FilePath(Spec):
    """A path; a relative one is taken relative to the config file's folder."""

    types = (str,)

    def __init__(self, expected: str = "a path") -> None:
        self.expected = expected

    def convert(self, value: Any, ctx: _Ctx) -> Any:
        if not value:
            raise _Invalid("is empty")
        if "\0" in value:
            raise _Invalid("contains a NUL character")
        return ctx.base_dir / value  # an absolute `value` replaces base_dir


def _ip(text: str, versions: tuple[int, ...] = (4, 6)) -> str | None:
    """`text` normalized when it is an IP literal of one of `versions`, else None."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return str(address) if address.version in versions else None


def split_listen(entry: str) -> tuple[str, int]:
    """A checked `web.listen` entry -> (host without brackets, port)."""
    host, _, port = entry.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address: only programs on this machine reach it."""
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


class IPAddress(Spec):
    types = (str,)
    expected = 'an IPv4 or IPv6 address such as "192.168.1.10" or "::1"'

    def convert(self, value: Any, ctx: _Ctx) -> Any:
        address = _ip(value)
        if address is None:
            raise _Invalid("is not an IP address")
        return address


class Network(Spec):
    types = (str,)
    expected = 'an IPv4 or IPv6 network such as "192.168.50.0/24" or "fd00:50::/64"'

    def convert(self, value: Any, ctx: _Ctx) -> Any:
        try:
            return str(ipaddress.ip_network(value))
        except ValueError:
            pass
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise _Invalid("is not a network") from None
        raise _Invalid(f"has host bits set (the network is {network})")


class IPAddresses(Spec):
    """One address, or an array of them (a device's IPv4 and IPv6 addresses)."""

    types = (str, list)
    expected = ('an IP address or an array of them, such as "192.168.50.20" or '
                '["192.168.50.20", "fd00:50::20"]')

    def convert(self, value: Any, ctx: _Ctx) -> Any:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise _Invalid("is empty")
        out = []
        for item in items:
            address = _ip(item) if isinstance(item, str) else None
            if address is None:
                raise _Invalid("is not an IP address" if isinstance(value, str)
                               else f"holds {_show(item)}, not an IP address")
            out.append(address)
        return " ".join(dict.fromkeys(out))


class MacAddress(Spec):
    types = (str,)
    expected = 'a MAC address such as "aa:bb:cc:dd:ee:ff"'
    _FORM = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")

    def convert(self, value: Any, ctx: _Ctx) -> Any:
        if not self._FORM.fullmatch(value):
            raise _Invalid("is not a MAC address")
        return value.lower().replace("-", ":")


class MqttsUrl(Spec):
    """mqtts://host[:port]: TLS is not optional on the way to the cloud. Converts to
    (host, port)."""

    types = (str,)
    expected = 'a URL "mqtts://host" or "mqtts://host:port" (TLS; port default 8883)'

    def convert(self, value: Any, ctx: _Ctx) -> Any:
        try:
            url = urllib.parse.urlsplit(value)
            port = url.port or 8883
        except ValueError as exc:
            raise _Invalid(f"is not valid ({exc})") from None
        if url.scheme != "mqtts":
            raise _Invalid("does not start with mqtts://")
        if not url.hostname or url.path not in ("", "/") or url.query or url.username:
            raise _Invalid("is not of the form mqtts://host:port")
        return url.hostname, port


class Ed25519Key(Spec):
    types = (str,)
    expected = "an Ed25519 public key: base64url of its 32 raw bytes"

    def convert(self, value: Any, ctx: _Ctx) -> Any:
        try:
            load_public_key(value)
        except ValueError as exc:
            raise _Invalid(f"is {exc}") from None
        return value.strip()


class TimeZone(Spec):
    types = (str,)
    expected = 'an IANA time zone name such as "Europe/Berlin"'

    def convert(self, value: Any, ctx: _Ctx) -> Any:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise _Invalid("is not a known time zone") from None
        return value


class HttpsUrl(Spec):
    types = (str,)
    expected = 'a URL "https://host/path" (TLS is not optional)'

    def convert(self, value: Any, ctx: _Ctx) -> Any:
        try:
            url = urllib.parse.urlsplit(value)
            url.port  # noqa: B018 -- raises on a bad port
        except ValueError as exc:
            raise _Invalid(f"is not valid ({exc})") from None
        if url.scheme != "https":
            raise _Invalid("does not start with https://")
        if not url.hostname or url.username or url.password or url.fragment:
            raise _Invalid("is not of the form https://host[:port]/path")
        return value


class Epsilon(Spec):
    """A privacy budget: a decimal or a fraction string ("1/10"), kept exact."""

    types = (int, float, str)

    def __init__(self, high: int) -> None:
        self.high = high
        self.expected = f"a number from 0.001 to {high}, such as 0.1 or \"1/10\""

    _FORM = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9}|/[0-9]{1,9})?")

    def convert(self, value: Any, ctx: _Ctx) -> Any:
        if isinstance(value, str) and not self._FORM.fullmatch(value):
            raise _Invalid("is not a number")
        try:
            exact = Fraction(str(value))  # str() keeps the decimal as written, not the binary
        except (ValueError, ZeroDivisionError, OverflowError):
            raise _Invalid("is not a number") from None
        if not Fraction(1, 1000) <= exact <= self.high:
            raise _Invalid("is out of range")
        return exact


class HostPort(Spec):
    """ "HOST:PORT" with an IPv4 literal, a bracketed IPv6 literal or localhost."""

    types = (str,)
    expected = (
        '"HOST:PORT" where HOST is an IPv4 address, an IPv6 address in brackets or localhost'
        " and PORT is from 1 to 65535"
    )

    def convert(self, value: Any, ctx: _Ctx) -> Any:
        host, colon, port = value.rpartition(":")
        if not colon or value.endswith("]"):
            raise _Invalid("has no port")
        if host.startswith("[") and host.endswith("]"):
            host_ok = _ip(host[1:-1], (6,)) is not None
        else:
            host_ok = host == "localhost" or _ip(host, (4,)) is not None
        if not host_ok:
            raise _Invalid("has an invalid host")
        if not re.fullmatch(r"[0-9]{1,5}", port):
            raise _Invalid("has an invalid port")
        if not 1 <= int(port) <= 65535:
            raise _Invalid("has a port out of range")
        return value


class WebListen(HostPort):
    """A HostPort naming one address: a wildcard would put the admin page on the IoT side."""

    expected = (
        '"HOST:PORT" where HOST is one IPv4 address, one IPv6 address in brackets or localhost'
        " (not 0.0.0.0 or [::]) and PORT is from 1 to 65535"
    )

    def convert(self, value: Any, ctx: _Ctx) -> Any:
        value = super().convert(value, ctx)
        host = value.rpartition(":")[0].strip("[]")
        if host != "localhost" and ipaddress.ip_address(host).is_unspecified:
            raise _Invalid("listens on every interface, the IoT side included")
        return value


_REQUIRED: Any = object()  # Key.default for keys that must be present


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a table.

    `default` is the TOML value used when the key is absent (it is checked like a value
    from the file); None keeps None; `_REQUIRED` reports the key as missing.
    """

    spec: Spec
    default: Any = _REQUIRED


Rule = Callable[[Mapping[str, Any], _Ctx, str], None]


class Table(Spec):
    """A TOML table: known keys only; builds `build(**values)` when every value is good.

    `rules` check combinations of keys; they get the values with `_BAD` for bad ones.
    """

    types = (dict,)
    expected = "a table"

    def __init__(
        self, build: Callable[..., Any], keys: Mapping[str, Key], rules: Sequence[Rule] = ()
    ) -> None:
        self.build = build
        self.keys = keys
        self.rules = rules
        self.known = "one of: " + ", ".join(sorted(keys))

    def parse(self, value: Any, ctx: _Ctx, key: str) -> Any:
        if not isinstance(value, dict):
            return super().parse(value, ctx, key)  # reports the wrong type
        for name in value:
            if name not in self.keys:
                ctx.report(_join(key, name), "unknown key" + self._suggest(name), self.known)
        values: dict[str, Any] = {}
        for name, spec_key in self.keys.items():
            where = _join(key, name)
            if name in value:
                values[name] = spec_key.spec.parse(value[name], ctx, where)
            elif spec_key.default is _REQUIRED:
                ctx.report(where, "missing", spec_key.spec.expected)
                values[name] = _BAD
            elif spec_key.default is None:
                values[name] = None
            else:
                values[name] = spec_key.spec.parse(spec_key.default, ctx, where)
        for rule in self.rules:
            rule(values, ctx, key)
        if any(isinstance(v, _Bad) for v in values.values()):
            return _Bad(values)
        return self.build(**values)

    def _suggest(self, name: str) -> str:
        if len(name) > 64:
            return ""
        close = difflib.get_close_matches(name.lower(), list(self.keys), n=1)
        return f' — did you mean "{close[0]}"?' if close else ""


class Unique:
    """Items of a list must differ in their `keys` together, or as a whole without keys.

    `keys` are keys of the item tables (and fields of what they build). Unset (None) and
    bad values are not compared.
    """

    def __init__(self, *keys: str) -> None:
        self.keys = keys
        self.what = " and ".join(keys) or "entry"

    def _of(self, item: Any) -> tuple[Any, ...] | None:
        if not self.keys:
            values: tuple[Any, ...] = () if isinstance(item, _Bad) else (item,)
        elif isinstance(item, _Bad):
            values = tuple(item.values.get(k, _BAD) for k in self.keys)
        else:
            values = tuple(getattr(item, k) for k in self.keys)
        if not values or any(v is None or isinstance(v, _Bad) for v in values):
            return None
        return values

    def check(self, items: Sequence[Any], ctx: _Ctx, key: str) -> None:
        seen: dict[tuple[Any, ...], int] = {}
        for i, item in enumerate(items):
            values = self._of(item)
            if values is None:
                continue
            if values not in seen:
                seen[values] = i
                continue
            where, shown = f"{key}[{i}]", _show(values[0])
            if len(self.keys) == 1:
                where = _join(where, self.keys[0])
            elif self.keys:
                shown = " and ".join(
                    f"{k} {_show(v)}" for k, v in zip(self.keys, values, strict=True)
                )
            first = f"{key}[{seen[values]}]"
            ctx.report(where, f"duplicate {shown}", f"a unique {self.what}; {first} has the same")


class ListOf(Spec):
    types = (list,)

    def __init__(self, item: Spec, expected: str, unique: Sequence[Unique] = ()) -> None:
        self.item = item
        self.expected = expected
        self.unique = unique

    def parse(self, value: Any, ctx: _Ctx, key: str) -> Any:
        if not isinstance(value, list):
            return super().parse(value, ctx, key)  # reports the wrong type
        items = [self.item.parse(v, ctx, f"{key}[{i}]") for i, v in enumerate(value)]
        for unique in self.unique:
            unique.check(items, ctx, key)
        if any(isinstance(item, _Bad) for item in items):
            return _BAD
        return tuple(items)


# --- the schema ---------------------------------------------------------------------------

_PORT = Integer(1, 65535)
_ROTATION_DAYS = Integer(1, 3650)


def _broker_mode_rules(values: Mapping[str, Any], ctx: _Ctx, key: str) -> None:
    mode, external = values["mode"], values["external"]
    if mode == "embedded":
        if values["listeners"] == ():
            ctx.report(
                _join(key, "listeners"),
                "missing",
                'at least one [[broker.listeners]] table when broker.mode = "embedded"',
            )
        if external is not None:
            ctx.report(
                _join(key, "external"),
                'only used when broker.mode = "external"',
                'no [broker.external] table when broker.mode = "embedded"',
            )
    elif mode == "external" and external is None:
        ctx.report(
            _join(key, "external"),
            "missing",
            'a [broker.external] table when broker.mode = "external"',
        )


def _external_broker(
    *,
    host: str,
    port: int | None,
    username: str,
    password_file: Path,
    tls: bool,
    ca_file: Path | None,
) -> ExternalBroker:
    if port is None:
        port = 8883 if tls else 1883
    return ExternalBroker(host, port, username, password_file, tls, ca_file)


def _device(*, id: str, name: str | None, kind: str, mac: str | None, ip: str | None,
            rotation_days: int | None, policy: str | None, profile: str | None) -> DeviceDecl:
    return DeviceDecl(id=id, name=id if name is None else name, kind=kind, mac=mac, ip=ip,
                      rotation_days=rotation_days, policy=policy, profile=profile)


def _network_rules(values: Mapping[str, Any], ctx: _Ctx, key: str) -> None:
    uplink, iot = values["uplink"], values["iot"]
    if iot is not None and uplink is None:
        ctx.report(_join(key, "uplink"), "missing", "the uplink interface when network.iot is set")
    if iot is not None and iot == uplink:
        ctx.report(_join(key, "iot"), f"{_show(iot)} is also the uplink",
                   "a different interface from network.uplink")
    if iot is not None and values["iot_subnets"] == ():
        ctx.report(_join(key, "iot_subnets"), "missing",
                   "the IoT segment's subnets when network.iot is set")
    iot_nets, lan_nets = values["iot_subnets"], values["lan_subnets"]
    if isinstance(iot_nets, tuple) and isinstance(lan_nets, tuple):
        for i, text in enumerate(iot_nets):
            net = ipaddress.ip_network(text)
            for lan in lan_nets:
                if net.overlaps(ipaddress.ip_network(lan)):
                    ctx.report(f"{_join(key, 'iot_subnets')}[{i}]",
                               f"{_show(text)} overlaps the LAN subnet {_show(lan)}",
                               "IoT and LAN subnets that do not overlap")


def _web_not_on_iot(values: Mapping[str, Any], ctx: _Ctx, key: str) -> None:
    """The admin page must never be served on the devices' segment."""
    web, network = values["web"], values["network"]
    if not isinstance(web, WebConfig) or not isinstance(network, NetworkConfig):
        return
    for i, listen in enumerate(web.listen):
        host = split_listen(listen)[0]
        if host == "localhost":
            continue
        address = ipaddress.ip_address(host)
        for net in network.iot_subnets:
            if address in ipaddress.ip_network(net):
                ctx.report(f"web.listen[{i}]", f"{_show(listen)} is inside the IoT subnet "
                           f"{_show(net)}", "an address on the LAN side: devices must not "
                           "reach the admin page")


def _listener(*, address: str, port: int, tls: bool | None) -> Listener:
    # TLS unless asked otherwise, except on loopback (only programs on this machine).
    if tls is None:
        tls = not ipaddress.ip_address(address).is_loopback
    return Listener(address, port, tls)


_GATEWAY = Table(
    GatewayConfig,
    {
        "state_dir": Key(FilePath("a directory path"), "/var/lib/home-gateway"),
        "runtime_dir": Key(FilePath("a directory path"), None),
        "log_level": Key(Choice("debug", "info", "warning", "error"), "info"),
    },
)

_LISTENER = Table(
    _listener,
    {
        "address": Key(IPAddress()),
        "port": Key(_PORT),
        "tls": Key(Boolean(), None),  # None: TLS unless the address is loopback
    },
)

_CREDENTIALS = Table(
    CredentialsConfig,
    {
        "rotation_days": Key(_ROTATION_DAYS, 30),
        "ack_timeout_s": Key(Integer(1, 86400), 600),
        "offline_wait_s": Key(Integer(1, 31536000), 604800),
        "retry_initial_s": Key(Integer(1, 86400), 300),
        "alert_after": Key(Integer(1, 100), 3),
        "enrollment_minutes": Key(Integer(1, 1440), 15),
    },
)

_EXTERNAL = Table(
    _external_broker,
    {
        "host": Key(Text("a host name or IP address", 253, r"[A-Za-z0-9._:%-]+")),
        "port": Key(_PORT, None),  # None: 8883 with TLS, else 1883
        "username": Key(Text("a non-empty user name", 256)),
        "password_file": Key(FilePath("a file path")),
        "tls": Key(Boolean(), True),
        "ca_file": Key(FilePath("a file path"), None),
    },
)

_BROKER = Table(
    BrokerConfig,
    {
        "mode": Key(Choice("embedded", "external"), "embedded"),
        "executable": Key(Text("a program path"), "/usr/sbin/mosquitto"),
        "max_packet_size": Key(Integer(1024, 268435455), 1048576),
        "listeners": Key(ListOf(_LISTENER, "an array of tables", [Unique("address", "port")]), []),
        "external": Key(_EXTERNAL, None),
    },
    rules=[_broker_mode_rules],
)

_WEB = Table(
    WebConfig,
    {
        "listen": Key(ListOf(WebListen(), "an array of strings", [Unique()]), []),
        "tls": Key(Choice("auto", "always"), "auto"),
    },
)

_TELEMETRY = Table(
    TelemetryConfig,
    {
        "max_payload_bytes": Key(Integer(64, 1048576), 16384),
        "history_size": Key(Integer(1, 100000), 360),
        "max_future_skew_s": Key(Integer(0, 86400), 300),
        "max_age_s": Key(Integer(60, 31536000), 86400),
        "invalid_audit_interval_s": Key(Integer(1, 86400), 60),
    },
)

_INTERFACE = Text("a network interface name of 1 to 15 characters from A-Z, a-z, 0-9, "
                  '"_", "." and "-"', 15, r"[A-Za-z0-9_.-]{1,15}")
_PROFILE_NAME = Text('a profile name of 1 to 40 characters from a-z, 0-9, "_" and "-"', 40,
                     r"[a-z0-9][a-z0-9_-]{0,39}")

_NETWORK = Table(
    NetworkConfig,
    {
        "uplink": Key(_INTERFACE, None),
        "iot": Key(_INTERFACE, None),
        "iot_subnets": Key(ListOf(Network(), "an array of network strings", [Unique()]), []),
        "lan_subnets": Key(ListOf(Network(), "an array of network strings", [Unique()]), []),
    },
    rules=[_network_rules],
)

_FIREWALL = Table(
    FirewallConfig,
    {
        "mode": Key(Choice("enforce", "render-only"), "enforce"),
        "nft": Key(Text("a program path"), "/usr/sbin/nft"),
        "profiles_dir": Key(FilePath("a directory path"), "/etc/home-gateway/profiles"),
        "log_per_minute": Key(Integer(1, 10000), 10),
        "check_interval_s": Key(Integer(1, 3600), 30),
    },
)

_PATTERNS = ListOf(Text('a pattern of 1 to 64 characters such as "*" or "bulb-*"', 64),
                   "an array of strings", [Unique()])

_SIGNER = Table(
    SignerDecl,
    {
        "kid": Key(Text('a key id of 1 to 64 characters from A-Z, a-z, 0-9, ".", "_" and "-"',
                        64, r"[A-Za-z0-9._-]{1,64}")),
        "public_key": Key(Ed25519Key()),
        "devices": Key(_PATTERNS, ["*"]),
        "actions": Key(_PATTERNS, ["*"]),
    },
)


def _cloud(*, url: tuple[str, int] | None, signers: tuple[SignerDecl, ...],
           **values: Any) -> CloudConfig:
    host, port = url or (None, 8883)
    return CloudConfig(host=host, port=port, signers=signers, **values)


def _cloud_rules(values: Mapping[str, Any], ctx: _Ctx, key: str) -> None:
    """With a URL, the link needs an identity, a pinned CA and exactly one way to log in."""
    if values["url"] is None:
        return
    for name in ("gateway_id", "ca_file"):
        if values[name] is None:
            ctx.report(_join(key, name), "missing", f"{name} when cloud.url is set")
    password = values["username"] is not None or values["password_file"] is not None
    cert = values["cert_file"] is not None or values["key_file"] is not None
    if password == cert:
        ctx.report(_join(key, "username"), "no single way to log in" if password else "missing",
                   "either username and password_file, or cert_file and key_file")
    for a, b in (("username", "password_file"), ("cert_file", "key_file")):
        if (values[a] is None) != (values[b] is None):
            missing = a if values[a] is None else b
            ctx.report(_join(key, missing), "missing", f"{a} and {b} together")
    if (isinstance(values["backoff_initial_s"], int) and isinstance(values["backoff_max_s"], int)
            and values["backoff_initial_s"] > values["backoff_max_s"]):
        ctx.report(_join(key, "backoff_initial_s"), "is above backoff_max_s",
                   "at most backoff_max_s")


_CLOUD = Table(
    _cloud,
    {
        "url": Key(MqttsUrl(), None),
        "gateway_id": Key(Text('3 to 40 characters from a-z, 0-9 and "-"', 40,
                               r"[a-z0-9-]{3,40}"), None),
        "ca_file": Key(FilePath("a file path"), None),
        "username": Key(Text("a user name of 1 to 256 characters", 256), None),
        "password_file": Key(FilePath("a file path"), None),
        "cert_file": Key(FilePath("a file path"), None),
        "key_file": Key(FilePath("a file path"), None),
        "keepalive_s": Key(Integer(5, 3600), 60),
        "command_timeout_s": Key(Integer(1, 300), 10),
        "max_clock_skew_s": Key(Integer(0, 3600), 60),
        "max_command_lifetime_s": Key(Integer(1, 86400), 3600),
        "telemetry": Key(Boolean(), False),
        "telemetry_interval_s": Key(Integer(1, 86400), 60),
        "spool_max_bytes": Key(Integer(65536, 1073741824), 16777216),
        "spool_max_age_s": Key(Integer(60, 31536000), 604800),
        "backoff_initial_s": Key(Integer(1, 3600), 1),
        "backoff_max_s": Key(Integer(1, 86400), 300),
        "signers": Key(ListOf(_SIGNER, "an array of tables", [Unique("kid")]), []),
    },
    rules=[_cloud_rules],
)

_SCHEDULES = Table(
    SchedulesConfig,
    {
        "timezone": Key(TimeZone(), None),
        "missed_grace_s": Key(Integer(0, 86400), 900),
    },
)

def _privacy_rules(values: Mapping[str, Any], ctx: _Ctx, key: str) -> None:
    if values["sink"] == "https" and values["url"] is None:
        ctx.report(_join(key, "url"), "missing", 'an https:// URL when sink = "https"')


_CATEGORY_EPSILON = Epsilon(1)
_PRIVACY = Table(
    PrivacyConfig,
    {
        "region": Key(Text('an ISO 3166 code such as "DE" or "DE-BY" (no finer place)', 6,
                           r"[A-Z]{2}(-[A-Z0-9]{1,3})?"), "ZZ"),
        "recipient": Key(Text("a name of 1 to 120 characters", 120),
                         "the device maker named by your installer"),
        "sink": Key(Choice("file", "https"), "file"),
        "directory": Key(FilePath("a directory path"), None),
        "url": Key(HttpsUrl(), None),
        "ca_file": Key(FilePath("a file path"), None),
        "window_s": Key(Integer(0, 604800), 21600),
        "retry_initial_s": Key(Integer(1, 86400), 60),
        "retry_max_s": Key(Integer(1, 604800), 21600),
        "timeout_s": Key(Integer(1, 600), 30),
        "epsilon": Key(Table(lambda **v: v, {
            name: Key(_CATEGORY_EPSILON, "0.1")
            for name in ("inventory", "usage", "energy", "comfort")}), {}),
        "week_cap": Key(Epsilon(10), "1.0"),
        "year_cap": Key(Epsilon(520), "26"),
        "link_reports": Key(Boolean(), False),
        "pseudonym_epoch_days": Key(Integer(1, 30), 30),
    },
    rules=[_privacy_rules],
)

def _homeassistant_rules(values: Mapping[str, Any], ctx: _Ctx, key: str) -> None:
    broker, external = values["broker"], values["external"]
    if broker == "external" and external is None:
        ctx.report(_join(key, "external"), "missing",
                   'a [homeassistant.external] table when homeassistant.broker = "external"')
    elif broker == "gateway" and external is not None:
        ctx.report(_join(key, "external"), 'only used when homeassistant.broker = "external"',
                   'no [homeassistant.external] table when homeassistant.broker = "gateway"')


_HOMEASSISTANT = Table(
    HomeAssistantConfig,
    {
        "enabled": Key(Boolean(), True),
        "prefix": Key(Text('a topic level of 1 to 64 characters from A-Z, a-z, 0-9, "_" and '
                           '"-"', 64, r"[A-Za-z0-9_-]{1,64}"), "homeassistant"),
        "broker": Key(Choice("gateway", "external"), "gateway"),
        "external": Key(_EXTERNAL, None),
        "name": Key(Text("a name of 1 to 64 characters", 64), "Home Gateway"),
        "republish_jitter_s": Key(Integer(0, 300), 5),
    },
    rules=[_homeassistant_rules],
)

_DISCOVERY = Table(
    DiscoveryConfig,
    {
        "mdns": Key(Boolean(), True),
        "dhcp": Key(Boolean(), True),
        "dhcp_leases": Key(FilePath("a file path"), "/var/lib/misc/dnsmasq.leases"),
    },
)

_DEVICE = Table(
    _device,
    {
        "id": Key(Text('3 to 40 characters from a-z, 0-9 and "-"', 40, r"[a-z0-9-]{3,40}")),
        "name": Key(Text("a name of 1 to 64 characters", 64), None),  # None: the id
        "kind": Key(Choice(*sorted(KINDS))),
        "mac": Key(MacAddress(), None),
        "ip": Key(IPAddresses(), None),
        "rotation_days": Key(_ROTATION_DAYS, None),  # None: credentials.rotation_days
        "policy": Key(Choice("quarantine", "restricted", "open", "blocked"), None),
        "profile": Key(_PROFILE_NAME, None),  # None: the profile named after the kind
    },
)

_ROOT = Table(
    dict,
    {
        "gateway": Key(_GATEWAY, {}),
        "broker": Key(_BROKER, {}),
        "credentials": Key(_CREDENTIALS, {}),
        "web": Key(_WEB, {}),
        "telemetry": Key(_TELEMETRY, {}),
        "network": Key(_NETWORK, {}),
        "firewall": Key(_FIREWALL, {}),
        "cloud": Key(_CLOUD, {}),
        "schedules": Key(_SCHEDULES, {}),
        "privacy": Key(_PRIVACY, {}),
        "homeassistant": Key(_HOMEASSISTANT, {}),
        "discovery": Key(_DISCOVERY, {}),
        "devices": Key(
            ListOf(
                _DEVICE,
                "an array of tables",
                [Unique("id"), Unique("mac"), Unique("ip")],
            ),
            [],
        ),
    },
    rules=[_web_not_on_iot],
)


# --- entry points -------------------------------------------------------------------------

_AT_LINE = re.compile(r"(.*) \(at line (\d+), column (\d+)\)", re.DOTALL)
_AT_END = " (at end of document)"


def _syntax_error(source: str, text: str, message: str) -> ConfigError:
    """The error for a TOML syntax problem, with its line and column when known."""
    where = ""
    match = _AT_LINE.fullmatch(message)
    if match:
        message, where = match[1], f"line {match[2]}, column {match[3]}"
    elif message.endswith(_AT_END):
        message = message.removesuffix(_AT_END)
        line, column = text.count("\n") + 1, len(text) - text.rfind("\n")
        where = f"line {line}, column {column}"
    prefix = f"{source}:{where}:" if where else f"{source}:"
    return ConfigError([f"{prefix} TOML syntax error: {message} (expected valid TOML)"])


def parse_config(text: str, path: str | Path = "<string>") -> Config:
    """Parse and check config text; `path` names it in messages and anchors relative paths."""
    source = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise _syntax_error(source, text, str(err)) from None
    except ValueError as err:  # an integer with more digits than Python converts
        raise _syntax_error(source, text, str(err).split(":")[0]) from None
    except RecursionError:
        raise _syntax_error(source, text, "nested too deeply") from None
    ctx = _Ctx(source, Path(path).absolute().parent)
    values = _ROOT.parse(data, ctx, "")
    if ctx.problems:
        raise ConfigError(ctx.problems)
    return Config(source=Path(path), **values)


def load_config(path: str | Path) -> Config:
    """Read and check the config file at `path` (usually `DEFAULT_CONFIG_PATH`)."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")  # tolerate a byte order mark
    except OSError as err:
        reason = err.strerror or str(err)
        reason = reason[:1].lower() + reason[1:]
    except UnicodeDecodeError as err:
        reason = f"not valid UTF-8 (byte {err.start})"
    except ValueError as err:  # e.g. a NUL in the path
        reason = str(err)
    else:
        return parse_config(text, path)
    raise ConfigError([f"{path}: cannot read: {reason} (expected a readable UTF-8 file)"])
