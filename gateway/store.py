"""SQLite store: the single source of truth (DESIGN §5).

WAL mode with synchronous=NORMAL: a commit is durable against a process crash at once and
against power loss at the next checkpoint, and costs no fsync per message. The schema is
versioned; a database written by a newer home-gateway is refused untouched.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.credentials.secrets import PasswordHash

DEVICE_STATUSES = ("pending", "quarantined", "adopted", "removed")

# MIGRATIONS[n] upgrades a database from schema version n to n + 1. Append only.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE devices (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        kind        TEXT NOT NULL,
        status      TEXT NOT NULL
                    CHECK (status IN ('pending', 'quarantined', 'adopted', 'removed')),
        source      TEXT NOT NULL,
        mac         TEXT,
        ip          TEXT,
        created_at  REAL NOT NULL,
        first_seen  REAL,
        last_seen   REAL,
        invalid_messages INTEGER NOT NULL DEFAULT 0,
        state       TEXT NOT NULL DEFAULT '{}',
        cred_version INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE credentials (
        username    TEXT PRIMARY KEY,
        device_id   TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
        hash        TEXT NOT NULL,
        salt        TEXT NOT NULL,
        iterations  INTEGER NOT NULL,
        created_at  REAL NOT NULL
    );
    CREATE TABLE telemetry (
        device_id   TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
        ts          REAL NOT NULL,
        data        TEXT NOT NULL
    );
    CREATE INDEX telemetry_device ON telemetry (device_id, ts);
    CREATE TABLE audit (
        id          INTEGER PRIMARY KEY,
        ts          REAL NOT NULL,
        actor       TEXT NOT NULL,
        action      TEXT NOT NULL,
        target      TEXT NOT NULL DEFAULT '',
        result      TEXT NOT NULL,
        detail      TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_ts ON audit (ts);
    """,
    # v2: the web admin's accounts. Passwords are argon2id strings; session, API-token and
    # recovery-code secrets are random and stored only as SHA-256 digests.
    """
    CREATE TABLE users (
        username    TEXT PRIMARY KEY,
        role        TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
        password    TEXT NOT NULL,
        totp_secret TEXT,
        totp_last_step INTEGER NOT NULL DEFAULT 0,
        created_at  REAL NOT NULL,
        password_changed_at REAL NOT NULL
    );
    CREATE TABLE recovery_codes (
        username    TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
        digest      TEXT NOT NULL,
        PRIMARY KEY (username, digest)
    );
    CREATE TABLE sessions (
        digest      TEXT PRIMARY KEY,
        username    TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
        csrf        TEXT NOT NULL,
        created_at  REAL NOT NULL,
        last_seen   REAL NOT NULL,
        address     TEXT NOT NULL
    );
    CREATE TABLE api_tokens (
        id          TEXT PRIMARY KEY,
        username    TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
        name        TEXT NOT NULL,
        scope       TEXT NOT NULL CHECK (scope IN ('read', 'admin')),
        digest      TEXT NOT NULL,
        created_at  REAL NOT NULL,
        last_used   REAL
    );
    CREATE TABLE settings (
        key         TEXT PRIMARY KEY,
        value       TEXT NOT NULL
    );
    CREATE INDEX audit_action ON audit (action, id);
    """,
    # v3: credential rotation and enrollment. A device has one active credential and at
    # most one pending one (its rotation in flight); every rotation step is a row change
    # committed before the gateway acts on it, so a crash resumes or rolls back.
    """
    ALTER TABLE credentials ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE credentials ADD COLUMN state TEXT NOT NULL DEFAULT 'active'
        CHECK (state IN ('active', 'pending'));
    UPDATE credentials SET version = CAST(substr(username, instr(username, '.') + 1) AS INTEGER);
    ALTER TABLE devices ADD COLUMN model TEXT;
    ALTER TABLE devices ADD COLUMN firmware TEXT;
    ALTER TABLE devices ADD COLUMN rotation_days INTEGER;
    ALTER TABLE devices ADD COLUMN rotated_at REAL;
    ALTER TABLE devices ADD COLUMN rotation_failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN rotation_retry_at REAL;
    ALTER TABLE devices ADD COLUMN rotation_result TEXT NOT NULL DEFAULT '';
    UPDATE devices SET rotated_at = (SELECT max(created_at) FROM credentials c
                                     WHERE c.device_id = devices.id);
    CREATE TABLE rotations (
        device_id   TEXT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
        step        TEXT NOT NULL CHECK (step IN ('created', 'offered', 'acked')),
        old_username TEXT NOT NULL,
        new_username TEXT NOT NULL,
        reason      TEXT NOT NULL,
        started_at  REAL NOT NULL,
        offered_at  REAL
    );
    CREATE TABLE enrollments (
        id          TEXT PRIMARY KEY,
        hash        TEXT NOT NULL,
        salt        TEXT NOT NULL,
        iterations  INTEGER NOT NULL,
        device_id   TEXT,
        name        TEXT,
        created_by  TEXT NOT NULL,
        created_at  REAL NOT NULL,
        expires_at  REAL NOT NULL,
        state       TEXT NOT NULL
                    CHECK (state IN ('open', 'delivered', 'used', 'expired', 'revoked')),
        failures    INTEGER NOT NULL DEFAULT 0
    );
    """,
    # v4: the network guard. A device's firewall policy and profile; every device starts
    # quarantined (it reaches only the gateway's own services) until it is adopted.
    """
    ALTER TABLE devices ADD COLUMN policy TEXT NOT NULL DEFAULT 'quarantine'
        CHECK (policy IN ('quarantine', 'restricted', 'open', 'blocked'));
    ALTER TABLE devices ADD COLUMN profile TEXT;
    """,
    # v5: the cloud relay. Accepted command ids until they expire (replay cache), the
    # outbound spool, per-device desired state (each key with its time and side), the
    # local schedules and the command log.
    """
    CREATE TABLE replay (
        kid         TEXT NOT NULL,
        id          TEXT NOT NULL,
        exp         REAL NOT NULL,
        PRIMARY KEY (kid, id)
    ) WITHOUT ROWID;
    CREATE TABLE spool (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        class       TEXT NOT NULL CHECK (class IN ('result', 'shadow', 'telemetry')),
        topic       TEXT NOT NULL,
        body        TEXT NOT NULL,
        created     REAL NOT NULL
    );
    CREATE INDEX spool_class ON spool (class, seq);
    CREATE TABLE shadows (
        device_id   TEXT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
        desired     TEXT NOT NULL DEFAULT '{}',
        desired_version INTEGER NOT NULL DEFAULT 0,
        reported_version INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE schedules (
        id          TEXT PRIMARY KEY,
        device_id   TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
        name        TEXT NOT NULL,
        when_text   TEXT NOT NULL,
        action      TEXT NOT NULL,
        params      TEXT NOT NULL,
        source      TEXT NOT NULL,
        enabled     INTEGER NOT NULL DEFAULT 1,
        created_at  REAL NOT NULL,
        last_at     REAL NOT NULL,
        last_result TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE commands (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        ts          REAL NOT NULL,
        command_id  TEXT NOT NULL,
        source      TEXT NOT NULL,
        actor       TEXT NOT NULL,
        device_id   TEXT NOT NULL,
        action      TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        reason      TEXT NOT NULL DEFAULT '',
        latency_ms  REAL
    );
    """,
    # v6: the privacy export. The household's consent per category (absent = off), the
    # reports released and waiting to leave, and the export history.
    """
    CREATE TABLE privacy_consent (
        category    TEXT PRIMARY KEY,
        granted     INTEGER NOT NULL,
        changed_at  REAL NOT NULL,
        actor       TEXT NOT NULL
    );
    CREATE TABLE privacy_queue (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        category    TEXT NOT NULL,
        week        TEXT NOT NULL,
        body        TEXT NOT NULL,
        created     REAL NOT NULL,
        send_after  REAL NOT NULL
    );
    CREATE TABLE privacy_exports (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        ts          REAL NOT NULL,
        sink        TEXT NOT NULL,
        reports     INTEGER NOT NULL,
        bytes       INTEGER NOT NULL,
        categories  TEXT NOT NULL,
        result      TEXT NOT NULL
    );
    """,
    # v7: Home Assistant's retained discovery configs the gateway has published (so a
    # restart can clear the ones nothing wants any more), and what zeroconf and the DHCP
    # leases found on the IoT segment.
    """
    CREATE TABLE ha_entities (
        topic       TEXT PRIMARY KEY,
        device_id   TEXT NOT NULL,
        published_at REAL NOT NULL
    );
    CREATE TABLE discovered (
        key         TEXT PRIMARY KEY,
        source      TEXT NOT NULL CHECK (source IN ('mdns', 'dhcp')),
        name        TEXT NOT NULL,
        type        TEXT NOT NULL,
        addresses   TEXT NOT NULL,
        port        INTEGER,
        txt         TEXT NOT NULL,
        mac         TEXT,
        hostname    TEXT,
        first_seen  REAL NOT NULL,
        last_seen   REAL NOT NULL,
        present     INTEGER NOT NULL DEFAULT 1,
        status      TEXT NOT NULL DEFAULT 'new'
                    CHECK (status IN ('new', 'ignored', 'adopted')),
        device_id   TEXT
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    name: str
    kind: str
    status: str
    source: str
    mac: str | None
    ip: str | None  # its addresses (IPv4 and IPv6), space-separated
    created_at: float
    first_seen: float | None
    last_seen: float | None
    invalid_messages: int
    state: dict[str, Any]
    cred_version: int
    model: str | None
    firmware: str | None
    rotation_days: int | None  # None: the configured default
    rotated_at: float | None  # when the active credential was issued
    rotation_failures: int  # consecutive failed rotation attempts
    rotation_retry_at: float | None
    rotation_result: str  # "", "ok", "failed: …", "alert: …"
    policy: str  # the firewall's: quarantine, restricted, open or blocked
    profile: str | None  # None: the profile named after the kind

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(self.ip.split()) if self.ip else ()


@dataclass(frozen=True, slots=True)
class Discovered:
    """Something seen on the IoT segment: an mDNS service or a DHCP lease."""

    key: str  # "mdns:<instance name>" or "dhcp:<mac>"
    source: str  # "mdns" or "dhcp"
    name: str  # the service's instance name, or the lease's host name (or MAC)
    type: str  # the service type, e.g. "_shelly._tcp.local.", or "dhcp"
    addresses: tuple[str, ...]
    port: int | None
    txt: Mapping[str, str]
    mac: str | None
    hostname: str | None
    first_seen: float
    last_seen: float
    present: bool  # still announced / leased
    status: str = "new"  # new, ignored or adopted
    device_id: str | None = None  # the device it was adopted as


@dataclass(frozen=True, slots=True)
class Credential:
    username: str
    device_id: str
    password: PasswordHash
    created_at: float
    version: int
    state: str  # "active" or "pending" (offered, not yet proven in use)


@dataclass(frozen=True, slots=True)
class Rotation:
    """A credential rotation in flight; `step` is the last one committed."""

    device_id: str
    step: str  # "created" -> "offered" -> "acked"
    old_username: str
    new_username: str
    reason: str
    started_at: float
    offered_at: float | None


@dataclass(frozen=True, slots=True)
class Enrollment:
    id: str
    password: PasswordHash  # of the one-time token's secret
    device_id: str | None
    name: str | None
    created_by: str
    created_at: float
    expires_at: float
    state: str  # open, delivered, used, expired, revoked
    failures: int


@dataclass(frozen=True, slots=True)
class User:
    username: str
    role: str
    password: str
    totp_secret: str | None
    totp_last_step: int
    created_at: float
    password_changed_at: float


@dataclass(frozen=True, slots=True)
class Session:
    digest: str
    username: str
    csrf: str
    created_at: float
    last_seen: float
    address: str


@dataclass(frozen=True, slots=True)
class ApiToken:
    id: str
    username: str
    name: str
    scope: str
    digest: str
    created_at: float
    last_used: float | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    ts: float
    actor: str
    action: str
    target: str
    result: str
    detail: str


@dataclass(frozen=True, slots=True)
class Schedule:
    id: str
    device_id: str
    name: str
    when: str  # as gateway.cloud.schedule.parse_when normalizes it
    action: str
    params: dict[str, Any]
    source: str  # who made it: "cloud", "local-signed" (the vendor app) or "admin"
    enabled: bool
    created_at: float
    last_at: float  # the last instant handled (run or skipped); created_at at first
    last_result: str


@dataclass(frozen=True, slots=True)
class CommandEntry:
    ts: float
    command_id: str
    source: str  # cloud, local-signed, admin, homeassistant, schedule
    actor: str
    device_id: str
    action: str
    outcome: str  # ok, error, timeout, offline, rejected
    reason: str = ""
    latency_ms: float | None = None


def _enrollment(row: sqlite3.Row) -> Enrollment:
    values = dict(row)
    password = PasswordHash(values.pop("hash"), values.pop("salt"), values.pop("iterations"))
    return Enrollment(password=password, **values)


def _device(row: sqlite3.Row) -> Device:
    values = dict(row)
    values["state"] = json.loads(values["state"])
    return Device(**values)


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Create it private: SQLite gives the -wal and -shm files the database's mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        try:
            self._check_version()
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except BaseException:
            self.db.close()
            raise
        path.chmod(0o600)

    def close(self) -> None:
        self.db.close()

    # -- schema ------------------------------------------------------------------------

    def _version(self) -> int:
        has_table = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if not has_table:
            return 0
        row = self.db.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row else 0

    def _check_version(self) -> None:
        try:
            version = self._version()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a home-gateway database ({exc})") from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: database schema version {version} is newer than this "
                f"home-gateway understands ({SCHEMA_VERSION}); it was left untouched. "
                "Install the newer home-gateway again or restore a backup."
            )

    def _migrate(self) -> None:
        with self.transaction():
            self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)")
            version = self._version()
            for script in MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
            self.db.execute("DELETE FROM schema_version")
            self.db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def data_version(self) -> int:
        """Changes when another connection (the CLI) commits: cheap change detection."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    # -- devices -----------------------------------------------------------------------

    def add_device(self, id: str, name: str, kind: str, *, status: str, source: str,
                   mac: str | None = None, ip: str | None = None) -> Device:
        now = time.time()
        with self.transaction():
            self.db.execute(
                "INSERT INTO devices (id, name, kind, status, source, mac, ip, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name, kind = excluded.kind,"
                " status = excluded.status, source = excluded.source,"
                " mac = excluded.mac, ip = excluded.ip",
                (id, name, kind, status, source, mac, ip, now),
            )
        device = self.device(id)
        assert device is not None
        return device

    def device(self, id: str) -> Device | None:
        row = self.db.execute("SELECT * FROM devices WHERE id = ?", (id,)).fetchone()
        return _device(row) if row else None

    def devices(self, *, include_removed: bool = False) -> list[Device]:
        sql = "SELECT * FROM devices"
        if not include_removed:
            sql += " WHERE status != 'removed'"
        return [_device(row) for row in self.db.execute(sql + " ORDER BY id")]

    def set_device_status(self, id: str, status: str) -> None:
        with self.transaction():
            self.db.execute("UPDATE devices SET status = ? WHERE id = ?", (status, id))

    def set_device_addresses(self, id: str, mac: str | None, ip: str | None) -> None:
        """What the network says a device uses (normalized: see registry.normalize_ip)."""
        with self.transaction():
            self.db.execute("UPDATE devices SET mac = ?, ip = ? WHERE id = ?", (mac, ip, id))

    def set_device_policy(self, id: str, policy: str, profile: str | None) -> None:
        with self.transaction():
            self.db.execute("UPDATE devices SET policy = ?, profile = ? WHERE id = ?",
                            (policy, profile, id))

    def save_device_activity(self, rows: Iterable[tuple[str, float, int, str]]) -> None:
        """(device id, last seen, invalid messages, state JSON) for devices seen lately."""
        with self.transaction():
            self.db.executemany(
                "UPDATE devices SET last_seen = ?2, first_seen = COALESCE(first_seen, ?2),"
                " invalid_messages = ?3, state = ?4 WHERE id = ?1",
                rows,
            )

    # -- credentials -------------------------------------------------------------------

    def _new_credential(self, device_id: str, password: PasswordHash, state: str) -> str:
        """Insert the next credential version of `device_id` (inside a transaction)."""
        row = self.db.execute(
            "UPDATE devices SET cred_version = cred_version + 1 WHERE id = ?"
            " RETURNING cred_version", (device_id,)).fetchone()
        if row is None:
            raise StoreError(f"no device {device_id!r}")
        username = f"{device_id}.{row[0]}"
        self.db.execute(
            "INSERT INTO credentials (username, device_id, hash, salt, iterations, created_at,"
            " version, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (username, device_id, password.hash, password.salt, password.iterations,
             time.time(), row[0], state))
        return username

    def replace_credential(self, device_id: str, password: PasswordHash) -> str:
        """Replace every credential of `device_id` (and end any rotation) by a new active
        version; return its username."""
        with self.transaction():
            self.db.execute("DELETE FROM credentials WHERE device_id = ?", (device_id,))
            self.db.execute("DELETE FROM rotations WHERE device_id = ?", (device_id,))
            username = self._new_credential(device_id, password, "active")
            self.db.execute(
                "UPDATE devices SET rotated_at = ?, rotation_failures = 0,"
                " rotation_retry_at = NULL, rotation_result = '' WHERE id = ?",
                (time.time(), device_id))
        return username

    def delete_credentials(self, device_id: str) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM credentials WHERE device_id = ?", (device_id,))
            self.db.execute("DELETE FROM rotations WHERE device_id = ?", (device_id,))

    def credentials(self, device_id: str | None = None) -> list[Credential]:
        sql = ("SELECT c.* FROM credentials c JOIN devices d ON d.id = c.device_id"
               " WHERE d.status != 'removed'")
        args: list[str] = []
        if device_id is not None:
            sql, args = sql + " AND c.device_id = ?", [device_id]
        return [
            Credential(r["username"], r["device_id"],
                       PasswordHash(r["hash"], r["salt"], r["iterations"]), r["created_at"],
                       r["version"], r["state"])
            for r in self.db.execute(sql + " ORDER BY c.device_id, c.version", args)
        ]

    # -- rotation steps: each committed before the gateway acts on it ---------------------

    def begin_rotation(self, device_id: str, password: PasswordHash, reason: str) -> Rotation:
        """Step 1: a pending credential (the next version) beside the active one."""
        with self.transaction():
            old = self.db.execute(
                "SELECT username FROM credentials WHERE device_id = ? AND state = 'active'",
                (device_id,)).fetchone()
            if old is None:
                raise StoreError(f"device {device_id!r} has no credential to rotate")
            new = self._new_credential(device_id, password, "pending")
            self.db.execute(
                "INSERT INTO rotations (device_id, step, old_username, new_username, reason,"
                " started_at) VALUES (?, 'created', ?, ?, ?, ?)",
                (device_id, old[0], new, reason, time.time()))
        rotation = self.rotation(device_id)
        assert rotation is not None
        return rotation

    def set_rotation_step(self, device_id: str, step: str, offered_at: float | None = None) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE rotations SET step = ?, offered_at = COALESCE(?, offered_at)"
                " WHERE device_id = ?", (step, offered_at, device_id))

    def finish_rotation(self, rotation: Rotation) -> None:
        """The new credential is proven and the old one gone from the broker."""
        now = time.time()
        with self.transaction():
            self.db.execute("DELETE FROM credentials WHERE username = ?",
                            (rotation.old_username,))
            self.db.execute("UPDATE credentials SET state = 'active' WHERE username = ?",
                            (rotation.new_username,))
            self.db.execute("DELETE FROM rotations WHERE device_id = ?", (rotation.device_id,))
            self.db.execute(
                "UPDATE devices SET rotated_at = ?, rotation_failures = 0,"
                " rotation_retry_at = NULL, rotation_result = 'ok' WHERE id = ?",
                (now, rotation.device_id))

    def abandon_rotation(self, rotation: Rotation, *, failed: bool, result: str,
                         retry_at: float | None) -> int:
        """Drop the unproven credential, keep the old one; return the failure count."""
        with self.transaction():
            self.db.execute("DELETE FROM credentials WHERE username = ? AND state = 'pending'",
                            (rotation.new_username,))
            self.db.execute("DELETE FROM rotations WHERE device_id = ?", (rotation.device_id,))
            row = self.db.execute(
                "UPDATE devices SET rotation_failures = rotation_failures + ?,"
                " rotation_retry_at = ?, rotation_result = ? WHERE id = ?"
                " RETURNING rotation_failures",
                (1 if failed else 0, retry_at, result, rotation.device_id)).fetchone()
        return int(row[0]) if row else 0

    def rotation(self, device_id: str) -> Rotation | None:
        row = self.db.execute("SELECT * FROM rotations WHERE device_id = ?",
                              (device_id,)).fetchone()
        return Rotation(**dict(row)) if row else None

    def rotations(self) -> list[Rotation]:
        return [Rotation(**dict(r)) for r in self.db.execute(
            "SELECT * FROM rotations ORDER BY device_id")]

    def set_rotation_days(self, device_id: str, days: int | None) -> None:
        with self.transaction():
            self.db.execute("UPDATE devices SET rotation_days = ? WHERE id = ?",
                            (days, device_id))

    # -- enrollments -------------------------------------------------------------------

    def add_enrollment(self, id: str, password: PasswordHash, *, name: str | None,
                       device_id: str | None, created_by: str, expires_at: float) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO enrollments (id, hash, salt, iterations, device_id, name,"
                " created_by, created_at, expires_at, state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'open')",
                (id, password.hash, password.salt, password.iterations, device_id, name,
                 created_by, time.time(), expires_at))

    def live_enrollments(self, now: float) -> list[Enrollment]:
        """Enrollments whose token still has a broker login."""
        return [e for e in self.enrollments(("open", "delivered")) if e.expires_at > now]

    def enrollment(self, id: str) -> Enrollment | None:
        row = self.db.execute("SELECT * FROM enrollments WHERE id = ?", (id,)).fetchone()
        return _enrollment(row) if row else None

    def enrollments(self, states: Iterable[str] | None = None) -> list[Enrollment]:
        if states is None:
            rows = self.db.execute("SELECT * FROM enrollments ORDER BY created_at DESC")
        else:  # the history grows; only live states are asked for on hot paths
            wanted = list(states)
            marks = ", ".join("?" * len(wanted))  # placeholders only; values are bound
            rows = self.db.execute(f"SELECT * FROM enrollments WHERE state IN ({marks})"  # noqa: S608
                                   " ORDER BY created_at DESC", wanted)
        return [_enrollment(r) for r in rows]

    def update_enrollment(self, id: str, *, state: str | None = None,
                          device_id: str | None = None, failures: int | None = None) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE enrollments SET state = COALESCE(?, state),"
                " device_id = COALESCE(?, device_id), failures = COALESCE(?, failures)"
                " WHERE id = ?", (state, device_id, failures, id))

    def enroll_device(self, enrollment_id: str, device_id: str, name: str, kind: str, *,
                      mac: str | None, model: str | None, firmware: str | None,
                      password: PasswordHash) -> str:
        """One transaction: the device (adopted), its first credential and the enrollment
        marked delivered. A repeated hello (the device never got its credential) replaces
        the credential. Returns the credential's username."""
        now = time.time()
        with self.transaction():
            self.db.execute(
                "INSERT INTO devices (id, name, kind, status, source, mac, created_at, model,"
                " firmware, rotated_at) VALUES (?, ?, ?, 'adopted', 'enrolled', ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, mac = excluded.mac,"
                " status = 'adopted', model = excluded.model, firmware = excluded.firmware,"
                " rotated_at = excluded.rotated_at",
                (device_id, name, kind, mac, now, model, firmware, now))
            self.db.execute("DELETE FROM credentials WHERE device_id = ?", (device_id,))
            username = self._new_credential(device_id, password, "active")
            self.db.execute("UPDATE enrollments SET state = 'delivered', device_id = ?"
                            " WHERE id = ?", (device_id, enrollment_id))
        return username

    # -- telemetry ---------------------------------------------------------------------

    def add_telemetry(self, rows: list[tuple[str, float, str]], keep: int) -> None:
        """Append readings and keep only the newest `keep` per device touched."""
        with self.transaction():
            self.db.executemany("INSERT INTO telemetry VALUES (?, ?, ?)", rows)
            for device_id in {r[0] for r in rows}:
                self.db.execute(
                    "DELETE FROM telemetry WHERE device_id = ?1 AND rowid <= ("
                    " SELECT rowid FROM telemetry WHERE device_id = ?1"
                    " ORDER BY rowid DESC LIMIT 1 OFFSET ?2)",
                    (device_id, keep),
                )

    def telemetry(self, device_id: str, limit: int = 100) -> list[tuple[float, dict[str, Any]]]:
        rows = self.db.execute(
            "SELECT ts, data FROM telemetry WHERE device_id = ? ORDER BY rowid DESC LIMIT ?",
            (device_id, limit),
        ).fetchall()
        return [(r[0], json.loads(r[1])) for r in reversed(rows)]

    # -- audit -------------------------------------------------------------------------

    def audit(self, actor: str, action: str, result: str, *, target: str = "",
              detail: str = "") -> None:
        """Record a security-relevant action. Never pass a secret in any field."""
        with self.transaction():
            self.db.execute(
                "INSERT INTO audit (ts, actor, action, target, result, detail)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), actor, action, target, result, detail),
            )

    def audit_log(self, limit: int = 100, action: str | None = None, *,
                  actor: str | None = None, result: str | None = None,
                  target: str | None = None, before: int | None = None) -> list[AuditEntry]:
        """The newest entries first; each given filter must match exactly."""
        where: list[str] = []
        args: list[str | int] = []
        for column, value in (("action", action), ("actor", actor), ("result", result),
                              ("target", target)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if before is not None:
            where.append("id < ?")
            args.append(before)
        # Only fixed column names are joined in; every value is a bound parameter.
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "")  # noqa: S608
        rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", [*args, limit])
        return [AuditEntry(**dict(r)) for r in rows]

    def audit_actions(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT action FROM audit ORDER BY 1")]

    # -- web accounts ------------------------------------------------------------------

    def add_user(self, username: str, role: str, password: str) -> None:
        now = time.time()
        with self.transaction():
            self.db.execute(
                "INSERT INTO users (username, role, password, created_at, password_changed_at)"
                " VALUES (?, ?, ?, ?, ?)", (username, role, password, now, now))

    def user(self, username: str) -> User | None:
        row = self.db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        return User(**dict(row)) if row else None

    def users(self) -> list[User]:
        return [User(**dict(r)) for r in self.db.execute("SELECT * FROM users ORDER BY 1")]

    def delete_user(self, username: str) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM users WHERE username = ?", (username,))

    def set_password(self, username: str, password: str) -> None:
        with self.transaction():
            self.db.execute("UPDATE users SET password = ?, password_changed_at = ?"
                            " WHERE username = ?", (password, time.time(), username))

    def set_totp(self, username: str, secret: str | None, recovery_digests: list[str]) -> None:
        """Turn the second factor on (with fresh recovery codes) or off (secret None)."""
        with self.transaction():
            self.db.execute("UPDATE users SET totp_secret = ?, totp_last_step = 0"
                            " WHERE username = ?", (secret, username))
            self.db.execute("DELETE FROM recovery_codes WHERE username = ?", (username,))
            self.db.executemany("INSERT INTO recovery_codes VALUES (?, ?)",
                                [(username, d) for d in recovery_digests])

    def advance_totp_step(self, username: str, step: int) -> bool:
        """Record a used TOTP time step; False when it (or a later one) was used already."""
        with self.transaction():
            row = self.db.execute(
                "UPDATE users SET totp_last_step = ? WHERE username = ? AND totp_last_step < ?"
                " RETURNING 1", (step, username, step)).fetchone()
        return row is not None

    def use_recovery_code(self, username: str, digest: str) -> bool:
        with self.transaction():
            row = self.db.execute(
                "DELETE FROM recovery_codes WHERE username = ? AND digest = ? RETURNING 1",
                (username, digest)).fetchone()
        return row is not None

    def recovery_codes_left(self, username: str) -> int:
        return int(self.db.execute("SELECT count(*) FROM recovery_codes WHERE username = ?",
                                   (username,)).fetchone()[0])

    def add_session(self, session: Session) -> None:
        with self.transaction():
            self.db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?)",
                            (session.digest, session.username, session.csrf,
                             session.created_at, session.last_seen, session.address))

    def session(self, digest: str) -> Session | None:
        row = self.db.execute("SELECT * FROM sessions WHERE digest = ?", (digest,)).fetchone()
        return Session(**dict(row)) if row else None

    def touch_session(self, digest: str, now: float) -> None:
        with self.transaction():
            self.db.execute("UPDATE sessions SET last_seen = ? WHERE digest = ?", (now, digest))

    def delete_sessions(self, *, digest: str | None = None, username: str | None = None,
                        except_digest: str | None = None) -> int:
        """End one session, or every session of a user (but `except_digest`)."""
        with self.transaction():
            if digest is not None:
                cur = self.db.execute("DELETE FROM sessions WHERE digest = ?", (digest,))
            else:
                cur = self.db.execute(
                    "DELETE FROM sessions WHERE username = ? AND digest != ?",
                    (username, except_digest or ""))
        return cur.rowcount

    def expire_sessions(self, idle_before: float, created_before: float) -> int:
        with self.transaction():
            cur = self.db.execute(
                "DELETE FROM sessions WHERE last_seen < ? OR created_at < ?",
                (idle_before, created_before))
        return cur.rowcount

    def add_api_token(self, token: ApiToken) -> None:
        with self.transaction():
            self.db.execute("INSERT INTO api_tokens VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (token.id, token.username, token.name, token.scope, token.digest,
                             token.created_at, token.last_used))

    def api_token(self, id: str) -> ApiToken | None:
        row = self.db.execute("SELECT * FROM api_tokens WHERE id = ?", (id,)).fetchone()
        return ApiToken(**dict(row)) if row else None

    def api_tokens(self, username: str | None = None) -> list[ApiToken]:
        sql, args = "SELECT * FROM api_tokens", []
        if username is not None:
            sql, args = sql + " WHERE username = ?", [username]
        return [ApiToken(**dict(r)) for r in self.db.execute(sql + " ORDER BY created_at", args)]

    def delete_api_token(self, id: str) -> bool:
        with self.transaction():
            cur = self.db.execute("DELETE FROM api_tokens WHERE id = ?", (id,))
        return cur.rowcount > 0

    def delete_api_tokens(self, username: str) -> int:
        with self.transaction():
            cur = self.db.execute("DELETE FROM api_tokens WHERE username = ?", (username,))
        return cur.rowcount

    def touch_api_token(self, id: str, now: float) -> None:
        with self.transaction():
            self.db.execute("UPDATE api_tokens SET last_used = ? WHERE id = ?", (now, id))

    # -- cloud relay -------------------------------------------------------------------

    def replay_seen(self, kid: str, id: str) -> bool:
        return self.db.execute("SELECT 1 FROM replay WHERE kid = ? AND id = ?",
                               (kid, id)).fetchone() is not None

    def replay_add(self, kid: str, id: str, exp: float, *, forget_before: float) -> bool:
        """Record an accepted command id; False when it was already there (a replay that
        raced its twin). Ids whose command expired before `forget_before` are dropped."""
        with self.transaction():
            self.db.execute("DELETE FROM replay WHERE exp < ?", (forget_before,))
            cursor = self.db.execute("INSERT OR IGNORE INTO replay VALUES (?, ?, ?)",
                                     (kid, id, exp))
        return cursor.rowcount == 1

    def spool_append(self, cls: str, topic: str, body: str, now: float) -> int:
        with self.transaction():
            cursor = self.db.execute(
                "INSERT INTO spool (class, topic, body, created) VALUES (?, ?, ?, ?)",
                (cls, topic, body, now))
        return int(cursor.lastrowid or 0)

    def spool_rows(self, after: int, limit: int) -> list[tuple[int, str, str, str, float]]:
        """(seq, class, topic, body, created), oldest first."""
        rows = self.db.execute("SELECT seq, class, topic, body, created FROM spool"
                               " WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
        return [tuple(r) for r in rows]

    def spool_delete(self, seqs: Iterable[int]) -> None:
        with self.transaction():
            self.db.executemany("DELETE FROM spool WHERE seq = ?", [(s,) for s in seqs])

    def spool_sizes(self) -> dict[str, tuple[int, int, float | None]]:
        """class -> (messages, bytes, oldest created)."""
        rows = self.db.execute("SELECT class, count(*), coalesce(sum(length(body)), 0),"
                               " min(created) FROM spool GROUP BY class")
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def spool_counts(self) -> tuple[dict[str, int], float | None]:
        """Messages per class (from the class index, without reading the bodies) and when
        the oldest was created."""
        counts = {r[0]: r[1] for r in self.db.execute(
            "SELECT class, count(*) FROM spool GROUP BY class")}
        oldest = self.db.execute("SELECT created FROM spool ORDER BY seq LIMIT 1").fetchone()
        return counts, (oldest[0] if oldest else None)

    def spool_oldest(self, cls: str, limit: int) -> list[tuple[int, int]]:
        """(seq, bytes) of the oldest messages of a class."""
        rows = self.db.execute("SELECT seq, length(body) FROM spool WHERE class = ?"
                               " ORDER BY seq LIMIT ?", (cls, limit))
        return [(r[0], r[1]) for r in rows]

    def spool_expire(self, before: float) -> dict[str, tuple[int, int]]:
        """Delete messages created before `before`; class -> (messages, bytes) deleted."""
        with self.transaction():
            gone = {r[0]: (r[1], r[2]) for r in self.db.execute(
                "SELECT class, count(*), sum(length(body)) FROM spool WHERE created < ?"
                " GROUP BY class", (before,))}
            self.db.execute("DELETE FROM spool WHERE created < ?", (before,))
        return gone

    def shadow(self, device_id: str) -> tuple[dict[str, Any], int, int]:
        """(desired {key: {"value", "ts", "side"}}, desired version, reported version)."""
        row = self.db.execute("SELECT desired, desired_version, reported_version FROM shadows"
                              " WHERE device_id = ?", (device_id,)).fetchone()
        return (json.loads(row[0]), row[1], row[2]) if row else ({}, 0, 0)

    def save_shadow(self, device_id: str, desired: dict[str, Any], desired_version: int,
                    reported_version: int) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO shadows VALUES (?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET"
                " desired = excluded.desired, desired_version = excluded.desired_version,"
                " reported_version = excluded.reported_version",
                (device_id, json.dumps(desired), desired_version, reported_version))

    def put_schedule(self, schedule: Schedule) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO schedules VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET device_id = excluded.device_id,"
                " name = excluded.name, when_text = excluded.when_text,"
                " action = excluded.action, params = excluded.params,"
                " source = excluded.source, enabled = excluded.enabled,"
                " last_at = excluded.last_at",
                (schedule.id, schedule.device_id, schedule.name, schedule.when,
                 schedule.action, json.dumps(schedule.params), schedule.source,
                 int(schedule.enabled), schedule.created_at, schedule.last_at,
                 schedule.last_result))

    def schedules(self) -> list[Schedule]:
        rows = self.db.execute("SELECT * FROM schedules ORDER BY id")
        return [Schedule(r["id"], r["device_id"], r["name"], r["when_text"], r["action"],
                         json.loads(r["params"]), r["source"], bool(r["enabled"]),
                         r["created_at"], r["last_at"], r["last_result"]) for r in rows]

    def schedule_ran(self, id: str, last_at: float, result: str) -> None:
        with self.transaction():
            self.db.execute("UPDATE schedules SET last_at = ?, last_result = ? WHERE id = ?",
                            (last_at, result, id))

    def delete_schedule(self, id: str) -> bool:
        with self.transaction():
            return self.db.execute("DELETE FROM schedules WHERE id = ?", (id,)).rowcount == 1

    def log_command(self, entry: CommandEntry, keep: int = 1000) -> None:
        with self.transaction():
            cursor = self.db.execute(
                "INSERT INTO commands (ts, command_id, source, actor, device_id, action,"
                " outcome, reason, latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (entry.ts, entry.command_id, entry.source, entry.actor, entry.device_id,
                 entry.action, entry.outcome, entry.reason, entry.latency_ms))
            self.db.execute("DELETE FROM commands WHERE seq <= ?", ((cursor.lastrowid or 0)
                                                                   - keep,))

    def command_log(self, limit: int = 100) -> list[CommandEntry]:
        rows = self.db.execute("SELECT ts, command_id, source, actor, device_id, action,"
                               " outcome, reason, latency_ms FROM commands"
                               " ORDER BY seq DESC LIMIT ?", (limit,))
        return [CommandEntry(*r) for r in rows]

    def consents(self) -> dict[str, tuple[bool, float, str]]:
        """Category -> (granted, changed at, by whom); a category never set is absent."""
        rows = self.db.execute("SELECT category, granted, changed_at, actor FROM privacy_consent")
        return {c: (bool(g), at, actor) for c, g, at, actor in rows}

    def set_consent(self, category: str, granted: bool, now: float, actor: str) -> int:
        """Record the household's choice; withdrawing purges the category's queued reports
        in the same transaction. Returns how many reports were purged."""
        with self.transaction():
            self.db.execute("INSERT INTO privacy_consent VALUES (?, ?, ?, ?) ON CONFLICT"
                            " (category) DO UPDATE SET granted = excluded.granted,"
                            " changed_at = excluded.changed_at, actor = excluded.actor",
                            (category, int(granted), now, actor))
            if granted:
                return 0
            return self.db.execute("DELETE FROM privacy_queue WHERE category = ?",
                                   (category,)).rowcount

    def queue_reports(self, rows: Iterable[tuple[str, str, str, float, float]],
                      settings: Mapping[str, str]) -> None:
        """Queue released reports (category, week, body, created, send_after) together with
        the settings that record the release (the ledger's head, the week closed)."""
        with self.transaction():
            self.db.executemany("INSERT INTO privacy_queue (category, week, body, created,"
                                " send_after) VALUES (?, ?, ?, ?, ?)", rows)
            self.db.executemany("INSERT INTO settings VALUES (?, ?) ON CONFLICT (key)"
                                " DO UPDATE SET value = excluded.value", settings.items())

    def queued_reports(self) -> list[tuple[int, str, str, str, float]]:
        """(id, category, week, body, send_after), oldest first."""
        return list(self.db.execute("SELECT id, category, week, body, send_after"
                                    " FROM privacy_queue ORDER BY id"))

    def purge_queue(self) -> int:
        """Delete every queued report; how many went."""
        with self.transaction():
            return self.db.execute("DELETE FROM privacy_queue").rowcount

    def log_export(self, ts: float, sink: str, reports: int, size: int, categories: str,
                   result: str, sent_ids: Iterable[int] = ()) -> None:
        """Record an export attempt; the reports it delivered leave the queue with it."""
        with self.transaction():
            self.db.executemany("DELETE FROM privacy_queue WHERE id = ?",
                                [(i,) for i in sent_ids])
            self.db.execute("INSERT INTO privacy_exports (ts, sink, reports, bytes, categories,"
                            " result) VALUES (?, ?, ?, ?, ?, ?)",
                            (ts, sink, reports, size, categories, result))
            self.db.execute("DELETE FROM privacy_exports WHERE id <= (SELECT MAX(id) - 500"
                            " FROM privacy_exports)")

    def exports(self, limit: int = 50) -> list[tuple[float, str, int, int, str, str]]:
        """(ts, sink, reports, bytes, categories, result), newest first."""
        return list(self.db.execute("SELECT ts, sink, reports, bytes, categories, result FROM"
                                    " privacy_exports ORDER BY id DESC LIMIT ?", (limit,)))

    # -- Home Assistant and discovery ---------------------------------------------------

    def ha_entities(self) -> dict[str, str]:
        """Published discovery config topic -> device id ("" for the gateway's own)."""
        return {r[0]: r[1] for r in self.db.execute("SELECT topic, device_id FROM ha_entities")}

    def set_ha_entities(self, added: Mapping[str, str], removed: Iterable[str]) -> None:
        now = time.time()
        with self.transaction():
            self.db.executemany("DELETE FROM ha_entities WHERE topic = ?",
                                [(t,) for t in removed])
            self.db.executemany(
                "INSERT INTO ha_entities VALUES (?, ?, ?) ON CONFLICT (topic)"
                " DO UPDATE SET device_id = excluded.device_id",
                [(t, d, now) for t, d in added.items()])

    def upsert_discovered(self, item: Discovered, keep: int) -> None:
        """Record a sighting (a new one, or news of a known one: its status stays), then
        forget the oldest sightings beyond `keep` that nobody adopted."""
        with self.transaction():
            self.db.execute(
                "INSERT INTO discovered (key, source, name, type, addresses, port, txt, mac,"
                " hostname, first_seen, last_seen, present) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " ?, ?, ?) ON CONFLICT (key) DO UPDATE SET name = excluded.name,"
                " type = excluded.type, addresses = excluded.addresses, port = excluded.port,"
                " txt = excluded.txt, mac = coalesce(excluded.mac, mac),"
                " hostname = coalesce(excluded.hostname, hostname),"
                " last_seen = excluded.last_seen, present = excluded.present",
                (item.key, item.source, item.name, item.type, " ".join(item.addresses),
                 item.port, json.dumps(dict(item.txt), sort_keys=True), item.mac,
                 item.hostname, item.first_seen, item.last_seen, int(item.present)))
            self.db.execute(
                "DELETE FROM discovered WHERE key IN (SELECT key FROM discovered"
                " WHERE status != 'adopted' ORDER BY last_seen DESC LIMIT -1 OFFSET ?)",
                (keep,))

    def set_discovered_present(self, keys: Iterable[str], present: bool) -> None:
        with self.transaction():
            self.db.executemany("UPDATE discovered SET present = ? WHERE key = ?",
                                [(int(present), k) for k in keys])

    def discovered(self, key: str | None = None) -> list[Discovered]:
        sql = "SELECT * FROM discovered"
        rows = (self.db.execute(sql + " WHERE key = ?", (key,)) if key is not None
                else self.db.execute(sql + " ORDER BY last_seen DESC"))
        return [Discovered(key=r["key"], source=r["source"], name=r["name"], type=r["type"],
                           addresses=tuple(r["addresses"].split()), port=r["port"],
                           txt=json.loads(r["txt"]), mac=r["mac"], hostname=r["hostname"],
                           first_seen=r["first_seen"], last_seen=r["last_seen"],
                           present=bool(r["present"]), status=r["status"],
                           device_id=r["device_id"]) for r in rows]

    def set_discovered_status(self, key: str, status: str, device_id: str | None) -> bool:
        with self.transaction():
            cursor = self.db.execute(
                "UPDATE discovered SET status = ?, device_id = ? WHERE key = ?",
                (status, device_id, key))
        return cursor.rowcount > 0

    def setting(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_setting(self, key: str, value: str | None) -> None:
        with self.transaction():
            if value is None:
                self.db.execute("DELETE FROM settings WHERE key = ?", (key,))
            else:
                self.db.execute("INSERT INTO settings VALUES (?, ?) ON CONFLICT (key)"
                                " DO UPDATE SET value = excluded.value", (key, value))
