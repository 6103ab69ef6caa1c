"""Home Assistant's own login on the gateway's broker, and its rotation.

Home Assistant cannot take part in a rotation handshake the way a device does: its MQTT
password is typed into its integration by a person. So a rotation creates the next login
(`homeassistant:<n>`) beside the current one and shows it on the Home Assistant page; the
old login is deleted as soon as Home Assistant has logged in with the new one (the broker's
log tells), never by a timer, so an unattended rotation cannot cut Home Assistant off.

The gateway keeps the password itself (the page shows it) in a 0600 JSON file; the broker
gets only its hash, rendered from this file at every broker start.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from gateway.broker.dynsec import DynsecClient
from gateway.broker.render import create_login_commands, delete_login_commands
from gateway.credentials.secrets import new_secret, write_private
from gateway.devices.topics import HA_BRIDGE_ROOT
from gateway.store import Store

log = logging.getLogger(__name__)

BASE_USERNAME = "homeassistant"  # ':' never occurs in a device login, so no clash
DAY_S = 86400.0


def ha_acls(prefix: str) -> list[dict[str, object]]:
    """Home Assistant may read its discovery tree and the gateway's, announce its birth
    and will under its prefix, and send commands on the `set` topics; nothing else (it
    cannot forge a device's state or touch the devices' own topics)."""
    acls: list[dict[str, object]] = []
    for topic in (f"{prefix}/#", f"{HA_BRIDGE_ROOT}/#"):
        acls.append({"acltype": "subscribePattern", "topic": topic, "allow": True})
        acls.append({"acltype": "publishClientReceive", "topic": topic, "allow": True})
    for topic in (f"{prefix}/#", f"{HA_BRIDGE_ROOT}/+/+/set"):
        acls.append({"acltype": "publishClientSend", "topic": topic, "allow": True})
    return acls


class HaLogin:
    def __init__(self, path: Path, store: Store, dynsec: DynsecClient, prefix: str) -> None:
        self.path = path
        self.store = store
        self.dynsec = dynsec
        self.prefix = prefix
        self.last_login: dict[str, Any] | None = None  # since start: username, address, at
        self._data = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
            current = data["current"]
            if not (isinstance(current["username"], str) and isinstance(current["password"],
                                                                        str)):
                raise ValueError("bad login")
            if self.path.stat().st_mode & 0o077:
                self.path.chmod(0o600)
            return dict(data)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("homeassistant: %s is unreadable (%s); a new login is issued", self.path,
                      exc)
        data = {"current": self._new(1), "previous": None}
        self._save(data)
        return data

    @staticmethod
    def _new(number: int) -> dict[str, Any]:
        return {"username": f"{BASE_USERNAME}:{number}", "password": new_secret(),
                "issued_at": time.time()}

    def _save(self, data: dict[str, Any]) -> None:
        write_private(self.path, json.dumps(data, indent=1) + "\n")

    @property
    def current(self) -> dict[str, Any]:
        return dict(self._data["current"])

    @property
    def previous(self) -> dict[str, Any] | None:
        previous = self._data.get("previous")
        return dict(previous) if previous else None

    def logins(self) -> list[tuple[str, str, list[dict[str, object]]]]:
        """(username, password, ACLs) of each login the broker must know."""
        return [(x["username"], x["password"], ha_acls(self.prefix))
                for x in (self._data["current"], self._data.get("previous")) if x]

    def due(self, now: float, period_days: int) -> bool:
        """Time for the next login, unless Home Assistant has not yet taken the last one."""
        return (self.previous is None
                and now - float(self._data["current"]["issued_at"]) >= period_days * DAY_S)

    async def rotate(self, actor: str) -> str:
        """Issue the next login; the current one keeps working until Home Assistant uses the
        new one. A login issued earlier and never used is deleted now."""
        current = self._data["current"]
        stale = self._data.get("previous")
        number = int(current["username"].rpartition(":")[2]) + 1
        new = self._new(number)
        await self.dynsec.apply(
            (delete_login_commands([stale["username"]]) if stale else [])
            + create_login_commands(new["username"], new["password"], ha_acls(self.prefix)))
        self._data = {"current": new, "previous": current}
        self._save(self._data)
        self.store.audit(actor, "homeassistant.credential", "rotated", target=new["username"],
                         detail=f"{current['username']} stays until Home Assistant logs in "
                                f"with {new['username']}")
        return str(new["username"])

    async def seen(self, username: str, address: str) -> None:
        """A login by `username` from `address` was accepted by the broker."""
        if not username.startswith(f"{BASE_USERNAME}:"):
            return
        self.last_login = {"username": username, "address": address, "at": time.time()}
        previous = self._data.get("previous")
        if previous and username == self._data["current"]["username"]:
            await self.dynsec.apply(delete_login_commands([previous["username"]]))
            self._data = {"current": self._data["current"], "previous": None}
            self._save(self._data)
            self.store.audit("homeassistant", "homeassistant.credential", "switched",
                             target=username, detail=f"{previous['username']} deleted")

    def status(self) -> dict[str, Any]:
        previous = self.previous
        return {"username": self._data["current"]["username"],
                "issued_at": self._data["current"]["issued_at"],
                "waiting_for_switch_from": previous["username"] if previous else None,
                "last_login": self.last_login}
