"""When local schedules fire: parsing schedule text, the next run, and missed runs.

Schedules run on the gateway itself, in the household's time zone, so they keep working
while the cloud is unreachable. A schedule's time is written as one of:

- ``daily 07:30`` (or just ``07:30``), on the 24-hour clock;
- ``weekdays 07:30`` (Monday to Friday), ``weekends 09:00`` (Saturday and Sunday);
- ``mon,wed,fri 18:00``: three-letter English day names, separated by commas;
- ``cron 0 7 * * 1-5``: a standard five-field cron expression (minute, hour, day of month,
  month, day of week) with ``*``, numbers, lists ``a,b``, ranges ``a-b`` and steps ``*/n``
  and ``a-b/n``. Day of week is 0 to 7 (0 and 7 are Sunday); ``sun`` to ``sat`` and
  ``jan`` to ``dec`` are accepted. As in classic cron, when both the day of month and the
  day of week are restricted (neither field starts with ``*``), a day matches if EITHER
  matches: ``cron 0 12 1 * mon`` runs at noon on the 1st and on every Monday.

Daylight saving time. A schedule fires by the local wall clock, at second 0 of the minute.

- A time that does not exist on the day the clocks go forward fires once, at the first
  moment after the gap: in Berlin ``daily 02:30`` fires at 03:00 on that day. Several
  times inside the gap (say every 15 minutes) fire only once, at that same moment.
- A time that occurs twice on the day the clocks go back fires only once, the first time.
  So an expression that fires every few minutes pauses while the repeated hour replays.

Missed runs. When the gateway was off (or busy) at a scheduled time, only the most recent
missed time may still run, and only if it is no older than the grace period; every other
missed time is skipped and counted, never run late as a backlog. A gateway that was off
overnight runs a 07:00 schedule once when it boots at 07:05 with a 15-minute grace period,
and skips it when it boots at 09:00.

Everything here is pure: the caller passes the time as POSIX seconds and the zone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

MAX_TEXT = 200  # characters in a whole schedule text
MAX_FIELD = 64  # characters in one cron field
MAX_MISSED = 1000  # Due.missed stops counting here
# A cron like "0 0 29 2 */7" (Feb 29 on a Sunday) recurs up to 40 years apart (2088, 2128:
# 2100 is no leap year), so the search looks further ahead than any real gap.
SEARCH_YEARS = 50
FIRST_YEAR, LAST_YEAR = 1900, 9000  # the local years `after` and `now` may fall in

EXPECTED = 'expected "daily HH:MM", "weekdays HH:MM", "mon,wed HH:MM" or "cron M H DOM MON DOW"'
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = date.weekday()
MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # longest each month gets

TIME = re.compile(r"([0-9]{1,2}):([0-9]{2})")
NUMBER = re.compile(r"[0-9]{1,2}")

ALL_MINUTES = frozenset(range(60))
ALL_DAYS = frozenset(range(1, 32))
ALL_MONTHS = frozenset(range(1, 13))
ALL_WEEKDAYS = frozenset(range(7))
DAY_SETS = {"daily": ALL_WEEKDAYS, "weekdays": frozenset(range(5)), "weekends": frozenset({5, 6})}


class ScheduleError(ValueError):
    """A schedule text that cannot be used, or a schedule that never fires."""


@dataclass(frozen=True, slots=True)
class When:
    """A parsed schedule: the sets of local minutes, hours, days, months and weekdays."""

    text: str  # normalized, as shown back to users
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]  # of the month, 1 to 31
    months: frozenset[int]  # 1 to 12
    weekdays: frozenset[int]  # 0 = Monday to 6 = Sunday
    days_restricted: bool  # with weekdays_restricted: cron's day-of-month OR day-of-week
    weekdays_restricted: bool


@dataclass(frozen=True, slots=True)
class Due:
    """What to do about a schedule now: run it once or not, and what was skipped."""

    run: bool  # run once now
    missed: int  # scheduled times skipped (not run), at most MAX_MISSED
    next_at: float  # the next scheduled time after now


# ---------------------------------------------------------------------------- parsing


def parse_when(text: str) -> When:
    """Parse a schedule text (see the module docstring); raise ScheduleError if unusable."""
    if len(text) > MAX_TEXT:
        raise ScheduleError(f"schedule is {len(text)} characters long; at most {MAX_TEXT} allowed")
    words = text.split()
    if not words:
        raise ScheduleError(f"empty schedule; {EXPECTED}")
    head = words[0].lower()
    if head == "cron":
        return _parse_cron(words[1:])
    if len(words) == 1 and TIME.fullmatch(head):
        return _at_time("daily", ALL_WEEKDAYS, words[0])
    if len(words) != 2:
        raise ScheduleError(f'"{" ".join(words)}": {EXPECTED}')
    if head in DAY_SETS:
        return _at_time(head, DAY_SETS[head], words[1])
    weekdays = _parse_day_list(words[0])
    return _at_time(",".join(DAY_NAMES[d] for d in sorted(weekdays)), weekdays, words[1])


def _at_time(days_text: str, weekdays: frozenset[int], time_text: str) -> When:
    hour, minute = _parse_time(time_text)
    return When(text=f"{days_text} {hour:02d}:{minute:02d}", minutes=frozenset({minute}),
                hours=frozenset({hour}), days=ALL_DAYS, months=ALL_MONTHS, weekdays=weekdays,
                days_restricted=False, weekdays_restricted=weekdays != ALL_WEEKDAYS)


def _parse_time(text: str) -> tuple[int, int]:
    match = TIME.fullmatch(text)
    if match is None:
        raise ScheduleError(f'"{text}": time must be HH:MM on the 24-hour clock, e.g. "07:30"')
    hour, minute = int(match[1]), int(match[2])
    if hour > 23:
        raise ScheduleError(f'"{text}": hour must be 0 to 23')
    if minute > 59:
        raise ScheduleError(f'"{text}": minute must be 0 to 59')
    return hour, minute


def _parse_day_list(text: str) -> frozenset[int]:
    weekdays = set()
    for name in text.lower().split(","):
        if name not in DAY_NAMES:
            raise ScheduleError(f'"{text}": unknown day "{name}"; expected daily, weekdays, '
                                f"weekends or day names {','.join(DAY_NAMES)}")
        weekdays.add(DAY_NAMES.index(name))
    return frozenset(weekdays)


@dataclass(frozen=True, slots=True)
class _Field:
    """One cron field's name, range and accepted names."""

    name: str
    low: int
    high: int
    names: Mapping[str, int]


MINUTE = _Field("minute", 0, 59, {})
HOUR = _Field("hour", 0, 23, {})
DAY = _Field("day of month", 1, 31, {})
MONTH = _Field("month", 1, 12, {name: i + 1 for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))})
WEEKDAY = _Field("day of week", 0, 7, {name: i for i, name in enumerate(
    ("sun", "mon", "tue", "wed", "thu", "fri", "sat"))})


def _parse_cron(fields: list[str]) -> When:
    if len(fields) != 5:
        raise ScheduleError(f'"cron {" ".join(fields)}": cron needs exactly 5 fields '
                            f"(M H DOM MON DOW), got {len(fields)}")
    minute, hour, dom, month, dow = fields
    days, months = _parse_field(DAY, dom), _parse_field(MONTH, month)
    # Cron numbers Sunday 0 (and 7); Python's weekday() numbers Monday 0.
    weekdays = frozenset((d + 6) % 7 for d in _parse_field(WEEKDAY, dow))
    # Classic (Vixie) cron: a field is unrestricted when it starts with "*", even "*/2".
    days_restricted, weekdays_restricted = not dom.startswith("*"), not dow.startswith("*")
    either = days_restricted and weekdays_restricted
    if not either and not any(d <= MONTH_DAYS[m - 1] for m in months for d in days):
        raise ScheduleError(f'"cron {" ".join(fields)}": never fires: day of month "{dom}" '
                            f'does not occur in month "{month}"')
    return When(text=f"cron {' '.join(fields)}", minutes=_parse_field(MINUTE, minute),
                hours=_parse_field(HOUR, hour), days=days, months=months, weekdays=weekdays,
                days_restricted=days_restricted, weekdays_restricted=weekdays_restricted)


def _parse_field(field: _Field, text: str) -> frozenset[int]:
    if len(text) > MAX_FIELD:
        raise ScheduleError(f"{field.name} field is {len(text)} characters long; "
                            f"at most {MAX_FIELD}")
    values: set[int] = set()
    for item in text.split(","):
        values.update(_parse_item(field, text, item))
    return frozenset(values)


def _parse_item(field: _Field, text: str, item: str) -> range:
    """One list item: "*", "a", "a-b", "*/n" or "a-b/n"."""
    where = f'{field.name} field "{text}"'
    base, slash, step_text = item.partition("/")
    if base == "*":
        low, high = field.low, field.high
    elif "-" in base:
        first, _, last = base.partition("-")
        low, high = _parse_value(field, where, first), _parse_value(field, where, last)
        if low > high:
            hint = " (Sunday is 7 at the end of a range)" if field is WEEKDAY else ""
            raise ScheduleError(f"{where}: range {base} is reversed; its start must not be "
                                f"after its end{hint}")
    elif slash:
        raise ScheduleError(f'{where}: a step "/n" needs "*" or a range "a-b" before it')
    else:
        low = high = _parse_value(field, where, base)
    step = 1
    if slash:
        span = field.high - field.low + 1
        if not NUMBER.fullmatch(step_text) or not 1 <= int(step_text) <= span:
            raise ScheduleError(f'{where}: step "{step_text}" must be a number 1 to {span}')
        step = int(step_text)
    return range(low, high + 1, step)


def _parse_value(field: _Field, where: str, text: str) -> int:
    if NUMBER.fullmatch(text):
        value = int(text)
    elif text.lower() in field.names:
        return field.names[text.lower()]
    elif not text:
        raise ScheduleError(f"{where}: empty value; expected {field.name} "
                            f"{field.low} to {field.high}")
    else:
        names = f" or a name {', '.join(field.names)}" if field.names else ""
        raise ScheduleError(f'{where}: "{text}" is not a {field.name} number{names}')
    if not field.low <= value <= field.high:
        raise ScheduleError(f"{where}: {value} is out of range; {field.name} must be "
                            f"{field.low} to {field.high}")
    return value


# ---------------------------------------------------------------------------- timing


def next_run(when: When, after: float, tz: ZoneInfo) -> float:
    """The first time strictly after `after` at which `when` fires, as POSIX seconds."""
    # Whole seconds, rounded down: datetime rounds to the nearest microsecond, which could
    # carry `after` past a time it must not skip (the end of a spring-forward gap).
    start = _local(math.floor(after) if math.isfinite(after) else after, tz)
    hours, minutes = sorted(when.hours), sorted(when.minutes)
    for day in _matching_days(when, start.date()):
        today = day == start.date()
        for hour in hours:
            # Earlier wall-clock times of the start day fire at or before `after`.
            if today and hour < start.hour:
                continue
            for minute in minutes:
                if today and hour == start.hour and minute < start.minute:
                    continue
                at = _instant(day, hour, minute, tz)
                if at > after:
                    return at
    raise ScheduleError(f'"{when.text}": never fires within {SEARCH_YEARS} years')


def due(when: When, last_at: float, now: float, tz: ZoneInfo, grace_s: float) -> Due:
    """Whether to run `when` now, given the last scheduled time handled (see module doc).

    `last_at` is the last time that was run or skipped (for a new schedule: when it was
    created). Of the scheduled times in (last_at, now] only the latest may run, and only if
    it is at most `grace_s` old; the rest are missed.
    """
    if not grace_s >= 0:  # also refuses NaN
        raise ScheduleError(f"grace period must be 0 seconds or more, got {grace_s}")
    next_at = next_run(when, now, tz)
    count = _count_runs(when, last_at, now, tz, MAX_MISSED + 1)
    if count == 0:
        return Due(run=False, missed=0, next_at=next_at)
    # The latest time is within grace iff some time in (last_at, now] is >= now - grace_s.
    recent_from = max(last_at, math.nextafter(now - grace_s, -math.inf))
    run = next_run(when, recent_from, tz) <= now
    return Due(run=run, missed=min(count - run, MAX_MISSED), next_at=next_at)


def _count_runs(when: When, start: float, end: float, tz: ZoneInfo, limit: int) -> int:
    """How many scheduled times lie in (start, end], counting at most `limit`."""
    count, at = 0, start
    while count < limit:
        at = next_run(when, at, tz)
        if at > end:
            break
        count += 1
    return count


def _local(posix: float, tz: ZoneInfo) -> datetime:
    if math.isfinite(posix):
        try:
            local = datetime.fromtimestamp(posix, tz)
        except (OverflowError, OSError, ValueError):
            pass
        else:
            if FIRST_YEAR <= local.year <= LAST_YEAR:
                return local
    raise ScheduleError(f"time {posix} is outside the years {FIRST_YEAR} to {LAST_YEAR}")


def _matching_days(when: When, start: date) -> Iterator[date]:
    """The days from `start` on whose date matches `when`, for SEARCH_YEARS years."""
    day = start
    while day.year <= start.year + SEARCH_YEARS:
        if day.month not in when.months:
            day = (day.replace(day=28) + timedelta(days=4)).replace(day=1)  # next month
            continue
        if _day_matches(when, day):
            yield day
        day += timedelta(days=1)


def _day_matches(when: When, day: date) -> bool:
    in_days, in_weekdays = day.day in when.days, day.weekday() in when.weekdays
    if when.days_restricted and when.weekdays_restricted:
        return in_days or in_weekdays
    return in_days and in_weekdays


def _instant(day: date, hour: int, minute: int, tz: ZoneInfo) -> float:
    """When the wall-clock time fires: its first occurrence, or the end of a DST gap."""
    wall = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)  # fold=0: first
    at = wall.timestamp()
    if datetime.fromtimestamp(at, tz).replace(tzinfo=None) == wall.replace(tzinfo=None):
        return at
    # A gap: the two folds bracket the transition; find its exact second by bisection.
    low, high = sorted((int(at), int(wall.replace(fold=1).timestamp())))
    after_offset = _offset(high, tz)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(middle, tz) == after_offset:
            high = middle
        else:
            low = middle
    return float(high)


def _offset(posix: int, tz: ZoneInfo) -> timedelta | None:
    return datetime.fromtimestamp(posix, tz).utcoffset()
