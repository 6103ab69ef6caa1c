"""The mDNS edge: announce the gateway's services and browse the IoT segment (zeroconf).

One `AsyncZeroconf` per local address (`interfaces=[address]`, IPv4 or IPv6 only), so a
service announced on address A carries only A. zeroconf alone does not keep the segments
apart (checked with 0.47.3 and 0.154):

  * every instance listens on the wildcard socket *:5353. Linux delivers a multicast
    datagram to every socket bound to the port once any socket joined the group on the
    arriving interface (IP_MULTICAST_ALL defaults to on), so the instance of the IoT address
    also hears the LAN's queries and answers;
  * a query with the unicast-response bit (QU) or from a port other than 5353 ("legacy
    unicast") is answered by unicast to its source, through the socket it came in on;
    a unicast query to the IoT address arriving on the LAN interface (weak host model)
    reaches the instance bound to the IoT address.

So without help, a LAN host asking a QU question, or a legacy query to any of the gateway's
addresses, gets the IoT-side services by unicast, and an instance browsing the IoT side also
caches what the LAN announces. `_ScopeGuard` prevents both: every datagram an instance
receives must come from its own segment (an IPv4 source inside a network of the address's
interface; an IPv6 source inside one of its prefixes, or link-local with that interface's
scope id); anything else is dropped before zeroconf parses it. Answers therefore only go to
hosts on the segment (sent unicast to an on-link address, or multicast through the sockets
bound to that interface), and `_ScopedZeroconf.async_send` refuses any unicast destination
outside the segment as a second line. (Turning IP_MULTICAST_ALL off on the listen sockets
is no help: with several SO_REUSEPORT sockets on *:5353, Linux 6.x then hands each multicast
datagram to one socket of the group only, often the wrong one.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import ifaddr
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger(__name__)

MAX_NAME = 255  # characters of a name from the network (instance, server)
MAX_TXT_KEYS = 40
MAX_TXT_KEY = 64
MAX_TXT_VALUE = 255
MAX_ADDRESSES = 16
QUERY_INTERVAL_MS = 1000  # the browser's first re-query (0.47's default; 0.15x waits 10 s)
RESOLVE_TIMEOUT_MS = 3000


BROWSE_TYPES: tuple[str, ...] = (
    "_http._tcp.local.",
    "_hap._tcp.local.",  # HomeKit accessories
    "_googlecast._tcp.local.",
    "_esphomelib._tcp.local.",
    "_shelly._tcp.local.",
    "_mqtt._tcp.local.",
    "_matter._tcp.local.",  # commissioned Matter nodes
    "_matterc._udp.local.",  # commissionable Matter nodes
    "_airplay._tcp.local.",
    "_ipp._tcp.local.",
    "_printer._tcp.local.",
    "_sonos._tcp.local.",
    "_hue._tcp.local.",
    "_wled._tcp.local.",
    "_miio._udp.local.",  # Xiaomi
    "_workstation._tcp.local.",
)


@dataclass(frozen=True, slots=True)
class Advert:
    """One service the gateway announces."""

    type: str  # e.g. "_home-gateway._tcp.local."
    name: str  # instance name, e.g. "Home Gateway (pi)"
    port: int
    txt: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Found:
    """One service seen on a segment (every field capped and decoded from the network)."""

    name: str  # full instance name, e.g. "shelly-plug-1._shelly._tcp.local."
    type: str  # "_shelly._tcp.local."
    addresses: tuple[str, ...]
    port: int
    txt: Mapping[str, str]  # utf-8 (errors replaced), keys lower-cased, None -> ""
    server: str | None


# --- decoding what the network says -----------------------------------------------------


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clean_text(text: str, limit: int) -> str:
    """Control characters replaced (U+FFFD), at most `limit` characters."""
    return _CONTROL.sub("\ufffd", text[:limit])


def _decode(value: bytes | str, limit: int) -> str:
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    return clean_text(text, limit)


def decode_txt(properties: Mapping[Any, Any]) -> dict[str, str]:
    """A TXT record's key/value pairs, capped and decoded; the first of duplicate keys wins."""
    txt: dict[str, str] = {}
    for key, value in list(properties.items())[: MAX_TXT_KEYS * 2]:
        if len(txt) >= MAX_TXT_KEYS:
            break
        if not isinstance(key, bytes | str) or not key:
            continue
        name = _decode(key, MAX_TXT_KEY).lower()
        if name in txt:
            continue
        txt[name] = "" if value is None or not isinstance(value, bytes | str) else _decode(
            value, MAX_TXT_VALUE)
    return txt


def found_from_info(info: Any) -> Found:
    """A resolved zeroconf ServiceInfo (0.47 or 0.15x) as a Found."""
    addresses: list[str] = []
    for address in info.parsed_addresses()[:MAX_ADDRESSES]:
        with contextlib.suppress(ValueError):
            addresses.append(str(ipaddress.ip_address(address)))
    server = clean_text(info.server, MAX_NAME) if info.server else None
    return Found(name=clean_text(info.name, MAX_NAME), type=clean_text(info.type, MAX_NAME),
                 addresses=tuple(sorted(set(addresses), key=_address_key)),
                 port=int(info.port or 0), txt=decode_txt(info.properties or {}), server=server)


def _address_key(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return (ip.version, int(ip))


# --- one segment: the local address, its interface and what may talk to it -----------------


@dataclass(frozen=True)
class Segment:
    address: str
    version: int  # 4 or 6
    interface: str  # e.g. "eth0"
    index: int  # interface index
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    def allows(self, source: str, scope_id: int | None = None) -> bool:
        """Whether a datagram from `source` (an on-link host) belongs to this segment."""
        try:
            ip = ipaddress.ip_address(source.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.version != self.version:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.is_link_local:
            return scope_id == self.index
        return any(ip in network for network in self.networks)


def find_segment(address: str) -> Segment:
    """The local interface that holds `address` and its networks; ValueError if none does."""
    ip = ipaddress.ip_address(address)
    for adapter in ifaddr.get_adapters():
        for entry in adapter.ips:
            local = entry.ip[0] if isinstance(entry.ip, tuple) else entry.ip
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(local) != ip:
                    continue
                networks = []
                for other in adapter.ips:
                    other_ip = other.ip[0] if isinstance(other.ip, tuple) else other.ip
                    with contextlib.suppress(ValueError):
                        net = ipaddress.ip_interface(f"{other_ip}/{other.network_prefix}").network
                        if net.version == ip.version and not (
                                net.version == 6 and net.network_address.is_link_local):
                            networks.append(net)
                name = adapter.name if isinstance(adapter.name, str) else str(adapter.name)
                return Segment(str(ip), ip.version, name, int(adapter.index or 0),
                               tuple(networks))
    raise ValueError(f"no local interface has the address {address}")


class _ScopeGuard(asyncio.DatagramProtocol):
    """Sits between a zeroconf socket and its listener: only the segment's datagrams pass."""

    def __init__(self, inner: Any, segment: Segment, counter: Callable[[], None]) -> None:
        self.inner = inner
        self.segment = segment
        self.counter = counter

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        scope = addr[3] if len(addr) >= 4 else None
        if not self.segment.allows(str(addr[0]), scope):
            self.counter()
            return
        self.inner.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.inner.error_received(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def __getattr__(self, name: str) -> Any:  # pause_writing and whatever else asyncio calls
        return getattr(self.inner, name)


class _ScopedZeroconf(Zeroconf):
    """A Zeroconf that sends unicast only to hosts on its own segment."""

    segment: Segment | None = None
    refused = 0

    def async_send(self, out: Any, addr: str | None = None, *args: Any, **kwargs: Any) -> None:
        segment = self.segment
        if addr is not None and segment is not None:
            flow_scope = args[1] if len(args) >= 2 else kwargs.get("v6_flow_scope", ())
            scope = flow_scope[1] if len(flow_scope) == 2 else None
            if not segment.allows(addr, scope):
                self.refused += 1
                log.debug("mdns %s: not sending to %s, off the segment", segment.address, addr)
                return
        super().async_send(out, addr, *args, **kwargs)


@dataclass
class _Scoped:
    """A started, guarded zeroconf instance for one local address."""

    segment: Segment
    aiozc: AsyncZeroconf
    dropped: list[int] = field(default_factory=lambda: [0])

    @property
    def zc(self) -> _ScopedZeroconf:
        return cast(_ScopedZeroconf, self.aiozc.zeroconf)

    def counts(self) -> dict[str, int]:
        return {"dropped_off_segment": self.dropped[0], "refused_sends": self.zc.refused}


def _raw_transport(reader: Any) -> Any:
    """zeroconf 0.15x wraps its transports; 0.47 keeps asyncio's."""
    return getattr(reader, "transport", reader)


async def open_scoped(address: str) -> _Scoped:
    """A started AsyncZeroconf on `address` alone, guarded as the module docstring says."""
    segment = find_segment(address)
    version = IPVersion.V6Only if segment.version == 6 else IPVersion.V4Only
    zc = _ScopedZeroconf(interfaces=[segment.address], ip_version=version)
    zc.segment = segment
    aiozc = AsyncZeroconf(zc=zc)
    scoped = _Scoped(segment, aiozc)
    try:
        await zc.async_wait_for_start()

        def count() -> None:
            scoped.dropped[0] += 1

        for reader in list(zc.engine.readers):
            transport = _raw_transport(reader)
            transport.set_protocol(_ScopeGuard(transport.get_protocol(), segment, count))
        # What arrived before the guard stood may be from another segment: forget it.
        cache = zc.cache
        records = [record for entries in list(cache.cache.values()) for record in entries]
        if records:
            cache.async_remove_records(records)
    except BaseException:
        await aiozc.async_close()
        raise
    return scoped


# --- names --------------------------------------------------------------------------------


def _label(text: str, limit: int = 63) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:limit].strip("-")


def server_name(host_name: str, segment: Segment) -> str:
    """`<host>-hg-<interface>.local.`: one per interface, so the names never collide."""
    host = _label(host_name.split(".", 1)[0], 40) or "gateway"
    where = _label(segment.interface, 20) or _label(segment.address.replace(":", "-"), 20)
    return f"{host}-hg-{where}.local."


def _service_info(advert: Advert, server: str, addresses: Iterable[str]) -> AsyncServiceInfo:
    packed = []
    for address in addresses:
        ip = ipaddress.ip_address(address)
        packed.append(ip.packed)
    return AsyncServiceInfo(advert.type, f"{advert.name}.{advert.type}", port=advert.port,
                            properties=dict(advert.txt), server=server, addresses=packed)


async def _register(aiozc: AsyncZeroconf, info: AsyncServiceInfo) -> None:
    await (await aiozc.async_register_service(info, allow_name_change=True))


def _noop(_: str) -> None:
    return None


# --- the service ----------------------------------------------------------------------------


@dataclass
class _Site:
    address: str
    adverts: list[Advert]
    browse: bool
    scoped: _Scoped | None = None
    infos: list[tuple[Advert, AsyncServiceInfo | None, str | None]] = field(default_factory=list)
    browser: AsyncServiceBrowser | None = None
    errors: list[str] = field(default_factory=list)


class MdnsService:
    """Announces adverts on their addresses and browses the given addresses' segments."""

    def __init__(self, adverts: Sequence[tuple[str, Advert]], browse: Sequence[str],
                 on_found: Callable[[Found], None], on_lost: Callable[[str], None] = _noop,
                 types: Sequence[str] = BROWSE_TYPES,
                 host_name: str = socket.gethostname()) -> None:
        self.on_found = on_found
        self.on_lost = on_lost
        self.types = list(types)
        self.host_name = host_name
        self._sites: dict[str, _Site] = {}
        for address, advert in adverts:
            self._site(address).adverts.append(advert)
        for address in browse:
            self._site(address).browse = True
        self._found: dict[str, Found] = {}  # lower-cased name -> what was reported
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._own: set[str] = set()  # our own services' names (lower case): never "found"
        self._started = False

    def _site(self, address: str) -> _Site:
        key = address
        with contextlib.suppress(ValueError):
            key = str(ipaddress.ip_address(address))
        return self._sites.setdefault(key, _Site(key, [], False))

    async def start(self) -> None:
        self._started = True
        await asyncio.gather(*(self._start_site(site) for site in self._sites.values()))

    async def _start_site(self, site: _Site) -> None:
        try:
            site.scoped = await open_scoped(site.address)
        except Exception as e:
            self._error(site, f"cannot open mDNS on {site.address}: {e}")
            return
        segment = site.scoped.segment
        server = server_name(self.host_name, segment)
        for advert in site.adverts:
            self._own.add(f"{advert.name}.{advert.type}".lower())

        async def announce(advert: Advert) -> tuple[Advert, AsyncServiceInfo | None, str | None]:
            try:
                info = _service_info(advert, server, [site.address])
                assert site.scoped is not None
                await _register(site.scoped.aiozc, info)
            except Exception as e:
                self._error(site, f"cannot announce {advert.name!r} ({advert.type}): "
                            f"{type(e).__name__}: {e}")
                return advert, None, f"{type(e).__name__}: {e}"
            self._own.add(info.name.lower())
            log.info("mdns %s (%s): announced %s port %d", site.address, segment.interface,
                     info.name, advert.port)
            return advert, info, None

        site.infos = list(await asyncio.gather(*(announce(a) for a in site.adverts)))
        if site.browse and self.types:
            try:
                site.browser = AsyncServiceBrowser(
                    site.scoped.aiozc.zeroconf, list(self.types), handlers=[self._make_handler()],
                    delay=QUERY_INTERVAL_MS)
            except Exception as e:
                self._error(site, f"cannot browse on {site.address}: {type(e).__name__}: {e}")
            else:
                log.info("mdns %s (%s): browsing %d service types", site.address,
                         segment.interface, len(self.types))

    def _error(self, site: _Site, message: str) -> None:
        log.warning("mdns: %s", message)
        site.errors.append(message)

    def _make_handler(self) -> Callable[..., None]:
        def handler(zeroconf: Zeroconf, service_type: str, name: str,
                    state_change: ServiceStateChange) -> None:
            self._on_event(zeroconf, service_type, name, state_change)

        return handler

    def _on_event(self, zc: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        if len(name) > MAX_NAME or len(service_type) > MAX_NAME:
            return
        key = name.lower()
        if key in self._own:
            return
        if state_change is ServiceStateChange.Removed:
            task = self._resolving.pop(key, None)
            if task is not None:
                task.cancel()
            self._dirty.discard(key)
            if self._found.pop(key, None) is not None:
                self._call(self.on_lost, clean_text(name, MAX_NAME))
            return
        if key in self._resolving:
            self._dirty.add(key)  # resolve again once the running one is done
            return
        self._resolving[key] = asyncio.get_running_loop().create_task(
            self._resolve(zc, service_type, name, key))

    async def _resolve(self, zc: Zeroconf, service_type: str, name: str, key: str) -> None:
        try:
            while True:
                self._dirty.discard(key)
                try:
                    info = AsyncServiceInfo(service_type, name)
                    ok = await info.async_request(zc, RESOLVE_TIMEOUT_MS)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.debug("mdns: cannot resolve %r: %s", name, e)
                    ok = False
                if ok:
                    found = found_from_info(info)
                    if self._found.get(key) != found:
                        self._found[key] = found
                        self._call(self.on_found, found)
                if key not in self._dirty:
                    return
        finally:
            if self._resolving.get(key) is asyncio.current_task():
                del self._resolving[key]

    @staticmethod
    def _call(callback: Callable[[Any], None], arg: Any) -> None:
        try:
            callback(arg)
        except Exception:
            log.exception("mdns: callback failed")

    async def stop(self) -> None:
        tasks = list(self._resolving.values())
        self._resolving.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.gather(*(self._stop_site(site) for site in self._sites.values()))
        self._started = False

    async def _stop_site(self, site: _Site) -> None:
        if site.browser is not None:
            with contextlib.suppress(Exception):
                await site.browser.async_cancel()
            site.browser = None
        if site.scoped is None:
            return
        aiozc, site.scoped = site.scoped.aiozc, None
        try:
            await aiozc.async_unregister_all_services()  # goodbye packets
        except Exception as e:
            log.warning("mdns %s: goodbye failed: %s", site.address, e)
        with contextlib.suppress(Exception):
            await aiozc.async_close()
        site.infos = [(advert, None, error) for advert, _, error in site.infos]

    def found(self) -> list[Found]:
        return list(self._found.values())

    def status(self) -> dict[str, Any]:
        addresses: dict[str, Any] = {}
        for address, site in self._sites.items():
            adverts = [{"type": advert.type, "name": info.name if info else advert.name,
                        "port": advert.port, "announced": info is not None, "error": error}
                       for advert, info, error in site.infos]
            if not site.infos:
                adverts = [{"type": a.type, "name": a.name, "port": a.port, "announced": False,
                            "error": None} for a in site.adverts]
            entry: dict[str, Any] = {
                "interface": site.scoped.segment.interface if site.scoped else None,
                "adverts": adverts, "browsing": site.browser is not None,
                "errors": list(site.errors)}
            if site.scoped is not None:
                entry.update(site.scoped.counts())
            addresses[address] = entry
        return {"running": self._started, "addresses": addresses, "found": len(self._found)}


# --- helpers for simulated devices and tests --------------------------------------------------


class Announcement:
    """One advert announced by `announce`; `close()` says goodbye."""

    def __init__(self, scoped: _Scoped, info: AsyncServiceInfo) -> None:
        self._scoped: _Scoped | None = scoped
        self.info = info
        self.name: str = info.name

    async def close(self) -> None:
        scoped, self._scoped = self._scoped, None
        if scoped is None:
            return
        try:
            await scoped.aiozc.async_unregister_all_services()
        finally:
            await scoped.aiozc.async_close()


async def announce(address: str, advert: Advert, addresses: Sequence[str]) -> Announcement:
    """Announce `advert` on `address`'s segment, with `addresses` in its address records."""
    scoped = await open_scoped(address)
    try:
        server = f"{_label(advert.name) or 'device'}.local."
        info = _service_info(advert, server, addresses)
        await _register(scoped.aiozc, info)
    except BaseException:
        await scoped.aiozc.async_close()
        raise
    return Announcement(scoped, info)


async def browse_once(address: str, types: Sequence[str], timeout: float) -> list[Found]:
    """Browse `address`'s segment for `timeout` seconds; the services found, resolved.

    Returns within about `timeout` + 1 s (a service seen late gets that long to resolve).
    """
    found: dict[str, Found] = {}

    def on_found(item: Found) -> None:
        found[item.name.lower()] = item

    def on_lost(name: str) -> None:
        found.pop(name.lower(), None)

    service = MdnsService([], [address], on_found, on_lost, types=types)
    await service.start()
    try:
        errors = [e for site in service._sites.values() for e in site.errors]
        if errors:
            raise OSError("; ".join(errors))
        await asyncio.sleep(timeout)
        pending = [t for t in service._resolving.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=1.0)
    finally:
        await service.stop()
    return sorted(found.values(), key=lambda f: f.name)


# --- command line (for the netns tests and for looking around by hand) ----------------------


def _found_json(found: Found) -> dict[str, Any]:
    return {"name": found.name, "type": found.type, "addresses": list(found.addresses),
            "port": found.port, "txt": dict(found.txt), "server": found.server}


def _emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


def _advert(text: str) -> tuple[str, Advert]:
    spec = json.loads(text)
    return spec["address"], Advert(spec["type"], spec["name"], int(spec["port"]),
                                   {str(k): str(v) for k, v in spec.get("txt", {}).items()})


async def _until_stdin_closes_or_signal(on_line: Callable[[str], None] = _noop) -> None:
    """Wait for EOF on stdin, SIGTERM or SIGINT; hand every line read to `on_line`."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    fd = sys.stdin.fileno()
    pending = b""

    def readable() -> None:
        nonlocal pending
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            stop.set()
            return
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            on_line(line.decode(errors="replace").strip())

    loop.add_reader(fd, readable)
    try:
        await stop.wait()
    finally:
        loop.remove_reader(fd)


async def _main(args: argparse.Namespace) -> int:
    if args.command == "serve":
        service = MdnsService([_advert(a) for a in args.advertise], args.browse,
                              lambda f: _emit("found", **_found_json(f)),
                              lambda name: _emit("lost", name=name),
                              types=args.type or BROWSE_TYPES,
                              host_name=args.host_name or socket.gethostname())
        await service.start()
        _emit("ready", status=service.status())

        def command(line: str) -> None:
            if line == "status":
                _emit("status", status=service.status())

        await _until_stdin_closes_or_signal(command)
        status = service.status()
        await service.stop()
        _emit("stopped", status=status)
        return 0
    if args.command == "announce":
        address, advert = _advert(args.advert)
        handle = await announce(address, advert, args.addresses or [address])
        _emit("ready", name=handle.name)
        await _until_stdin_closes_or_signal()
        await handle.close()
        _emit("stopped", name=handle.name)
        return 0
    found = await browse_once(args.address, args.type or BROWSE_TYPES, args.timeout)
    _emit("browsed", found=[_found_json(f) for f in found])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.discovery.mdns",
                                     description="mDNS announce/browse, one segment each")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="the gateway side: JSON lines until stdin closes "
                           "(a line `status` on stdin prints the status)")
    serve.add_argument("--advertise", action="append", default=[],
                       help='JSON {"address", "type", "name", "port", "txt"}')
    serve.add_argument("--browse", action="append", default=[], help="local address")
    serve.add_argument("--type", action="append", help="service type to browse")
    serve.add_argument("--host-name")
    one = sub.add_parser("announce", help="announce one service until stdin closes")
    one.add_argument("advert", help='JSON {"address", "type", "name", "port", "txt"}')
    one.add_argument("--addresses", nargs="*")
    browse = sub.add_parser("browse", help="browse once and print what was found")
    browse.add_argument("address")
    browse.add_argument("--type", action="append")
    browse.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    if args.verbose:
        logging.getLogger("zeroconf").setLevel(logging.DEBUG)  # zeroconf sets its own level
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
