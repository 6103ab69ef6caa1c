"""gateway.store: schema, refusal of foreign or newer databases, and each table's contract."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.credentials.secrets import hash_password
from gateway.store import SCHEMA_VERSION, Store, StoreError


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "gateway.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    try:
        yield s
    finally:
        s.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection, independent of the Store under test."""
    return sqlite3.connect(path, isolation_level=None)


def settle(path: Path) -> None:
    """Fold any WAL content into the main file so its bytes are the whole database."""
    con = raw(path)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


def fingerprint(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns, stat.S_IMODE(st.st_mode)


# --- schema ----------------------------------------------------------------------------------


def test_fresh_database_is_wal_with_current_schema(store: Store, db_path: Path) -> None:
    assert db_path.exists()
    con = raw(db_path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()
    assert {"devices", "credentials", "telemetry", "audit", "schema_version"} <= tables


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_database_file_is_private(db_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        s = Store(db_path)
    finally:
        os.umask(old)
    try:
        assert mode(db_path) == 0o600
    finally:
        s.close()


def test_wal_files_are_private_on_first_open(db_path: Path) -> None:
    old = os.umask(0o022)
    try:
        s = Store(db_path)
    finally:
        os.umask(old)
    try:
        s.audit("admin", "login", "ok")
        for suffix in ("-wal", "-shm"):
            side = db_path.with_name(db_path.name + suffix)
            assert side.exists()
            assert mode(side) == 0o600, f"{side.name} is {oct(mode(side))}"
    finally:
        s.close()


def test_reopening_is_idempotent(db_path: Path) -> None:
    s = Store(db_path)
    s.add_device("kitchen-plug", "Kitchen plug", "plug", status="adopted", source="admin")
    s.audit("admin", "add", "ok", target="kitchen-plug")
    s.close()
    for _ in range(2):
        s = Store(db_path)
        try:
            assert [d.id for d in s.devices()] == ["kitchen-plug"]
            assert len(s.audit_log()) == 1
        finally:
            s.close()
    con = raw(db_path)
    try:
        assert con.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        con.close()


def _make_newer(db_path: Path, journal_mode: str) -> int:
    Store(db_path).close()
    newer = SCHEMA_VERSION + 1
    con = raw(db_path)
    try:
        con.execute("UPDATE schema_version SET version = ?", (newer,))
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute(f"PRAGMA journal_mode={journal_mode}")
    finally:
        con.close()
    settle(db_path)
    db_path.chmod(0o644)  # so that a chmod by the refused Store would show
    return newer


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_newer_schema_is_refused_untouched(db_path: Path, journal_mode: str) -> None:
    newer = _make_newer(db_path, journal_mode)
    before = fingerprint(db_path)

    with pytest.raises(StoreError) as info:
        Store(db_path)

    message = str(info.value)
    assert f"version {newer}" in message
    assert f"({SCHEMA_VERSION})" in message
    assert "left untouched" in message
    assert str(db_path) in message
    settle(db_path)
    assert fingerprint(db_path) == before
    con = raw(db_path)
    try:
        assert con.execute("SELECT version FROM schema_version").fetchall() == [(newer,)]
    finally:
        con.close()


def test_non_database_file_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is a config file, not a database\n" * 200)
    before = fingerprint(db_path)
    with pytest.raises(StoreError, match="not a home-gateway database") as info:
        Store(db_path)
    assert str(db_path) in str(info.value)
    assert fingerprint(db_path) == before


# --- devices ---------------------------------------------------------------------------------


def test_add_device_and_upsert(store: Store) -> None:
    first = store.add_device("hall-door", "Hall door", "door", status="pending", source="dhcp",
                             mac="aa:bb:cc:dd:ee:ff", ip="192.168.7.20")
    assert (first.id, first.name, first.kind, first.status, first.source) == (
        "hall-door", "Hall door", "door", "pending", "dhcp")
    assert (first.mac, first.ip) == ("aa:bb:cc:dd:ee:ff", "192.168.7.20")
    assert first.cred_version == 0
    assert first.state == {}
    assert first.last_seen is None

    second = store.add_device("hall-door", "Front door", "door", status="adopted", source="admin")
    assert second.name == "Front door"
    assert second.status == "adopted"
    assert second.source == "admin"
    assert second.created_at == first.created_at
    assert [d.id for d in store.devices()] == ["hall-door"]


def test_devices_are_sorted_and_removed_hidden(store: Store) -> None:
    for id in ("zz-sensor", "aa-bulb", "mm-plug"):
        store.add_device(id, id, "sensor", status="adopted", source="admin")
    assert [d.id for d in store.devices()] == ["aa-bulb", "mm-plug", "zz-sensor"]

    store.set_device_status("mm-plug", "removed")
    assert [d.id for d in store.devices()] == ["aa-bulb", "zz-sensor"]
    assert [d.id for d in store.devices(include_removed=True)] == [
        "aa-bulb", "mm-plug", "zz-sensor"]
    removed = store.device("mm-plug")
    assert removed is not None and removed.status == "removed"
    assert store.device("no-such") is None


def test_save_device_activity(store: Store) -> None:
    store.add_device("bulb-1", "Bulb", "bulb", status="adopted", source="admin")
    store.save_device_activity([("bulb-1", 100.0, 2, json.dumps({"on": True}))])
    store.save_device_activity([("bulb-1", 150.0, 3, json.dumps({"on": False}))])
    device = store.device("bulb-1")
    assert device is not None
    assert (device.first_seen, device.last_seen) == (100.0, 150.0)
    assert device.invalid_messages == 3
    assert device.state == {"on": False}


# --- credentials -----------------------------------------------------------------------------


def test_replace_credential_bumps_version_and_keeps_one(store: Store) -> None:
    store.add_device("cam-1", "Camera", "camera", status="adopted", source="admin")
    assert store.replace_credential("cam-1", hash_password("first-secret")) == "cam-1.1"
    assert store.replace_credential("cam-1", hash_password("second-secret")) == "cam-1.2"

    creds = store.credentials()
    assert [(c.username, c.device_id) for c in creds] == [("cam-1.2", "cam-1")]
    assert creds[0].password.verify("second-secret")
    assert not creds[0].password.verify("first-secret")
    device = store.device("cam-1")
    assert device is not None and device.cred_version == 2


def test_replace_credential_for_unknown_device(store: Store) -> None:
    with pytest.raises(StoreError, match="no device 'ghost'"):
        store.replace_credential("ghost", hash_password("x"))
    assert store.credentials() == []


def test_credentials_skip_removed_devices(store: Store) -> None:
    for id in ("plug-a", "plug-b"):
        store.add_device(id, id, "plug", status="adopted", source="admin")
        store.replace_credential(id, hash_password(id))
    assert [c.username for c in store.credentials()] == ["plug-a.1", "plug-b.1"]
    store.set_device_status("plug-a", "removed")
    assert [c.username for c in store.credentials()] == ["plug-b.1"]
    store.delete_credentials("plug-b")
    assert store.credentials() == []


# --- telemetry -------------------------------------------------------------------------------


def test_telemetry_keeps_newest_per_device(store: Store) -> None:
    for id in ("t-1", "t-2"):
        store.add_device(id, id, "sensor", status="adopted", source="admin")
    store.add_telemetry([("t-2", 1.0, json.dumps({"n": -1}))], keep=10)
    for n in range(7):
        store.add_telemetry([("t-1", 1000.0 + n, json.dumps({"n": n}))], keep=3)
    store.add_telemetry([("t-1", 2000.0 + n, json.dumps({"n": 10 + n})) for n in range(2)],
                        keep=3)

    assert store.telemetry("t-1") == [
        (1006.0, {"n": 6}), (2000.0, {"n": 10}), (2001.0, {"n": 11})]
    assert store.telemetry("t-1", limit=2) == [(2000.0, {"n": 10}), (2001.0, {"n": 11})]
    assert store.telemetry("t-2") == [(1.0, {"n": -1})]
    assert store.telemetry("nobody") == []


# --- audit -----------------------------------------------------------------------------------


def test_audit_log_newest_first_with_filter_and_limit(store: Store) -> None:
    store.audit("admin", "login", "ok")
    store.audit("cloud", "command", "rejected", target="bulb-1", detail="bad signature")
    store.audit("admin", "login", "failed", detail="wrong password")
    store.audit("admin", "command", "ok", target="bulb-1")

    log = store.audit_log()
    assert [(e.actor, e.action, e.result) for e in log] == [
        ("admin", "command", "ok"),
        ("admin", "login", "failed"),
        ("cloud", "command", "rejected"),
        ("admin", "login", "ok"),
    ]
    assert [e.id for e in log] == sorted((e.id for e in log), reverse=True)
    assert log[2].target == "bulb-1" and log[2].detail == "bad signature"
    assert [e.result for e in store.audit_log(action="login")] == ["failed", "ok"]
    assert [e.result for e in store.audit_log(limit=1, action="command")] == ["ok"]
    assert len(store.audit_log(limit=2)) == 2


# --- change detection ------------------------------------------------------------------------


def test_data_version_sees_other_connections_commits(db_path: Path) -> None:
    daemon = Store(db_path)
    cli = Store(db_path)
    try:
        v0 = daemon.data_version()
        daemon.audit("daemon", "own", "ok")
        assert daemon.data_version() == v0, "own commits are not 'changes by others'"
        cli.add_device("new-plug", "New plug", "plug", status="pending", source="cli")
        v1 = daemon.data_version()
        assert v1 != v0
        assert daemon.data_version() == v1
        assert [d.id for d in daemon.devices()] == ["new-plug"]
    finally:
        cli.close()
        daemon.close()
