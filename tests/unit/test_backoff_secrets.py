"""gateway.mqtt.Backoff and gateway.credentials.secrets."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.credentials import secrets as secrets_mod
from gateway.credentials.secrets import (
    hash_password,
    load_or_create_secret,
    new_secret,
    write_private,
)
from gateway.mqtt import Backoff


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- Backoff ---------------------------------------------------------------------------------


def ceilings(initial: float, maximum: float, n: int) -> list[float]:
    return [min(maximum, initial * 2**i) for i in range(n)]


def test_backoff_ceiling_doubles_up_to_maximum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.mqtt.random.uniform", lambda low, high: high)
    b = Backoff(initial=0.25, maximum=30.0)
    got = [b.next_delay() for _ in range(12)]
    assert got == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0, 30.0]

    monkeypatch.setattr("gateway.mqtt.random.uniform", lambda low, high: low)
    b = Backoff(initial=0.5, maximum=30.0)
    assert [b.next_delay() for _ in range(8)] == [0.25, 0.5, 1, 2, 4, 8, 15, 15]


def test_backoff_delays_stay_within_half_to_full_ceiling() -> None:
    b = Backoff(initial=0.25, maximum=30.0)
    for ceiling in ceilings(0.25, 30.0, 40):
        delay = b.next_delay()
        assert ceiling / 2 <= delay <= ceiling


def test_backoff_has_jitter() -> None:
    delays = {Backoff(attempt=10).next_delay() for _ in range(50)}
    assert len(delays) > 40


def test_backoff_reset_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.mqtt.random.uniform", lambda low, high: high)
    b = Backoff(initial=1.0, maximum=8.0)
    assert [b.next_delay() for _ in range(5)] == [1, 2, 4, 8, 8]
    b.reset()
    assert [b.next_delay() for _ in range(3)] == [1, 2, 4]


def test_backoff_survives_a_long_outage() -> None:
    b = Backoff(initial=0.25, maximum=30.0)
    delays = [b.next_delay() for _ in range(1100)]
    assert all(15.0 <= d <= 30.0 for d in delays[10:])


# --- secrets ---------------------------------------------------------------------------------


def test_new_secret_is_long_and_unique() -> None:
    values = [new_secret() for _ in range(1000)]
    assert len(set(values)) == 1000
    for value in values:
        assert len(value) == 32  # token_urlsafe(24): 192 bits
        assert set(value) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_hash_password_round_trip() -> None:
    secret = new_secret()
    stored = hash_password(secret)
    assert stored.verify(secret)
    assert not stored.verify(secret + "x")
    assert not stored.verify(secret[:-1])
    assert not stored.verify("")
    assert secret not in (stored.hash, stored.salt)


def test_hash_password_is_salted() -> None:
    a, b = hash_password("same"), hash_password("same")
    assert a.salt != b.salt
    assert a.hash != b.hash
    assert a.verify("same") and b.verify("same")


def test_hash_password_with_fixed_salt_is_deterministic() -> None:
    a = hash_password("pw", b"0123456789ab", 101)
    b = hash_password("pw", b"0123456789ab", 101)
    assert a == b
    assert hash_password("pw", b"0123456789ab", 102).hash != a.hash


def test_write_private_is_0600_even_with_umask_zero(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "sub" / "gateway.secret"
    write_private(path, "s3cret\n")
    assert path.read_text() == "s3cret\n"
    assert mode(path) == 0o600


def test_write_private_replaces_atomically(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "gateway.secret"
    path.write_text("old\n")
    path.chmod(0o644)
    old_inode = path.stat().st_ino
    write_private(path, "new\n")
    assert path.read_text() == "new\n"
    assert mode(path) == 0o600
    assert path.stat().st_ino != old_inode, "replaced by rename, not rewritten in place"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.secret"]


def test_write_private_failure_keeps_old_file(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gateway.secret"
    write_private(path, "old\n")

    def broken_write(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(secrets_mod.os, "write", broken_write)
    with pytest.raises(OSError, match="No space"):
        write_private(path, "new\n")
    assert path.read_text() == "old\n"


def test_load_or_create_secret_creates_once(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "broker" / "gateway.secret"
    first = load_or_create_secret(path)
    assert len(first) == 32
    assert path.read_text() == first + "\n"
    assert mode(path) == 0o600
    assert load_or_create_secret(path) == first
    assert load_or_create_secret(path) == first


def test_load_or_create_secret_repairs_mode(tmp_path: Path) -> None:
    path = tmp_path / "gateway.secret"
    path.write_text("existing-secret\n")
    path.chmod(0o644)
    assert load_or_create_secret(path) == "existing-secret"
    assert mode(path) == 0o600
    assert path.read_text() == "existing-secret\n"


def test_load_or_create_secret_replaces_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.secret"
    path.write_text("\n")
    value = load_or_create_secret(path)
    assert len(value) == 32
    assert path.read_text() == value + "\n"
    assert mode(path) == 0o600
