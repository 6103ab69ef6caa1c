"""Device profiles: small TOML files saying what a device may reach.

A profile file is named NAME.toml (NAME is the profile's name) and holds

    description = "..."            # optional
    [[allow]]                      # a destination on the uplink side, by CIDR or DNS name
    cidr = "198.51.100.0/24"       #   or: host = "api.vendor.example"
    protocol = "tcp"               # tcp, udp or icmp
    ports = [443, "8000-8100"]     # tcp/udp only: ports and "LOW-HIGH" ranges
    [[peer]]                       # another local device, by id or by kind
    kind = "sensor"                #   or: device = "hall-sensor"
    protocol = "udp"
    ports = [5683]

Every problem is reported, one line each, as ``PATH:KEY: problem (expected ...)``.
docs/firewall.md documents the format.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.devices.kinds import KINDS
from gateway.firewall.model import (
    HOST_NAME,
    PROTOCOLS,
    Allow,
    IPNetwork,
    Peer,
    PortRange,
    Profile,
    Protocol,
)

__all__ = [
    "PROFILE_NAME",
    "SHIPPED_DIR",
    "ProfileError",
    "load_profile",
    "load_profiles",
    "parse_host",
    "parse_profile",
    "profile_to_toml",
]

SHIPPED_DIR = Path(__file__).with_name("profiles")  # one profile per simulator kind

PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
_DEVICE_ID = re.compile(r"[a-z0-9-]{3,40}")  # DESIGN §6
_PORT_RANGE = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")
_MAX_ENTRIES = 1000  # per list: a profile is meant to be small
_MAX_PORTS = 256
_PORTS_EXPECTED = 'a list of ports 0..65535 and "LOW-HIGH" ranges, such as [443, "8000-8100"]'


class ProfileError(Exception):
    """A profile cannot be used. `problems` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


class _Report:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def __call__(self, key: str, problem: str, expected: str) -> None:
        self.problems.append(f"{self.source}:{key}: {problem} (expected {expected})")


def _show(value: Any) -> str:
    """`value` named by its TOML type, short enough for one line."""
    kinds = ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"),
             (list, "array"), (dict, "table"))
    name = next((n for t, n in kinds if isinstance(value, t)), type(value).__name__)
    if isinstance(value, list | dict):
        return name
    text = json.dumps(value) if isinstance(value, str) else str(value).lower()
    if len(text) > 60:
        text = text[:60] + "..."
    return f"{name} {text}"


def parse_host(text: str) -> str | None:
    """`text` as a normalized DNS name (lower case, no trailing dot), or None."""
    host = text.lower().removesuffix(".")
    return host if HOST_NAME.fullmatch(host) else None


def _ports(value: Any, key: str, report: _Report) -> tuple[PortRange, ...] | None:
    if not isinstance(value, list) or not value:
        report(key, f"got {_show(value)}" if not isinstance(value, list) else "is empty",
               _PORTS_EXPECTED)
        return None
    if len(value) > _MAX_PORTS:
        report(key, f"has {len(value)} entries", f"at most {_MAX_PORTS}; use ranges")
        return None
    out: list[PortRange] = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if isinstance(item, int) and not isinstance(item, bool):
            lo = hi = item
        elif isinstance(item, str) and (m := _PORT_RANGE.fullmatch(item.strip())):
            lo = int(m[1])
            hi = int(m[2]) if m[2] is not None else lo
        else:
            report(where, f"got {_show(item)}", 'a port 0..65535 or a range "LOW-HIGH"')
            continue
        if not 0 <= lo <= hi <= 65535:
            report(where, f"{_show(item)} is out of range",
                   'a port 0..65535 or a range "LOW-HIGH" with LOW <= HIGH')
            continue
        out.append((lo, hi))
    return tuple(out) if len(out) == len(value) else None


def _protocol(value: Any, key: str, report: _Report) -> Protocol | None:
    for proto in PROTOCOLS:
        if value == proto:
            return proto
    report(key, f"got {_show(value)}", 'one of: "tcp", "udp", "icmp"')
    return None


def _unknown_keys(table: Mapping[str, Any], known: Iterable[str], prefix: str,
                  report: _Report) -> None:
    names = sorted(known)
    for name in table:
        if name not in names:
            close = difflib.get_close_matches(name.lower(), names, n=1)
            hint = f' — did you mean "{close[0]}"?' if close else ""
            report(f"{prefix}{name}", "unknown key" + hint, "one of: " + ", ".join(names))


def _proto_ports(entry: Mapping[str, Any], where: str,
                 report: _Report) -> tuple[Protocol, tuple[PortRange, ...]] | None:
    if "protocol" not in entry:
        report(f"{where}.protocol", "missing", 'one of: "tcp", "udp", "icmp"')
        return None
    protocol = _protocol(entry["protocol"], f"{where}.protocol", report)
    if protocol is None:
        return None
    if protocol == "icmp":
        if "ports" in entry:
            report(f"{where}.ports", "icmp has no ports", "no ports key for icmp")
            return None
        return protocol, ()
    if "ports" not in entry:
        report(f"{where}.ports", f"missing for {protocol}", _PORTS_EXPECTED)
        return None
    ports = _ports(entry["ports"], f"{where}.ports", report)
    return None if ports is None else (protocol, ports)


def _one_of(entry: Mapping[str, Any], keys: tuple[str, str], where: str,
            report: _Report) -> str | None:
    """The one of `keys` present in `entry`, after reporting none or both."""
    present = [k for k in keys if k in entry]
    if len(present) != 1:
        problem = f"has both {keys[0]} and {keys[1]}" if present else \
            f"has neither {keys[0]} nor {keys[1]}"
        report(where, problem, f"exactly one of {keys[0]} or {keys[1]}")
        return None
    return present[0]


def _cidr(value: Any, key: str, report: _Report) -> IPNetwork | None:
    expected = 'a network such as "198.51.100.0/24" or "2001:db8::/32", or one address'
    if not isinstance(value, str):
        report(key, f"got {_show(value)}", expected)
        return None
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError:
        problem = "has host bits set" if "/" in value else "is not an IP address or network"
        report(key, f"{_show(value)} {problem}", expected)
        return None


def _allow(entry: Any, where: str, report: _Report) -> Allow | None:
    if not isinstance(entry, dict):
        report(where, f"got {_show(entry)}", "a table ([[allow]])")
        return None
    _unknown_keys(entry, ("cidr", "host", "protocol", "ports"), f"{where}.", report)
    which = _one_of(entry, ("cidr", "host"), where, report)
    proto_ports = _proto_ports(entry, where, report)
    value = entry.get(which) if which else None
    cidr: IPNetwork | None = None
    host: str | None = None
    if which == "cidr":
        cidr = _cidr(value, f"{where}.cidr", report)
    elif which == "host":
        host = parse_host(value) if isinstance(value, str) else None
        if host is None:
            report(f"{where}.host", f"got {_show(value)}",
                   'a DNS name such as "api.vendor.example"')
    if proto_ports is None or (cidr is None and host is None):
        return None
    return Allow(proto_ports[0], proto_ports[1], cidr=cidr, host=host)


def _peer(entry: Any, where: str, report: _Report) -> Peer | None:
    if not isinstance(entry, dict):
        report(where, f"got {_show(entry)}", "a table ([[peer]])")
        return None
    _unknown_keys(entry, ("device", "kind", "protocol", "ports"), f"{where}.", report)
    which = _one_of(entry, ("device", "kind"), where, report)
    proto_ports = _proto_ports(entry, where, report)
    value = entry.get(which) if which else None
    device = kind = None
    if which == "device":
        if isinstance(value, str) and _DEVICE_ID.fullmatch(value):
            device = value
        else:
            report(f"{where}.device", f"got {_show(value)}", "a device id ([a-z0-9-]{3,40})")
    elif which == "kind":
        if isinstance(value, str) and value in KINDS:
            kind = value
        else:
            report(f"{where}.kind", f"got {_show(value)}",
                   "one of: " + ", ".join(f'"{k}"' for k in sorted(KINDS)))
    if proto_ports is None or (device is None and kind is None):
        return None
    return Peer(proto_ports[0], proto_ports[1], device=device, kind=kind)


def _entries(data: Mapping[str, Any], key: str, report: _Report) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        report(key, f"got {_show(value)}", f"an array of tables ([[{key}]])")
        return []
    if len(value) > _MAX_ENTRIES:
        report(key, f"has {len(value)} entries", f"at most {_MAX_ENTRIES}")
        return []
    return value


def parse_profile(text: str, source: str, name: str) -> Profile:
    """Parse and check one profile's TOML text; `source` names it in messages."""
    report = _Report(source)
    if not PROFILE_NAME.fullmatch(name):
        report("(file name)", f"profile name {json.dumps(name)} is not valid",
               "a name of a-z, 0-9, _ and -, starting with a letter or digit, up to 40")
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as err:
        raise ProfileError([f"{source}: TOML syntax error: {err} (expected valid TOML)"]
                           ) from None
    _unknown_keys(data, ("description", "allow", "peer"), "", report)
    description = data.get("description", "")
    if not isinstance(description, str):
        report("description", f"got {_show(description)}", "a string")
        description = ""
    allow = [_allow(e, f"allow[{i}]", report)
             for i, e in enumerate(_entries(data, "allow", report))]
    peers = [_peer(e, f"peer[{i}]", report)
             for i, e in enumerate(_entries(data, "peer", report))]
    if report.problems:
        raise ProfileError(report.problems)
    return Profile(name, tuple(a for a in allow if a is not None),
                   tuple(p for p in peers if p is not None), description)


def load_profile(path: Path) -> Profile:
    """The profile in `path`, named after the file (`thermostat.toml` -> "thermostat")."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ProfileError([f"{path}: cannot read: {err} (expected a UTF-8 TOML file)"]
                           ) from None
    return parse_profile(text, str(path), path.stem)


def load_profiles(*directories: Path) -> dict[str, Profile]:
    """Every NAME.toml in `directories`; a later directory's file replaces an earlier one's
    of the same name (so /etc can override the shipped profiles). A missing directory is
    skipped; every problem in every file is reported together."""
    found: dict[str, Path] = {}
    for directory in directories:
        if directory.is_dir():
            for path in sorted(directory.glob("*.toml")):
                found[path.stem] = path
    problems: list[str] = []
    profiles: dict[str, Profile] = {}
    for name, path in sorted(found.items()):
        try:
            profiles[name] = load_profile(path)
        except ProfileError as err:
            problems += err.problems
    if problems:
        raise ProfileError(problems)
    return profiles


def _toml_str(text: str) -> str:
    out = text.replace("\\", "\\\\").replace('"', '\\"')
    out = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in out)
    return f'"{out}"'


def _toml_ports(ports: tuple[PortRange, ...]) -> str:
    items = [str(lo) if lo == hi else f'"{lo}-{hi}"' for lo, hi in ports]
    return "[" + ", ".join(items) + "]"


def profile_to_toml(profile: Profile, header: str = "") -> str:
    """`profile` as a profile file's text (parse_profile gives it back); `header` becomes
    comment lines at the top."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    if profile.description:
        lines.append(f"description = {_toml_str(profile.description)}")
    for allow in profile.allow:
        lines += ["", "[[allow]]"]
        if allow.cidr is not None:
            lines.append(f'cidr = "{allow.cidr}"')
        if allow.host is not None:
            lines.append(f"host = {_toml_str(allow.host)}")
        lines.append(f'protocol = "{allow.protocol}"')
        if allow.ports:
            lines.append(f"ports = {_toml_ports(allow.ports)}")
    for peer in profile.peers:
        lines += ["", "[[peer]]"]
        if peer.device is not None:
            lines.append(f"device = {_toml_str(peer.device)}")
        if peer.kind is not None:
            lines.append(f"kind = {_toml_str(peer.kind)}")
        lines.append(f'protocol = "{peer.protocol}"')
        if peer.ports:
            lines.append(f"ports = {_toml_ports(peer.ports)}")
    return "\n".join(lines).lstrip("\n") + "\n"
