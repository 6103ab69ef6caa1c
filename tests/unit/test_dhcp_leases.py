"""dnsmasq's lease file: the parser (pure) and the polling watcher."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.discovery.dhcp import Lease, LeaseWatcher, parse_leases, safe_hostname
from tests.polling import eventually

# As dnsmasq 2.90 writes it (src/lease.c): IPv4 leases first, then `duid SERVER-DUID` and the
# IPv6 leases with the IAID where the MAC would be.
EN_DUID = "00:02:00:00:ab:11:b3:2a:46:01:5d:a9:86:2f"  # a DUID-EN: no MAC inside
REAL = f"""\
1732540000 aa:bb:cc:dd:ee:01 10.98.0.50 shellyplug-s-1 01:aa:bb:cc:dd:ee:01
0 02:48:47:00:00:12 10.98.0.12 * *
1732541234 3c:61:05:0a:0b:0c 10.98.0.51 esp32-cam ff:56:30:34:f1:{EN_DUID}
1732541000 aa:bb:cc:dd:ee:04 10.98.0.52 evil;reboot$(id) 01:aa:bb:cc:dd:ee:04
1732541001 aa:bb:cc:dd:ee:05 10.98.0.53 ../../etc/passwd *
duid 00:01:00:01:2c:5e:0a:3b:52:54:00:12:34:56
1732545000 1234567 fd98::0050 shellyplug-s-1 00:01:00:01:2b:4f:11:22:aa:bb:cc:dd:ee:01
1732545001 1446130929 fd98::51 esp32-cam {EN_DUID}
0 T77 fd98::52 * 00:03:00:01:02:48:47:00:00:99
1732545002 99 fd98::53 mystery 00:04:5b:1e:22:9c:6e:11:4f:8d:9a:3e:12:34:56:78:9a:bc
1732545003 100 fd98::54 * *
"""


def test_real_file() -> None:
    leases, problems = parse_leases(REAL)
    assert problems == []
    assert leases == [
        Lease("aa:bb:cc:dd:ee:01", "10.98.0.50", "shellyplug-s-1", 1732540000.0,
              "01:aa:bb:cc:dd:ee:01"),
        Lease("02:48:47:00:00:12", "10.98.0.12", None, 0.0, None),  # infinite, no name
        Lease("3c:61:05:0a:0b:0c", "10.98.0.51", "esp32-cam", 1732541234.0,
              f"ff:56:30:34:f1:{EN_DUID}"),
        # Host names are untrusted: anything beyond one RFC 1123 label is dropped.
        Lease("aa:bb:cc:dd:ee:04", "10.98.0.52", None, 1732541000.0, "01:aa:bb:cc:dd:ee:04"),
        Lease("aa:bb:cc:dd:ee:05", "10.98.0.53", None, 1732541001.0, None),
        # IPv6: a DUID-LLT carries the MAC (normalized address literal) ...
        Lease("aa:bb:cc:dd:ee:01", "fd98::50", "shellyplug-s-1", 1732545000.0,
              "00:01:00:01:2b:4f:11:22:aa:bb:cc:dd:ee:01"),
        # ... a DUID-EN does not, but the IPv4 lease's RFC 4361 client id names the same DUID
        Lease("3c:61:05:0a:0b:0c", "fd98::51", "esp32-cam", 1732545001.0, EN_DUID),
        # ... a DUID-LL carries it too (temporary address, infinite lease).
        Lease("02:48:47:00:00:99", "fd98::52", None, 0.0, "00:03:00:01:02:48:47:00:00:99"),
        # A DUID-UUID and a missing DUID cannot be tied to a MAC: skipped, not a problem.
    ]


def test_garbage_lines_are_skipped_and_reported() -> None:
    text = "\n".join([
        "1732540000 aa:bb:cc:dd:ee:01 10.98.0.50 good *",
        "not a lease",
        "abc aa:bb:cc:dd:ee:02 10.98.0.51 h *",
        "1732540000 aa:bb:cc:dd:ee 10.98.0.52 h *",
        "1732540000 aa:bb:cc:dd:ee:04 10.98.0.300 h *",
        "1732540000 aa:bb:cc:dd:ee:05 fd98::1 h *",
        "1732540000 20-80:00:02:08:fe:80:00:00:00:00:00:00:00:02:c9:03:00:0f:1f:21 10.98.0.55 ib *",
        "1732540000 aa:bb:cc:dd:ee:07 10.98.0.57 h zz:top",
        "-5 aa:bb:cc:dd:ee:08 10.98.0.58 h *",
        "\x00\xff\ufffd garbage \x1b[31m",
        "",
        "   ",
        "1732540000 aa:bb:cc:dd:ee:09 10.98.0.59 also-good *",
        "duid",
        "1732545000 notaniaid fd98::60 h *",
        "1732545000 1 10.98.0.61 h 00:03:00:01:aa:bb:cc:dd:ee:0a",
    ])
    leases, problems = parse_leases(text)
    assert [(lease.ip, lease.hostname) for lease in leases] == [
        ("10.98.0.50", "good"), ("10.98.0.59", "also-good")]
    assert problems == [
        "line 2: expected 5 fields, found 3",
        "line 3: bad expiry time 'abc'",
        "line 4: bad MAC address 'aa:bb:cc:dd:ee'",
        "line 5: bad IP address '10.98.0.300'",
        "line 6: IPv6 address fd98::1 in the IPv4 section",
        "line 7: unsupported hardware address type "
        "'20-80:00:02:08:fe:80:00:00:00:00:00:00:0...'",
        "line 8: bad client id 'zz:top'",
        "line 9: bad expiry time '-5'",
        "line 10: expected 5 fields, found 3",
        "line 14: malformed duid line",
        "line 15: bad IAID 'notaniaid'",
        "line 16: IPv4 address 10.98.0.61 in the IPv6 section",
    ]


def test_upper_case_mac_is_normalized_and_empty_file_is_empty() -> None:
    leases, problems = parse_leases("1700000000 AA:BB:CC:0D:0E:0F 10.0.0.1 Host-1 *\n")
    assert problems == []
    assert leases == [Lease("aa:bb:cc:0d:0e:0f", "10.0.0.1", "Host-1", 1700000000.0, None)]
    assert parse_leases("") == ([], [])


def test_problems_are_capped() -> None:
    leases, problems = parse_leases("junk\n" * 500)
    assert leases == []
    assert len(problems) == 51
    assert problems[-1] == "... and 450 more bad lines"


def test_safe_hostname() -> None:
    assert safe_hostname("shelly-1") == "shelly-1"
    assert safe_hostname("a" * 63) == "a" * 63
    for bad in ("a" * 64, "-lead", "trail-", "with space", "dot.ted", "uni\u00e7ode", "x\n",
                "semi;colon", "", "$(reboot)", "<script>"):
        assert safe_hostname(bad) is None, bad


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789abcdefT:.- *\n\tduid\x00\u00e9;")),
               max_size=400))
def test_never_raises(text: str) -> None:
    leases, problems = parse_leases(text)
    for lease in leases:
        assert lease.hostname is None or safe_hostname(lease.hostname) == lease.hostname
    assert all(p.startswith("line ") or p.startswith("...") for p in problems)


@given(st.text(max_size=300))
def test_never_raises_on_any_text(text: str) -> None:
    parse_leases(text)


# --- the watcher ----------------------------------------------------------------------------


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rewrite_in_place(path: Path, text: str) -> None:
    """What dnsmasq itself does: the same file, truncated and written again."""
    with path.open("r+") as f:
        f.truncate(0)
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


ONE = "1732540000 aa:bb:cc:dd:ee:01 10.98.0.50 plug-1 *\n"
TWO = ONE + "0 aa:bb:cc:dd:ee:02 10.98.0.51 * *\n"


async def test_watcher_reports_changes(tmp_path: Path) -> None:
    path = tmp_path / "dnsmasq.leases"
    calls: list[list[Lease]] = []
    watcher = LeaseWatcher(path, calls.append, interval_s=0.05)
    await watcher.start()
    try:
        # A missing file is no error and no report.
        assert calls == []
        assert watcher.status() == {"path": str(path), "present": False, "leases": 0,
                                    "last_read": None, "problems": []}

        write_atomically(path, ONE)
        await eventually(lambda: len(calls) == 1, 5, "the first report")
        assert [lease.ip for lease in calls[0]] == ["10.98.0.50"]
        status = watcher.status()
        assert status["present"] and status["leases"] == 1 and status["last_read"] is not None

        write_atomically(path, TWO)  # a new inode
        await eventually(lambda: len(calls) == 2, 5, "the report after a rename")
        assert [lease.ip for lease in calls[1]] == ["10.98.0.50", "10.98.0.51"]

        rewrite_in_place(path, ONE)  # the same inode, rewritten
        await eventually(lambda: len(calls) == 3, 5, "the report after an in-place rewrite")
        assert [lease.ip for lease in calls[2]] == ["10.98.0.50"]

        await asyncio.sleep(0.3)  # nothing changed: nothing reported
        assert len(calls) == 3

        rewrite_in_place(path, ONE + "garbage line\n")
        await eventually(lambda: len(calls) == 4, 5, "the report of a file with a bad line")
        assert watcher.status()["problems"] == ["line 2: expected 5 fields, found 2"]
        assert len(calls[3]) == 1

        path.unlink()
        await eventually(lambda: len(calls) == 5, 5, "the report of a removed file")
        assert calls[4] == []
        assert watcher.status()["present"] is False
    finally:
        await watcher.stop()


async def test_watcher_reports_an_existing_file_at_start(tmp_path: Path) -> None:
    path = tmp_path / "leases"
    path.write_text(TWO)
    calls: list[list[Lease]] = []
    watcher = LeaseWatcher(path, calls.append, interval_s=10)
    await watcher.start()  # the first report is made before start returns
    try:
        assert [len(c) for c in calls] == [2]
    finally:
        await watcher.stop()
    await watcher.stop()  # twice is fine


async def test_watcher_survives_a_failing_callback(tmp_path: Path) -> None:
    path = tmp_path / "leases"
    seen: list[int] = []

    def on_change(leases: list[Lease]) -> None:
        seen.append(len(leases))
        raise RuntimeError("the consumer broke")

    watcher = LeaseWatcher(path, on_change, interval_s=0.05)
    await watcher.start()
    try:
        write_atomically(path, ONE)
        await eventually(lambda: seen == [1], 5, "the first call")
        write_atomically(path, TWO)
        await eventually(lambda: seen == [1, 2], 5, "a call after the callback failed")
    finally:
        await watcher.stop()


async def test_watcher_unreadable_file_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "leases"
    path.mkdir()  # exists, but cannot be read as a file
    watcher = LeaseWatcher(path, lambda leases: None, interval_s=0.05)
    await watcher.start()
    try:
        problems = watcher.status()["problems"]
        assert len(problems) == 1 and problems[0].startswith("cannot read")
    finally:
        await watcher.stop()
