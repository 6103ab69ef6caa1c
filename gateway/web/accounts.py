"""Accounts of the admin page: first-run setup, login, sessions, users, TOTP and API tokens.

Shared by the JSON API and the pages; every outcome that matters is audited (never with a
secret). Errors are `AuthError`s carrying the HTTP status the caller should answer with.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.store import ApiToken, Session, Store, User
from gateway.web import auth

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 30 * 60
ABSOLUTE_TIMEOUT_S = 12 * 3600
TOUCH_EVERY_S = 60.0  # last_seen is written at most once a minute per session
SETUP_CODE_KEY = "setup_code"
DEVICE_KEY = "web.device_key"  # signs known-browser cookies; made once, kept in the store
DEVICE_COOKIE_LIFETIME_S = 90 * 86400


class AuthError(Exception):
    def __init__(self, status: int, message: str, *, retry_after: float | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.extra = extra or {}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a logged-in user (session) or an API token acting for its user."""

    username: str
    role: str
    session: Session | None = None
    token: ApiToken | None = None

    @property
    def can_write(self) -> bool:
        if self.role != "admin":
            return False
        return self.token is None or self.token.scope == "admin"

    @property
    def actor(self) -> str:
        return f"web:{self.username}" if self.token is None else f"api:{self.username}"


def _expired(session: Session, now: float) -> bool:
    return (now - session.last_seen > IDLE_TIMEOUT_S
            or now - session.created_at > ABSOLUTE_TIMEOUT_S)


def _blocked(seconds: float) -> AuthError:
    wait = auth.retry_after_header(seconds)
    return AuthError(429, f"too many failed attempts; try again in {wait} s",
                     retry_after=seconds)


class Accounts:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.throttle = auth.Throttle()

    # -- throttling --------------------------------------------------------------------

    def _check_throttle(self, keys: list[str], action: str, address: str) -> None:
        now = self.clock()
        wait = max(self.throttle.retry_after(k, now) for k in keys)
        if wait > 0:
            # Each failure is audited; of the refusals that follow, only the first: a flood
            # of refused requests must not flood the audit log.
            if any([self.throttle.first_refusal(k) for k in keys]):
                target = keys[0].partition(":")[2] or keys[0]
                self.store.audit(f"web:{address}", action, "throttled", target=target,
                                 detail=f"retry in {auth.retry_after_header(wait)} s")
            raise _blocked(wait)

    def _fail(self, keys: list[str], action: str, target: str, address: str,
              reason: str) -> None:
        now = self.clock()
        for key in keys:
            self.throttle.failed(key, now)
        self.store.audit(f"web:{address}", action, "failed", target=target,
                         detail=f"{reason}; from {address}")

    # -- first run ---------------------------------------------------------------------

    def needs_setup(self) -> bool:
        return not self.store.users()

    def issue_setup_code(self) -> tuple[str, float]:
        """A new one-time setup code (the old one stops working). Only before setup."""
        if not self.needs_setup():
            raise AuthError(409, "an admin account exists already; log in instead")
        code = auth.new_setup_code()
        expires = self.clock() + auth.SETUP_CODE_LIFETIME_S
        self.store.set_setting(SETUP_CODE_KEY, json.dumps(
            {"digest": auth.digest(auth.normalize_code(code)), "expires": expires}))
        self.store.audit("system", "setup.code", "issued", detail="valid for 1 hour")
        return code, expires

    def setup_code_expiry(self) -> float | None:
        raw = self.store.setting(SETUP_CODE_KEY)
        return float(json.loads(raw)["expires"]) if raw else None

    async def setup(self, code: str, username: str, password: str,
                    address: str) -> tuple[str, Session]:
        # Throttled per address only: one shared key let any host on the LAN keep the owner
        # from setting up. Guessing stays hopeless: a code has 59 bits and lives an hour,
        # and each address gets 5 free tries, then waits that double up to 15 minutes.
        keys = [f"setup:{address}"]
        self._check_throttle(keys, "setup", address)
        if not self.needs_setup():
            raise AuthError(409, "the gateway is set up already; log in instead")
        raw = self.store.setting(SETUP_CODE_KEY)
        stored = json.loads(raw) if raw else None
        if stored is None or stored["expires"] < self.clock():
            self._fail(keys, "setup", username, address, "setup code expired or missing")
            raise AuthError(403, "the setup code has expired: run `home-gateway setup-code` "
                                 "for a new one")
        if not hmac.compare_digest(stored["digest"], auth.digest(auth.normalize_code(code))):
            self._fail(keys, "setup", username, address, "wrong setup code")
            raise AuthError(403, "wrong setup code")
        self._check_new_user(username, password)
        self.store.add_user(username, "admin", await _hash(password))
        self.store.set_setting(SETUP_CODE_KEY, None)  # single use
        self.store.audit(f"web:{username}", "setup", "ok", target=username,
                         detail=f"first admin created from {address}")
        return self._new_session(username, address)

    # -- login and sessions ------------------------------------------------------------

    # A browser that has logged in to an account before carries a signed cookie for it
    # (OWASP's "device cookies"). Its attempts are throttled per cookie, not per account, so
    # a stranger's wrong guesses for the account (which do throttle it, for every browser
    # without such a cookie) never lock its owner's browser out.

    def _device_key(self) -> bytes:
        stored = self.store.setting(DEVICE_KEY)
        if stored is None:
            stored = secrets.token_hex(32)
            self.store.set_setting(DEVICE_KEY, stored)
        return bytes.fromhex(stored)

    def _device_mac(self, username: str, issued: int, nonce: str) -> str:
        message = f"{username.lower()}|{issued}|{nonce}".encode()
        return hmac.new(self._device_key(), message, hashlib.sha256).hexdigest()

    def device_cookie(self, username: str) -> str:
        """A new known-browser cookie for `username`."""
        issued, nonce = int(self.clock()), secrets.token_hex(8)
        return f"{issued}.{nonce}.{self._device_mac(username, issued, nonce)}"

    def known_device(self, username: str, cookie: str | None) -> str | None:
        """The cookie's id when it is a valid, unexpired known-browser cookie for
        `username`, else None."""
        issued, _, rest = (cookie or "").partition(".")
        nonce, _, mac = rest.partition(".")
        if not (issued.isdigit() and nonce and mac):
            return None
        if self.clock() - int(issued) > DEVICE_COOKIE_LIFETIME_S:
            return None
        expected = self._device_mac(username, int(issued), nonce)
        return nonce if hmac.compare_digest(mac, expected) else None

    async def login(self, username: str, password: str, code: str | None,
                    address: str, device: str | None = None) -> tuple[str, Session]:
        known = self.known_device(username, device)
        first = f"device:{known}" if known else f"user:{username.lower()}"
        keys = [first, f"addr:{address}"]
        self._check_throttle(keys, "login", address)
        user = self.store.user(username)
        if not await _verify(user.password if user else None, password):
            self._fail(keys, "login", username, address,
                       "unknown user" if user is None else "wrong password")
            raise AuthError(401, "wrong user name or password")
        assert user is not None
        if user.totp_secret:
            if not code:
                raise AuthError(401, "enter the code from your authenticator app",
                                extra={"second_factor": True})
            if not self._second_factor_ok(user, code):
                self._fail(keys, "login", username, address, "wrong second-factor code")
                raise AuthError(401, "wrong or already used code",
                                extra={"second_factor": True})
        self.throttle.clear(keys[0])
        token, session = self._new_session(username, address)
        self.store.audit(f"web:{username}", "login", "ok", target=username,
                         detail=f"from {address}")
        return token, session

    def _second_factor_ok(self, user: User, code: str) -> bool:
        assert user.totp_secret is not None
        step = auth.totp_step(user.totp_secret, code, self.clock())
        if step is not None:
            return self.store.advance_totp_step(user.username, step)  # no replay
        if self.store.use_recovery_code(user.username, auth.digest(code.strip().lower())):
            self.store.audit(f"web:{user.username}", "login.recovery_code", "ok",
                             detail=f"{self.store.recovery_codes_left(user.username)} left")
            return True
        return False

    def _new_session(self, username: str, address: str) -> tuple[str, Session]:
        token, now = auth.new_token(), self.clock()
        session = Session(auth.digest(token), username, auth.new_token(), now, now, address)
        self.store.add_session(session)
        return token, session

    def session(self, token: str) -> Principal | None:
        """The user behind a session cookie, if the session is alive; refreshes idleness."""
        now = self.clock()
        session = self.store.session(auth.digest(token))
        if session is None:
            return None
        if _expired(session, now):
            self.store.delete_sessions(digest=session.digest)
            return None
        user = self.store.user(session.username)
        if user is None:
            return None
        if now - session.last_seen > TOUCH_EVERY_S:
            self.store.touch_session(session.digest, now)
        return Principal(user.username, user.role, session=session)

    def session_alive(self, principal: Principal) -> bool:
        """For long-lived streams: has the session ended or timed out meanwhile?"""
        session = principal.session
        if session is None:
            return True
        current = self.store.session(session.digest)
        return current is not None and not _expired(current, self.clock())

    def logout(self, principal: Principal) -> None:
        if principal.session is not None:
            self.store.delete_sessions(digest=principal.session.digest)
            self.store.audit(principal.actor, "logout", "ok", target=principal.username)

    def expire_sessions(self) -> int:
        now = self.clock()
        return self.store.expire_sessions(now - IDLE_TIMEOUT_S, now - ABSOLUTE_TIMEOUT_S)

    def api_token(self, token: str) -> Principal | None:
        token_id = auth.api_token_id(token)
        row = self.store.api_token(token_id) if token_id else None
        if row is None or not hmac.compare_digest(row.digest, auth.digest(token)):
            return None
        user = self.store.user(row.username)
        if user is None:
            return None
        now = self.clock()
        if row.last_used is None or now - row.last_used > TOUCH_EVERY_S:
            self.store.touch_api_token(row.id, now)
        return Principal(user.username, user.role, token=row)

    # -- own account -------------------------------------------------------------------

    async def _confirm_password(self, principal: Principal, password: str, action: str,
                                address: str) -> User:
        """An account change that needs the password again: throttled like a login."""
        keys = [f"user:{principal.username.lower()}", f"addr:{address}"]
        self._check_throttle(keys, action, address)
        user = self._user(principal.username)
        if not await _verify(user.password, password):
            self._fail(keys, action, user.username, address, "wrong password")
            raise AuthError(403, "the password is wrong")
        return user

    async def change_password(self, principal: Principal, current: str, new: str,
                              address: str) -> None:
        user = await self._confirm_password(principal, current, "password.change", address)
        if current == new:
            raise AuthError(400, "new_password: is the same as the current one")
        problem = auth.password_problem(new, user.username)
        if problem:
            raise AuthError(400, f"new_password: {problem}")
        self.store.set_password(user.username, await _hash(new))
        # Every other session of this user ends: whoever knew the old password is out.
        ended = self.store.delete_sessions(
            username=user.username,
            except_digest=principal.session.digest if principal.session else None)
        self.store.audit(principal.actor, "password.change", "ok", target=user.username,
                         detail=f"{ended} other session(s) ended")

    def begin_totp(self, principal: Principal) -> dict[str, str]:
        user = self._user(principal.username)
        if user.totp_secret:
            raise AuthError(409, "two-factor authentication is on already")
        secret = auth.new_totp_secret()
        uri = auth.totp_uri(secret, user.username)
        return {"secret": secret, "uri": uri, "qr_svg": auth.qr_svg(uri)}

    def confirm_totp(self, principal: Principal, secret: str, code: str) -> list[str]:
        """Turn TOTP on once the user proved their app has `secret`; the recovery codes
        are returned this once."""
        user = self._user(principal.username)
        if user.totp_secret:
            raise AuthError(409, "two-factor authentication is on already")
        if not (len(secret) == 32 and set(secret) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")):
            raise AuthError(400, "secret: expected the 32-character secret from /account/totp")
        step = auth.totp_step(secret, code, self.clock())
        if step is None:
            self.store.audit(principal.actor, "totp.enable", "failed", target=user.username,
                             detail="wrong code")
            raise AuthError(400, "code: wrong code; check the time on your phone")
        codes = auth.new_recovery_codes()
        self.store.set_totp(user.username, secret, [auth.digest(c) for c in codes])
        self.store.advance_totp_step(user.username, step)
        self.store.audit(principal.actor, "totp.enable", "ok", target=user.username)
        return codes

    async def disable_totp(self, principal: Principal, password: str, address: str) -> None:
        user = await self._confirm_password(principal, password, "totp.disable", address)
        self.store.set_totp(user.username, None, [])
        self.store.audit(principal.actor, "totp.disable", "ok", target=user.username)

    async def end_everywhere(self, principal: Principal, password: str,
                             address: str) -> tuple[int, int]:
        """Every other session of this user ends and every API token of theirs is revoked
        (a password change ends the sessions only: scripts keep their tokens). Returns
        (sessions ended, tokens revoked)."""
        user = await self._confirm_password(principal, password, "account.end_all", address)
        ended = self.store.delete_sessions(
            username=user.username,
            except_digest=principal.session.digest if principal.session else None)
        revoked = self.store.delete_api_tokens(user.username)
        self.store.audit(principal.actor, "account.end_all", "ok", target=user.username,
                         detail=f"{ended} other session(s) ended, {revoked} API token(s) "
                                "revoked")
        return ended, revoked

    # -- users (admins) ----------------------------------------------------------------

    def _user(self, username: str) -> User:
        user = self.store.user(username)
        if user is None:
            raise AuthError(404, f"no user {username!r}")
        return user

    def _check_new_user(self, username: str, password: str) -> None:
        if not auth.USERNAME.fullmatch(username):
            raise AuthError(400, "username: expected 1-32 characters: lower-case letters, "
                                 "digits, '.', '_' or '-', starting with a letter")
        if self.store.user(username) is not None:
            raise AuthError(409, f"username: {username!r} exists already")
        problem = auth.password_problem(password, username)
        if problem:
            raise AuthError(400, f"password: {problem}")

    async def add_user(self, principal: Principal, username: str, role: str,
                       password: str) -> User:
        if role not in auth.ROLES:
            raise AuthError(400, "role: expected one of: admin, viewer")
        self._check_new_user(username, password)
        self.store.add_user(username, role, await _hash(password))
        self.store.audit(principal.actor, "user.add", "ok", target=username, detail=role)
        return self._user(username)

    def delete_user(self, principal: Principal, username: str) -> None:
        user = self._user(username)
        if user.username == principal.username:
            raise AuthError(409, "you cannot delete your own account")
        admins = [u for u in self.store.users() if u.role == "admin"]
        if user.role == "admin" and len(admins) == 1:
            raise AuthError(409, "the last admin cannot be deleted")
        self.store.delete_user(username)  # cascades to sessions, tokens, recovery codes
        self.store.audit(principal.actor, "user.delete", "ok", target=username)

    # -- API tokens --------------------------------------------------------------------

    def create_token(self, principal: Principal, name: str, scope: str) -> tuple[ApiToken, str]:
        if scope not in auth.SCOPES:
            raise AuthError(400, "scope: expected one of: read, admin")
        if scope == "admin" and principal.role != "admin":
            raise AuthError(403, "scope: only admins may create admin tokens")
        if not 1 <= len(name) <= 64 or not name.isprintable():
            raise AuthError(400, "name: expected 1 to 64 printable characters")
        token_id, token = auth.new_api_token()
        row = ApiToken(token_id, principal.username, name, scope, auth.digest(token),
                       self.clock(), None)
        self.store.add_api_token(row)
        self.store.audit(principal.actor, "token.create", "ok", target=token_id,
                         detail=f"{scope} token {name!r}")
        return row, token

    def tokens(self, principal: Principal) -> list[ApiToken]:
        return self.store.api_tokens(None if principal.role == "admin" else principal.username)

    def revoke_token(self, principal: Principal, token_id: str) -> None:
        row = self.store.api_token(token_id)
        if row is None or (row.username != principal.username and principal.role != "admin"):
            raise AuthError(404, f"no token {token_id!r}")
        self.store.delete_api_token(token_id)
        self.store.audit(principal.actor, "token.revoke", "ok", target=token_id)


async def _hash(password: str) -> str:
    # argon2 takes tens of milliseconds and 19 MiB: off the event loop.
    return await asyncio.get_running_loop().run_in_executor(None, auth.hash_password, password)


async def _verify(encoded: str | None, password: str) -> bool:
    return await asyncio.get_running_loop().run_in_executor(
        None, auth.verify_password, encoded, password)
