"""Discovery: what the gateway announces by mDNS, and what it finds on the IoT segment.

Announced, each only on the address it belongs to (never a wildcard): the admin page
(`_home-gateway._tcp`) on the LAN-side addresses of `web.listen`, and the broker
(`_secure-mqtt._tcp`, or `_mqtt._tcp` for a plain-text listener) on the listeners inside
`network.iot_subnets`. The IoT segment is browsed from those same broker addresses.

Found services and dnsmasq's DHCP leases go into the store's `discovered` inventory. They
stay there as "new" (the firewall treats an unknown address as quarantined) until the admin
adopts one as a device (it gets a credential) or ignores it. Each is matched to known
devices by address and MAC.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.config import Config, is_loopback, split_listen
from gateway.devices.registry import DeviceConflict, DeviceUnknown
from gateway.devices.service import DeviceService
from gateway.discovery.dhcp import Lease, LeaseWatcher
from gateway.discovery.mdns import Advert, Found, MdnsService
from gateway.store import Device, Discovered, Store

log = logging.getLogger(__name__)

KEEP = 500  # sightings kept (adopted ones always are): a noisy segment cannot fill the disk


def _in(address: str, networks: Iterable[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n) for n in networks)


def plan(config: Config, host_name: str) -> tuple[list[tuple[str, Advert]], list[str]]:
    """(address, advert) pairs to announce and the addresses to browse from."""
    adverts: list[tuple[str, Advert]] = []
    iot = config.network.iot_subnets
    for listen in config.web.listen:
        host, port = split_listen(listen)
        if is_loopback(host) or host == "localhost" or _in(host, iot):
            continue
        scheme = "http" if config.web.tls == "auto" and is_loopback(host) else "https"
        adverts.append((host, Advert("_home-gateway._tcp.local.", f"Home Gateway ({host_name})",
                                     port, {"path": "/", "scheme": scheme})))
    browse: list[str] = []
    if config.broker.mode == "embedded":
        for listener in config.broker.listeners:
            if not _in(listener.address, iot):
                continue
            kind = "_secure-mqtt._tcp.local." if listener.tls else "_mqtt._tcp.local."
            adverts.append((listener.address, Advert(kind, f"Home Gateway broker ({host_name})",
                                                     listener.port, {"tls": str(listener.tls
                                                                                ).lower()})))
            if listener.address not in browse:
                browse.append(listener.address)
    return adverts, browse


def matches(item: Discovered, devices: Sequence[Device]) -> str | None:
    """The known device with this sighting's MAC or one of its addresses."""
    for device in devices:
        if item.mac and device.mac == item.mac:
            return device.id
        if set(item.addresses) & set(device.addresses):
            return device.id
    return None


class DiscoveryService:
    def __init__(self, config: Config, store: Store, devices: DeviceService) -> None:
        self.config = config
        self.store = store
        self.devices = devices
        self.mdns: MdnsService | None = None
        self.leases: LeaseWatcher | None = None
        self._leased: set[str] = set()

    async def start(self) -> None:
        settings = self.config.discovery
        if settings.mdns:
            adverts, browse = plan(self.config, socket.gethostname())
            if adverts or browse:
                self.mdns = MdnsService(adverts, browse, self._found, self._lost)
                await self.mdns.start()
        if settings.dhcp and self.config.network.iot is not None:
            self.leases = LeaseWatcher(settings.dhcp_leases, self._on_leases)
            await self.leases.start()

    async def stop(self) -> None:
        if self.mdns is not None:
            await self.mdns.stop()
        if self.leases is not None:
            await self.leases.stop()

    # -- sightings ---------------------------------------------------------------------

    def _found(self, found: Found) -> None:
        now = time.time()
        key = f"mdns:{found.name}"
        known = self.store.discovered(key)
        first = known[0].first_seen if known else now
        self.store.upsert_discovered(Discovered(
            key=key, source="mdns", name=found.name, type=found.type,
            addresses=found.addresses, port=found.port, txt=found.txt, mac=None,
            hostname=found.server, first_seen=first, last_seen=now, present=True), KEEP)

    def _lost(self, name: str) -> None:
        self.store.set_discovered_present([f"mdns:{name}"], False)

    def _on_leases(self, leases: Sequence[Lease]) -> None:
        now = time.time()
        iot = self.config.network.iot_subnets
        current: set[str] = set()
        for lease in leases:
            if not _in(lease.ip, iot):
                continue
            key = f"dhcp:{lease.mac}"
            current.add(key)
            known = self.store.discovered(key)
            self.store.upsert_discovered(Discovered(
                key=key, source="dhcp", name=lease.hostname or lease.mac, type="dhcp",
                addresses=(lease.ip,), port=None, txt={}, mac=lease.mac,
                hostname=lease.hostname, first_seen=known[0].first_seen if known else now,
                last_seen=now, present=True), KEEP)
        self.store.set_discovered_present(self._leased - current, False)
        self._leased = current

    # -- the inventory -----------------------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        devices = self.devices.devices()
        rows = []
        for item in self.store.discovered():
            match = item.device_id if item.status == "adopted" else matches(item, devices)
            rows.append({"key": item.key, "source": item.source, "name": item.name,
                         "type": item.type, "addresses": list(item.addresses),
                         "port": item.port, "txt": dict(item.txt), "mac": item.mac,
                         "hostname": item.hostname, "first_seen": item.first_seen,
                         "last_seen": item.last_seen, "present": item.present,
                         "status": item.status, "device": match})
        return rows

    def _item(self, key: str) -> Discovered:
        found = self.store.discovered(key)
        if not found:
            raise DeviceUnknown(f"nothing discovered as {key!r}")
        return found[0]

    async def adopt(self, key: str, device_id: str, kind: str, name: str | None,
                    actor: str) -> tuple[Device, str, str]:
        """Register the sighting as a device (with its MAC and IoT address) and issue its
        credential: (device, username, secret)."""
        item = self._item(key)
        if item.status == "adopted":
            raise DeviceConflict(f"{key!r} was already adopted as {item.device_id}")
        known = matches(item, self.devices.devices())
        if known is not None:
            raise DeviceConflict(f"{key!r} is already the device {known} (same MAC or address)")
        ips = [a for a in item.addresses if _in(a, self.config.network.iot_subnets)]
        device = await self.devices.add(device_id, kind, name=name, source="discovery",
                                        mac=item.mac, ip=" ".join(ips) or None, actor=actor)
        username, secret = await self.devices.issue_credential(device.id, actor)
        self.store.set_discovered_status(key, "adopted", device.id)
        self.store.audit(actor, "discovery.adopt", "ok", target=device.id,
                         detail=f"{item.source} {item.name}")
        return device, username, secret

    def ignore(self, key: str, actor: str, ignored: bool = True) -> None:
        item = self._item(key)
        if item.status == "adopted":
            raise DeviceConflict(f"{key!r} was adopted as {item.device_id}; remove the device")
        self.store.set_discovered_status(key, "ignored" if ignored else "new", None)
        self.store.audit(actor, "discovery.ignore" if ignored else "discovery.unignore", "ok",
                         target=key)

    def status(self) -> dict[str, Any]:
        rows = self.store.discovered()
        return {
            "mdns": self.mdns.status() if self.mdns else {"enabled": False},
            "dhcp": self.leases.status() if self.leases else {"enabled": False},
            "found": len(rows),
            "new": sum(1 for r in rows if r.status == "new" and r.present),
        }
