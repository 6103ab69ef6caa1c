"""The ε ledger: caps, exact sums, durability, and fail-closed refusals with clear messages."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from fractions import Fraction
from functools import partial
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.privacy.ledger import (
    GENESIS,
    YEAR_SECONDS,
    Budget,
    Entry,
    Ledger,
    LedgerError,
    _Corrupt,
    _line,
    _parse_line,
)
from tests.needs import unavailable

T = 1_800_000_000  # 2027-01-15T08:00:00Z
WEEK = 86400 * 7
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "privacy" / "ledger.jsonl"


@pytest.fixture
def ledger(path: Path) -> Ledger:
    return Ledger(path, week_cap=Fraction(1), year_cap=Fraction(26))


def refused(reason: str, call: Callable[[], object]) -> LedgerError:
    with pytest.raises(LedgerError) as info:
        call()
    assert info.value.reason == reason, str(info.value)
    return info.value


def three(ledger: Ledger) -> bytes:
    ledger.charge(T, "2026-W47", "energy", Fraction(1, 10))
    ledger.charge(T + 60, "2026-W47", "usage", Fraction(1, 5))
    ledger.charge(T + 120, "2026-W48", "comfort", Fraction(1, 2))
    return ledger.path.read_bytes()


# -- charging within the caps ----------------------------------------------------------------

def test_charges_round_trip_and_are_private(ledger: Ledger, path: Path) -> None:
    assert ledger.entries() == [] and ledger.head() == (0, GENESIS)  # no file: empty
    made = [ledger.charge(T, "2026-W47", "energy", Fraction(1, 10)),
            ledger.charge(T + 0.9, "2026-W47", "usage", Fraction(1, 5)),
            ledger.charge(T + 60, "2026-W48", "comfort", Fraction(1))]
    assert ledger.entries() == ledger.check(T + 60) == made
    assert [e.seq for e in made] == [1, 2, 3] and [e.at for e in made] == [T, T, T + 60]
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4
    assert json.loads(lines[0]) == {"seq": 1, "at": T, "week": "2026-W47", "category": "energy",
                                    "epsilon": "1/10", "prev": "0" * 64}
    assert json.loads(lines[1])["prev"] == hashlib.sha256(lines[0]).hexdigest()
    assert ledger.head() == (3, hashlib.sha256(lines[2]).hexdigest())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    budget = ledger.budget(T + 60, "2026-W47")
    assert budget == Budget("2026-W47", Fraction(3, 10), Fraction(1), Fraction(13, 10),
                            Fraction(26))
    assert budget.week_left == Fraction(7, 10) and budget.year_left == Fraction(247, 10)


def test_each_line_is_fsynced_before_charge_returns(
        ledger: Ledger, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[tuple[str, int]] = []  # (what, ledger size at the fsync)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st_fd = os.fstat(fd)
        what = "dir" if stat.S_ISDIR(st_fd.st_mode) else "file"
        synced.append((what, st_fd.st_size if what == "file" else -1))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    ledger.charge(T, "2026-W47", "energy", Fraction(1, 10))
    size1 = path.stat().st_size
    # the new directory, then the line (after it was written), then the directory of the file
    assert synced == [("dir", -1), ("file", size1), ("dir", -1)]
    synced.clear()
    ledger.charge(T + 1, "2026-W47", "energy", Fraction(1, 10))
    assert synced == [("file", path.stat().st_size)] and path.stat().st_size > size1


def test_arguments_are_checked(ledger: Ledger, path: Path) -> None:
    for bad in (Fraction(0), Fraction(-1, 10), 0.1, 1):
        with pytest.raises(ValueError, match="epsilon must be a positive Fraction"):
            ledger.charge(T, "2026-W47", "energy", bad)  # type: ignore[arg-type]
    for week in ("2026-47", "2026-W00", "2026-W54", "2025-W53", "2026-W7"):  # 2025 has 52
        with pytest.raises(ValueError, match="ISO week"):
            ledger.charge(T, week, "energy", Fraction(1, 10))
    for category in ("", "Energy", "energy-1", "a" * 21):
        with pytest.raises(ValueError, match="category"):
            ledger.charge(T, "2026-W47", category, Fraction(1, 10))
    with pytest.raises(ValueError, match="week_cap"):
        Ledger(path, week_cap=1.0, year_cap=Fraction(26))  # type: ignore[arg-type]
    assert not path.exists()


# -- caps ------------------------------------------------------------------------------------

def test_ten_tenths_reach_the_weekly_cap_exactly(ledger: Ledger, path: Path) -> None:
    running = 0.0
    for _ in range(10):
        running += 0.1
    assert running != 1.0  # why a float running total would get this wrong (sum() compensates
    # since Python 3.12; a ledger adds one charge at a time)
    for i in range(10):
        ledger.charge(T + i, "2026-W47", ("energy", "usage")[i % 2], Fraction(1, 10))
    assert ledger.budget(T + 10, "2026-W47").week_spent == 1
    before = path.read_bytes()
    err = refused("week-cap", lambda: ledger.charge(T + 10, "2026-W47", "comfort",
                                                    Fraction(1, 10)))
    message = str(err)
    assert str(path) in message and "'comfort'" in message and "2026-W47" in message
    assert "ε = 1/10" in message and "ε = 1 is already spent on week 2026-W47" in message
    assert "the weekly cap is 1" in message
    assert path.read_bytes() == before  # nothing appended
    ledger.charge(T + 10, "2026-W48", "comfort", Fraction(1, 10))  # another week is fine


def test_the_365_day_cap_and_its_sliding_window(path: Path) -> None:
    ledger = Ledger(path, week_cap=Fraction(1), year_cap=Fraction(5, 2))
    ledger.charge(T, "2026-W47", "energy", Fraction(1))
    ledger.charge(T + WEEK, "2026-W48", "energy", Fraction(1))
    ledger.charge(T + 2 * WEEK, "2026-W49", "energy", Fraction(1, 2))
    before = path.read_bytes()
    err = refused("year-cap", lambda: ledger.charge(T + 3 * WEEK, "2026-W50", "usage",
                                                    Fraction(1, 3)))
    message = str(err)
    assert str(path) in message and "'usage'" in message and "2026-W50" in message
    assert "ε = 1/3" in message and "ε = 5/2 is already spent in the last 365 days" in message
    assert "the 365-day cap is 5/2" in message
    assert path.read_bytes() == before
    # one second before the first release leaves the window it still counts; then it does not
    last_in = T + YEAR_SECONDS - 1
    refused("year-cap", lambda: ledger.charge(last_in, "2027-W50", "usage", Fraction(1, 3)))
    assert ledger.budget(T + YEAR_SECONDS, "2027-W50").year_spent == Fraction(3, 2)
    entry = ledger.charge(T + YEAR_SECONDS, "2027-W50", "usage", Fraction(1))
    assert entry.seq == 4 and ledger.budget(T + YEAR_SECONDS, "2027-W50").year_left == 0


# -- corruption ------------------------------------------------------------------------------

def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")[:-1]


def _join(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def _edit_epsilon(data: bytes) -> bytes:
    lines = _lines(data)
    lines[0] = lines[0].replace(b'"1/10"', b'"1/20"')
    return _join(lines)


def _delete_middle(data: bytes) -> bytes:
    lines = _lines(data)
    return _join([lines[0], lines[2]])


def _swap(data: bytes) -> bytes:
    lines = _lines(data)
    return _join([lines[0], lines[2], lines[1]])


def _bad_byte(new: bytes) -> Callable[[bytes], bytes]:
    def tamper(data: bytes) -> bytes:
        lines = _lines(data)
        lines[1] = lines[1].replace(b"usage", b"us" + new + b"ge")
        return _join(lines)
    return tamper


CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], int, str]] = {
    "edited": (_edit_epsilon, 2, "prev does not match the hash of line 1"),
    "deleted": (_delete_middle, 2, "seq is 3, expected 2"),
    "swapped": (_swap, 2, "seq is 3, expected 2"),
    "garbage": (lambda d: d + b"garbage\n", 4, "not a JSON object"),
    "torn": (lambda d: d + _lines(d)[0][:25], 4, "does not end with a newline"),
    "utf8": (_bad_byte(b"\xff"), 2, "not valid UTF-8"),
    "nul": (_bad_byte(b"\x00"), 2, "NUL byte"),
    "blank": (lambda d: d + b"\n", 4, "not a JSON object"),
    "spaced": (lambda d: d.replace(b'"seq":3', b'"seq": 3'), 3, "not in canonical form"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_a_corrupt_ledger_refuses_everything(name: str, ledger: Ledger, path: Path) -> None:
    tamper, line, what = CORRUPTIONS[name]
    path.write_bytes(tamper(three(ledger)))
    before = path.read_bytes()
    for call in (ledger.entries, ledger.head, lambda: ledger.check(T + 200),
                 lambda: ledger.budget(T + 200, "2026-W48"),
                 lambda: ledger.charge(T + 200, "2026-W48", "energy", Fraction(1, 10))):
        err = refused("corrupt", call)
        assert err.line == line
        assert f"the privacy ledger {path} is corrupt at line {line}: " in str(err)
        assert what in str(err) and "nothing will be released" in str(err)
    assert path.read_bytes() == before  # nothing appended


def test_changing_or_dropping_the_last_line_needs_the_recorded_head(
        ledger: Ledger, path: Path) -> None:
    data = three(ledger)
    head = ledger.head()
    assert head[0] == 3
    lines = _lines(data)
    # without the head recorded in the database, a shorter or re-written end is a valid chain
    path.write_bytes(_join(lines[:2]))
    assert len(ledger.check(T + 200)) == 2
    err = refused("corrupt", lambda: ledger.charge(T + 200, "2026-W48", "energy",
                                                   Fraction(1, 10), expect_head=head))
    assert err.line == 3 and "the ledger was truncated: the database recorded 3 entries, " \
                              "the file has 2" in str(err)
    path.write_bytes(b"")
    assert "the file has 0" in str(refused("corrupt", lambda: ledger.check(T, head)))
    path.write_bytes(_join([*lines[:2], lines[2].replace(b'"1/2"', b'"1/9"')]))
    err = refused("corrupt", lambda: ledger.check(T + 200, expect_head=head))
    assert err.line == 3 and "changed or replaced since the database recorded it" in str(err)
    assert path.read_bytes().count(b"\n") == 3
    # a file longer than the recorded head is fine (crash before the database was updated)
    path.write_bytes(data)
    ledger.charge(T + 200, "2026-W48", "energy", Fraction(1, 10), expect_head=head)
    assert len(ledger.entries(expect_head=head)) == 4
    assert len(ledger.entries(expect_head=(0, GENESIS))) == 4
    with pytest.raises(ValueError, match="expect_head"):
        ledger.check(T + 200, expect_head=(1, "nothex"))


def _chain(*entries: dict[str, object]) -> bytes:
    out, prev = [], GENESIS
    for seq, fields in enumerate(entries, start=1):
        entry = Entry(**{"seq": seq, "at": T, "week": "2026-W47", "category": "energy",
                         "epsilon": Fraction(1, 10), "prev": prev, **fields})  # type: ignore[arg-type]
        out.append(_line(entry))
        prev = hashlib.sha256(out[-1]).hexdigest()
    return _join(out)


def test_time_going_down_inside_the_file_is_corrupt(ledger: Ledger, path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(_chain({"at": T}, {"at": T - 1}))
    err = refused("corrupt", lambda: ledger.check(T))
    assert err.line == 2 and f"at {T - 1} is earlier than line 1's {T}" in str(err)


@pytest.mark.parametrize(("line", "what"), [
    (b"[]", "not a JSON object"),
    (b'{"seq":1}', "its keys are ['seq']"),
    (_chain({})[:-2] + b',"x":1}', "its keys are"),
    (_chain({}).replace(b'"seq":1', b'"seq":true')[:-1], "seq is True, not a non-negative"),
    (_chain({}).replace(b'"at":' + str(T).encode(), b'"at":1.5')[:-1], "at is 1.5"),
    (_chain({}).replace(b'"1/10"', b"0.1")[:-1], "epsilon is 0.1, not a string"),
    (_chain({}).replace(b'"1/10"', b'"0.1"')[:-1], "epsilon '0.1' is not a positive fraction"),
    (_chain({}).replace(b'"1/10"', b'"0"')[:-1], "epsilon '0' is not a positive fraction"),
    (_chain({}).replace(b'"1/10"', b'"2/20"')[:-1], "not in canonical form"),
    (_chain({}).replace(b"2026-W47", b"2026-W60")[:-1], "week '2026-W60' is not an ISO week"),
    (_chain({}).replace(b"energy", b"Energy")[:-1], "category 'Energy' is not 1-20"),
    (_chain({}).replace(b'"0000', b'"000g')[:-1], "prev is not a hex SHA-256"),
    (_chain({}).replace(b"energy", b"\\u0065nergy")[:-1], "not in canonical form"),
    (b"[" * 100_000, "not a JSON object"),
])
def test_each_malformed_line_says_what_is_wrong(line: bytes, what: str) -> None:
    with pytest.raises(_Corrupt) as info:
        _parse_line(line, 7)
    assert what in str(info.value) and info.value.line == 7


# -- unwritable ------------------------------------------------------------------------------

def test_a_directory_in_the_ledgers_place_is_unwritable(ledger: Ledger, path: Path) -> None:
    path.mkdir(parents=True)
    err = refused("unwritable", lambda: ledger.charge(T, "2026-W47", "energy", Fraction(1, 10)))
    assert str(err) == (f"the privacy ledger {path} cannot be opened for writing: "
                        "Is a directory; nothing will be released")
    assert "cannot be read: Is a directory" in str(refused("unwritable",
                                                           lambda: ledger.check(T)))
    path.rmdir()
    path.parent.rmdir()
    path.parent.write_bytes(b"")  # the ledger's directory is a file
    err = refused("unwritable", lambda: ledger.charge(T, "2026-W47", "energy", Fraction(1, 10)))
    assert "cannot be opened for writing: " in str(err)


SNIPPET = """
import json, sys
from fractions import Fraction
from pathlib import Path
from gateway.privacy.ledger import Ledger, LedgerError
out = []
for name in sys.argv[1:]:
    ledger = Ledger(Path(name), week_cap=Fraction(1), year_cap=Fraction(26))
    try:
        ledger.charge(NOW, "2026-W47", "energy", Fraction(1, 10))
        out.append(["charged", ""])
    except LedgerError as err:
        out.append([err.reason, str(err)])
print(json.dumps(out))
""".replace("NOW", str(T + 60))


def test_a_read_only_filesystem_stops_the_release(ledger: Ledger, path: Path,
                                                  tmp_path: Path) -> None:
    why = None
    if os.geteuid() != 0:
        why = "needs root to bind-mount a read-only filesystem"
    elif shutil.which("unshare") is None:
        why = "needs unshare(1) from util-linux"
    if why is None:
        ledger.charge(T, "2026-W47", "energy", Fraction(1, 10))
        before = path.read_bytes()
        snippet = tmp_path / "snippet.py"
        snippet.write_text(SNIPPET)
        script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 97; '
                  'shift; exec "$@"')
        targets = [path, path.parent / "other.jsonl", path.parent / "new" / "ledger.jsonl"]
        proc = subprocess.run(
            ["unshare", "--mount", "sh", "-c", script, "sh", str(path.parent),
             sys.executable, str(snippet), *map(str, targets)],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        if proc.returncode == 97:
            why = f"cannot bind-mount read-only here: {proc.stderr.strip()}"
        else:
            assert proc.returncode == 0, proc.stderr
            results = json.loads(proc.stdout)
            for target, (reason, message) in zip(targets, results, strict=True):
                assert reason == "unwritable", message
                assert message.startswith(f"the privacy ledger {target} cannot be ")
                assert "Read-only file system; nothing will be released" in message
            assert path.read_bytes() == before
            assert not targets[1].exists() and not targets[2].parent.exists()
            return
    unavailable(why)


# -- the clock -------------------------------------------------------------------------------

def test_a_clock_that_went_backwards_refuses(ledger: Ledger, path: Path) -> None:
    ledger.charge(T, "2026-W47", "energy", Fraction(1, 10))
    ledger.check(T + 0.5)  # the same second is not backwards
    before = path.read_bytes()
    for call in (lambda: ledger.check(T - 1), lambda: ledger.budget(T - 1, "2026-W47"),
                 lambda: ledger.charge(T - 1, "2026-W47", "energy", Fraction(1, 10))):
        err = refused("clock", call)
        assert str(err) == (
            "the clock went backwards: it is 2027-01-15T07:59:59Z, but the privacy ledger "
            f"{path} has a release at 2027-01-15T08:00:00Z (line 1); nothing will be released "
            "until the clock is right")
    assert path.read_bytes() == before
    assert ledger.charge(T + 1, "2026-W47", "energy", Fraction(1, 10)).seq == 2


# -- properties ------------------------------------------------------------------------------

charges = st.lists(st.tuples(
    st.integers(0, 40 * 86400),                                  # seconds since the last one
    st.sampled_from(["2026-W47", "2026-W48", "2026-W49"]),
    st.sampled_from(["energy", "usage", "comfort"]),
    st.integers(1, 12).flatmap(lambda d: st.builds(Fraction, st.integers(1, 2 * d),
                                                   st.just(d))),
), max_size=14)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(charges)
def test_budgets_are_exact_sums_of_what_was_accepted(
        steps: list[tuple[int, str, str, Fraction]]) -> None:
    week_cap, year_cap = Fraction(1), Fraction(5, 2)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "ledger.jsonl", week_cap=week_cap, year_cap=year_cap)
        accepted: list[tuple[int, str, Fraction]] = []
        now = T
        for gap, week, category, epsilon in steps:
            now += gap
            week_spent = sum((e for _, w, e in accepted if w == week), Fraction(0))
            year_spent = sum((e for at, _, e in accepted if at > now - YEAR_SECONDS),
                             Fraction(0))
            if week_spent + epsilon > week_cap:
                refused("week-cap", partial(ledger.charge, now, week, category, epsilon))
            elif year_spent + epsilon > year_cap:
                refused("year-cap", partial(ledger.charge, now, week, category, epsilon))
            else:
                ledger.charge(now, week, category, epsilon)
                accepted.append((now, week, epsilon))
        for week in ("2026-W47", "2026-W48", "2026-W49"):
            budget = ledger.budget(now, week)
            assert budget.week_spent == sum((e for _, w, e in accepted if w == week),
                                            Fraction(0))
            assert budget.year_spent == sum(
                (e for at, _, e in accepted if at > now - YEAR_SECONDS), Fraction(0))
        assert [(e.at, e.week, e.epsilon) for e in ledger.entries()] == accepted


def test_every_single_byte_change_is_detected(ledger: Ledger, path: Path) -> None:
    data = three(ledger)
    head = ledger.head()
    for i in range(len(data)):
        for new in {data[i] ^ 1, data[i] ^ 0x20, ord("\n"), ord("0"), ord("}"), 0xFF} - {data[i]}:
            path.write_bytes(data[:i] + bytes([new]) + data[i + 1:])
            refused("corrupt", lambda: ledger.check(T + 200, expect_head=head))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_byte_flip_of_any_ledger_is_detected(data: st.DataObject) -> None:
    steps = data.draw(st.lists(st.tuples(st.sampled_from(["energy", "usage"]),
                                         st.integers(1, 9)), min_size=1, max_size=4))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.jsonl"
        content, prev = [], GENESIS
        for seq, (category, d) in enumerate(steps, start=1):  # built without fsync: pure
            content.append(_line(Entry(seq, T + seq, "2026-W47", category, Fraction(1, d),
                                       prev)))
            prev = hashlib.sha256(content[-1]).hexdigest()
        raw = _join(content)
        ledger = Ledger(path, week_cap=Fraction(100), year_cap=Fraction(100))
        path.write_bytes(raw)
        head = ledger.head()
        assert head == (len(steps), prev)
        i = data.draw(st.integers(0, len(raw) - 1))
        new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]))
        path.write_bytes(raw[:i] + bytes([new]) + raw[i + 1:])
        refused("corrupt", lambda: ledger.check(T + 100, expect_head=head))
