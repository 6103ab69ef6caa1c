"""The JSON API under /api/v1: one route table drives the router, the access checks and the
OpenAPI document, so they cannot drift apart.

Access levels: `public` (setup and login), `read` (any logged-in user or API token),
`admin` (admins, and admin-scoped tokens), `account` (one's own account: a session only,
never an API token, so a leaked token cannot change passwords or mint more tokens) and
`users` (managing users: an admin's session). One route, the local command path, is
`signed`: a signed command envelope needs no login (its signature is the authentication),
any other body is admitted like an `admin` route's by its handler (app.py's Guard.admit).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway import __version__
from gateway.cloud import envelope
from gateway.cloud.schedule import EXPECTED as SCHEDULE_FORMS
from gateway.cloud.schedule import ScheduleError
from gateway.credentials.pki import ensure_ca
from gateway.credentials.rotation import RotationRefused, next_rotation_at
from gateway.devices.enrollment import EnrollmentError, qr_payload
from gateway.devices.kinds import KINDS
from gateway.devices.registry import DeviceConflict, DeviceError, DeviceUnknown
from gateway.devices.service import CommandRejected, CommandTimeout, DeviceOffline
from gateway.firewall.inventory import Inventory, device_profile
from gateway.firewall.manager import Firewall, PolicyError
from gateway.firewall.model import POLICIES, Allow, Peer, PortRange, Profile
from gateway.privacy.reports import CATEGORIES
from gateway.store import (
    ApiToken,
    AuditEntry,
    CommandEntry,
    Device,
    Discovered,
    Enrollment,
    Rotation,
    User,
)
from gateway.web.accounts import DEVICE_COOKIE_LIFETIME_S, Accounts, Principal
from gateway.web.auth import qr_svg
from gateway.web.gate import BODY_TIMEOUT_S
from gateway.web.openapi import document
from gateway.web.schema import Body, BodyError, Bool, Int, Obj, Str

if TYPE_CHECKING:
    from gateway.daemon import Daemon

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DEVICE_ID = r"[a-z0-9-]{3,40}"
EVENT_INTERVAL_S = 1.0
REFRESH_S = 5.0
TELEMETRY_WINDOW_S = 3600


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    access: str
    summary: str
    body: Body | Either | None = None
    response: str | None = None  # a schema name in openapi.SCHEMAS
    status: int = 200
    errors: tuple[int, ...] = ()
    query: tuple[tuple[str, dict[str, Any]], ...] = ()
    produces: str = "application/json"
    params: tuple[tuple[str, dict[str, Any]], ...] = ()  # path parameters' schemas
    headers: tuple[tuple[str, dict[str, Any]], ...] = ()  # the answer's documented headers


@dataclass(frozen=True, slots=True)
class Either:
    """A body of one of several shapes, which the handler tells apart and checks; here
    only for the OpenAPI document (`oneOf`)."""

    shapes: tuple[Body | str, ...]  # a str names a schema in openapi.SCHEMAS

    def openapi(self) -> dict[str, Any]:
        return {"oneOf": [s.openapi() if isinstance(s, Body)
                          else {"$ref": f"#/components/schemas/{s}"} for s in self.shapes]}


def _key(kind: str, name: str) -> Any:
    """A typed storage key where aiohttp has them (3.9+), else the plain string (3.8)."""
    factory = getattr(web, kind, None)
    return factory(name, object) if factory else name


DAEMON = _key("AppKey", "daemon")
ACCOUNTS = _key("AppKey", "accounts")
COOKIES = _key("AppKey", "cookies")
GUARD = _key("AppKey", "guard")
STOPPING = _key("AppKey", "stopping")
ACCESS = _key("AppKey", "access")
PRINCIPAL = _key("RequestKey", "principal")
PRE = _key("RequestKey", "pre")


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}


def daemon_of(request: web.Request) -> Daemon:
    daemon: Daemon = request.app[DAEMON]
    return daemon


def accounts_of(request: web.Request) -> Accounts:
    accounts: Accounts = request.app[ACCOUNTS]
    return accounts


def principal_of(request: web.Request) -> Principal:
    principal: Principal = request[PRINCIPAL]
    return principal


def client_address(request: web.Request) -> str:
    return request.remote or "unknown"


def reply(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def body_of(request: web.Request, body: Body) -> dict[str, Any]:
    try:
        raw = await asyncio.wait_for(request.read(), BODY_TIMEOUT_S)
    except TimeoutError:
        raise HttpError(408, f"the request body did not arrive within {BODY_TIMEOUT_S:g} s"
                        ) from None
    try:
        return body.parse(raw, request.content_type)
    except BodyError as exc:
        raise HttpError(exc.status, str(exc)) from None


# -- views of stored things ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Logins:
    """Each device's active login and rotation in flight, read once for a whole list."""

    active: dict[str, str]  # device id -> username
    rotations: dict[str, Rotation]

    @classmethod
    def read(cls, daemon: Daemon, device_id: str | None = None) -> Logins:
        store = daemon.store
        active = {c.device_id: c.username for c in store.credentials(device_id)
                  if c.state == "active"}
        if device_id is None:
            rotations = {r.device_id: r for r in store.rotations()}
        else:
            rotation = store.rotation(device_id)
            rotations = {device_id: rotation} if rotation else {}
        return cls(active, rotations)


def credential_view(daemon: Daemon, device: Device, logins: Logins) -> dict[str, Any]:
    """The device's broker login as the admin page shows it: never a secret or a hash."""
    policy = daemon.rotator.policy
    rotation = logins.rotations.get(device.id)
    result = device.rotation_result
    return {
        "username": logins.active.get(device.id),
        "rotated_at": device.rotated_at,
        "age_s": (None if device.rotated_at is None
                  else max(0, round(time.time() - device.rotated_at))),
        "next_rotation": next_rotation_at(device, policy),
        "rotation_days": device.rotation_days or policy.period_days,
        "rotation_days_default": device.rotation_days is None,
        "rotating": rotation is not None,
        "step": rotation.step if rotation else None,
        "failures": device.rotation_failures,
        "last_result": result,
        "alert": result.startswith("alert"),
    }


def device_view(daemon: Daemon, device: Device, logins: Logins | None = None) -> dict[str, Any]:
    service = daemon.devices
    kind = KINDS.get(device.kind)
    return {
        "id": device.id, "name": device.name, "kind": device.kind, "status": device.status,
        "source": device.source, "mac": device.mac, "ip": device.ip,
        "model": device.model, "firmware": device.firmware,
        "online": service.is_online(device.id), "last_seen": service.last_seen(device.id),
        "first_seen": device.first_seen, "invalid_messages": device.invalid_messages,
        "state": service.state(device.id),
        "policy": device.policy, "profile": device_profile(device),
        "actions": {a: sorted(params) for a, params in kind.actions.items()} if kind else {},
        "credential": credential_view(
            daemon, device, logins if logins is not None else Logins.read(daemon, device.id)),
    }


def devices_view(daemon: Daemon) -> list[dict[str, Any]]:
    logins = Logins.read(daemon)
    return [device_view(daemon, d, logins) for d in daemon.devices.devices()]


def enrollment_view(enrollment: Enrollment) -> dict[str, Any]:
    e = enrollment
    return {"id": e.id, "name": e.name, "device_id": e.device_id, "created_by": e.created_by,
            "created_at": e.created_at, "expires_at": e.expires_at, "state": e.state,
            "failures": e.failures}


def audit_view(entry: AuditEntry) -> dict[str, Any]:
    return {"id": entry.id, "ts": entry.ts, "actor": entry.actor, "action": entry.action,
            "target": entry.target, "result": entry.result, "detail": entry.detail}


def user_view(user: User) -> dict[str, Any]:
    return {"username": user.username, "role": user.role,
            "second_factor": user.totp_secret is not None, "created_at": user.created_at}


def token_view(token: ApiToken) -> dict[str, Any]:
    return {"id": token.id, "name": token.name, "scope": token.scope,
            "username": token.username, "created_at": token.created_at,
            "last_used": token.last_used}


def status_view(daemon: Daemon) -> dict[str, Any]:
    status = daemon.status()
    status["messages_per_s"] = round(daemon.rates.per_second, 1)
    status["version"] = __version__
    status["tiles"] = {  # filled by later capabilities; the dashboard shows them as such
        "credentials": credentials_tile(status["credentials"]),
        "cloud": cloud_tile(status["cloud"]),
        "firewall": firewall_tile(status["firewall"]),
        "privacy": privacy_tile(status["privacy"]),
        "homeassistant": homeassistant_tile(status["homeassistant"]),
        "discovery": discovery_tile(status["discovery"]),
        "updates": updates_tile(status["updates"]),
    }
    return status


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def age_text(seconds: float | None) -> str:
    """An age or a span: "40 s", "12 min", "5 h", "30 d"; "none" without one."""
    if seconds is None:
        return "none"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


def cloud_tile(cloud: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's "Cloud link": the link's state; while it is down, what waits."""
    state, spool = cloud["state"], cloud["spool"]
    spooled = _count(spool["messages"], "message") + " spooled"
    if state == "not configured":
        label, detail = "Not configured", "local control only (no [cloud] url)"
    elif state == "connected":
        label, detail = "Connected", spooled
    else:
        label = "Offline"
        oldest = spool["oldest_age_s"]
        detail = spooled + ("" if oldest is None else f" · oldest {age_text(oldest)}")
    return {"state": state, "label": label, "detail": detail}


def privacy_error(privacy: dict[str, Any]) -> str | None:
    """Why the privacy export is stopped (the ledger's problem first), or None."""
    ledger = privacy["ledger"]
    if not ledger["ok"]:
        return str(ledger["error"])
    return privacy["last_error"] or None


def privacy_tile(privacy: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's "Privacy export": off, on (which categories, what is queued) or the
    error that stops it."""
    state = privacy["state"]
    granted = [c["name"] for c in privacy["categories"] if c["granted"]]
    queued = privacy["queue"]["reports"]
    if state == "error":
        label, detail = "Error", f"export stopped: {privacy_error(privacy)}"
    elif granted:
        label, detail = "On", f"{', '.join(granted)} on · {_count(queued, 'report')} queued"
    else:
        label = "Off"
        detail = "no category consented" + (f" · {_count(queued, 'report')} queued"
                                            if queued else "")
    return {"state": state, "label": label, "detail": detail, "categories": granted,
            "queued": queued}


def homeassistant_tile(ha: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's "Home Assistant": off, or whether the bridge is connected, with what
    it publishes and when Home Assistant last announced itself."""
    if not ha["enabled"]:
        return {"state": "off", "label": "Off", "detail": "homeassistant.enabled = false"}
    entities = ha["entities"]
    detail = [f"{entities} entit{'y' if entities == 1 else 'ies'}",
              _count(ha["devices"], "device")]
    birth = ha["last_birth"]
    detail.append("Home Assistant not seen yet" if birth is None
                  else f"Home Assistant seen {age_text(time.time() - birth['at'])} ago")
    if ha["connected"]:
        state, label = "connected", "Connected"
    else:
        state, label = "disconnected", "Not connected"
    return {"state": state, "label": label, "detail": " · ".join(detail)}


def discovery_tile(discovery: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's "Discovered": what waits on the network for the admin to adopt."""
    new, found = discovery["new"], discovery["found"]
    return {"state": "new" if new else "ok", "label": f"{new} new" if new else "Nothing new",
            "detail": f"{found} found on the network", "new": new}


TILE_UPGRADES = 6  # the rest are counted; GET /api/v1/updates lists them all


def upgrade_text(upgrade: dict[str, Any]) -> str:
    """One upgrade as the tile lists it: "libssl3 3.0.11-1~deb12u1 → 3.0.13-1~deb12u2
    (security)"; a package not installed yet shows "new" as its version."""
    text = f"{upgrade['package']} {upgrade['installed'] or 'new'} → {upgrade['candidate']}"
    return text + (" (security)" if upgrade["security"] else "")


def updates_tile(updates: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's "Updates": whether apt has upgrades for the gateway's package or the
    packages it needs (security ones counted), as of the last check."""
    state, pending, security = updates["state"], updates["pending"], updates["security"]
    if state == "current":
        label = "Up to date"
        detail = f"{updates['package']} {updates['installed']} and what it needs"
    elif state == "pending":
        label = f"{len(pending)} pending ({security} security)"
        shown = [upgrade_text(u) for u in pending[:TILE_UPGRADES]]
        if len(pending) > TILE_UPGRADES:
            shown.append(f"{len(pending) - TILE_UPGRADES} more")
        detail = ", ".join(shown)
    elif state == "not-packaged":
        label, detail = "Not packaged", "Not installed from a Debian package"
    else:
        label, detail = "Unknown", str(updates["error"] or "not checked yet")
    checked = updates["checked_at"]
    if checked is not None and state in ("current", "pending"):
        detail += f" · checked {age_text(time.time() - checked)} ago"
    return {"state": state, "label": label, "detail": detail, "pending": len(pending),
            "security": security}


def credentials_tile(credentials: dict[str, Any]) -> dict[str, Any]:
    alerts, rotating = credentials["alerts"], credentials["rotating"]
    if alerts:
        state, label = "alert", _count(len(alerts), "alert")
    elif rotating:
        state, label = "rotating", f"{rotating} rotating"
    else:
        state, label = "ok", "OK"
    detail = [f"{rotating} rotating",
              _count(credentials["enrollments_open"], "enrollment") + " open",
              _count(credentials["logins_refused"], "login") + " refused"]
    return {"state": state, "label": label, "detail": " · ".join(detail),
            "rotating": rotating, "alerts": alerts}


# -- the network guard (firewall) ---------------------------------------------------------

def firewall_notice(fw: dict[str, Any]) -> dict[str, str] | None:
    """The banner every page shows while the devices are not protected as configured."""
    problem = fw["problem"]
    if fw["mode"] == "render-only":
        why = f" The last render failed: {problem}." if problem and not fw["healthy"] else ""
        return {"title": "Devices are NOT protected: the firewall is in render-only mode.",
                "text": "The gateway renders its ruleset but applies none "
                        '(firewall.mode = "render-only"), so nothing stops connections to '
                        "devices or keeps quarantined ones in. Set firewall.mode = "
                        f'"enforce" to protect them.{why}'}
    if fw["mode"] == "enforce" and not fw["healthy"]:
        kept = ("The last good ruleset stays in force; the gateway keeps retrying."
                if fw["enforcing"] else "No ruleset is in force: devices are NOT protected.")
        return {"title": "Firewall problem:", "text": f"{problem}. {kept}"}
    return None


def firewall_tile(fw: dict[str, Any]) -> dict[str, Any]:
    dropped = sum(fw["dropped"].values())
    if fw["mode"] == "off":
        state, label, detail = "off", "Off", "network.uplink not set"
    elif fw["mode"] == "render-only":
        state, label, detail = "render-only", "Render-only", "devices NOT protected"
    elif not fw["healthy"]:
        state, label, detail = "unhealthy", "Unhealthy", fw["problem"]
    else:
        state, label, detail = "ok", "Enforcing", _count(fw["rules"], "rule")
    return {"state": state, "label": label, "dropped": dropped,
            "detail": f"{_count(dropped, 'packet')} dropped · {detail}",
            "notice": firewall_notice(fw)}


def _ports(ports: tuple[PortRange, ...]) -> list[str]:
    """As a profile writes them: "443", "8000-8100"; none for ICMP."""
    return [str(low) if low == high else f"{low}-{high}" for low, high in ports]


def allow_view(allow: Allow, dns: Mapping[str, Any]) -> dict[str, Any]:
    """One allowed destination; a DNS name with the addresses it resolves to now (empty:
    not resolved yet, so not reachable yet)."""
    if allow.host is not None:
        addresses = list(dns.get(allow.host, {}).get("addresses", []))
    else:
        addresses = [str(allow.cidr)]
    return {"protocol": allow.protocol, "ports": _ports(allow.ports), "host": allow.host,
            "cidr": None if allow.cidr is None else str(allow.cidr), "addresses": addresses}


def peer_view(peer: Peer) -> dict[str, Any]:
    return {"protocol": peer.protocol, "ports": _ports(peer.ports), "device": peer.device,
            "kind": peer.kind}


def placement_problem(device: Device, inventory: Inventory | None, placed: bool) -> str:
    """Why the firewall does not treat the device as its policy says ("" when it does)."""
    if inventory is None:
        return ""
    found = inventory.problems.get(device.id, "")
    if found or placed:
        return found
    if inventory.input.iot is None:
        return "no IoT interface (network.iot): only the gateway itself is firewalled"
    if device.id in inventory.unplaced:
        return "no known address: its traffic is quarantined like an unknown address's"
    return "left out of the firewall"


def firewall_device_view(device: Device, profile: Profile | None, placed: bool, problem: str,
                         locked: bool, dns: Mapping[str, Any]) -> dict[str, Any]:
    """A device as the firewall sees it: its policy, its profile (the effective one) and
    what that profile lets it reach."""
    return {
        "id": device.id, "name": device.name, "kind": device.kind, "policy": device.policy,
        "profile": device_profile(device), "profile_default": device.profile is None,
        "profile_found": profile is not None,
        "description": profile.description if profile else "",
        "addresses": list(device.addresses), "placed": placed, "problem": problem,
        "locked": locked,
        "allow": [allow_view(a, dns) for a in profile.allow] if profile else [],
        "peers": [peer_view(p) for p in profile.peers] if profile else [],
    }


def firewall_view(daemon: Daemon) -> dict[str, Any]:
    firewall = daemon.firewall
    status = firewall.status()
    names = firewall.profile_names()  # reads the profile files: the current ones
    inventory = firewall.inventory
    placed = {rule.id for rule in inventory.input.devices} if inventory else set()
    locked = {d.id for d in daemon.config.devices if d.policy is not None}
    devices = [
        firewall_device_view(d, firewall.profiles.get(device_profile(d)), d.id in placed,
                             placement_problem(d, inventory, d.id in placed), d.id in locked,
                             status["dns"])
        for d in sorted(daemon.devices.devices(), key=lambda d: d.id)]
    return {"status": status, "devices": devices, "profiles": names}


def history_view(firewall: Firewall, since: float) -> list[dict[str, Any]]:
    return [{"at": s.at, "dropped": dict(s.totals)} for s in firewall.history if s.at >= since]


# -- the cloud relay: the command log, shadows, schedules -------------------------------

def command_view(entry: CommandEntry) -> dict[str, Any]:
    return {"ts": entry.ts, "id": entry.command_id, "source": entry.source,
            "actor": entry.actor, "device": entry.device_id, "action": entry.action,
            "outcome": entry.outcome, "reason": entry.reason, "latency_ms": entry.latency_ms}


def zone_name(zone: tzinfo) -> str:
    """The schedules' time zone by its IANA name, also when it is the system's."""
    key = str(getattr(zone, "key", None) or zone)
    if key == "localtime":  # read from /etc/localtime: its link names the zone
        with contextlib.suppress(OSError):
            target = os.readlink("/etc/localtime")
            if "zoneinfo/" in target:
                return target.split("zoneinfo/", 1)[1]
    return key


def cloud_view(daemon: Daemon, limit: int) -> dict[str, Any]:
    cloud = daemon.cloud
    return {
        "status": cloud.status(),
        "commands": [command_view(e) for e in daemon.store.command_log(limit)],
        "shadows": [cloud.shadow(d.id) for d in sorted(daemon.devices.devices(),
                                                       key=lambda d: d.id)],
        "schedules": cloud.schedule_view(time.time()),
        "timezone": zone_name(cloud.zone),
    }


def device_error(exc: DeviceError) -> HttpError:
    """409 for a clash with what exists, 404 for what does not exist, else 400."""
    status = (409 if isinstance(exc, DeviceConflict) else
              404 if isinstance(exc, DeviceUnknown) else 400)
    return HttpError(status, str(exc))


def device_or_404(request: web.Request) -> Device:
    device_id = request.match_info["id"]
    device = daemon_of(request).devices.device(device_id)
    if device is None:
        raise HttpError(404, f"no device {device_id!r}")
    return device


def _query(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise HttpError(400, f"{name}: given {len(values)} times (expected at most once)")
    return values[0] if values else None


def _int_query(request: web.Request, name: str, default: int | None, low: int,
               high: int) -> int | None:
    raw = _query(request, name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise HttpError(400, f"{name}: expected a whole number from {low} to {high}")
    return int(raw)


# -- handlers ----------------------------------------------------------------------------

async def get_status(request: web.Request) -> web.StreamResponse:
    return reply(status_view(daemon_of(request)))


async def list_devices(request: web.Request) -> web.StreamResponse:
    return reply({"devices": devices_view(daemon_of(request))})


ADD_DEVICE = Body({
    "id": Str(3, 40, pattern=f"^{DEVICE_ID}$", description="lower-case letters, digits, '-'"),
    "kind": Str(enum=tuple(KINDS)),
    "name": Str(1, 64, required=False),
    "mac": Str(17, 17, required=False, description="aa:bb:cc:dd:ee:ff",
               pattern="^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$"),
    "ip": Str(2, 45, required=False, description="an IPv4 or IPv6 address"),
})


async def add_device(request: web.Request) -> web.StreamResponse:
    data = await body_of(request, ADD_DEVICE)
    daemon, who = daemon_of(request), principal_of(request)
    try:
        device = await daemon.devices.add(data["id"], data["kind"], name=data.get("name"),
                                          source="web", mac=data.get("mac"),
                                          ip=data.get("ip"), actor=who.actor)
        username, secret = await daemon.devices.issue_credential(device.id, who.actor)
    except DeviceError as exc:
        raise device_error(exc) from None
    return device_added(daemon, device, username, secret)


def device_added(daemon: Daemon, device: Device, username: str, secret: str
                 ) -> web.StreamResponse:
    """201 with the new device (as it is now, with its credential) and its login, shown
    this once."""
    device = daemon.devices.device(device.id) or device
    return reply({"device": device_view(daemon, device),
                  "credential": {"username": username, "password": secret}}, 201)


async def get_device(request: web.Request) -> web.StreamResponse:
    return reply(device_view(daemon_of(request), device_or_404(request)))


async def remove_device(request: web.Request) -> web.StreamResponse:
    device = device_or_404(request)
    try:
        await daemon_of(request).devices.remove(device.id, principal_of(request).actor)
    except DeviceError as exc:  # removed meanwhile
        raise device_error(exc) from None
    return reply({"removed": device.id})


async def device_telemetry(request: web.Request) -> web.StreamResponse:
    device = device_or_404(request)
    minutes = _int_query(request, "minutes", 60, 1, 24 * 60) or 60
    since = time.time() - minutes * 60
    store = daemon_of(request).store
    points = [{"ts": ts, "values": values}
              for ts, values in store.telemetry(device.id, limit=5000) if ts >= since]
    return reply({"device": device.id, "minutes": minutes, "points": points})


COMMAND = Body({
    "action": Str(enum=tuple(sorted({a for k in KINDS.values() for a in k.actions})),
                  description="one of the device kind's actions (GET the device for them)"),
    "params": Obj(required=False, description="the action's parameters"),
})


async def send_command(request: web.Request) -> web.StreamResponse:
    device = device_or_404(request)
    daemon, who = daemon_of(request), principal_of(request)
    try:
        data = await body_of(request, COMMAND)
    except HttpError as exc:  # a malformed command is refused like an invalid one: audited
        daemon.store.audit(who.actor, "command", "rejected", target=device.id,
                           detail=exc.message)
        raise
    try:
        result = await daemon.cloud.command(
            device.id, data["action"], data.get("params", {}), source="admin", actor=who.actor)
    except CommandTimeout as exc:
        raise HttpError(504, str(exc)) from None
    except DeviceOffline as exc:
        raise HttpError(409, str(exc)) from None
    except CommandRejected as exc:
        raise HttpError(400, str(exc)) from None
    return reply({"device": device.id, "action": data["action"], "result": result})


# -- the local command path, the cloud relay's view, schedules ----------------------------

LOCAL_COMMAND = Body({
    "device": Str(3, 40, pattern=f"^{DEVICE_ID}$", description="the device's id"),
    "action": COMMAND.fields["action"],
    "params": Obj(required=False, description="the action's parameters"),
})
SIGNED_COMMAND = "SignedCommand"  # the envelope's schema in openapi.SCHEMAS
# How a signed command's result is answered: rejected ones by their reason's code.
REJECTED_STATUS = {
    **dict.fromkeys(("unknown-key", "bad-signature", "expired", "from-the-future",
                     "too-long-lived", "replayed", "out-of-scope"), 403),
    "malformed": 400, "bad-params": 400, "invalid": 400, "unknown-device": 404,
}
OUTCOME_STATUS = {"ok": 200, "error": 200, "timeout": 504, "offline": 409}


def result_status(result: Mapping[str, Any]) -> int:
    """The HTTP status of a command's result: 200 when the device answered (ok or error)."""
    if result["status"] == "rejected":
        return REJECTED_STATUS.get(str(result.get("reason")), 400)
    return OUTCOME_STATUS.get(str(result["status"]), 502)


async def limited_body(request: web.Request, limit: int) -> bytes:
    """A JSON body of at most `limit` bytes, refused before reading more than that."""
    if request.content_type != "application/json":
        raise HttpError(415, "expected a JSON body (Content-Type: application/json)")
    if request.content_length is not None and request.content_length > limit:
        raise HttpError(413, f"body: {request.content_length} bytes (at most {limit})")
    data = bytearray()
    while chunk := await request.content.read(limit + 1 - len(data)):
        data += chunk
        if len(data) > limit:
            raise HttpError(413, f"body: larger than {limit} bytes")
    return bytes(data)


async def submit_command(request: web.Request) -> web.StreamResponse:
    """The local command path. A signed envelope needs no login: the relay verifies,
    audits, logs and carries it out like one from the cloud. An unsigned command is an
    admin's. Either way the answer carries the relay's result."""
    daemon = daemon_of(request)
    raw = await limited_body(request, envelope.MAX_BYTES)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise HttpError(400, f"body: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise HttpError(400, "body: expected a JSON object")
    if "sig" in data:
        return await _signed_command(daemon, raw)
    request.app[GUARD].admit(request, "admin", request[PRINCIPAL])
    who = principal_of(request)
    try:
        data = LOCAL_COMMAND.parse(raw, request.content_type)
    except BodyError as exc:  # a malformed command is refused like an invalid one: audited
        device = data.get("device")
        daemon.store.audit(who.actor, "command", "rejected",
                           target=device[:40] if isinstance(device, str) else "",
                           detail=f"{str(data.get('action', '?'))[:40]} (source admin): {exc}")
        raise HttpError(exc.status, str(exc)) from None
    device_id, action = data["device"], data["action"]
    try:
        result = await daemon.cloud.command(device_id, action, data.get("params", {}),
                                            source="admin", actor=who.actor)
    except CommandRejected as exc:
        if isinstance(exc, CommandTimeout):
            outcome, status = "timeout", 504
        elif isinstance(exc, DeviceOffline):
            outcome, status = "offline", 409
        elif daemon.devices.device(device_id) is None:
            outcome, status = "rejected", 404
        else:
            outcome, status = "rejected", 400
        failed = {"id": None, "device": device_id, "action": action, "status": outcome,
                  "message": str(exc)}
        if outcome == "rejected":
            failed["reason"] = "unknown-device" if status == 404 else "invalid"
        raise HttpError(status, str(exc), extra={"result": failed}) from None
    return reply({"source": "admin", "result": result})


async def _signed_command(daemon: Daemon, raw: bytes) -> web.StreamResponse:
    result = await daemon.cloud.submit_signed(raw, "local-signed")
    status = result_status(result)
    if status == 200:
        return reply({"source": "local-signed", "result": result})
    what = f"{result['status']}: {result['reason']}" if result.get("reason") else str(
        result["status"])
    message = result.get("message")
    raise HttpError(status, f"{what}: {message}" if message else what,
                    extra={"result": result})


async def get_cloud(request: web.Request) -> web.StreamResponse:
    limit = _int_query(request, "limit", 100, 1, 1000) or 100
    return reply(cloud_view(daemon_of(request), limit))


async def list_schedules(request: web.Request) -> web.StreamResponse:
    cloud = daemon_of(request).cloud
    return reply({"schedules": cloud.schedule_view(time.time()),
                  "timezone": zone_name(cloud.zone)})


SCHEDULE = Body({
    "device": Str(3, 40, pattern=f"^{DEVICE_ID}$", description="the device's id"),
    "when": Str(1, 200, description="when it runs, in the gateway's time zone: "
                + SCHEDULE_FORMS.removeprefix("expected ")),
    "action": COMMAND.fields["action"],
    "params": Obj(description="the action's parameters"),
    "name": Str(1, 64, required=False, description="default: the schedule's id"),
    "enabled": Bool(required=False, description="default: true"),
})


def schedule_id(request: web.Request) -> str:
    found = request.match_info["id"]
    if not envelope.SCHEDULE_ID.fullmatch(found):
        raise HttpError(400, "id: expected 1 to 40 characters from a-z, 0-9 and '-'")
    return found


async def put_schedule(request: web.Request) -> web.StreamResponse:
    id = schedule_id(request)
    data = await body_of(request, SCHEDULE)
    daemon, who = daemon_of(request), principal_of(request)
    try:
        daemon.cloud.put_schedule(id, data["device"], data["when"], data["action"],
                                  data["params"], name=data.get("name") or id, source="admin",
                                  actor=who.actor, enabled=data.get("enabled", True))
    except ScheduleError as exc:
        raise HttpError(400, f"when: {exc}") from None
    except CommandRejected as exc:
        raise HttpError(400, str(exc)) from None
    views = {v["id"]: v for v in daemon.cloud.schedule_view(time.time())}
    return reply(views[id])


async def delete_schedule(request: web.Request) -> web.StreamResponse:
    id = schedule_id(request)
    if not daemon_of(request).cloud.delete_schedule(id, principal_of(request).actor):
        raise HttpError(404, f"no schedule {id!r}")
    return reply({"deleted": id})


async def get_firewall(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    minutes = _int_query(request, "minutes", 60, 1, 24 * 60) or 60
    history = history_view(daemon.firewall, time.time() - minutes * 60)
    return reply({**firewall_view(daemon), "minutes": minutes, "history": history})


POLICY = Body({
    "policy": Str(enum=POLICIES, description="quarantine: only the gateway's services; "
                  "restricted: also what its profile allows; open: everything but other "
                  "devices and UPnP; blocked: nothing, not even the gateway"),
    "profile": Str(1, 40, required=False, nullable=True, pattern="^[a-z0-9_-]{1,40}$",
                   description="a profile name; null: the one named after the device's "
                               "kind; left out: unchanged"),
})


async def set_device_policy(request: web.Request) -> web.StreamResponse:
    device = device_or_404(request)
    data = await body_of(request, POLICY)
    daemon, who = daemon_of(request), principal_of(request)
    firewall = daemon.firewall
    if "profile" in data:
        profile = data["profile"]
    else:  # unchanged, unless its file is gone: then blocking it must not fail over that
        profile = device.profile if device.profile in firewall.profile_names() else None
    try:
        result = await firewall.set_policy(device.id, data["policy"], profile, who.actor)
    except PolicyError as exc:
        raise HttpError(400, str(exc)) from None
    return reply(result)


# -- the privacy export: consent, the queue and its exact bytes -------------------------

def privacy_category(request: web.Request) -> str:
    category = request.match_info["category"]
    if category not in CATEGORIES:
        raise HttpError(404, f"no privacy category {category[:64]!r} (expected one of: "
                             f"{', '.join(CATEGORIES)})")
    return category


async def get_privacy(request: web.Request) -> web.StreamResponse:
    return reply(daemon_of(request).privacy.status())


async def privacy_preview(request: web.Request) -> web.StreamResponse:
    """Exactly the bytes the next export sends, verbatim: what the household agreed to
    is what it can read here."""
    ids, body, send_after = daemon_of(request).privacy.next_export()
    return web.Response(body=body, content_type="application/x-ndjson", headers={
        "X-Reports": str(len(ids)),
        "X-Send-After": "" if send_after is None else str(send_after)})


CONSENT = Body({
    "granted": Bool(description="true: consent to this category's weekly report; false: "
                                "withdraw it (its reports that have not left are deleted)"),
})


async def set_consent(request: web.Request) -> web.StreamResponse:
    category = privacy_category(request)
    data = await body_of(request, CONSENT)
    who = principal_of(request)
    try:  # the service audits the change (privacy.consent: granted or withdrawn)
        purged = daemon_of(request).privacy.set_consent(category, data["granted"], who.actor)
    except ValueError as exc:
        raise HttpError(404, str(exc)) from None
    return reply({"category": category, "granted": data["granted"], "purged": purged})


async def delete_privacy_queue(request: web.Request) -> web.StreamResponse:
    purged = daemon_of(request).privacy.delete_queued(principal_of(request).actor)
    return reply({"purged": purged})


# -- credentials: rotation and enrollment -------------------------------------------------

async def rotate_device(request: web.Request) -> web.StreamResponse:
    device = device_or_404(request)
    daemon, who = daemon_of(request), principal_of(request)
    try:
        await daemon.rotator.rotate_now(device.id, who.actor)
    except RotationRefused as exc:
        raise HttpError(409, str(exc)) from None
    return reply({"started": [device.id]}, 202)


async def rotate_all(request: web.Request) -> web.StreamResponse:
    daemon, who = daemon_of(request), principal_of(request)
    started = await daemon.rotator.rotate_all(who.actor)
    daemon.store.audit(who.actor, "credential.rotate_all", "ok",
                       detail=f"{_count(len(started), 'rotation')} started")
    return reply({"started": started}, 202)


ROTATION = Body({
    "days": Int(1, 3650, nullable=True,
                description="days between rotations of this device's credential; "
                            "null: the gateway's default (credentials.rotation_days)"),
})


async def set_rotation(request: web.Request) -> web.StreamResponse:
    device = device_or_404(request)
    data = await body_of(request, ROTATION)
    daemon, who = daemon_of(request), principal_of(request)
    if device.source == "config":  # the config file would set it back at the next start
        raise HttpError(409, f"{device.id} is declared in the config file: set its "
                             "rotation_days there")
    days: int | None = data["days"]
    daemon.store.set_rotation_days(device.id, days)
    default = daemon.rotator.policy.period_days
    daemon.store.audit(who.actor, "credential.rotation_days", "ok", target=device.id,
                       detail=f"every {days} days" if days is not None
                       else f"the default (every {default} days)")
    daemon.devices.reload()
    return reply(device_view(daemon, daemon.devices.device(device.id) or device))


async def list_enrollments(request: web.Request) -> web.StreamResponse:
    store = daemon_of(request).store
    return reply({"enrollments": [enrollment_view(e)
                                  for e in store.live_enrollments(time.time())]})


ENROLL = Body({
    "name": Str(1, 64, required=False, description="the new device's name"),
    "device_id": Str(3, 40, required=False, pattern=f"^{DEVICE_ID}$",
                     description="the id it gets (default: <kind>-<6 hex digits>)"),
    "minutes": Int(1, 1440, required=False,
                   description="how long the token works (default: "
                               "credentials.enrollment_minutes)"),
})


async def create_enrollment(request: web.Request) -> web.StreamResponse:
    data = await body_of(request, ENROLL)
    daemon, who = daemon_of(request), principal_of(request)
    minutes = data.get("minutes")
    try:
        ticket = await daemon.enrollments.create(
            who.actor, name=data.get("name"), device_id=data.get("device_id"),
            ttl_s=minutes * 60.0 if minutes else None)
    except EnrollmentError as exc:  # only the device id can be wrong
        raise HttpError(409 if "exists" in str(exc) else 400, f"device_id: {exc}") from None
    info = daemon.enrollment_info(ticket.id, ticket.token, ticket.expires_at)
    payload = qr_payload(info)
    return reply({**info, "qr_payload": payload, "qr_svg": qr_svg(payload)}, 201)


async def revoke_enrollment(request: web.Request) -> web.StreamResponse:
    token_id = request.match_info["id"]
    try:
        await daemon_of(request).enrollments.revoke(token_id, principal_of(request).actor)
    except EnrollmentError as exc:
        raise HttpError(404, str(exc)) from None
    return reply({"revoked": token_id})


async def ca_certificate(request: web.Request) -> web.StreamResponse:
    pki = daemon_of(request).pki
    if not pki.ca_cert.exists():
        ensure_ca(pki)
    return web.Response(body=pki.ca_cert.read_bytes(), content_type="application/x-pem-file",
                        headers={"Content-Disposition":
                                 'attachment; filename="home-gateway-ca.crt"'})


async def get_audit(request: web.Request) -> web.StreamResponse:
    store = daemon_of(request).store
    filters = {k: _query(request, k) or None for k in ("action", "actor", "result", "target")}
    for name, value in filters.items():
        if value is not None and len(value) > 128:
            raise HttpError(400, f"{name}: expected at most 128 characters")
    limit = _int_query(request, "limit", 100, 1, 1000) or 100
    before = _int_query(request, "before", None, 1, 2**62)
    entries = store.audit_log(limit, filters["action"], actor=filters["actor"],
                              result=filters["result"], target=filters["target"], before=before)
    return reply({"entries": [audit_view(e) for e in entries],
                  "actions": store.audit_actions()})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: a snapshot whenever something changed, checked every second."""
    daemon, accounts, principal = daemon_of(request), accounts_of(request), principal_of(request)
    stopping: asyncio.Event = request.app[STOPPING]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    last_change, last_sent = "", 0.0
    try:
        while not stopping.is_set() and accounts.session_alive(principal):
            status = status_view(daemon)
            devices = devices_view(daemon)
            audit = [audit_view(e) for e in daemon.store.audit_log(5)]
            # Uptime, rates and credential ages move every tick; send at once what a user
            # would notice change, and refresh the rest every few seconds.
            steady = [{**d, "credential": {**d["credential"], "age_s": None}}
                      for d in devices]
            change = json.dumps([steady, audit, status["healthy"], status["broker"],
                                 status["credentials"], status["firewall"],
                                 status["cloud"]["state"],
                                 status["cloud"]["spool"]["messages"],
                                 status["tiles"]["privacy"], status["homeassistant"],
                                 status["discovery"]["found"], status["discovery"]["new"],
                                 status["updates"]])
            now = time.monotonic()
            if change != last_change or now - last_sent >= REFRESH_S:
                snapshot = json.dumps({"status": status, "devices": devices, "audit": audit})
                await response.write(f"event: snapshot\ndata: {snapshot}\n\n".encode())
                last_change, last_sent = change, now
            if request.transport is None or request.transport.is_closing():
                return response  # the page was left
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), EVENT_INTERVAL_S)
        await response.write(b"event: end\ndata: {}\n\n")
    except ConnectionResetError:  # the page was left mid-write
        pass
    return response


# -- Home Assistant: the connection it needs, its login; what was found on the network ----

def no_ha_login(daemon: Daemon) -> str:
    """Why Home Assistant has no login on this gateway's broker."""
    ha = daemon.config.homeassistant
    if not ha.enabled:
        why = "the integration is off (homeassistant.enabled = false)"
    elif ha.broker == "external":
        why = 'it uses a broker of its own (homeassistant.broker = "external")'
    else:
        why = 'the gateway\'s broker is an external one (broker.mode = "external")'
    return f"Home Assistant has no login on this gateway's broker: {why}"


def homeassistant_view(daemon: Daemon) -> dict[str, Any]:
    """The connection Home Assistant's MQTT integration needs and the bridge's status;
    never the password (only GET /api/v1/homeassistant/credential shows it)."""
    view = daemon.homeassistant_connection(reveal=False)
    view.pop("password", None)
    return view


async def get_homeassistant(request: web.Request) -> web.StreamResponse:
    return reply(homeassistant_view(daemon_of(request)))


async def homeassistant_credential(request: web.Request) -> web.StreamResponse:
    daemon, who = daemon_of(request), principal_of(request)
    if daemon.ha_login is None:
        raise HttpError(409, no_ha_login(daemon))
    connection = daemon.homeassistant_connection(reveal=True)
    username, password = str(connection["username"]), str(connection["password"])
    daemon.store.audit(who.actor, "homeassistant.credential", "revealed", target=username)
    return reply({"username": username, "password": password})


async def rotate_homeassistant(request: web.Request) -> web.StreamResponse:
    daemon, who = daemon_of(request), principal_of(request)
    if daemon.ha_login is None:
        raise HttpError(409, no_ha_login(daemon))
    username = await daemon.ha_login.rotate(who.actor)  # audited as rotated
    return reply({"username": username})


async def list_discovered(request: web.Request) -> web.StreamResponse:
    discovery = daemon_of(request).discovery
    return reply({"discovered": discovery.listing(), "status": discovery.status()})


DISCOVERED_KEY = Str(1, 300, description='the sighting\'s key: "mdns:<instance name>" or '
                                         '"dhcp:<mac>"')
ADOPT = Body({
    "key": DISCOVERED_KEY,
    "id": ADD_DEVICE.fields["id"],
    "kind": ADD_DEVICE.fields["kind"],
    "name": Str(1, 64, required=False, description="default: the id"),
})
IGNORE = Body({
    "key": DISCOVERED_KEY,
    "ignored": Bool(description="true: ignore it (it leaves the list of new ones); false: "
                                "take it back"),
})


def discovered_or_404(daemon: Daemon, key: str) -> Discovered:
    found = daemon.store.discovered(key)
    if not found:
        raise HttpError(404, f"nothing discovered as {key!r}")
    return found[0]


async def adopt_discovered(request: web.Request) -> web.StreamResponse:
    data = await body_of(request, ADOPT)
    daemon, who = daemon_of(request), principal_of(request)
    item = discovered_or_404(daemon, data["key"])
    if item.status == "adopted":
        raise HttpError(409, f"{item.key!r} was already adopted as {item.device_id}")
    try:
        device, username, secret = await daemon.discovery.adopt(
            item.key, data["id"], data["kind"], data.get("name"), who.actor)
    except DeviceError as exc:
        raise device_error(exc) from None
    return device_added(daemon, device, username, secret)


async def ignore_discovered(request: web.Request) -> web.StreamResponse:
    data = await body_of(request, IGNORE)
    daemon, who = daemon_of(request), principal_of(request)
    item = discovered_or_404(daemon, data["key"])
    if item.status == "adopted":
        raise HttpError(409, f"{item.key!r} was adopted as {item.device_id}; remove the "
                             "device instead")
    try:
        daemon.discovery.ignore(item.key, who.actor, data["ignored"])
    except DeviceError as exc:
        raise device_error(exc) from None
    return reply({"key": item.key, "status": "ignored" if data["ignored"] else "new"})


# -- setup, login, account ---------------------------------------------------------------

async def get_setup(request: web.Request) -> web.StreamResponse:
    accounts = accounts_of(request)
    needed = accounts.needs_setup()
    return reply({"needed": needed,
                  "code_expires": accounts.setup_code_expiry() if needed else None})


SETUP = Body({
    "code": Str(1, 64, description="the one-time setup code from the log"),
    "username": Str(1, 32),
    "password": Str(1, 1024),
})


async def do_setup(request: web.Request) -> web.StreamResponse:
    data = await body_of(request, SETUP)
    token, session = await accounts_of(request).setup(
        data["code"], data["username"], data["password"], client_address(request))
    return session_reply(request, token, session.csrf, data["username"], "admin", 201)


LOGIN = Body({
    "username": Str(1, 64),
    "password": Str(1, 1024),
    "code": Str(0, 32, required=False, description="TOTP or recovery code, when enabled"),
})


async def login(request: web.Request) -> web.StreamResponse:
    data = await body_of(request, LOGIN)
    accounts = accounts_of(request)
    cookies = request.app[COOKIES]
    token, session = await accounts.login(data["username"], data["password"],
                                          data.get("code"), client_address(request),
                                          device=request.cookies.get(cookies.device))
    user = accounts.store.user(session.username)
    assert user is not None
    response = session_reply(request, token, session.csrf, user.username, user.role, 201)
    cookies.set_device(response, accounts.device_cookie(user.username),
                       DEVICE_COOKIE_LIFETIME_S)
    return response


def session_reply(request: web.Request, token: str, csrf: str, username: str, role: str,
                  status: int) -> web.Response:
    response = reply({"username": username, "role": role, "csrf_token": csrf}, status)
    cookies = request.app[COOKIES]
    cookies.set_session(response, token)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    accounts_of(request).logout(principal_of(request))
    response = reply({"logged_out": True})
    request.app[COOKIES].clear_session(response)
    return response


async def get_account(request: web.Request) -> web.StreamResponse:
    who = principal_of(request)
    store = accounts_of(request).store
    user = store.user(who.username)
    assert user is not None
    return reply({
        "username": who.username, "role": who.role,
        "second_factor": user.totp_secret is not None,
        "recovery_codes_left": store.recovery_codes_left(who.username),
        "via": "token" if who.token else "session",
        "scope": who.token.scope if who.token else None,
    })


CHANGE_PASSWORD = Body({"current_password": Str(1, 1024), "new_password": Str(1, 1024)})


async def change_password(request: web.Request) -> web.StreamResponse:
    data = await body_of(request, CHANGE_PASSWORD)
    await accounts_of(request).change_password(
        principal_of(request), data["current_password"], data["new_password"],
        client_address(request))
    return reply({"changed": True})


async def begin_totp(request: web.Request) -> web.StreamResponse:
    return reply(accounts_of(request).begin_totp(principal_of(request)))


CONFIRM_TOTP = Body({"secret": Str(32, 32), "code": Str(1, 16)})


async def confirm_totp(request: web.Request) -> web.StreamResponse:
    data = await body_of(request, CONFIRM_TOTP)
    codes = accounts_of(request).confirm_totp(principal_of(request), data["secret"],
                                              data["code"])
    return reply({"recovery_codes": codes})


DISABLE_TOTP = PASSWORD_AGAIN = Body({"password": Str(1, 1024)})


async def end_everywhere(request: web.Request) -> web.StreamResponse:
    data = await body_of(request, PASSWORD_AGAIN)
    ended, revoked = await accounts_of(request).end_everywhere(
        principal_of(request), data["password"], client_address(request))
    return reply({"sessions_ended": ended, "tokens_revoked": revoked})


async def disable_totp(request: web.Request) -> web.StreamResponse:
    data = await body_of(request, DISABLE_TOTP)
    await accounts_of(request).disable_totp(principal_of(request), data["password"],
                                            client_address(request))
    return reply({"second_factor": False})


async def list_tokens(request: web.Request) -> web.StreamResponse:
    tokens = accounts_of(request).tokens(principal_of(request))
    return reply({"tokens": [token_view(t) for t in tokens]})


CREATE_TOKEN = Body({"name": Str(1, 64), "scope": Str(enum=("read", "admin"))})


async def create_token(request: web.Request) -> web.StreamResponse:
    data = await body_of(request, CREATE_TOKEN)
    row, token = accounts_of(request).create_token(principal_of(request), data["name"],
                                                   data["scope"])
    return reply({**token_view(row), "token": token}, 201)


async def revoke_token(request: web.Request) -> web.StreamResponse:
    accounts_of(request).revoke_token(principal_of(request), request.match_info["id"])
    return reply({"revoked": request.match_info["id"]})


async def list_users(request: web.Request) -> web.StreamResponse:
    accounts = accounts_of(request)
    return reply({"users": [user_view(u) for u in accounts.store.users()]})


ADD_USER = Body({"username": Str(1, 32), "role": Str(enum=("admin", "viewer")),
                 "password": Str(1, 1024)})


async def add_user(request: web.Request) -> web.StreamResponse:
    data = await body_of(request, ADD_USER)
    accounts = accounts_of(request)
    user = await accounts.add_user(principal_of(request), data["username"], data["role"],
                                   data["password"])
    return reply(user_view(user), 201)


async def delete_user(request: web.Request) -> web.StreamResponse:
    accounts_of(request).delete_user(principal_of(request), request.match_info["username"])
    return reply({"deleted": request.match_info["username"]})


async def get_updates(request: web.Request) -> web.StreamResponse:
    return reply(daemon_of(request).updates.status())


async def openapi_document(request: web.Request) -> web.StreamResponse:
    return reply(document(ROUTES))


P = "/api/v1"
_AUTH_ERRORS = (401, 403)
ROUTES: tuple[Route, ...] = (
    Route("GET", f"{P}/openapi.json", openapi_document, "read", "This document"),
    Route("GET", f"{P}/status", get_status, "read", "Gateway health, counters and tiles",
          response="Status"),
    Route("GET", f"{P}/events", events, "read",
          "Server-Sent Events: a `snapshot` (status, devices, recent audit) on change",
          produces="text/event-stream"),
    Route("GET", f"{P}/devices", list_devices, "read", "All devices", response="DeviceList"),
    Route("POST", f"{P}/devices", add_device, "admin",
          "Register a device; its MQTT credential is returned this once",
          body=ADD_DEVICE, response="DeviceAdded", status=201, errors=(400, 409)),
    Route("GET", f"{P}/devices/{{id}}", get_device, "read", "One device", response="Device",
          errors=(404,)),
    Route("DELETE", f"{P}/devices/{{id}}", remove_device, "admin",
          "Remove a device and revoke its credential", response="Removed",
          errors=(404, 409)),
    Route("GET", f"{P}/devices/{{id}}/telemetry", device_telemetry, "read",
          "The device's readings of the last minutes", response="Telemetry",
          errors=(400, 404),
          query=(("minutes", {"type": "integer", "minimum": 1, "maximum": 1440}),)),
    Route("POST", f"{P}/devices/{{id}}/commands", send_command, "admin",
          "Send a command (checked against the device kind) and wait for its result",
          body=COMMAND, response="CommandResult", errors=(400, 404, 409, 504)),
    Route("POST", f"{P}/devices/{{id}}/rotate", rotate_device, "admin",
          "Start rotating the device's credential now; its old login keeps working until "
          "the device proves the new one", response="Started", status=202,
          errors=(404, 409)),
    Route("PUT", f"{P}/devices/{{id}}/rotation", set_rotation, "admin",
          "Set how often the device's credential is rotated (null: the default)",
          body=ROTATION, response="Device", errors=(404, 409)),
    Route("PUT", f"{P}/devices/{{id}}/policy", set_device_policy, "admin",
          "Set the device's firewall policy (and profile); the firewall is applied before "
          "the answer. Audited, refusals too", body=POLICY, response="PolicySet",
          errors=(400, 404)),
    Route("POST", f"{P}/commands", submit_command, "signed",
          "Carry out a command: a signed command envelope (no login needed: the signature "
          "authenticates it, as when it comes from the cloud), or {device, action, params} "
          "from an admin. Every outcome is audited and in the command log; the answer "
          "carries the result, with the reason code of a rejected one",
          body=Either((SIGNED_COMMAND, LOCAL_COMMAND)), response="CommandReply",
          errors=(400, 404, 409, 504)),
    Route("GET", f"{P}/cloud", get_cloud, "read",
          "The cloud relay: the link and its history, the spool, the command log (newest "
          "first), every device's shadow and the schedules",
          response="Cloud", errors=(400,),
          query=(("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),)),
    Route("GET", f"{P}/schedules", list_schedules, "read",
          "Local schedules (they run while the cloud is unreachable), with their next run",
          response="ScheduleList"),
    Route("PUT", f"{P}/schedules/{{id}}", put_schedule, "admin",
          "Create or replace a schedule (id: 1 to 40 of a-z, 0-9, '-'); the command is "
          "checked against the device's kind", body=SCHEDULE, response="Schedule",
          errors=(400,)),
    Route("DELETE", f"{P}/schedules/{{id}}", delete_schedule, "admin",
          "Delete a schedule", response="Deleted", errors=(400, 404)),
    Route("GET", f"{P}/firewall", get_firewall, "read",
          "The network guard: its status, the drop counters of the last minutes, each "
          "device's policy, profile and allowed destinations, and the profile names",
          response="Firewall", errors=(400,),
          query=(("minutes", {"type": "integer", "minimum": 1, "maximum": 1440}),)),
    Route("GET", f"{P}/privacy", get_privacy, "read",
          "The privacy export: each category's consent (with its text and ε), the ε budget "
          "spent and left, what is queued, where it goes, the export history and any error "
          "that stops it", response="Privacy"),
    Route("GET", f"{P}/privacy/preview", privacy_preview, "read",
          "Exactly the bytes the next export sends (JSON Lines, one report a line; empty "
          "when nothing is queued)", produces="application/x-ndjson",
          headers=(("X-Reports", {"type": "string", "pattern": "^[0-9]+$",
                                  "description": "how many reports the bytes hold"}),
                   ("X-Send-After", {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?)?$",
                                     "description": "when they leave at the earliest "
                                                    "(seconds since the Unix epoch); empty "
                                                    "when nothing is queued"}))),
    Route("PUT", f"{P}/privacy/consent/{{category}}", set_consent, "admin",
          "Give or withdraw consent for one category (audited); withdrawing deletes the "
          "category's queued reports at once", body=CONSENT, response="ConsentSet",
          errors=(400, 404),
          params=(("category", {"type": "string", "enum": list(CATEGORIES)}),)),
    Route("DELETE", f"{P}/privacy/queue", delete_privacy_queue, "admin",
          "Delete every queued report and this week's aggregates collected so far "
          "(audited)", response="Purged"),
    Route("GET", f"{P}/homeassistant", get_homeassistant, "read",
          "What Home Assistant's MQTT integration needs (brokers, user name, the CA's "
          "fingerprint; never the password) and the bridge's status",
          response="HomeAssistant"),
    Route("GET", f"{P}/homeassistant/credential", homeassistant_credential, "admin",
          "Home Assistant's current broker login with its password (audited); 409 when "
          "Home Assistant has no login on this gateway's broker",
          response="HomeAssistantCredential", errors=(409,)),
    Route("POST", f"{P}/homeassistant/rotate", rotate_homeassistant, "admin",
          "Issue Home Assistant's next broker login (audited); the current one keeps "
          "working until Home Assistant logs in with the new one",
          response="HomeAssistantLogin", errors=(409,)),
    Route("GET", f"{P}/discovered", list_discovered, "read",
          "What was found on the IoT segment (mDNS services, DHCP leases), newest first, "
          "each with its status and the known device it matches", response="DiscoveredList"),
    Route("POST", f"{P}/discovered/adopt", adopt_discovered, "admin",
          "Register a discovered thing as a device (with its MAC and IoT address); its MQTT "
          "credential is returned this once", body=ADOPT, response="DeviceAdded",
          status=201, errors=(400, 404, 409)),
    Route("POST", f"{P}/discovered/ignore", ignore_discovered, "admin",
          "Ignore a discovered thing (it leaves the list of new ones), or take it back",
          body=IGNORE, response="DiscoveredIgnored", errors=(404, 409)),
    Route("GET", f"{P}/updates", get_updates, "read",
          "Upgrades apt would install for the gateway's package and the packages it needs "
          "(as of the last check: at start, hourly and after apt changed something), "
          "security ones marked", response="Updates"),
    Route("POST", f"{P}/credentials/rotate-all", rotate_all, "admin",
          "Start rotating every device's credential now (with the embedded broker, after "
          "the gateway's own login)", response="Started", status=202),
    Route("GET", f"{P}/enrollments", list_enrollments, "read",
          "Enrollments whose token still works (no secrets)", response="EnrollmentList"),
    Route("POST", f"{P}/enrollments", create_enrollment, "admin",
          "Create a one-time enrollment token for a new device (returned this once, with "
          "the brokers, the CA fingerprint and a QR code of them)",
          body=ENROLL, response="EnrollmentCreated", status=201, errors=(409,)),
    Route("DELETE", f"{P}/enrollments/{{id}}", revoke_enrollment, "admin",
          "Revoke an enrollment: its token stops working", response="Revoked",
          errors=(404,)),
    Route("GET", f"{P}/ca.crt", ca_certificate, "read",
          "The gateway's CA certificate (PEM): devices pin it, browsers may import it",
          produces="application/x-pem-file"),
    Route("GET", f"{P}/audit", get_audit, "read", "The audit log, newest first",
          response="Audit", errors=(400,),
          query=(("action", {"type": "string", "maxLength": 128}),
                 ("actor", {"type": "string", "maxLength": 128}),
                 ("result", {"type": "string", "maxLength": 128}),
                 ("target", {"type": "string", "maxLength": 128}),
                 ("before", {"type": "integer", "minimum": 1}),
                 ("limit", {"type": "integer", "minimum": 1, "maximum": 1000}))),
    Route("GET", f"{P}/setup", get_setup, "public", "Whether first-run setup is pending",
          response="SetupState"),
    Route("POST", f"{P}/setup", do_setup, "public",
          "Create the first admin with the one-time setup code (logs in)",
          body=SETUP, response="SessionCreated", status=201, errors=(400, 403, 409, 429)),
    Route("POST", f"{P}/session", login, "public", "Log in (sets the session cookie)",
          body=LOGIN, response="SessionCreated", status=201, errors=(400, 401, 429)),
    Route("DELETE", f"{P}/session", logout, "account", "Log out: the session ends",
          response="LoggedOut"),
    Route("GET", f"{P}/account", get_account, "read", "Who is asking", response="Account"),
    Route("POST", f"{P}/account/password", change_password, "account",
          "Change one's password (the current one is required; other sessions end)",
          body=CHANGE_PASSWORD, response="Changed", errors=(400, 403, 429)),
    Route("POST", f"{P}/account/end-everywhere", end_everywhere, "account",
          "End every other session and revoke every API token of one's own (the password "
          "is required)", body=PASSWORD_AGAIN, response="EndedEverywhere",
          errors=(400, 403, 429)),
    Route("POST", f"{P}/account/totp", begin_totp, "account",
          "Start enrolling an authenticator app: a secret and its QR code",
          response="TotpSecret", errors=(409,)),
    Route("POST", f"{P}/account/totp/confirm", confirm_totp, "account",
          "Turn TOTP on with a code from the app; returns recovery codes once",
          body=CONFIRM_TOTP, response="RecoveryCodes", errors=(400, 409)),
    Route("POST", f"{P}/account/totp/disable", disable_totp, "account",
          "Turn TOTP off (the password is required)", body=DISABLE_TOTP,
          response="TotpOff", errors=(400, 403, 429)),
    Route("GET", f"{P}/tokens", list_tokens, "account", "API tokens (admins see all)",
          response="TokenList"),
    Route("POST", f"{P}/tokens", create_token, "account",
          "Create an API token; the token is returned this once",
          body=CREATE_TOKEN, response="TokenCreated", status=201, errors=(400,)),
    Route("DELETE", f"{P}/tokens/{{id}}", revoke_token, "account", "Revoke an API token",
          response="Revoked", errors=(404,)),
    Route("GET", f"{P}/users", list_users, "users", "Users", response="UserList"),
    Route("POST", f"{P}/users", add_user, "users", "Add a user", body=ADD_USER,
          response="User", status=201, errors=(400, 409)),
    Route("DELETE", f"{P}/users/{{username}}", delete_user, "users", "Delete a user",
          response="Deleted", errors=(404, 409)),
)
