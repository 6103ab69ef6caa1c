"""Broker secrets: generation, the hash Mosquitto's dynamic-security plugin stores, and
0600 files for the few secrets the gateway itself must keep (its own broker login)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

# The plugin's own default. Secrets are 192-bit random tokens, so the iteration count
# guards nothing a brute force could reach; it only costs CPU at every device connect.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12


def new_secret() -> str:
    """A 192-bit random secret, URL-safe (fits MQTT passwords and QR codes)."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """PBKDF2-SHA512 as the dynamic-security plugin stores it (base64 fields)."""

    hash: str
    salt: str
    iterations: int

    def verify(self, password: str) -> bool:
        expected = hash_password(password, base64.b64decode(self.salt), self.iterations)
        return hmac.compare_digest(expected.hash, self.hash)


def hash_password(password: str, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> PasswordHash:
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return PasswordHash(base64.b64encode(digest).decode(), base64.b64encode(salt).decode(),
                        iterations)


def write_private(path: Path, data: str) -> None:
    """Write a secret file atomically with mode 0600 (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_or_create_secret(path: Path) -> str:
    """The secret stored at `path`, created on first use."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if not value:
        value = new_secret()
        write_private(path, value + "\n")
    elif path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # repair a loosened mode rather than keep leaking
    return value


def load_or_create_login(path: Path, default_username: str) -> tuple[str, str]:
    """The login stored at `path` as "<username> <secret>" (a file holding only a secret,
    as written before logins were versioned, is `default_username`'s), created on first
    use."""
    value = load_or_create_secret(path)
    username, _, secret = value.partition(" ")
    if not secret:
        return default_username, username
    return username, secret
