"""The admin page's connection gate and the log's throttle, as pure bookkeeping."""

from __future__ import annotations

import logging

from gateway.logthrottle import Throttle
from gateway.web.gate import SUMMARY_S, Gate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_address_cannot_take_every_connection() -> None:
    gate = Gate(total=10, per_source=3, clock=Clock())
    assert [gate.admit("10.0.0.9") for _ in range(5)] == [True, True, True, False, False]
    assert all(gate.admit(f"10.0.0.{n}") for n in range(1, 8))  # others still get in
    assert not gate.admit("10.0.0.8")  # … until the total is reached
    gate.release("10.0.0.9")
    assert gate.admit("10.0.0.9")
    assert sum(gate.open.values()) == 10


def test_refusals_are_named_at_once_and_counted_once_a_minute() -> None:
    clock = Clock()
    gate = Gate(total=100, per_source=1, clock=clock)
    gate.admit("10.0.0.9")
    for _ in range(500):
        gate.admit("10.0.0.9")
    per_source = "over the limit of connections from one address"
    assert gate.summary() == [f"admin page: refusing connections from 10.0.0.9 ({per_source})"
                              "; counts follow once a minute"]
    gate.admit("10.0.0.9")
    assert gate.summary() == []  # within the minute: counted, not logged
    clock.now += SUMMARY_S
    gate.slow += 2
    assert gate.summary() == [
        f"admin page: refused 501 connections from 10.0.0.9 in the last minute ({per_source})",
        "admin page: closed 2 connections that sent no whole request within 10 s"]
    clock.now += SUMMARY_S
    assert gate.summary() == []  # nothing new


def test_a_flood_from_many_addresses_names_a_few_of_them() -> None:
    clock = Clock()
    gate = Gate(total=0, per_source=1, clock=clock)
    for n in range(300):
        gate.admit(f"fd00::{n:x}")
    assert len(gate.summary()) == 10
    clock.now += SUMMARY_S
    lines = gate.summary()
    assert len(lines) == 11
    assert lines[-1] == ("admin page: refused 290 more from 290 other addresses in the last "
                         "minute")


def _record(msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("gateway.x", level, __file__, 1, msg, args, None)


def test_a_repeated_message_is_written_a_few_times_then_counted() -> None:
    clock = Clock()
    throttle = Throttle(burst=3, window_s=60, clock=clock)
    written = [throttle.filter(_record("probe from %s failed", f"10.0.0.{n}"))
               for n in range(1000)]
    assert written.count(True) == 3
    assert throttle.filter(_record("another problem"))  # a different message still shows
    clock.now += 60
    record = _record("probe from %s failed", "10.0.0.7")
    assert throttle.filter(record)
    assert record.getMessage() == ("probe from 10.0.0.7 failed (and 997 more like it in the "
                                   "last 60 s, not written)")


def test_the_throttle_remembers_a_bounded_number_of_kinds() -> None:
    clock = Clock()
    throttle = Throttle(burst=1, window_s=60, clock=clock)
    for n in range(5000):
        throttle.filter(_record(f"an f-string message {n}"))
    assert len(throttle.kinds) <= 1000
