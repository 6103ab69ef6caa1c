"""Enrollment: a one-time token lets a new device get its own permanent login.

The admin creates an enrollment; the token `<token-id>.<secret>` (160-bit secret, 15
minutes by default) becomes a broker login `enroll:<token-id>` that may only publish
`enroll/<token-id>/hello` and hear `enroll/<token-id>/creds`. The device says hello (kind,
model, firmware, MAC); the gateway registers it, creates its login `<id>.1` and hands the
secret over on that session; the device reconnects with it and acknowledges on
`devices/<id>/creds/ack/1`; the enrollment login is deleted. A token that expired, was used
or is wrong has no login: the broker refuses it (and the gateway audits refused logins).
Only hashes are stored; the secrets exist in memory and on the wire.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.aio import cancel_and_wait
from gateway.broker.dynsec import DynsecClient
from gateway.broker.render import (
    create_device_login_commands,
    create_login_commands,
    delete_login_commands,
    enrollment_client_id,
    enrollment_username,
)
from gateway.credentials.secrets import hash_password, new_secret
from gateway.devices.kinds import KINDS
from gateway.devices.registry import DeviceError, normalize_mac
from gateway.devices.topics import DEVICE_ID, ack_topic, enroll_topic, enrollment_acls
from gateway.mqtt import MqttSession
from gateway.store import Enrollment, Store

log = logging.getLogger(__name__)

LIVE = ("open", "delivered")
MAX_HELLO_BYTES = 2048
MAX_BAD_HELLOS = 5  # then the token is revoked: a holder that keeps sending junk is suspect
TICK_S = 1.0


class EnrollmentError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Ticket:
    """What the admin hands to the device, shown once."""

    id: str
    token: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Hello:
    kind: str
    model: str | None
    firmware: str | None
    mac: str | None
    name: str | None


def token_parts(token: str) -> tuple[str, str]:
    """`<token-id>.<secret>` -> (token id, secret) for the broker login."""
    token_id, _, secret = token.strip().partition(".")
    if not token_id or not secret:
        raise EnrollmentError("an enrollment token looks like <id>.<secret>")
    return token_id, secret


def _text(hello: dict[str, Any], key: str, limit: int = 64) -> str | None:
    value = hello.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        raise EnrollmentError(f"{key!r} must be printable text of 1 to {limit} characters")
    return value


def parse_hello(payload: bytes) -> Hello:
    """Check a device's hello; EnrollmentError names what was wrong."""
    if len(payload) > MAX_HELLO_BYTES:
        raise EnrollmentError(f"hello is larger than {MAX_HELLO_BYTES} bytes")
    try:
        hello = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise EnrollmentError("hello is not JSON") from None
    if not isinstance(hello, dict):
        raise EnrollmentError("hello must be a JSON object")
    unknown = set(hello) - {"kind", "model", "firmware", "mac", "name"}
    if unknown:
        raise EnrollmentError(f"unknown field(s) in hello: {', '.join(sorted(unknown))}")
    kind = hello.get("kind")
    if kind not in KINDS:
        raise EnrollmentError(f"'kind' must be one of: {', '.join(sorted(KINDS))}")
    mac = _text(hello, "mac", 17)
    try:
        mac = normalize_mac(mac) if mac else None
    except DeviceError as exc:
        raise EnrollmentError(str(exc)) from None
    return Hello(kind, _text(hello, "model"), _text(hello, "firmware"), mac,
                 _text(hello, "name"))


def qr_payload(info: dict[str, Any]) -> str:
    """What an enrollment QR code holds (from Daemon.enrollment_info): everything a device
    needs to enroll, as compact JSON."""
    return json.dumps({"v": 1, "token": info["token"], "brokers": info["brokers"],
                       "ca_sha256": info["ca_sha256"]}, separators=(",", ":"))


class Enrollments:
    def __init__(self, store: Store, session: MqttSession, dynsec: DynsecClient, *,
                 ttl_s: float, on_change: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.session = session
        self.dynsec = dynsec
        self.ttl_s = ttl_s
        self.on_change = on_change
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="enrollment")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def create(self, actor: str, *, name: str | None = None,
                     device_id: str | None = None, ttl_s: float | None = None) -> Ticket:
        if device_id is not None:
            if not DEVICE_ID.fullmatch(device_id):
                raise EnrollmentError(f"device id {device_id!r} must be 3 to 40 of a-z, 0-9 "
                                      "and '-'")
            existing = self.store.device(device_id)
            if existing is not None and existing.status != "removed":
                raise EnrollmentError(f"device {device_id!r} already exists")
        token_id, secret = secrets.token_hex(5), secrets.token_urlsafe(20)  # 160-bit secret
        expires_at = time.time() + (ttl_s or self.ttl_s)
        self.store.add_enrollment(token_id, hash_password(secret), name=name,
                                  device_id=device_id, created_by=actor, expires_at=expires_at)
        self.store.audit(actor, "enrollment.create", "ok", target=token_id,
                         detail=f"for {device_id or name or 'a new device'}; expires in "
                                f"{round((expires_at - time.time()) / 60)} min")
        username = enrollment_username(token_id)
        await self.dynsec.apply(create_login_commands(
            username, secret, enrollment_acls(token_id),
            clientid=enrollment_client_id(token_id)))
        return Ticket(token_id, f"{token_id}.{secret}", expires_at)

    async def revoke(self, token_id: str, actor: str) -> None:
        enrollment = self.store.enrollment(token_id)
        if enrollment is None or enrollment.state not in LIVE:
            raise EnrollmentError(f"no open enrollment {token_id!r}")
        await self._close(enrollment, "revoked", actor)

    # -- the device's side of the conversation -------------------------------------

    def handle_hello(self, token_id: str, payload: bytes) -> None:
        asyncio.get_running_loop().create_task(self._hello(token_id, payload))

    async def _hello(self, token_id: str, payload: bytes) -> None:
        enrollment = self.store.enrollment(token_id)
        if enrollment is None or enrollment.state not in LIVE:
            return  # its login is gone (or going): nothing may answer on it
        if enrollment.expires_at <= time.time():
            await self._close(enrollment, "expired", "system")
            await self._answer(token_id, {"status": "error", "error": "token expired"})
            return
        try:
            hello = parse_hello(payload)
            device_id = enrollment.device_id or self._new_id(hello.kind)
            existing = self.store.device(device_id)
            if existing is not None and existing.status != "removed" and (
                    existing.source != "enrolled" or enrollment.state != "delivered"):
                raise EnrollmentError(f"device {device_id!r} already exists")
        except EnrollmentError as exc:
            await self._bad_hello(enrollment, str(exc))
            return
        old = [c.username for c in self.store.credentials(device_id)]
        secret = new_secret()
        username = self.store.enroll_device(
            token_id, device_id, enrollment.name or hello.name or device_id, hello.kind,
            mac=hello.mac, model=hello.model, firmware=hello.firmware,
            password=hash_password(secret))
        self.store.audit(f"enroll:{token_id}", "device.enroll", "issued", target=device_id,
                         detail=f"kind={hello.kind} model={hello.model or '-'} "
                                f"firmware={hello.firmware or '-'} mac={hello.mac or '-'}")
        self.on_change()
        await self.dynsec.apply(delete_login_commands(old)
                                + create_device_login_commands(device_id, username, secret))
        version = int(username.rsplit(".", 1)[1])
        await self._answer(token_id, {
            "status": "ok", "device_id": device_id, "client_id": device_id,
            "username": username, "password": secret, "version": version,
            "ack_topic": ack_topic(device_id, version)})

    def handle_ack(self, device_id: str, version: int) -> None:
        """The device connected with its first login and acknowledged it."""
        for enrollment in self.store.enrollments(("delivered",)):
            if enrollment.device_id == device_id:
                asyncio.get_running_loop().create_task(
                    self._close(enrollment, "used", f"device:{device_id}"))

    async def _bad_hello(self, enrollment: Enrollment, problem: str) -> None:
        failures = enrollment.failures + 1
        self.store.update_enrollment(enrollment.id, failures=failures)
        self.store.audit(f"enroll:{enrollment.id}", "enrollment.hello", "rejected",
                         target=enrollment.id, detail=problem)
        await self._answer(enrollment.id, {"status": "error", "error": problem})
        if failures >= MAX_BAD_HELLOS:
            await self._close(enrollment, "revoked", "system")

    async def _answer(self, token_id: str, answer: dict[str, Any]) -> None:
        try:
            await self.session.publish(enroll_topic(token_id, "creds"), json.dumps(answer),
                                       qos=1)
        except Exception as exc:
            log.warning("enrollment %s: answer not sent: %s", token_id, exc)

    def _new_id(self, kind: str) -> str:
        while True:
            candidate = f"{kind}-{secrets.token_hex(3)}"
            if self.store.device(candidate) is None:
                return candidate

    # -- closing -------------------------------------------------------------------

    async def _close(self, enrollment: Enrollment, state: str, actor: str) -> None:
        """End an enrollment: its login is deleted, so the token is refused from now on."""
        self.store.update_enrollment(enrollment.id, state=state)
        result = {"used": "ok", "expired": "expired", "revoked": "revoked"}[state]
        detail = enrollment.device_id or ""
        if state == "expired" and enrollment.state == "delivered":
            detail += " (expired before the device acknowledged; it keeps its login)"
        self.store.audit(actor, "enrollment.close", result, target=enrollment.id,
                         detail=detail.strip())
        self.on_change()
        await self.dynsec.apply(delete_login_commands([enrollment_username(enrollment.id)]))

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.time()
            for enrollment in self.store.enrollments(LIVE):
                if enrollment.expires_at <= now:
                    try:
                        await self._close(enrollment, "expired", "system")
                    except Exception:
                        log.exception("enrollment %s: could not expire", enrollment.id)

