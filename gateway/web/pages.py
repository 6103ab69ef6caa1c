"""The admin pages: server-rendered views. Every change they offer goes through the JSON API
(static/app.js posts the forms), so each action has exactly one implementation."""

from __future__ import annotations

import json
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import jinja2
from aiohttp import web

from gateway.devices.kinds import KINDS, Param
from gateway.privacy.consent import TITLES, show
from gateway.web.api import (
    GUARD,
    PRE,
    PRINCIPAL,
    accounts_of,
    age_text,
    audit_view,
    cloud_view,
    daemon_of,
    device_or_404,
    device_view,
    devices_view,
    enrollment_view,
    firewall_notice,
    firewall_view,
    homeassistant_view,
    no_ha_login,
    privacy_error,
    status_view,
    token_view,
    user_view,
)

if TYPE_CHECKING:
    from gateway.daemon import Daemon

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Control and format characters (Unicode Cc and Cf, but tab and newline): in text a
# stranger controls (a device's or a discovered host's name, a client id) they hide or
# reorder what is shown: U+202E turns "plug\u202egnp.exe" around, U+200B makes two names
# that look alike differ. Every page shows them escaped, as \u202e; app.js does the same.
INVISIBLE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891"
    "\u08e2\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff"
    "\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]")


def visible(value: Any) -> Any:
    """A template value with its invisible characters shown (markup is left alone)."""
    if isinstance(value, str) and not hasattr(value, "__html__"):  # Markup is not text
        return INVISIBLE.sub(lambda m: f"\\u{ord(m[0]):04x}", value)
    return value


ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("gateway.web", "templates"),
    autoescape=True, trim_blocks=True, lstrip_blocks=True,
    undefined=jinja2.StrictUndefined, finalize=visible,
)


def _ago(ts: float | None) -> str:
    return "never" if ts is None else _age(time.time() - ts) + " ago"


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {s} s"


_age = age_text  # a credential's age: "40 s", "12 min", "5 h", "30 d"


def _until(ts: float | None) -> str:
    if ts is None:
        return "not scheduled"
    left = ts - time.time()
    return "due now" if left <= 0 else f"in {_age(left)}"


def _size(n: int) -> str:
    """Bytes as people read them: "830 B", "12.4 KB", "16 MB"."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} B"


def _shown(value: Any) -> str:
    """A state value as the pages show it: booleans as yes / no, the rest as JSON."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return value if isinstance(value, str) else json.dumps(value)


def _epsilon(value: str) -> str:
    """An exact ε ("1/10", as the ledger keeps it) as people read it: "0.1"."""
    return show(Fraction(value))


ENV.filters.update(ago=_ago, clock=_clock, duration=_duration, age=_age, until=_until,
                   size=_size, shown=_shown, epsilon=_epsilon)

# One line per drop class for the Network page (docs/firewall.md has the long version).
DROP_MEANINGS = {
    "inbound": "from the home LAN or the internet and not a reply: a scan, or a LAN host "
               "probing devices",
    "quarantine": "from a quarantined or unknown device, beyond the gateway's services",
    "egress": "from an adopted device to a destination its profile does not allow",
    "lateral": "from one device to another without a profile allowing the pair",
    "upnp": "a device trying to open ports in the home router (UPnP, NAT-PMP)",
    "spoof": "a source address its sender may not use",
    "flood": "one host opening more connections to the gateway than any needs",
}
POLICY_MEANINGS = {
    "quarantine": "only the gateway's own services (DHCP, DNS, NTP, the broker); every new "
                  "device starts here",
    "restricted": "the gateway's services and what its profile allows",
    "open": "everything but other devices and UPnP: an exception, made on purpose",
    "blocked": "nothing at all, not even the gateway",
}


@dataclass(frozen=True, slots=True)
class Page:
    method: str
    path: str
    handler: Handler
    access: str  # "public", "page" (logged in) or "page-admin"


def _chrome(request: web.Request) -> dict[str, Any]:
    """What base.html needs on every page: who is logged in, and the firewall banner."""
    principal = request.get(PRINCIPAL)
    notice = (firewall_notice(daemon_of(request).firewall.status())
              if principal is not None else None)
    return {"user": principal, "path": request.path, "firewall_notice": notice}


def render(request: web.Request, template: str, **context: Any) -> web.Response:
    guard = request.app[GUARD]
    html = ENV.get_template(template).render(
        csrf=guard.csrf_token(request) if PRE in request else "", **_chrome(request),
        **context)
    return web.Response(text=html, content_type="text/html")


def render_error(request: web.Request, status: int, message: str) -> str:
    return ENV.get_template("error.html").render(
        csrf="", status=status, message=message, title=str(status), **_chrome(request))


async def dashboard(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    return render(request, "dashboard.html", title="Dashboard", status=status_view(daemon),
                  audit=[audit_view(e) for e in daemon.store.audit_log(8)])


def suggested_id(name: str, taken: set[str]) -> str:
    """A device id from a discovered name: "Küche Plug #2" -> "kuche-plug-2", unique."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:40].strip("-")
    if len(slug) < 3:
        slug = f"device-{slug}".strip("-")
    candidate, n = slug, 2
    while candidate in taken:
        suffix = f"-{n}"
        candidate = slug[:40 - len(suffix)].rstrip("-") + suffix
        n += 1
    return candidate


def discovered_label(item: Mapping[str, Any]) -> str:
    """How a sighting is named on the page: an mDNS instance without its service type."""
    name, kind = str(item["name"]), str(item["type"])
    if item["source"] == "mdns" and name.endswith("." + kind) and len(name) > len(kind) + 1:
        return name[:-len(kind) - 1]
    return name


def discovered_view(daemon: Daemon) -> dict[str, Any]:
    """The Devices page's "Discovered on the network": the new ones still present (each
    with an id and a name to adopt it as), the ignored ones, and how many new ones left."""
    taken = {d.id for d in daemon.devices.devices()}
    new, ignored, gone = [], [], 0
    for item in daemon.discovery.listing():
        label = discovered_label(item)
        row = {**item, "label": label, "suggested_id": suggested_id(label, taken),
               "suggested_name": label[:64]}
        if item["status"] == "ignored":
            ignored.append(row)
        elif item["status"] == "new":
            if item["present"]:
                new.append(row)
                taken.add(row["suggested_id"])
            else:
                gone += 1
    return {"new": new, "ignored": ignored, "gone": gone}


async def devices(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    return render(request, "devices.html", title="Devices", devices=devices_view(daemon),
                  kinds=sorted(KINDS), rotation_days=daemon.rotator.policy.period_days,
                  own_login=daemon.rotator.own is not None,
                  discovered=discovered_view(daemon))


async def homeassistant(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    config = daemon.config
    return render(request, "homeassistant.html", title="Home Assistant",
                  ha=homeassistant_view(daemon), name=config.homeassistant.name,
                  broker_mode=config.broker.mode,
                  no_login=None if daemon.ha_login is not None else no_ha_login(daemon),
                  rotation_days=config.credentials.rotation_days)


async def device(request: web.Request) -> web.StreamResponse:
    found = device_or_404(request)
    kind = KINDS.get(found.kind)
    daemon = daemon_of(request)
    return render(request, "device.html", title=found.name, device=device_view(daemon, found),
                  actions=kind.actions if kind else {},
                  rotation_default=daemon.rotator.policy.period_days)


async def network(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    view = firewall_view(daemon)
    return render(request, "network.html", title="Network", fw=view["status"],
                  devices=view["devices"], profiles=view["profiles"],
                  network=daemon.config.network, drops=DROP_MEANINGS,
                  policies=POLICY_MEANINGS,
                  check_interval=daemon.config.firewall.check_interval_s)


# The schedule form's hint: every form `when` takes (gateway/cloud/schedule.py).
WHEN_FORMS = ("daily 07:30", "weekdays 07:30", "weekends 09:00", "mon,wed 18:00",
              "cron 0 7 * * 1-5")
SOURCE_MEANINGS = {
    "cloud": "signed by a cloud key, came over the cloud link",
    "local-signed": "signed, sent to the local API (the owner's app without the cloud)",
    "admin": "a logged-in admin (this page, the API or the command line)",
    "homeassistant": "Home Assistant",
    "schedule": "a local schedule",
}


def example_params(params: Mapping[str, Param]) -> str:
    """Parameters that an action accepts, as JSON: what the schedule form starts with."""
    out: dict[str, Any] = {}
    for name, p in params.items():
        if p.type is bool:
            out[name] = True
        elif p.choices:
            out[name] = p.choices[0]
        elif p.low is not None and p.high is not None:
            out[name] = round((p.low + p.high) / 2)
        else:
            out[name] = 0
    return json.dumps(out)


async def cloud(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    view = cloud_view(daemon, 50)
    kinds = {d.kind for d in daemon.devices.devices()}
    actions = {kind: {action: example_params(params)
                      for action, params in KINDS[kind].actions.items()}
               for kind in sorted(kinds) if kind in KINDS}
    names = {d.id: d.name for d in daemon.devices.devices()}
    return render(request, "cloud.html", title="Cloud", cloud=view, s=view["status"],
                  devices=sorted(daemon.devices.devices(), key=lambda d: d.id),
                  names=names, actions=actions, when_forms=WHEN_FORMS,
                  sources=SOURCE_MEANINGS)


async def privacy(request: web.Request) -> web.StreamResponse:
    service = daemon_of(request).privacy
    status = service.status()
    ids, body, send_after = service.next_export()
    return render(request, "privacy.html", title="Privacy", p=status,
                  error=privacy_error(status), titles=TITLES,
                  preview=body.decode(errors="replace"), preview_reports=len(ids),
                  preview_bytes=len(body), send_after=send_after)


async def enroll(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    live = daemon.store.live_enrollments(time.time())
    return render(request, "enroll.html", title="Enroll a device",
                  enrollments=[enrollment_view(e) for e in live],
                  minutes=daemon.config.credentials.enrollment_minutes,
                  plaintext=daemon.status()["credentials"]["plaintext_listeners"])


async def audit(request: web.Request) -> web.StreamResponse:
    store = daemon_of(request).store
    q = request.query
    filters = {k: (q.get(k) or "")[:128] for k in ("action", "actor", "result", "target")}
    before = int(q["before"]) if q.get("before", "").isdigit() else None
    entries = store.audit_log(50, filters["action"] or None, actor=filters["actor"] or None,
                              result=filters["result"] or None,
                              target=filters["target"] or None, before=before)
    return render(request, "audit.html", title="Audit log", filters=filters,
                  actions=store.audit_actions(), entries=[audit_view(e) for e in entries],
                  older=entries[-1].id if len(entries) == 50 else None)


async def account(request: web.Request) -> web.StreamResponse:
    accounts = accounts_of(request)
    principal = request[PRINCIPAL]
    user = accounts.store.user(principal.username)
    assert user is not None
    return render(request, "account.html", title="Account", account=user_view(user),
                  recovery_left=accounts.store.recovery_codes_left(user.username),
                  tokens=[token_view(t) for t in accounts.tokens(principal)])


async def users(request: web.Request) -> web.StreamResponse:
    accounts = accounts_of(request)
    return render(request, "users.html", title="Users",
                  users=[user_view(u) for u in accounts.store.users()])


def _next(request: web.Request) -> str:
    target = request.query.get("next", "/")
    # Only a local path: never an open redirect to another site.
    return target if target.startswith("/") and not target.startswith("//") else "/"


async def login(request: web.Request) -> web.StreamResponse:
    accounts = accounts_of(request)
    if accounts.needs_setup():
        raise web.HTTPFound("/setup")
    if request.get(PRINCIPAL) is not None:
        raise web.HTTPFound(_next(request))
    return render(request, "login.html", title="Log in", next=_next(request))


async def setup(request: web.Request) -> web.StreamResponse:
    accounts = accounts_of(request)
    if not accounts.needs_setup():
        raise web.HTTPFound("/login")
    return render(request, "setup.html", title="Set up your gateway",
                  expires=accounts.setup_code_expiry())


PAGES: tuple[Page, ...] = (
    Page("GET", "/", dashboard, "page"),
    Page("GET", "/devices", devices, "page"),
    Page("GET", "/devices/{id}", device, "page"),
    Page("GET", "/network", network, "page"),
    Page("GET", "/cloud", cloud, "page"),
    Page("GET", "/privacy", privacy, "page"),
    Page("GET", "/homeassistant", homeassistant, "page"),
    Page("GET", "/enroll", enroll, "page-admin"),
    Page("GET", "/audit", audit, "page"),
    Page("GET", "/account", account, "page"),
    Page("GET", "/users", users, "page-admin"),
    Page("GET", "/login", login, "public"),
    Page("GET", "/setup", setup, "public"),
)
