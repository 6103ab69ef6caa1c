"""Import an RFC 8520 MUD file (JSON) into a device profile.

The subset the gateway enforces: access-control entries of the from-device policy that
accept packets to a destination DNS name (ietf-acldns:dst-dnsname) or network, with a
protocol (TCP, UDP, ICMP) and destination ports (operator eq/lte/gte/neq or a range).
TCP entries the remote side initiates (ietf-mud:direction-initiated "to-device") are not
imported: nothing may open a connection to a device; replies to a device's own
connections pass through connection tracking, so to-device entries need no import.

The import only ever narrows: an entry with a condition the gateway cannot enforce
(source ports, ICMP types, MUD's local-networks/controller/same-manufacturer classes, ...)
is skipped and explained in `notes`, never widened. A malformed file is rejected with the
JSON path of every problem: ``FILE:$.a.b[2].c: problem (expected ...)``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.firewall.model import Allow, IPNetwork, PortRange, Profile, Protocol
from gateway.firewall.profiles import PROFILE_NAME, parse_host

__all__ = ["MAX_MUD_BYTES", "MudError", "MudImport", "import_mud", "load_mud"]

MAX_MUD_BYTES = 1 << 20  # real MUD files are a few kilobytes

_MUD = "ietf-mud:mud"
_ACLS = "ietf-access-control-list:acls"
_DST_DNS = "ietf-acldns:dst-dnsname"
_SRC_DNS = "ietf-acldns:src-dnsname"
_DIRECTION = "ietf-mud:direction-initiated"
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_:-]+")
_PROTOCOLS: dict[int, Protocol] = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}
_ALL_PORTS: tuple[PortRange, ...] = ((0, 65535),)
# Keys of the ipv4/ipv6 match containers (RFC 8519) that restrict more than we enforce.
_IP_UNENFORCED = ("dscp", "ecn", "length", "ttl", "ihl", "flags", "offset", "identification",
                  "flow-label", _SRC_DNS, "source-ipv4-network", "source-ipv6-network")


class MudError(Exception):
    """The MUD file is malformed. `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


@dataclass(frozen=True, slots=True)
class MudImport:
    profile: Profile
    mud_url: str
    notes: tuple[str, ...]  # what was not imported and why, one line each


class _Path:
    """A JSON path such as $.ietf-access-control-list:acls.acl[0].name."""

    def __init__(self, text: str = "$") -> None:
        self.text = text

    def __truediv__(self, key: str | int) -> _Path:
        if isinstance(key, int):
            return _Path(f"{self.text}[{key}]")
        if _PLAIN_KEY.fullmatch(key):
            return _Path(f"{self.text}.{key}")
        return _Path(f"{self.text}[{json.dumps(key)}]")

    def __str__(self) -> str:
        return self.text


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        text = json.dumps(value)
        return f"string {text[:60]}{'...' if len(text) > 60 else ''}"
    return "an array" if isinstance(value, list) else "an object"


class _Reader:
    """Typed access to the parsed JSON that records problems at their path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []
        self.notes: list[str] = []

    def bad(self, path: _Path, problem: str, expected: str) -> None:
        self.problems.append(f"{self.source}:{path}: {problem} (expected {expected})")

    def note(self, path: _Path, text: str) -> None:
        self.notes.append(f"{path}: {text}")

    def get(self, obj: dict[str, Any], key: str, path: _Path, kind: type | tuple[type, ...],
            expected: str, required: bool = True) -> Any:
        """obj[key] when it has type `kind`; None (after reporting) otherwise."""
        if key not in obj:
            if required:
                self.bad(path / key, "missing", expected)
            return None
        value = obj[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.bad(path / key, f"got {_show(value)}", expected)
            return None
        if not isinstance(value, kind):
            self.bad(path / key, f"got {_show(value)}", expected)
            return None
        return value

    def integer(self, obj: dict[str, Any], key: str, path: _Path, low: int, high: int,
                required: bool = True) -> int | None:
        expected = f"an integer {low}..{high}"
        value = self.get(obj, key, path, int, expected, required)
        if value is None:
            return None
        if not low <= value <= high:
            self.bad(path / key, f"{value} is out of range", expected)
            return None
        return int(value)

    def items(self, obj: dict[str, Any], key: str, path: _Path,
              what: str) -> list[tuple[_Path, dict[str, Any]]]:
        """The objects of the array obj[key], each with its path."""
        arr = self.get(obj, key, path, list, f"an array of {what} objects")
        if arr is None:
            return []
        out = []
        for i, item in enumerate(arr):
            if isinstance(item, dict):
                out.append((path / key / i, item))
            else:
                self.bad(path / key / i, f"got {_show(item)}", f"an {what} object")
        return out


def _identity(value: str) -> str:
    """A YANG identityref without its module prefix: "ietf-x:accept" -> "accept"."""
    return value.rsplit(":", 1)[-1]


def _ports(r: _Reader, obj: dict[str, Any], path: _Path) -> tuple[PortRange, ...] | None:
    """An RFC 8519 port-range-or-operator as inclusive ranges."""
    if "lower-port" in obj or "upper-port" in obj:
        lo = r.integer(obj, "lower-port", path, 0, 65535)
        hi = r.integer(obj, "upper-port", path, 0, 65535)
        if lo is None or hi is None:
            return None
        if lo > hi:
            r.bad(path / "upper-port", f"{hi} is below lower-port {lo}",
                  "upper-port >= lower-port")
            return None
        return ((lo, hi),)
    operator = r.get(obj, "operator", path, str, '"eq", "lte", "gte" or "neq"',
                     required=False) or "eq"
    port = r.integer(obj, "port", path, 0, 65535)
    if operator not in ("eq", "lte", "gte", "neq"):
        r.bad(path / "operator", f"got {_show(operator)}", '"eq", "lte", "gte" or "neq"')
        return None
    if port is None:
        return None
    if operator == "eq":
        return ((port, port),)
    if operator == "lte":
        return ((0, port),)
    if operator == "gte":
        return ((port, 65535),)
    return tuple(rng for rng in ((0, port - 1), (port + 1, 65535)) if rng[0] <= rng[1])


@dataclass(frozen=True, slots=True)
class _Ace:
    """What one entry allows, or None for the parts it does not restrict."""

    accept: bool
    protocol: int | None
    host: str | None
    network: IPNetwork | None
    ports: tuple[PortRange, ...] | None  # destination ports
    inbound: bool  # TCP the remote side initiates (direction-initiated "to-device")
    skip: str | None  # why the gateway cannot import this entry, if it cannot


def _read_ace(r: _Reader, ace: dict[str, Any], path: _Path, family: int) -> _Ace | None:
    """Check one ACE; None when it is malformed (the problems are recorded)."""
    before = len(r.problems)
    r.get(ace, "name", path, str, "the entry's name")
    actions = r.get(ace, "actions", path, dict, 'an object with "forwarding"')
    forwarding = None
    if actions is not None:
        forwarding = r.get(actions, "forwarding", path / "actions", str,
                           '"accept", "drop" or "reject"')
        if forwarding is not None and _identity(forwarding) not in ("accept", "drop", "reject"):
            r.bad(path / "actions" / "forwarding", f"got {_show(forwarding)}",
                  '"accept", "drop" or "reject"')
    matches = r.get(ace, "matches", path, dict, "an object", required=False) or {}
    mpath = path / "matches"
    skip: list[str] = []
    ip_key, other_ip = ("ipv4", "ipv6") if family == 4 else ("ipv6", "ipv4")
    if other_ip in matches:
        r.bad(mpath / other_ip, "does not match the ACL's type",
              f'"{ip_key}" matches in an ipv{family}-acl-type ACL')
    protocol = host = network = None
    ip = r.get(matches, ip_key, mpath, dict, "an object", required=False)
    if ip is not None:
        ipath = mpath / ip_key
        protocol = r.integer(ip, "protocol", ipath, 0, 255, required=False)
        name = r.get(ip, _DST_DNS, ipath, str, "a DNS name", required=False)
        if name is not None:
            host = parse_host(name)
            if host is None:
                r.bad(ipath / _DST_DNS, f"got {_show(name)}", 'a DNS name such as "a.example"')
        src = r.get(ip, _SRC_DNS, ipath, str, "a DNS name", required=False)
        if src is not None and parse_host(src) is None:
            r.bad(ipath / _SRC_DNS, f"got {_show(src)}", 'a DNS name such as "a.example"')
        net_key = f"destination-ipv{family}-network"
        net_text = r.get(ip, net_key, ipath, str, f"an IPv{family} network", required=False)
        if net_text is not None:
            try:
                network = ipaddress.ip_network(net_text, strict=True)
                if network.version != family:
                    raise ValueError
            except ValueError:
                r.bad(ipath / net_key, f"got {_show(net_text)}",
                      f"an IPv{family} network such as "
                      + ('"192.0.2.0/24"' if family == 4 else '"2001:db8::/32"'))
        if host is not None and network is not None:
            r.bad(ipath, f"has both {_DST_DNS} and {net_key}", "at most one destination")
        skip += [f"matches on {k}" for k in _IP_UNENFORCED if k in ip]
    ports: tuple[PortRange, ...] | None = None
    inbound = False
    for l4, number in (("tcp", 6), ("udp", 17)):
        l4obj = r.get(matches, l4, mpath, dict, "an object", required=False)
        if l4obj is None:
            continue
        lpath = mpath / l4
        if protocol is not None and protocol != number:
            r.bad(mpath / ip_key / "protocol", f"is {protocol} beside {l4} matches",
                  f"{number} for {l4}")
        protocol = number
        port_obj = r.get(l4obj, "destination-port", lpath, dict, "an object", required=False)
        if port_obj is not None:
            ports = _ports(r, port_obj, lpath / "destination-port")
        src_obj = r.get(l4obj, "source-port", lpath, dict, "an object", required=False)
        if src_obj is not None:
            _ports(r, src_obj, lpath / "source-port")
            skip.append("matches on source-port")
        direction = r.get(l4obj, _DIRECTION, lpath, str, '"from-device" or "to-device"',
                          required=False)
        if direction is not None and direction not in ("from-device", "to-device"):
            r.bad(lpath / _DIRECTION, f"got {_show(direction)}", '"from-device" or "to-device"')
        if direction == "to-device":
            inbound = True
            skip.append("the remote side initiates it (direction-initiated to-device); "
                        "nothing may open a connection to a device")
        if l4 == "tcp":
            skip += [f"matches on TCP {k}" for k in ("flags", "sequence-number",
                                                     "acknowledgement-number") if k in l4obj]
    if "tcp" in matches and "udp" in matches:
        r.bad(mpath, 'has both "tcp" and "udp"', "at most one transport")
    if "icmp" in matches:
        icmp = r.get(matches, "icmp", mpath, dict, "an object")
        if protocol is not None and protocol not in (1, 58):
            r.bad(mpath / ip_key / "protocol", f"is {protocol} beside icmp matches",
                  "1 (IPv4) or 58 (IPv6) for icmp")
        protocol = 1 if family == 4 else 58
        if icmp:
            skip.append("matches on ICMP type or code")
    if "ietf-mud:mud" in matches:
        mud = r.get(matches, "ietf-mud:mud", mpath, dict, "an object")
        classes = ", ".join(sorted(mud)) if mud else "(none)"
        skip.append(f"MUD class matches ({classes}) are not supported")
    unknown = sorted(set(matches) - {"ipv4", "ipv6", "tcp", "udp", "icmp", "ietf-mud:mud"})
    if unknown:
        skip.append("matches on " + ", ".join(unknown))
    if protocol is not None and protocol not in _PROTOCOLS:
        skip.append(f"IP protocol {protocol} is not supported")
    if len(r.problems) > before:
        return None
    return _Ace(accept=forwarding is not None and _identity(forwarding) == "accept",
                protocol=protocol, host=host, network=network, ports=ports, inbound=inbound,
                skip="; ".join(skip) or None)


def _allowances(ace: _Ace, family: int) -> list[Allow]:
    """The profile entries equivalent to an importable from-device ACE."""
    network = ace.network
    if ace.host is None and network is None:
        network = ipaddress.ip_network("0.0.0.0/0" if family == 4 else "::/0")
    protocols: list[Protocol] = (["tcp", "udp", "icmp"] if ace.protocol is None
                                 else [_PROTOCOLS[ace.protocol]])
    out = []
    for proto in protocols:
        ports = () if proto == "icmp" else (ace.ports or _ALL_PORTS)
        out.append(Allow(proto, ports, cidr=network, host=ace.host))
    return out


def _policy_acls(r: _Reader, mud: dict[str, Any], key: str) -> list[tuple[_Path, str]]:
    """Names of the ACLs a from-/to-device policy refers to, with their paths."""
    path = _Path() / _MUD
    policy = r.get(mud, key, path, dict, 'an object with "access-lists"', required=False)
    if policy is None:
        return []
    lists = r.get(policy, "access-lists", path / key, dict, 'an object with "access-list"')
    if lists is None:
        return []
    out = []
    for item_path, item in r.items(lists, "access-list", path / key / "access-lists", "ACL"):
        name = r.get(item, "name", item_path, str, "the name of an ACL")
        if name is not None:
            out.append((item_path / "name", name))
    return out


def import_mud(text: str | bytes, source: str, name: str) -> MudImport:
    """The profile `name` holding what the MUD file `text` allows that the gateway can
    enforce; raises MudError listing every problem with its JSON path."""
    if len(text) > MAX_MUD_BYTES:
        raise MudError([f"{source}: {len(text)} bytes (expected at most {MAX_MUD_BYTES})"])
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise MudError([f"{source}:line {err.lineno}, column {err.colno}: "
                        f"JSON syntax error: {err.msg} (expected a MUD file in JSON)"]) from None
    except (UnicodeDecodeError, RecursionError) as err:
        raise MudError([f"{source}: cannot be read as JSON: {err} (expected UTF-8 JSON)"]
                       ) from None
    r = _Reader(source)
    root = _Path()
    if not isinstance(doc, dict):
        r.bad(root, f"got {_show(doc)}", "a JSON object")
        raise MudError(r.problems)
    if not PROFILE_NAME.fullmatch(name):
        r.bad(root, f"the profile name {json.dumps(name)} is not valid",
              "a-z, 0-9, _ and -, starting with a letter or digit, up to 40")
    mud = r.get(doc, _MUD, root, dict, "the MUD container object")
    url = systeminfo = None
    if mud is None:
        mud = {}
    else:
        mpath = root / _MUD
        r.integer(mud, "mud-version", mpath, 1, 1)
        url = r.get(mud, "mud-url", mpath, str, "an https:// URL")
        if url is not None and not url.startswith("https://"):
            r.bad(mpath / "mud-url", f"got {_show(url)}", "an https:// URL")
            url = None
        systeminfo = r.get(mud, "systeminfo", mpath, str, "a string", required=False)
        r.integer(mud, "cache-validity", mpath, 1, 168, required=False)
        r.get(mud, "is-supported", mpath, bool, "true or false", required=False)
        r.get(mud, "last-update", mpath, str, "a date-time string", required=False)
    from_acls = _policy_acls(r, mud, "from-device-policy")
    to_acls = _policy_acls(r, mud, "to-device-policy")

    # Every ACL is checked, used or not: a malformed file is rejected as a whole.
    acls: dict[str, tuple[int, list[tuple[_Path, _Ace]]]] = {}
    container = r.get(doc, _ACLS, root, dict, 'an object with "acl"',
                      required=bool(from_acls or to_acls))
    for acl_path, acl in (r.items(container, "acl", root / _ACLS, "ACL") if container else []):
        acl_name = r.get(acl, "name", acl_path, str, "the ACL's name")
        acl_type = r.get(acl, "type", acl_path, str, '"ipv4-acl-type" or "ipv6-acl-type"')
        family = 0
        if acl_type is not None:
            family = {"ipv4-acl-type": 4, "ipv6-acl-type": 6}.get(_identity(acl_type), 0)
            if not family:
                r.bad(acl_path / "type", f"got {_show(acl_type)}",
                      '"ipv4-acl-type" or "ipv6-acl-type"')
        if acl_name is not None and acl_name in acls:
            r.bad(acl_path / "name", f"{_show(acl_name)} is used twice", "unique ACL names")
        aces_obj = r.get(acl, "aces", acl_path, dict, 'an object with "ace"')
        entries: list[tuple[_Path, _Ace]] = []
        for ace_path, ace in (r.items(aces_obj, "ace", acl_path / "aces", "ACE")
                              if aces_obj is not None else []):
            read = _read_ace(r, ace, ace_path, family or 4)
            if read is not None:
                entries.append((ace_path, read))
        if acl_name is not None:
            acls[acl_name] = (family, entries)
    for ref_path, ref in [*from_acls, *to_acls]:
        if ref not in acls:
            r.bad(ref_path, f"no ACL named {json.dumps(ref)}",
                  f"the name of an ACL in $.{_ACLS}.acl")
    if r.problems:
        raise MudError(r.problems)

    allow: list[Allow] = []
    for _, ref in from_acls:
        family, entries = acls[ref]
        for entry_path, entry in entries:
            if not entry.accept:
                r.note(entry_path, "a drop/reject entry: already the default, skipped")
            elif entry.skip is not None:
                r.note(entry_path, f"not imported: {entry.skip}")
            else:
                allow += [a for a in _allowances(entry, family) if a not in allow]
    for _, ref in to_acls:
        for entry_path, entry in acls[ref][1]:
            if entry.accept and entry.inbound:
                r.note(entry_path, "not imported: inbound connections are never allowed")
    if not from_acls:
        r.note(root / _MUD, "no from-device-policy: the device may reach nothing")
    description = f"Imported from the MUD file {url}"
    if systeminfo:
        description += f" ({systeminfo})"
    return MudImport(Profile(name, tuple(allow), (), description), url or "", tuple(r.notes))


def load_mud(path: Path, name: str | None = None) -> MudImport:
    """Import the MUD file at `path`; the profile is named `name` or after the file."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise MudError([f"{path}: cannot read: {err} (expected a MUD file)"]) from None
    if name is None:
        name = re.sub(r"[^a-z0-9_-]+", "-", path.stem.lower()).strip("-_")[:40] or "mud"
    return import_mud(data, str(path), name)
