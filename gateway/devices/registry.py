"""The device registry: adding, credentialing and removing devices in the store.

Used by the running daemon (which then updates the live broker) and by the CLI when no
daemon runs (the broker picks the change up when it is next rendered).
"""

from __future__ import annotations

import ipaddress
import re

from gateway.credentials.secrets import hash_password, new_secret
from gateway.devices.kinds import KINDS
from gateway.devices.topics import DEVICE_ID
from gateway.store import Device, Store

MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")


class DeviceError(ValueError):
    """A device request that cannot be done; str() says why (bad input unless a subclass
    says otherwise)."""


class DeviceConflict(DeviceError):
    """It clashes with what exists: a device with that id, a sighting adopted already."""


class DeviceUnknown(DeviceError):
    """What it names does not exist (any more)."""


def normalize_mac(mac: str) -> str:
    """'AA-BB-…' -> 'aa:bb:…'; raises DeviceError for anything else."""
    if not MAC.fullmatch(mac.lower()):
        raise DeviceError(f"MAC address {mac!r} is not like aa:bb:cc:dd:ee:ff")
    return mac.lower().replace("-", ":")


def normalize_ip(ip: str) -> str:
    """One address, or several (IPv4 and IPv6) separated by spaces or commas -> normalized
    and space-separated, as the registry keeps them."""
    out = []
    for part in ip.replace(",", " ").split():
        try:
            out.append(str(ipaddress.ip_address(part)))
        except ValueError:
            raise DeviceError(f"{part!r} is not an IPv4 or IPv6 address") from None
    if not out:
        raise DeviceError("no IP address given")
    return " ".join(dict.fromkeys(out))


def check_device(id: str, kind: str) -> None:
    if not DEVICE_ID.fullmatch(id):
        raise DeviceError(f"device id {id!r} must be 3 to 40 of a-z, 0-9 and '-'")
    if kind not in KINDS:
        raise DeviceError(f"unknown kind {kind!r} (expected one of: {', '.join(sorted(KINDS))})")


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, id: str, kind: str, *, name: str | None = None, source: str,
            mac: str | None = None, ip: str | None = None, actor: str = "admin") -> Device:
        """Register a device. Declarations from the config (source "config") update their
        own earlier entry; anything else that exists already is an error."""
        check_device(id, kind)
        existing = self.store.device(id)
        if existing is not None and existing.status != "removed" and not (
                source == "config" == existing.source):
            raise DeviceConflict(f"device {id!r} already exists (added by {existing.source}); "
                              "`home-gateway device credential` issues a new credential")
        device = self.store.add_device(
            id, name or id, kind, status="adopted", source=source,
            mac=normalize_mac(mac) if mac else None, ip=normalize_ip(ip) if ip else None)
        if existing is None or existing.status == "removed":
            self.store.audit(actor, "device.add", "ok", target=id, detail=f"kind={kind}")
        return device

    def issue_credential(self, id: str, actor: str = "admin") -> tuple[str, str]:
        """A new broker credential for `id`, replacing any older one: (username, secret).
        Only the hash is stored; the secret is returned once and never kept."""
        device = self.store.device(id)
        if device is None or device.status == "removed":
            raise DeviceUnknown(f"no device {id!r}")
        secret = new_secret()
        username = self.store.replace_credential(id, hash_password(secret))
        self.store.audit(actor, "credential.issue", "ok", target=id, detail=f"user={username}")
        return username, secret

    def remove(self, id: str, actor: str = "admin") -> list[str]:
        """Mark `id` removed and drop its credentials; return the usernames dropped."""
        device = self.store.device(id)
        if device is None or device.status == "removed":
            raise DeviceUnknown(f"no device {id!r}")
        usernames = [c.username for c in self.store.credentials(id)]
        self.store.delete_credentials(id)
        self.store.set_device_status(id, "removed")
        self.store.audit(actor, "device.remove", "ok", target=id)
        return usernames
