"""Signed command envelopes (DESIGN §6): the cloud is a transport, not a trust anchor.

An envelope is JSON with `v`, `id`, `device`, `action`, `params`, `iat`, `exp`, `kid` and
`sig`; `sig` is Ed25519 over the canonical JSON of every other field (UTF-8, sorted keys,
no insignificant whitespace). The same envelope arrives from the cloud, from the owner's
app on the local API, and is what schedules run. Everything here is pure: the caller
passes the clock, the signers, the replay check and the device registry.

Checks, in order, each with the code a rejected command's result carries:
malformed, unknown-key, bad-signature, expired, from-the-future, too-long-lived, replayed,
out-of-scope, unknown-device, bad-params.

Besides a device's own actions, three gateway actions exist, each authorized by the
device actions it leads to: `shadow.desired` (params `{"state": {key: value},
"changed_at": t}`; each key is set by one action), `schedule.put` (params `{"id", "when",
"action", "params"}`) and `schedule.delete` (params `{"id"}`).
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.devices.kinds import KINDS, check_command

VERSION = 1
FIELDS = frozenset({"v", "id", "device", "action", "params", "iat", "exp", "kid", "sig"})
MAX_BYTES = 16384
ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
KID = re.compile(r"[A-Za-z0-9._-]{1,64}")
ACTION = re.compile(r"[a-z][a-z0-9_.]{0,39}")
DEVICE = re.compile(r"[a-z0-9-]{3,40}")
SCHEDULE_ID = re.compile(r"[a-z0-9-]{1,40}")

SHADOW_DESIRED = "shadow.desired"
SCHEDULE_PUT = "schedule.put"
SCHEDULE_DELETE = "schedule.delete"
GATEWAY_ACTIONS = (SHADOW_DESIRED, SCHEDULE_PUT, SCHEDULE_DELETE)


class Rejected(Exception):
    """A command the gateway will not carry out. `code` is stable; str() says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Signer:
    """A key allowed to sign commands, and what for: device ids and actions, each a list
    of shell-style patterns ("*" for all)."""

    kid: str
    key: Ed25519PublicKey
    devices: tuple[str, ...] = ("*",)
    actions: tuple[str, ...] = ("*",)

    def covers(self, device: str, action: str) -> bool:
        return (any(fnmatch.fnmatchcase(device, p) for p in self.devices)
                and any(fnmatch.fnmatchcase(action, p) for p in self.actions))


@dataclass(frozen=True, slots=True)
class Envelope:
    """A verified command."""

    id: str
    device: str
    action: str
    params: dict[str, Any]
    iat: float
    exp: float
    kid: str


@dataclass(frozen=True, slots=True)
class Limits:
    skew_s: float = 60.0  # how far ahead of our clock `iat` may be
    max_lifetime_s: float = 3600.0  # exp - iat: keeps the replay cache small


def canonical(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def public_key_text(key: Ed25519PublicKey) -> str:
    """The form a key is written in the config: base64url of its 32 raw bytes."""
    return _b64(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def load_public_key(text: str) -> Ed25519PublicKey:
    """Raises ValueError for anything but base64url of 32 bytes."""
    try:
        raw = _unb64(text.strip())
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
    if len(raw) != 32:
        raise ValueError(f"{len(raw)} bytes, not the 32 of an Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def sign(key: Ed25519PrivateKey, kid: str, *, id: str, device: str, action: str,
         params: Mapping[str, Any], iat: float, exp: float) -> dict[str, Any]:
    """A signed envelope (the cloud's side; the simulator, tests and benchmarks use it)."""
    fields: dict[str, Any] = {"v": VERSION, "id": id, "device": device, "action": action,
                              "params": dict(params), "iat": iat, "exp": exp, "kid": kid}
    return dict(fields, sig=_b64(key.sign(canonical(fields))))


def parse(payload: bytes | str) -> dict[str, Any]:
    """JSON object of an envelope's shape, or Rejected("malformed")."""
    if len(payload) > MAX_BYTES:
        raise Rejected("malformed", f"envelope is {len(payload)} bytes (at most {MAX_BYTES})")
    try:
        raw = json.loads(payload)
    except (ValueError, RecursionError):
        raise Rejected("malformed", "not JSON") from None
    if not isinstance(raw, dict):
        raise Rejected("malformed", "expected a JSON object")
    missing = sorted(FIELDS - raw.keys())
    extra = sorted(raw.keys() - FIELDS)
    if missing or extra:
        what = (f"missing {', '.join(missing)}" if missing else "") + (
            "; " if missing and extra else "") + (f"unknown {', '.join(extra)}" if extra else "")
        raise Rejected("malformed", f"envelope fields: {what}")
    if raw["v"] != VERSION or isinstance(raw["v"], bool):
        raise Rejected("malformed", f"v must be {VERSION}")
    for name, pattern in (("id", ID), ("kid", KID), ("device", DEVICE), ("action", ACTION)):
        value = raw[name]
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise Rejected("malformed", f"{name} must match {pattern.pattern}")
    for name in ("iat", "exp"):
        value = raw[name]
        try:
            number = not isinstance(value, bool) and math.isfinite(value)
        except (TypeError, OverflowError):  # not a number, or an int too large for a float
            number = False
        if not number:
            raise Rejected("malformed", f"{name} must be a number (seconds since 1970)")
    if not isinstance(raw["params"], dict):
        raise Rejected("malformed", "params must be a JSON object")
    if not isinstance(raw["sig"], str):
        raise Rejected("malformed", "sig must be a base64url string")
    return raw


def verify(raw: Mapping[str, Any], *, signers: Mapping[str, Signer], now: float,
           limits: Limits, seen: Callable[[str, str], bool]) -> Envelope:
    """Signature, time and replay checks of a parsed envelope. `seen(kid, id)` says whether
    this command was already accepted. Authorization is `authorize`'s."""
    signer = signers.get(raw["kid"])
    if signer is None:
        raise Rejected("unknown-key", f"no signer key {raw['kid']!r} is configured")
    try:
        signature = _unb64(raw["sig"])
        signer.key.verify(signature, canonical({k: v for k, v in raw.items() if k != "sig"}))
    except (InvalidSignature, binascii.Error, ValueError):
        raise Rejected("bad-signature", f"the signature does not verify with key "
                                        f"{signer.kid!r}") from None
    iat, exp = float(raw["iat"]), float(raw["exp"])
    if exp <= now:
        raise Rejected("expired", f"expired {now - exp:.0f} s ago")
    if iat > now + limits.skew_s:
        raise Rejected("from-the-future", f"issued {iat - now:.0f} s in the future (at most "
                                          f"{limits.skew_s:g} s of clock skew)")
    if exp - iat > limits.max_lifetime_s:
        raise Rejected("too-long-lived", f"valid for {exp - iat:.0f} s (at most "
                                         f"{limits.max_lifetime_s:g} s)")
    if seen(raw["kid"], raw["id"]):
        raise Rejected("replayed", f"command {raw['id']!r} was already received")
    return Envelope(raw["id"], raw["device"], raw["action"], dict(raw["params"]), iat, exp,
                    raw["kid"])


def device_commands(envelope: Envelope, kind: str) -> list[tuple[str, dict[str, Any]]]:
    """The device commands an envelope stands for (what it is authorized as), or
    Rejected("bad-params")."""
    params = envelope.params
    if envelope.action == SHADOW_DESIRED:
        state, changed_at = params.get("state"), params.get("changed_at")
        if set(params) != {"state", "changed_at"} or not isinstance(state, dict) or not state:
            raise Rejected("bad-params", 'expected params {"state": {key: value, ...}, '
                                         '"changed_at": seconds}')
        if isinstance(changed_at, bool) or not isinstance(changed_at, int | float):
            raise Rejected("bad-params", "changed_at must be a number (seconds since 1970)")
        commands = []
        for key, value in state.items():
            command = KINDS[kind].command_for(key, value)
            if command is None:
                settable = ", ".join(sorted(KINDS[kind].settable)) or "none"
                raise Rejected("bad-params", f"state {key!r} of a {kind} cannot be set "
                                             f"(settable: {settable})")
            commands.append(command)
        return commands
    if envelope.action == SCHEDULE_PUT:
        if set(params) - {"name"} != {"id", "when", "action", "params"}:
            raise Rejected("bad-params", 'expected params {"id", "when", "action", "params"}'
                                         ' and optionally "name"')
        if not isinstance(params["id"], str) or not SCHEDULE_ID.fullmatch(params["id"]):
            raise Rejected("bad-params", f"schedule id must match {SCHEDULE_ID.pattern}")
        if not isinstance(params["action"], str):
            raise Rejected("bad-params", "action must be a string")
        if not isinstance(params["params"], dict):
            raise Rejected("bad-params", "params must be a JSON object")
        return [(params["action"], params["params"])]
    if envelope.action == SCHEDULE_DELETE:
        if set(params) != {"id"} or not isinstance(params["id"], str):
            raise Rejected("bad-params", 'expected params {"id": schedule id}')
        return []
    return [(envelope.action, envelope.params)]


def authorize(envelope: Envelope, signer: Signer, kind: str | None) -> list[
        tuple[str, dict[str, Any]]]:
    """Scope, device and parameter checks; returns the device commands it stands for. A
    gateway action is in scope when every device action it leads to is."""
    if not any(fnmatch.fnmatchcase(envelope.device, p) for p in signer.devices):
        raise Rejected("out-of-scope", f"key {signer.kid!r} may not command {envelope.device}")
    if kind is None:
        raise Rejected("unknown-device", f"no device {envelope.device!r}")
    commands = device_commands(envelope, kind)
    for action, params in commands:
        if not signer.covers(envelope.device, action):
            raise Rejected("out-of-scope", f"key {signer.kid!r} may not send {action} to "
                                           f"{envelope.device}")
        problem = check_command(kind, action, params)
        if problem:
            raise Rejected("bad-params", problem)
    return commands
