"""The append-only ε ledger: every privacy release is charged here, durably, before it leaves.

A report may be released only after `Ledger.charge` returned: the line recording its ε has
then been written with one `os.write` and fsynced (and the directory fsynced when that line
was the file's first). `charge` refuses, with a `LedgerError` whose text says what is wrong
and which file, when the release would take the week's ε (summed over categories) or the last
365 days' ε over its cap, when the ledger is corrupt or cannot be read or written, and when
the clock is earlier than the last entry (the clock went backwards). Refusing writes nothing.

Format: JSON Lines, ASCII, one object per line in canonical form
(``json.dumps(obj, sort_keys=True, separators=(",", ":"))``) with exactly the keys `seq`
(1, 2, 3 … = the line number), `at` (unix seconds of the release, never decreasing), `week`
(ISO week label of the released data, "2026-W47"), `category` (``[a-z]{1,20}``), `epsilon`
(an exact positive fraction, ``str(Fraction)``: "1/10", "1") and `prev` (hex SHA-256 of the
previous line's bytes without its newline; 64 zeros on the first line). All sums are
`Fraction`s; no floats anywhere.

What the verification detects, each reported as corrupt with a line number: a line that is
not canonical JSON of that shape (so any edit that does not produce another valid line), a
NUL byte, invalid UTF-8, an edited, deleted, inserted or reordered line anywhere but at the
end (the next line's `prev` or `seq` no longer fits), `at` going down, and a last line that
does not end with a newline. That last one is a torn write: a crash or a full disk in the
middle of an append. It fails closed like any other damage; as the report of a torn charge
was never released, an operator who has looked at it may remove the partial line by hand.

What the chain alone cannot detect is the removal or replacement of the LAST line(s): the
file then still is a valid, shorter chain. The gateway therefore stores `head()` — the last
seq and the hash of the last line — in its database after each charge and passes it back as
`expect_head`; a file whose chain does not contain that (seq, hash) is corrupt ("the ledger
was truncated" or "line N was changed"). A file with MORE lines than the stored head is
accepted (a crash between the fsync and the database update only over-counts, which is the
safe direction). An attacker who can rewrite both the file and the database is out of scope.

An fsync failure after the line was written leaves a complete line that may or may not
survive a crash; `charge` raises (the report is not released) and the ε stays charged if it
survives, again over-counting. Reads take a shared `flock`, `charge` an exclusive one held
from the verification to the fsync, so two processes cannot both spend the last of a cap.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

Reason = Literal["corrupt", "unwritable", "clock", "week-cap", "year-cap"]

DEFAULT_WEEK_CAP = Fraction(1)  # ε per ISO week of data, summed over categories
DEFAULT_YEAR_CAP = Fraction(26)  # ε released in any 365 days
YEAR_SECONDS = 365 * 86400
GENESIS = "0" * 64
KEYS = frozenset({"seq", "at", "week", "category", "epsilon", "prev"})

_WEEK = re.compile(r"(\d{4})-W(\d{2})")
_CATEGORY = re.compile(r"[a-z]{1,20}")
_EPSILON = re.compile(r"[1-9][0-9]*(/[1-9][0-9]*)?")
_HASH = re.compile(r"[0-9a-f]{64}")


class LedgerError(Exception):
    """The ledger refuses: corrupt, unwritable, clock backwards, or over a cap.

    str() is a user-facing sentence naming the file and what is wrong (for a cap: the
    category, the week, the ε asked for, what was already spent and the cap). `reason` is one
    of "corrupt", "unwritable" (the file cannot be read or written), "clock", "week-cap",
    "year-cap"; `line` is the line number for "corrupt" and "clock".
    """

    def __init__(self, reason: Reason, message: str, *, path: Path,
                 line: int | None = None) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.path = path
        self.line = line


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    at: int
    week: str
    category: str
    epsilon: Fraction
    prev: str


@dataclass(frozen=True, slots=True)
class Budget:
    week: str
    week_spent: Fraction
    week_cap: Fraction
    year_spent: Fraction
    year_cap: Fraction

    @property
    def week_left(self) -> Fraction:
        return max(Fraction(0), self.week_cap - self.week_spent)

    @property
    def year_left(self) -> Fraction:
        return max(Fraction(0), self.year_cap - self.year_spent)


# -- pure helpers ----------------------------------------------------------------------------

class _Corrupt(Exception):
    def __init__(self, line: int, what: str) -> None:
        super().__init__(what)
        self.line = line
        self.what = what


def _valid_week(week: str) -> bool:
    m = _WEEK.fullmatch(week)
    if m is None:
        return False
    try:
        datetime.date.fromisocalendar(int(m[1]), int(m[2]), 1)
    except ValueError:
        return False
    return True


def _line(entry: Entry) -> bytes:
    """The canonical bytes of one entry, without the newline."""
    obj = {"seq": entry.seq, "at": entry.at, "week": entry.week, "category": entry.category,
           "epsilon": str(entry.epsilon), "prev": entry.prev}
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("ascii")


def _digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _parse_line(raw: bytes, number: int) -> Entry:
    """One line (without its newline) -> Entry; raises _Corrupt saying what is wrong."""
    if b"\0" in raw:
        raise _Corrupt(number, "it contains a NUL byte")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Corrupt(number, "it is not valid UTF-8") from None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise _Corrupt(number, "it is not a JSON object") from None
    if not isinstance(obj, dict):
        raise _Corrupt(number, "it is not a JSON object")
    if set(obj) != KEYS:
        raise _Corrupt(number, f"its keys are {sorted(obj)}, expected {sorted(KEYS)}")
    for key in ("seq", "at"):
        if type(obj[key]) is not int or obj[key] < 0:
            raise _Corrupt(number, f"{key} is {obj[key]!r}, not a non-negative integer")
    for key in ("week", "category", "epsilon", "prev"):
        if not isinstance(obj[key], str):
            raise _Corrupt(number, f"{key} is {obj[key]!r}, not a string")
    if not _valid_week(obj["week"]):
        raise _Corrupt(number, f"week {obj['week']!r} is not an ISO week like 2026-W47")
    if not _CATEGORY.fullmatch(obj["category"]):
        raise _Corrupt(number, f"category {obj['category']!r} is not 1-20 letters a-z")
    if not _EPSILON.fullmatch(obj["epsilon"]):
        raise _Corrupt(number, f"epsilon {obj['epsilon']!r} is not a positive fraction")
    try:
        epsilon = Fraction(obj["epsilon"])
    except ValueError:  # e.g. beyond the int digit limit
        raise _Corrupt(number, f"epsilon {obj['epsilon']!r} is not a fraction") from None
    if not _HASH.fullmatch(obj["prev"]):
        raise _Corrupt(number, "prev is not a hex SHA-256")
    entry = Entry(seq=obj["seq"], at=obj["at"], week=obj["week"], category=obj["category"],
                  epsilon=epsilon, prev=obj["prev"])
    if _line(entry) != raw:
        raise _Corrupt(number, "it is not in canonical form (edited by hand?)")
    return entry


def _parse(data: bytes, expect_head: tuple[int, str] | None) -> tuple[list[Entry], str]:
    """The whole file -> (entries, hash of the last line); raises _Corrupt."""
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    entries: list[Entry] = []
    prev, hashes = GENESIS, [GENESIS]
    for number, raw in enumerate(complete, start=1):
        entry = _parse_line(raw, number)
        if entry.seq != number:
            raise _Corrupt(number, f"seq is {entry.seq}, expected {number} "
                                   "(a line is missing, duplicated or out of order)")
        if entry.prev != prev:
            raise _Corrupt(number, f"prev does not match the hash of line {number - 1} "
                                   "(a line before it was changed, removed or reordered)")
        if entries and entry.at < entries[-1].at:
            raise _Corrupt(number, f"at {entry.at} is earlier than line {number - 1}'s "
                                   f"{entries[-1].at}")
        entries.append(entry)
        prev = _digest(raw)
        hashes.append(prev)
    if tail:
        raise _Corrupt(len(complete) + 1, "it does not end with a newline (an append was "
                                          "interrupted: a torn write)")
    if expect_head is not None:
        seq, digest = expect_head
        if seq >= len(hashes):
            raise _Corrupt(len(entries) + 1, f"the ledger was truncated: the database recorded "
                                         f"{seq} entries, the file has {len(entries)}")
        if hashes[seq] != digest:
            raise _Corrupt(seq, "it was changed or replaced since the database recorded it")
    return entries, prev


def _iso(ts: float) -> str:
    moment = datetime.datetime.fromtimestamp(math.floor(ts), datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_head(expect_head: tuple[int, str] | None) -> None:
    if expect_head is None:
        return
    seq, digest = expect_head
    if type(seq) is not int or seq < 0 or not _HASH.fullmatch(digest):
        raise ValueError(f"expect_head must be (seq >= 0, hex SHA-256), got {expect_head!r}")


def _check_now(now: float) -> None:
    if not math.isfinite(now) or now < 0:
        raise ValueError(f"now must be a finite, non-negative unix time, got {now!r}")


# -- the file --------------------------------------------------------------------------------

class Ledger:
    """The ε ledger in one file (see the module docstring for the format and guarantees)."""

    def __init__(self, path: Path, *, week_cap: Fraction = DEFAULT_WEEK_CAP,
                 year_cap: Fraction = DEFAULT_YEAR_CAP) -> None:
        for name, cap in (("week_cap", week_cap), ("year_cap", year_cap)):
            if not isinstance(cap, Fraction) or cap < 0:
                raise ValueError(f"{name} must be a non-negative Fraction, got {cap!r}")
        self.path = Path(path)
        self.week_cap = week_cap
        self.year_cap = year_cap

    # errors

    def _corrupt(self, bad: _Corrupt) -> LedgerError:
        return LedgerError(
            "corrupt", f"the privacy ledger {self.path} is corrupt at line {bad.line}: "
                       f"{bad.what}; nothing will be released until it is repaired",
            path=self.path, line=bad.line)

    def _unwritable(self, err: OSError, doing: str) -> LedgerError:
        return LedgerError(
            "unwritable", f"the privacy ledger {self.path} cannot be {doing}: "
                          f"{err.strerror or err}; nothing will be released",
            path=self.path)

    # reading

    def _read(self, fd: int) -> bytes:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)

    def _verify(self, data: bytes, now: float | None,
                expect_head: tuple[int, str] | None) -> tuple[list[Entry], str]:
        try:
            entries, last = _parse(data, expect_head)
        except _Corrupt as bad:
            raise self._corrupt(bad) from None
        if now is not None and entries and now < entries[-1].at:
            raise LedgerError(
                "clock", f"the clock went backwards: it is {_iso(now)}, but the privacy "
                         f"ledger {self.path} has a release at {_iso(entries[-1].at)} "
                         f"(line {len(entries)}); nothing will be released until the clock "
                         "is right", path=self.path, line=len(entries))
        return entries, last

    def _load(self, now: float | None,
              expect_head: tuple[int, str] | None) -> tuple[list[Entry], str]:
        _check_head(expect_head)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            data = b""
        except OSError as err:
            raise self._unwritable(err, "read") from None
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                data = self._read(fd)
            except OSError as err:
                raise self._unwritable(err, "read") from None
            finally:
                os.close(fd)
        return self._verify(data, now, expect_head)

    def entries(self, expect_head: tuple[int, str] | None = None) -> list[Entry]:
        """Every entry, verified; a missing file is an empty ledger."""
        return self._load(None, expect_head)[0]

    def head(self) -> tuple[int, str]:
        """(last seq, SHA-256 of the last line), or (0, 64 zeros) when empty: store it."""
        entries, last = self._load(None, None)
        return len(entries), last

    def check(self, now: float, expect_head: tuple[int, str] | None = None) -> list[Entry]:
        """The verified entries; also refuses ("clock") when `now` is before the last one."""
        _check_now(now)
        return self._load(now, expect_head)[0]

    def _budget(self, entries: list[Entry], now: float, week: str) -> Budget:
        since = now - YEAR_SECONDS
        return Budget(
            week=week,
            week_spent=sum((e.epsilon for e in entries if e.week == week), Fraction(0)),
            week_cap=self.week_cap,
            year_spent=sum((e.epsilon for e in entries if e.at > since), Fraction(0)),
            year_cap=self.year_cap)

    def budget(self, now: float, week: str,
               expect_head: tuple[int, str] | None = None) -> Budget:
        """What week `week` and the 365 days before `now` have spent (after `check`)."""
        return self._budget(self.check(now, expect_head), now, week)

    # writing

    def charge(self, now: float, week: str, category: str, epsilon: Fraction,
               expect_head: tuple[int, str] | None = None) -> Entry:
        """Record a release of `epsilon` for `category`'s data of `week`, durably, or refuse.

        Returns only once the line is on disk; raises LedgerError (and writes nothing) when
        the ledger is corrupt, unwritable, behind the clock, or the release is over a cap.
        """
        _check_now(now)
        _check_head(expect_head)
        if not _valid_week(week):
            raise ValueError(f"week must be an ISO week label like 2026-W47, got {week!r}")
        if not _CATEGORY.fullmatch(category):
            raise ValueError(f"category must be 1-20 letters a-z, got {category!r}")
        if not isinstance(epsilon, Fraction) or epsilon <= 0:
            raise ValueError(f"epsilon must be a positive Fraction, got {epsilon!r}")
        directory = self.path.parent
        try:
            if not directory.is_dir():
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                _fsync_dir(directory.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise self._unwritable(err, "opened for writing") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                data = self._read(fd)
            except OSError as err:
                raise self._unwritable(err, "read") from None
            entries, last = self._verify(data, now, expect_head)
            self._refuse_over_cap(self._budget(entries, now, week), category, epsilon)
            entry = Entry(seq=len(entries) + 1, at=math.floor(now), week=week,
                          category=category, epsilon=epsilon, prev=last)
            line = _line(entry) + b"\n"
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(0, f"only {written} of {len(line)} bytes were written "
                                     "(the ledger now ends in a torn line)")
                os.fsync(fd)
                if not data:
                    _fsync_dir(directory)
            except OSError as err:
                raise self._unwritable(err, "written") from None
        finally:
            os.close(fd)
        return entry

    def _refuse_over_cap(self, budget: Budget, category: str, epsilon: Fraction) -> None:
        asked = f"releasing {category!r} data of week {budget.week} with ε = {epsilon}"
        if budget.week_spent + epsilon > budget.week_cap:
            raise LedgerError(
                "week-cap", f"the privacy ledger {self.path} refuses {asked}: ε = "
                            f"{budget.week_spent} is already spent on week {budget.week} and "
                            f"the weekly cap is {budget.week_cap}", path=self.path)
        if budget.year_spent + epsilon > budget.year_cap:
            raise LedgerError(
                "year-cap", f"the privacy ledger {self.path} refuses {asked}: ε = "
                            f"{budget.year_spent} is already spent in the last 365 days and "
                            f"the 365-day cap is {budget.year_cap}", path=self.path)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
