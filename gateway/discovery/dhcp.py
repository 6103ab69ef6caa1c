"""The DHCP lease inventory: dnsmasq's lease file, parsed (pure) and watched (polling).

dnsmasq writes one lease per line (src/lease.c, `lease_update_file`):

    EXPIRY MAC IP HOSTNAME CLIENT-ID               IPv4 leases
    duid SERVER-DUID                               starts the IPv6 section
    EXPIRY [T]IAID IPV6 HOSTNAME CLIENT-DUID       IPv6 leases

EXPIRY is seconds since the epoch, 0 for an infinite lease; HOSTNAME and CLIENT-ID are `*`
when unknown; hardware addresses of other types than Ethernet carry a `TT-` type prefix.

An IPv6 lease names no MAC, only the client's DUID. It is recorded only when it can be tied
to a MAC, tried in this order:
  1. an IPv4 lease whose client-id is the RFC 4361 form `ff:IAID(4 bytes):DUID` of the same
     DUID (systemd-networkd and NetworkManager do this): that lease's MAC;
  2. a DUID-LLT (type 1) or DUID-LL (type 3) of hardware type 1 (Ethernet): the MAC inside.
Otherwise the IPv6 lease is skipped silently (it is not a problem of the file). A DUID-based
MAC is the one the client made its DUID from; nearly always the interface's own.

dnsmasq rewrites the file in place (truncate, write, fsync), other tools replace it by a
rename: the watcher notices both (inode, size, mtime) and reads only a file that stands
still, so a half-written file is not reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 4 * 1024 * 1024  # a lease file is ~100 bytes a lease; more is not dnsmasq's
MAX_PROBLEMS = 50  # problems reported per read; the rest are counted in one last line
_SHOWN = 40  # characters of a bad field quoted in a problem

_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_HEX_COLON = re.compile(r"[0-9A-Fa-f]{1,2}(?::[0-9A-Fa-f]{1,2})*")
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_IAID = re.compile(r"T?[0-9]{1,10}|T?[0-9a-fA-F]{8}")


@dataclass(frozen=True, slots=True)
class Lease:
    mac: str  # lower-case, colon-separated
    ip: str  # normalized literal (IPv4 or IPv6)
    hostname: str | None  # a safe single DNS label, or None
    expires: float  # epoch seconds; 0 means infinite
    client_id: str | None  # lower-case hex bytes, colon-separated


def safe_hostname(name: str) -> str | None:
    """`name` if it is one RFC 1123 label (letters, digits, inner hyphens, 1-63), else None."""
    return name if _HOSTNAME.fullmatch(name) else None


def _shown(text: str) -> str:
    text = text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
    return repr(text)


def _hex_bytes(text: str) -> bytes | None:
    """dnsmasq's `aa:b:cc` form (each byte 1-2 hex digits) as bytes, or None."""
    if not _HEX_COLON.fullmatch(text):
        return None
    return bytes(int(part, 16) for part in text.split(":"))


def _colon_hex(data: bytes) -> str:
    return ":".join(f"{b:02x}" for b in data)


def _mac(text: str) -> str | None:
    """An Ethernet MAC in any case, as lower-case colon form; None for anything else."""
    data = _hex_bytes(text)
    if data is None or len(data) != 6:
        return None
    return _colon_hex(data)


def _expiry(text: str) -> float | None:
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        return None
    return float(int(text))


def _duid_mac(duid: bytes) -> str | None:
    """The Ethernet MAC inside a DUID-LLT or DUID-LL, if that is what it is."""
    if len(duid) == 14 and duid[:4] == b"\x00\x01\x00\x01":  # LLT: type, hw type, time, MAC
        return _colon_hex(duid[8:])
    if len(duid) == 10 and duid[:4] == b"\x00\x03\x00\x01":  # LL: type, hw type, MAC
        return _colon_hex(duid[4:])
    return None


def parse_leases(text: str) -> tuple[list[Lease], list[str]]:
    """Parse a dnsmasq lease file: the leases, and a problem for every line skipped.

    Never raises. Problems read `"line N: what was wrong"` (N counts from 1).
    """
    leases: list[Lease] = []
    problems: list[str] = []
    v6_lines: list[tuple[int, float, str, str | None, bytes]] = []
    in_v6 = False

    def problem(number: int, what: str) -> None:
        problems.append(f"line {number}: {what}")

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split()
        if fields[0] == "duid":
            if len(fields) != 2 or _hex_bytes(fields[1]) is None:
                problem(number, "malformed duid line")
            in_v6 = True
            continue
        if len(fields) != 5:
            problem(number, f"expected 5 fields, found {len(fields)}")
            continue
        expiry_text, hw, ip_text, host_text, clid_text = fields
        expires = _expiry(expiry_text)
        if expires is None:
            problem(number, f"bad expiry time {_shown(expiry_text)}")
            continue
        try:
            ip = ipaddress.ip_address(ip_text)
        except ValueError:
            problem(number, f"bad IP address {_shown(ip_text)}")
            continue
        if ip.version != (6 if in_v6 else 4):
            problem(number, f"IPv{ip.version} address {ip} in the IPv{6 if in_v6 else 4} section")
            continue
        hostname = None if host_text == "*" else safe_hostname(host_text)
        clid = b"" if clid_text == "*" else _hex_bytes(clid_text)
        if clid is None:
            problem(number, f"bad client id {_shown(clid_text)}")
            continue
        if in_v6:
            if not _IAID.fullmatch(hw):
                problem(number, f"bad IAID {_shown(hw)}")
                continue
            v6_lines.append((number, expires, str(ip), hostname, clid))
            continue
        mac = _mac(hw)
        if mac is None:
            what = ("unsupported hardware address type" if re.fullmatch(r"[0-9a-fA-F]{2}-.*", hw)
                    else "bad MAC address")
            problem(number, f"{what} {_shown(hw)}")
            continue
        leases.append(Lease(mac, str(ip), hostname, expires, _colon_hex(clid) if clid else None))

    # IPv6 leases: tie each client DUID to a MAC (see the module docstring) or skip it.
    by_duid: dict[bytes, str] = {}
    for lease in leases:
        clid = _hex_bytes(lease.client_id) if lease.client_id else None
        if clid and len(clid) > 5 and clid[0] == 0xFF:  # RFC 4361: ff, IAID (4), DUID
            by_duid.setdefault(clid[5:], lease.mac)
    for _number, expires, ip_text, hostname, duid in v6_lines:
        mac = by_duid.get(duid) or _duid_mac(duid)
        if mac is None:
            continue
        leases.append(Lease(mac, ip_text, hostname, expires, _colon_hex(duid) if duid else None))

    if len(problems) > MAX_PROBLEMS:
        more = len(problems) - MAX_PROBLEMS
        problems = [*problems[:MAX_PROBLEMS], f"... and {more} more bad lines"]
    return leases, problems


_Signature = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class LeaseWatcher:
    """Polls a lease file and reports the whole lease list whenever the file changed.

    `on_change` is called on the event loop: once at start if the file exists, then after
    every change (a file that disappears reports `[]`). Polling (os.stat) needs no inotify.
    """

    SETTLE_S = 0.05  # a change is read once the file stood still this long

    def __init__(self, path: Path, on_change: Callable[[list[Lease]], None],
                 interval_s: float = 2.0) -> None:
        self.path = path
        self.on_change = on_change
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._seen: _Signature | None = None  # what the last report was read from
        self._present = False
        self._count = 0
        self._last_read: float | None = None
        self._problems: list[str] = []
        self._missing_logged = False

    async def start(self) -> None:
        if self._task is not None:
            return
        await self._poll()  # the first report happens before start() returns
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lease-watcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def status(self) -> dict[str, Any]:
        return {"path": str(self.path), "present": self._present, "leases": self._count,
                "last_read": self._last_read, "problems": list(self._problems)}

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self._poll()
            except Exception:  # keep watching whatever one round did
                log.exception("lease watcher: reading %s failed", self.path)

    def _stat(self) -> _Signature | None:
        try:
            return _signature(os.stat(self.path))
        except FileNotFoundError:
            return None

    def _read(self) -> tuple[_Signature, str] | None:
        """The file's text and the signature it had while read; None if it moved meanwhile."""
        with open(self.path, "rb") as f:
            before = _signature(os.fstat(f.fileno()))
            data = f.read(MAX_FILE_BYTES + 1)
            after = _signature(os.fstat(f.fileno()))
        if before != after or self._stat() != after:
            return None
        return after, data.decode("utf-8", errors="replace")

    async def _poll(self) -> None:
        signature = await asyncio.to_thread(self._stat)
        if signature is None:
            self._missing()
            return
        if signature == self._seen:
            return
        await asyncio.sleep(self.SETTLE_S)  # let a writer in the middle of it finish
        try:
            read = await asyncio.to_thread(self._read)
        except FileNotFoundError:
            self._missing()
            return
        except OSError as e:
            problems = [f"cannot read: {e.strerror or e}"]
            if problems != self._problems:
                log.warning("lease file %s: %s", self.path, problems[0])
            self._problems = problems
            return
        if read is None:
            return  # still being written: the next round reads it
        signature, text = read
        leases, problems = parse_leases(text[:MAX_FILE_BYTES])
        if len(text) > MAX_FILE_BYTES:
            problems.append(f"file larger than {MAX_FILE_BYTES} bytes: only its start was read")
        self._seen = signature
        self._present = True
        self._missing_logged = False
        self._count = len(leases)
        self._last_read = time.time()
        self._problems = problems
        if problems:
            log.warning("lease file %s: %d bad line(s) skipped: %s", self.path, len(problems),
                        "; ".join(problems[:5]))
        self._report(leases)

    def _missing(self) -> None:
        if not self._missing_logged:
            log.info("lease file %s does not exist (yet): no DHCP leases", self.path)
            self._missing_logged = True
        was_present = self._present
        self._seen, self._present, self._count, self._problems = None, False, 0, []
        if was_present:
            self._last_read = time.time()
            self._report([])

    def _report(self, leases: list[Lease]) -> None:
        try:
            self.on_change(leases)
        except Exception:
            log.exception("lease watcher: on_change failed")
