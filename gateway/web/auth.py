"""Authentication primitives for the admin page: pure functions and small state machines.

Passwords are argon2id (OWASP's minimum: m = 19 MiB, t = 2, p = 1). Session, API-token,
recovery and setup codes are random from `secrets` and kept only as SHA-256 digests: they
carry 128+ bits of entropy, so a slow hash would add nothing.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib.resources
import math
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

import pyotp
import segno
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHash, VerificationError

PASSWORD_MIN = 10
PASSWORD_MAX = 128
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32,
                        salt_len=16)

USERNAME = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
ROLES = ("admin", "viewer")
SCOPES = ("read", "admin")

SETUP_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L: read off a log
SETUP_CODE_GROUPS = 3  # XXXX-XXXX-XXXX: 12 characters, 59 bits
SETUP_CODE_LIFETIME_S = 3600

TOTP_ISSUER = "Home Gateway"
RECOVERY_CODES = 10


# -- passwords ---------------------------------------------------------------------------

@functools.cache
def common_passwords() -> frozenset[str]:
    text = importlib.resources.files("gateway.web").joinpath("common-passwords.txt").read_text()
    passwords = text.split("\n\n", 1)[1]  # after the header ("#1bitch" is a password)
    return frozenset(line.lower() for line in passwords.splitlines() if line)


def password_problem(password: str, username: str = "") -> str | None:
    """Why this password may not be used, or None."""
    if len(password) < PASSWORD_MIN:
        return f"is too short: use at least {PASSWORD_MIN} characters"
    if len(password) > PASSWORD_MAX:
        return f"is too long: use at most {PASSWORD_MAX} characters"
    if password.lower() in common_passwords():
        return "is one of the 10,000 most common passwords"
    if username and username.lower() in password.lower():
        return "contains the user name"
    if len(set(password)) < 4:
        return "repeats too few different characters"
    return None


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so that "no such user" takes as long
    as "wrong password". Made on first use: every CLI start imports this module."""
    return HASHER.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return HASHER.hash(password)


def verify_password(encoded: str | None, password: str) -> bool:
    """Constant work whether or not the account exists (pass None when it does not)."""
    try:
        HASHER.verify(encoded or _dummy_hash(), password)
    except (VerificationError, InvalidHash):
        return False
    return encoded is not None


# -- random secrets ----------------------------------------------------------------------

def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> str:
    """256 bits, URL-safe: session cookies and CSRF tokens."""
    return secrets.token_urlsafe(32)


def new_api_token() -> tuple[str, str]:
    """(id, token): the id is public and finds the row; the token is shown once."""
    token_id = secrets.token_hex(6)
    return token_id, f"hgw_{token_id}_{secrets.token_urlsafe(32)}"


def api_token_id(token: str) -> str | None:
    match = re.fullmatch(r"hgw_([0-9a-f]{12})_[A-Za-z0-9_-]{43}", token)
    return match.group(1) if match else None


def new_setup_code() -> str:
    chars = "".join(secrets.choice(SETUP_CODE_ALPHABET) for _ in range(4 * SETUP_CODE_GROUPS))
    return "-".join(chars[i:i + 4] for i in range(0, len(chars), 4))


def normalize_code(code: str) -> str:
    """What the user typed, without the spaces, dashes and case they may have changed."""
    return re.sub(r"[\s-]", "", code).upper()


def new_recovery_codes() -> list[str]:
    return [f"{secrets.token_hex(4)}-{secrets.token_hex(4)}" for _ in range(RECOVERY_CODES)]


# -- second factor -----------------------------------------------------------------------

def new_totp_secret() -> str:
    return pyotp.random_base32(32)


def totp_uri(secret: str, username: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=TOTP_ISSUER)


def qr_svg(text: str) -> str:
    """An inline <svg> QR code (a data: image would need the CSP to allow data: URIs)."""
    svg: str = segno.make(text, error="m").svg_inline(scale=4, dark="#111", light="#fff",
                                                     omitsize=True)
    return svg


def totp_step(secret: str, code: str, now: float) -> int | None:
    """The 30-second time step `code` belongs to (one step of drift allowed), or None."""
    code = code.strip().replace(" ", "")
    if not re.fullmatch(r"[0-9]{6}", code):
        return None
    totp = pyotp.TOTP(secret)
    current = int(now // totp.interval)
    for step in (current, current - 1, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


# -- brute-force throttle ----------------------------------------------------------------

@dataclass
class Throttle:
    """Failures per key (an account, a client address) in a sliding window.

    The first `free` failures cost nothing; after that each attempt must wait a delay that
    doubles with every further failure, up to the window's length. Failures older than the
    window are forgotten, so nobody is ever locked out for good.
    """

    free: int = 5
    window_s: float = 15 * 60
    first_delay_s: float = 30.0
    max_keys: int = 10_000  # bounded memory, whatever an attacker sends
    _failures: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)
    _reported: dict[str, float] = field(default_factory=dict)

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, ()) if now - t < self.window_s]
        if times:
            self._failures[key] = times
        else:
            self._forget(key)
        return times

    def _forget(self, key: str) -> None:
        self._failures.pop(key, None)
        self._reported.pop(key, None)

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until `key` may try again (0: now)."""
        times = self._recent(key, now)
        if len(times) < self.free:
            return 0.0
        delay = min(self.first_delay_s * 2.0 ** (len(times) - self.free), self.window_s)
        # Clamped: float rounding in (last + delay) - now may exceed the window by an ulp.
        return min(max(0.0, times[-1] + delay - now), self.window_s)

    def failed(self, key: str, now: float) -> None:
        times = self._recent(key, now)
        self._failures[key] = [*times, now]
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._forget(next(iter(self._failures)))

    def first_refusal(self, key: str) -> bool:
        """True for the first refused attempt after each failure, so that a flood of
        refused requests is noted once, not once per request."""
        times = self._failures.get(key)
        if not times or self._reported.get(key) == times[-1]:
            return False
        self._reported[key] = times[-1]
        return True

    def clear(self, key: str) -> None:
        self._forget(key)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
