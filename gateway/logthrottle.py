"""A log that a flood cannot fill: each message (by its logger, level and template, not its
arguments) is written at most BURST times a WINDOW_S; the rest are counted, and the next
one written after the window says how many were left out. Whatever repeats a failure
thousands of times a second (a hostile client, a dead disk, a loop gone wrong) costs the
journal a few lines a minute, and the first lines of every new kind of trouble still show.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

BURST = 20  # the same message, written at most this many times …
WINDOW_S = 60.0  # … a window of this length
MAX_KINDS = 1000  # message kinds remembered at once (templates are few; f-strings are not)


class Throttle(logging.Filter):
    def __init__(self, burst: int = BURST, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        # kind -> [window start, written in it, left out since the last one written]
        self.kinds: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        kind = (record.name, record.levelno, str(record.msg))
        entry = self.kinds.get(kind)
        if entry is None or now - entry[0] >= self.window_s:
            left_out = int(entry[2]) if entry else 0
            if entry is None and len(self.kinds) >= MAX_KINDS:
                self._forget(now)
            self.kinds[kind] = entry = [now, 0, 0]
            if left_out:
                original = record.getMessage()
                record.msg = "%s (and %d more like it in the last %g s, not written)"
                record.args = (original, left_out, self.window_s)
        if entry[1] >= self.burst:
            entry[2] += 1
            return False
        entry[1] += 1
        return True

    def _forget(self, now: float) -> None:
        """Drop the kinds whose window is over; if none is, the oldest half."""
        stale = [k for k, e in self.kinds.items() if now - e[0] >= self.window_s]
        if not stale:
            by_age = sorted(self.kinds, key=lambda k: self.kinds[k][0])
            stale = by_age[: len(by_age) // 2]
        for kind in stale:
            del self.kinds[kind]
