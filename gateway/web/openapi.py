"""The OpenAPI 3 document of /api/v1, generated from the route table."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.firewall.model import DROP_CLASSES, POLICIES, PROTOCOLS
from gateway.privacy.reports import CATEGORIES

if TYPE_CHECKING:
    from gateway.web.api import Route


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None,
         extra: bool = False) -> dict[str, Any]:
    props = {**required, **(optional or {})}
    out: dict[str, Any] = {"type": "object", "properties": props,
                           "additionalProperties": extra}
    if required:
        out["required"] = list(required)
    return out


STR = {"type": "string"}
INT = {"type": "integer"}
NUM = {"type": "number"}
BOOL = {"type": "boolean"}
TS = {"type": "number", "description": "seconds since the Unix epoch"}
TS_OR_NULL = {**TS, "nullable": True}
STR_OR_NULL = {"type": "string", "nullable": True}
ANY_OBJ = {"type": "object", "additionalProperties": True}
STRS = {"type": "array", "items": STR}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _list(key: str, item: str) -> dict[str, Any]:
    return _obj({key: {"type": "array", "items": _ref(item)}})


def _enum(values: tuple[str, ...], description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string", "enum": list(values)}
    if description:
        out["description"] = description
    return out


DROPPED = _obj({c: INT for c in DROP_CLASSES})
SPOOL_CLASSES = _obj({c: INT for c in ("telemetry", "shadow", "result")})
SOURCES = ("cloud", "local-signed", "admin", "homeassistant", "schedule")
OUTCOMES = ("ok", "error", "timeout", "offline", "rejected")
PORTS = {**STRS, "description": 'ports and "LOW-HIGH" ranges; "0-65535": any; none for icmp'}
FRACTION = {"type": "string", "pattern": "^[0-9]+(/[0-9]+)?$",
            "description": 'an exact fraction, as the ledger keeps it: "1/10", "1"'}

BROKER = _obj({"host": STR, "port": INT, "tls": BOOL})
HA_STATUS = {
    "enabled": BOOL,
    "broker": _enum(("gateway", "external"),
                    "gateway: Home Assistant logs in to the gateway's broker; external: the "
                    "gateway joins Home Assistant's"),
    "prefix": {**STR, "description": "the discovery prefix"},
    "connected": {**BOOL, "description": "the bridge's MQTT session is up"},
    "gateway_id": STR,
    "entities": {**INT, "description": "discovery configs published"},
    "devices": {**INT, "description": "devices with entities"},
    "last_birth": {**_obj({"payload": STR, "at": TS}), "nullable": True,
                   "description": "Home Assistant's last birth or will message since the "
                                  "start (null: none)"},
    "commands": _obj({"ok": INT, "rejected": INT, "failed": INT}),
}
HA_LOGIN = _obj({
    "username": {**STR, "description": "the current login"},
    "issued_at": TS,
    "waiting_for_switch_from": {**STR_OR_NULL, "description": "the previous login, which "
                                "keeps working until Home Assistant uses the current one"},
    "last_login": {**_obj({"username": STR, "address": STR, "at": TS}), "nullable": True,
                   "description": "Home Assistant's last accepted login since the start"},
})
HA_LOGIN["description"] = ("only when Home Assistant logs in to the gateway's own broker")


SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _obj({"error": STR}, {
        "second_factor": BOOL,
        "result": {**_ref("CommandOutcome"), "description": "a command's result (commands)"}}),
    "Status": _obj({
        "healthy": BOOL, "uptime_s": NUM, "version": STR, "messages_per_s": NUM,
        "broker": _obj({"mode": STR, "running": {**BOOL, "nullable": True},
                        "pid": {**INT, "nullable": True}, "restarts": INT, "connected": BOOL}),
        "devices": _obj({"total": INT, "online": INT}),
        "credentials": _obj({"rotating": INT, "gateway_login": STR_OR_NULL, "alerts": STRS,
                             "enrollments_open": INT, "logins_refused": INT,
                             "plaintext_listeners": STRS}),
        "web": _obj({"urls": {"type": "array", "items": STR}, "setup_pending": BOOL}),
        "messages": _obj({"accepted": INT, "rejected": INT, "unknown": INT, "commands": INT,
                          "rejected_by_reason": {"type": "object",
                                                 "additionalProperties": INT}}),
        "firewall": _ref("FirewallStatus"),
        "cloud": _ref("CloudStatus"),
        "privacy": _ref("Privacy"),
        "homeassistant": _ref("HomeAssistantStatus"),
        "discovery": _ref("DiscoveryStatus"),
        "updates": _ref("Updates"),
        "tiles": {"type": "object", "additionalProperties": ANY_OBJ},
    }),
    "HomeAssistantStatus": _obj(HA_STATUS, {"login": HA_LOGIN}),
    "HomeAssistant": _obj({**HA_STATUS, "brokers": {
        "type": "array", "description": "where Home Assistant connects: the gateway's "
        "listeners outside the IoT segment, or Home Assistant's own broker (external); "
        "none when Home Assistant has no login here", "items": BROKER}}, {
        "login": HA_LOGIN,
        "username": {**STR, "description": "Home Assistant's current login on the "
                                           "gateway's broker"},
        "ca_file": {**STR, "description": "the CA certificate to trust for TLS"},
        "ca_sha256": {**STR_OR_NULL, "description": "its SHA-256 fingerprint (null: no CA "
                                                     "yet)"}}),
    "HomeAssistantCredential": _obj({"username": STR, "password": STR}),
    "HomeAssistantLogin": _obj({"username": {**STR, "description": "the new login; the "
                                             "current one stays until Home Assistant uses "
                                             "it"}}),
    "DiscoveryStatus": _obj({
        "mdns": {**ANY_OBJ, "description": "the mDNS announcer and browser, per address"},
        "dhcp": {**ANY_OBJ, "description": "the DHCP lease watcher"},
        "found": {**INT, "description": "sightings kept"},
        "new": {**INT, "description": "present and neither adopted nor ignored"}}),
    "Updates": _obj({
        "state": _enum(("current", "pending", "not-packaged", "unknown"),
                       "not-packaged: the home-gateway package is not installed (a source "
                       "or venv install); unknown: not checked yet, or the check failed "
                       "(see error)"),
        "package": {**STR, "description": "the gateway's Debian package"},
        "installed": {**STR_OR_NULL, "description": "its installed version"},
        "checked_at": {**TS_OR_NULL, "description": "the last check (null: none yet)"},
        "checking": {**BOOL, "description": "a check is running"},
        "error": {**STR_OR_NULL, "description": "why the state is unknown"},
        "pending": {"type": "array", "description": "upgrades of the package and of the "
                    "packages it needs (Depends, Pre-Depends, transitively), in apt's order",
                    "items": _obj({
                        "package": {**STR, "description": '"name", or "name:arch" for '
                                                         "another architecture"},
                        "installed": {**STR_OR_NULL, "description": "null: a new package"},
                        "candidate": {**STR, "description": "the version apt would install"},
                        "origin": {**STR, "description": 'where it comes from, as apt says: '
                                                        '"Debian-Security:12/stable-security"'},
                        "security": {**BOOL, "description": "from a security archive"}})},
        "security": {**INT, "description": "how many of them are security updates"},
    }),
    "Discovered": _obj({
        "key": {**STR, "description": '"mdns:<instance name>" or "dhcp:<mac>"'},
        "source": _enum(("mdns", "dhcp")),
        "name": {**STR, "description": "the service's instance name, or the lease's host "
                                       "name (or MAC): from the network, untrusted"},
        "type": {**STR, "description": 'the mDNS service type, or "dhcp"'},
        "addresses": STRS, "port": {**INT, "nullable": True},
        "txt": {"type": "object", "additionalProperties": STR,
                "description": "the mDNS TXT record"},
        "mac": STR_OR_NULL, "hostname": STR_OR_NULL,
        "first_seen": TS, "last_seen": TS,
        "present": {**BOOL, "description": "still announced or leased"},
        "status": _enum(("new", "ignored", "adopted")),
        "device": {**STR_OR_NULL, "description": "the device it was adopted as, or the known "
                                                 "device with its MAC or address"}}),
    "DiscoveredList": _obj({"discovered": {"type": "array", "items": _ref("Discovered"),
                                           "description": "newest first"},
                            "status": _ref("DiscoveryStatus")}),
    "DiscoveredIgnored": _obj({"key": STR, "status": _enum(("new", "ignored"))}),
    "Privacy": _obj({
        "state": _enum(("off", "on", "error"),
                       "off: no category consented; error: the export is stopped (see "
                       "last_error and ledger.error)"),
        "last_error": {**STR_OR_NULL, "description": "why the last release or export was "
                                                     "refused"},
        "categories": {"type": "array", "items": _obj({
            "name": _enum(CATEGORIES), "granted": BOOL,
            "epsilon": {**FRACTION, "description": "ε per week of this category's report"},
            "changed_at": TS_OR_NULL,
            "changed_by": {**STR_OR_NULL, "description": "who last gave or withdrew consent"},
            "text": {**STR, "description": "the consent text: what is sent, to whom, how "
                                           "often, at what privacy cost"}})},
        "collecting": {**STR_OR_NULL, "description": "the ISO week being collected "
                                                     "(null: nothing is)"},
        "ledger": _obj({
            "ok": {**BOOL, "description": "the ε ledger verifies; if not, nothing leaves"},
            "error": STR_OR_NULL,
            "budget": {**_obj({
                "week": {**STR, "description": "the current ISO week"},
                "week_spent": FRACTION, "week_cap": FRACTION, "week_left": FRACTION,
                "year_spent": {**FRACTION, "description": "ε released in the last 365 days"},
                "year_cap": FRACTION, "year_left": FRACTION}), "nullable": True}}),
        "queue": _obj({
            "reports": INT, "bytes": INT,
            "send_after": {**TS_OR_NULL, "description": "when the queue leaves at the "
                                                        "earliest"},
            "retry_at": {**TS_OR_NULL, "description": "the next attempt after a failed one"}}),
        "sink": {**STR, "description": 'where reports go: "file <folder>" or "https <url>"'},
        "region": STR,
        "history": {"type": "array", "description": "export attempts, newest first",
                    "items": _obj({"ts": TS, "sink": STR, "reports": INT, "bytes": INT,
                                   "categories": STR, "result": STR})},
    }),
    "ConsentSet": _obj({"category": _enum(CATEGORIES), "granted": BOOL,
                        "purged": {**INT, "description": "queued reports deleted"}}),
    "Purged": _obj({"purged": {**INT, "description": "queued reports deleted"}}),
    "CloudStatus": _obj({
        "state": _enum(("connected", "offline", "not configured"),
                       "not configured: no cloud.url; local control, schedules and signed "
                       "local commands work all the same"),
        "url": STR_OR_NULL, "gateway_id": STR_OR_NULL,
        "connected_since": TS_OR_NULL,
        "connections": {**INT, "description": "successful connections since the start"},
        "last_error": {**STR_OR_NULL, "description": "why the last attempt failed"},
        "history": {"type": "array", "description": "the link's last events, oldest first",
                    "items": _obj({"ts": TS, "event": STR, "detail": STR})},
        "spool": _obj({
            "messages": INT, "bytes": INT, "max_bytes": INT,
            "oldest_age_s": {**NUM, "nullable": True}, "max_age_s": INT,
            "by_class": {**SPOOL_CLASSES, "description": "messages waiting, by class"},
            "evicted": {**SPOOL_CLASSES, "description": "messages dropped (full or too old) "
                                                        "since the start"}}),
        "signers": {**STRS, "description": "the key ids whose signed commands are accepted"},
        "telemetry": {**BOOL, "description": "telemetry is forwarded to the cloud"},
    }),
    "SignedCommand": {**_obj({
        "v": {"type": "integer", "enum": [1]},
        "id": {**STR, "pattern": "^[A-Za-z0-9._:-]{1,64}$",
               "description": "unique per signer key: a replay is refused"},
        "device": {**STR, "pattern": "^[a-z0-9-]{3,40}$"},
        "action": {**STR, "pattern": "^[a-z][a-z0-9_.]{0,39}$",
                   "description": "a device action, schedule.put or schedule.delete"},
        "params": ANY_OBJ,
        "iat": {**TS, "minimum": 0, "maximum": 1e11, "description": "issued at"},
        "exp": {**TS, "minimum": 0, "maximum": 1e11, "description": "expires at"},
        "kid": {**STR, "pattern": "^[A-Za-z0-9._-]{1,64}$",
                "description": "the signer key's id ([[cloud.signers]])"},
        "sig": {**STR, "pattern": "^[A-Za-z0-9_-]{1,128}$",
                "description": "Ed25519 over the canonical JSON of the other fields "
                               "(sorted keys, no whitespace), base64url"},
    }), "description": "A signed command envelope (docs/cloud.md)"},
    "CommandOutcome": _obj({"status": _enum(OUTCOMES)}, {
        "id": STR_OR_NULL, "device": STR_OR_NULL, "action": STR_OR_NULL,
        "reason": {**STR, "description": "why it was rejected: malformed, unknown-key, "
                   "bad-signature, expired, from-the-future, too-long-lived, replayed, "
                   "out-of-scope, unknown-device, bad-params (signed), invalid (unsigned)"},
        "message": STR, "latency_ms": NUM,
        "result": {**ANY_OBJ, "description": "what the device answered"},
    }, extra=True),
    "CommandReply": _obj({"source": _enum(("local-signed", "admin")),
                          "result": _ref("CommandOutcome")}),
    "Command": _obj({
        "ts": TS, "id": STR, "source": _enum(SOURCES), "actor": STR, "device": STR,
        "action": STR, "outcome": _enum(OUTCOMES),
        "reason": STR, "latency_ms": {**NUM, "nullable": True}}),
    "Shadow": _obj({
        "device": STR,
        "reported": {**ANY_OBJ, "description": "what the device last reported (it wins)"},
        "reported_version": INT,
        "desired": {"type": "object", "description": "per key: the newest change wins",
                    "additionalProperties": _obj({"value": {}, "ts": TS,
                                                  "side": _enum(("local", "cloud"))})},
        "desired_version": INT}),
    "Schedule": _obj({
        "id": STR, "device": STR, "name": STR,
        "when": {**STR, "description": "normalized, in the gateway's time zone"},
        "action": STR, "params": ANY_OBJ, "source": _enum(("admin", "cloud")),
        "enabled": BOOL, "last_at": TS, "last_result": STR,
        "next_at": {**TS_OR_NULL, "description": "the next run (null: never)"}}),
    "ScheduleList": _obj({"schedules": {"type": "array", "items": _ref("Schedule")},
                          "timezone": STR}),
    "Cloud": _obj({
        "status": _ref("CloudStatus"),
        "commands": {"type": "array", "items": _ref("Command"),
                     "description": "the command log, newest first"},
        "shadows": {"type": "array", "items": _ref("Shadow")},
        "schedules": {"type": "array", "items": _ref("Schedule")},
        "timezone": STR}),
    "FirewallStatus": _obj({
        "mode": _enum(("enforce", "render-only", "off"),
                      "render-only: rendered, not applied (devices NOT protected); off: "
                      "network.uplink is not set"),
        "healthy": BOOL,
        "enforcing": {**BOOL, "description": "a ruleset of the gateway is in force"},
        "problem": {**STR, "description": "why it is unhealthy ('' when it is not)"},
        "warnings": {**STRS, "description": "devices that could not be placed"},
        "last_apply": TS_OR_NULL, "last_apply_ms": {**NUM, "nullable": True},
        "last_reason": STR, "applies": INT, "failures": INT, "drift_repairs": INT,
        "last_drift": STR, "last_drift_at": TS_OR_NULL,
        "rules": INT, "elements": {**INT, "description": "set and map elements"},
        "dropped": {**DROPPED, "description": "packets dropped per class, running totals"},
        "dns": {"type": "object", "description": "the profiles' DNS names as resolved now",
                "additionalProperties": _obj({"addresses": STRS, "ttl_s": INT,
                                              "ok": BOOL})},
        "summary": STR,
    }),
    "FirewallDevice": _obj({
        "id": STR, "name": STR, "kind": STR, "policy": _enum(POLICIES),
        "profile": {**STR, "description": "the profile in effect"},
        "profile_default": {**BOOL, "description": "the profile named after its kind"},
        "profile_found": {**BOOL, "description": "a profile of that name exists"},
        "description": {**STR, "description": "the profile's"},
        "addresses": STRS,
        "placed": {**BOOL, "description": "the firewall knows the device by address"},
        "problem": {**STR, "description": "why the firewall cannot treat it as its policy "
                                          "says ('' when it can)"},
        "locked": {**BOOL, "description": "its policy is set in the config file"},
        "allow": {"type": "array", "description": "destinations its profile allows",
                  "items": _obj({"protocol": _enum(PROTOCOLS), "ports": PORTS,
                                 "host": STR_OR_NULL, "cidr": STR_OR_NULL,
                                 "addresses": {**STRS, "description": "the network, or what "
                                               "the name resolves to now"}})},
        "peers": {"type": "array", "description": "other devices its profile allows",
                  "items": _obj({"protocol": _enum(PROTOCOLS), "ports": PORTS,
                                 "device": STR_OR_NULL, "kind": STR_OR_NULL})},
    }),
    "Firewall": _obj({
        "status": _ref("FirewallStatus"),
        "devices": {"type": "array", "items": _ref("FirewallDevice")},
        "profiles": {**STRS, "description": "the profile names"},
        "minutes": INT,
        "history": {"type": "array", "description": "drop counter samples of the last "
                    "minutes, oldest first", "items": _obj({"at": TS, "dropped": DROPPED})},
    }),
    "PolicySet": _obj({"id": STR, "policy": _enum(POLICIES), "profile": STR_OR_NULL,
                       "applied": {**BOOL, "description": "the firewall was applied"},
                       "firewall": {**STR, "description": "the firewall's summary"}}),
    "Credential": _obj({
        "username": {**STR_OR_NULL, "description": "the active broker login (null: none)"},
        "rotated_at": {**TS_OR_NULL, "description": "when the active login was issued"},
        "age_s": {**INT, "nullable": True},
        "next_rotation": {**TS_OR_NULL, "description": "when it is next due (or retried)"},
        "rotation_days": {**INT, "description": "the period in effect"},
        "rotation_days_default": {**BOOL, "description": "the period is the gateway's default"},
        "rotating": BOOL,
        "step": {**STR_OR_NULL, "description": "created, offered or acked while rotating"},
        "failures": {**INT, "description": "failed rotation attempts in a row"},
        "last_result": {**STR, "description": "'', 'ok', 'failed: …' or 'alert: …'"},
        "alert": BOOL,
    }),
    "Device": _obj({
        "id": STR, "name": STR, "kind": STR, "status": STR, "source": STR,
        "mac": STR_OR_NULL, "ip": STR_OR_NULL, "model": STR_OR_NULL,
        "firmware": STR_OR_NULL, "online": BOOL, "last_seen": TS_OR_NULL,
        "first_seen": TS_OR_NULL, "invalid_messages": INT, "state": ANY_OBJ,
        "policy": _enum(POLICIES, "its firewall policy"),
        "profile": {**STR, "description": "its firewall profile"},
        "actions": {"type": "object",
                    "additionalProperties": {"type": "array", "items": STR}},
        "credential": _ref("Credential"),
    }),
    "DeviceList": _list("devices", "Device"),
    "DeviceAdded": _obj({"device": _ref("Device"),
                         "credential": _obj({"username": STR, "password": STR})}),
    "Removed": _obj({"removed": STR}),
    "Started": _obj({"started": {**STRS, "description": "the devices whose rotation started"}}),
    "Enrollment": _obj({
        "id": STR, "name": STR_OR_NULL, "device_id": STR_OR_NULL, "created_by": STR,
        "created_at": TS, "expires_at": TS,
        "state": {"type": "string", "enum": ["open", "delivered", "used", "expired",
                                             "revoked"]},
        "failures": INT}),
    "EnrollmentList": _list("enrollments", "Enrollment"),
    "EnrollmentCreated": _obj({
        "id": STR, "token": {**STR, "description": "<id>.<secret>, shown this once"},
        "expires_at": TS,
        "brokers": {"type": "array", "items": _obj({"host": STR, "port": INT, "tls": BOOL})},
        "ca_file": STR, "ca_sha256": STR,
        "qr_payload": {**STR, "description": 'what the QR code holds: {"v":1,"token",'
                                            '"brokers","ca_sha256"} as compact JSON'},
        "qr_svg": STR}),
    "Telemetry": _obj({"device": STR, "minutes": INT, "points": {
        "type": "array", "items": _obj({"ts": TS, "values": ANY_OBJ})}}),
    "CommandResult": _obj({"device": STR, "action": STR, "result": ANY_OBJ}),
    "AuditEntry": _obj({"id": INT, "ts": TS, "actor": STR, "action": STR, "target": STR,
                        "result": STR, "detail": STR}),
    "Audit": _obj({"entries": {"type": "array", "items": _ref("AuditEntry")},
                   "actions": {"type": "array", "items": STR}}),
    "SetupState": _obj({"needed": BOOL, "code_expires": TS_OR_NULL}),
    "SessionCreated": _obj({"username": STR, "role": {"type": "string",
                                                      "enum": ["admin", "viewer"]},
                            "csrf_token": STR}),
    "LoggedOut": _obj({"logged_out": BOOL}),
    "Account": _obj({"username": STR, "role": STR, "second_factor": BOOL,
                     "recovery_codes_left": INT,
                     "via": {"type": "string", "enum": ["session", "token"]},
                     "scope": STR_OR_NULL}),
    "Changed": _obj({"changed": BOOL}),
    "TotpSecret": _obj({"secret": STR, "uri": STR, "qr_svg": STR}),
    "RecoveryCodes": _obj({"recovery_codes": {"type": "array", "items": STR}}),
    "TotpOff": _obj({"second_factor": BOOL}),
    "EndedEverywhere": _obj({"sessions_ended": INT, "tokens_revoked": INT}),
    "Token": _obj({"id": STR, "name": STR, "scope": {"type": "string",
                                                    "enum": ["read", "admin"]},
                   "username": STR, "created_at": TS, "last_used": TS_OR_NULL}),
    "TokenList": _list("tokens", "Token"),
    "TokenCreated": _obj({"id": STR, "name": STR, "scope": STR, "username": STR,
                          "created_at": TS, "last_used": TS_OR_NULL, "token": STR}),
    "Revoked": _obj({"revoked": STR}),
    "User": _obj({"username": STR, "role": STR, "second_factor": BOOL, "created_at": TS}),
    "UserList": _list("users", "User"),
    "Deleted": _obj({"deleted": STR}),
}

_MESSAGES = {
    400: "The request was malformed; `error` names the problem",
    401: "Not logged in, or wrong credentials",
    403: "Not allowed (role, token scope, CSRF or Origin check)",
    404: "No such thing",
    409: "Conflicts with the current state",
    413: "The request body is too large",
    415: "The body is not JSON",
    421: "The Host header names none of the gateway's names",
    429: "Too many failed attempts; see Retry-After",
    504: "The device did not answer in time",
}


def _error(status: int) -> dict[str, Any]:
    return {"description": _MESSAGES[status],
            "content": {"application/json": {"schema": _ref("Error")}}}


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.handler.__name__,
        "tags": [route.path.split("/")[3]],
    }
    path_schemas = dict(route.params)
    params = [{"name": name, "in": "path", "required": True,
               "schema": path_schemas.get(name, {"type": "string", "maxLength": 64})}
              for name in re.findall(r"{(\w+)}", route.path)]
    params += [{"name": name, "in": "query", "required": False, "schema": schema}
               for name, schema in route.query]
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": route.body.openapi()}}}
    if route.produces == "application/json":
        schema = _ref(route.response) if route.response else ANY_OBJ
        ok = {"description": "OK", "content": {"application/json": {"schema": schema}}}
    else:
        ok = {"description": "OK", "content": {route.produces: {"schema": STR}}}
    if route.headers:
        ok["headers"] = {name: {"description": schema.get("description", ""),
                                "required": True, "schema": schema}
                         for name, schema in route.headers}
    responses: dict[str, Any] = {str(route.status): ok}
    statuses = set(route.errors) | {421}
    if route.body is not None:
        statuses |= {400, 413, 415}
    if route.access != "public":
        statuses |= {401, 403}
    elif route.method != "GET":
        statuses |= {403}  # the CSRF / Origin checks
    for status in sorted(statuses):
        responses[str(status)] = _error(status)
    op["responses"] = responses
    if route.access == "public":
        op["security"] = []
    elif route.access == "signed":  # a signed body needs no login
        op["security"] = [{}, {"token": []}, {"session": []}]
    return op


def document(routes: tuple[Route, ...]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Home Gateway API",
            "version": __version__,
            "description": (
                "The local admin API. Authenticate with the session cookie the login sets "
                "(state changes then need the X-CSRF-Token header and a same-origin Origin) "
                "or with `Authorization: Bearer <token>` using an API token made on the "
                "Account page. `read` tokens may only read; no token may manage accounts. "
                "A signed command envelope (POST /api/v1/commands) needs neither."),
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "hg_session"},
            },
        },
        "security": [{"token": []}, {"session": []}],
    }
