"""Schedule timing: parsing schedule texts, the next run (DST gap and repeat), missed runs."""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cloud.schedule import (
    MAX_MISSED,
    Due,
    ScheduleError,
    When,
    due,
    next_run,
    parse_when,
)

TZ_UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
ZONES = [TZ_UTC, BERLIN, ZoneInfo("America/New_York"), ZoneInfo("Australia/Lord_Howe")]
MINUTE, HOUR, DAY = 60, 3600, 86400


def at(tz: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0,
       fold: int = 0) -> float:
    """POSIX seconds of a local wall-clock time (fold=1: the second of a repeated time)."""
    return datetime(year, month, day, hour, minute, tzinfo=tz, fold=fold).timestamp()


def local(t: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(t, tz).isoformat()


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(("text", "normalized"), [
    ("daily 07:30", "daily 07:30"),
    ("07:30", "daily 07:30"),
    ("7:05", "daily 07:05"),
    ("DAILY 23:59", "daily 23:59"),
    ("  weekdays \t 18:00 ", "weekdays 18:00"),
    ("weekends 00:00", "weekends 00:00"),
    ("FRI,mon,Wed,mon 06:15", "mon,wed,fri 06:15"),
    ("cron  0  7 * *   1-5", "cron 0 7 * * 1-5"),
    ("CRON */15 * * * *", "cron */15 * * * *"),
    ("cron 0 12 1 JAN-mar Mon", "cron 0 12 1 JAN-mar Mon"),
])
def test_accepted_forms_normalize(text: str, normalized: str) -> None:
    assert parse_when(text).text == normalized


def test_simple_forms_sets() -> None:
    daily = parse_when("daily 07:30")
    assert daily.hours == {7} and daily.minutes == {30}
    assert daily.weekdays == set(range(7)) and daily.days == set(range(1, 32))
    assert daily.months == set(range(1, 13))
    assert parse_when("weekdays 07:30").weekdays == {0, 1, 2, 3, 4}
    assert parse_when("weekends 07:30").weekdays == {5, 6}
    assert parse_when("mon,wed,fri 07:30").weekdays == {0, 2, 4}
    assert not parse_when("mon 07:30").days_restricted


def test_cron_sets() -> None:
    assert parse_when("cron */15 * * * *").minutes == {0, 15, 30, 45}
    assert parse_when("cron 1-10/3,59 * * * *").minutes == {1, 4, 7, 10, 59}
    assert parse_when("cron 0 8-18/5 * * *").hours == {8, 13, 18}
    workdays = parse_when("cron 0 7 * * 1-5")
    assert workdays.weekdays == {0, 1, 2, 3, 4}
    assert (workdays.days_restricted, workdays.weekdays_restricted) == (False, True)
    # 0 and 7 are both Sunday; names in any case.
    assert parse_when("cron 0 0 * * 0,7").weekdays == {6}
    assert parse_when("cron 0 0 * * sun").weekdays == {6}
    assert parse_when("cron 0 0 * * Sat-7").weekdays == {5, 6}
    assert parse_when("cron 0 0 1 jan-MAR *").months == {1, 2, 3}
    either = parse_when("cron 0 12 1 * mon")
    assert (either.days_restricted, either.weekdays_restricted) == (True, True)
    # Classic cron: a field starting with "*" counts as unrestricted, even with a step.
    stepped = parse_when("cron 0 12 */2 * mon")
    assert (stepped.days_restricted, stepped.weekdays_restricted) == (False, True)
    assert stepped.days == set(range(1, 32, 2))


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty schedule"),
    ("   ", "empty schedule"),
    ("daily 25:00", '"25:00": hour must be 0 to 23'),
    ("24:00", "hour must be 0 to 23"),
    ("daily 07:60", '"07:60": minute must be 0 to 59'),
    ("daily 7.30", "time must be HH:MM"),
    ("daily 07:3", "time must be HH:MM"),
    ("mon,fox 07:00", 'unknown day "fox"'),
    ("mon,,wed 07:00", 'unknown day ""'),
    ("monday 07:00", 'unknown day "monday"'),
    ("daily", '"daily": expected "daily HH:MM"'),
    ("every day at 7", "expected \"daily HH:MM\", \"weekdays HH:MM\""),
    ("cron 0 7 * * 1 5", "cron needs exactly 5 fields (M H DOM MON DOW), got 6"),
    ("cron 0 7 * *", "got 4"),
    ("cron */0 * * * *", 'minute field "*/0": step "0" must be a number 1 to 60'),
    ("cron 0 9-5 * * *", 'hour field "9-5": range 9-5 is reversed'),
    ("cron 0 0 * * mon-sun", "Sunday is 7 at the end of a range"),
    ("cron 60 * * * *", "60 is out of range; minute must be 0 to 59"),
    ("cron 0 24 * * *", "hour must be 0 to 23"),
    ("cron 0 0 0 * *", "day of month must be 1 to 31"),
    ("cron 0 0 * 13 *", "month must be 1 to 12"),
    ("cron 0 0 * * 8", "day of week must be 0 to 7"),
    ("cron 0 0 * foo *", '"foo" is not a month number or a name jan'),
    ("cron x * * * *", '"x" is not a minute number'),
    ("cron 5/2 * * * *", 'a step "/n" needs "*" or a range'),
    ("cron 1,,2 * * * *", "empty value"),
    ("cron -5 * * * *", "empty value"),
    ("cron 0 0 31 2 *", 'never fires: day of month "31" does not occur in month "2"'),
    ("cron 0 0 30,31 feb *", "never fires"),
    ("cron 0 0 31 4,6,9,11 *", "never fires"),
    ("daily " + "x" * 200, "at most 200 allowed"),
    ("cron " + ",".join(["1"] * 40) + " * * * *", "minute field is 79 characters long"),
])
def test_bad_texts_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ScheduleError) as raised:
        parse_when(text)
    assert message in str(raised.value)


def test_schedule_error_is_a_value_error() -> None:
    assert issubclass(ScheduleError, ValueError)


# ---------------------------------------------------------------------------- next_run


def test_daily_utc_is_strictly_after() -> None:
    when = parse_when("daily 07:30")
    assert next_run(when, at(TZ_UTC, 2026, 1, 10, 7, 0), TZ_UTC) == at(TZ_UTC, 2026, 1, 10, 7, 30)
    assert next_run(when, at(TZ_UTC, 2026, 1, 10, 7, 30), TZ_UTC) == at(TZ_UTC, 2026, 1, 11, 7, 30)
    assert next_run(when, at(TZ_UTC, 2026, 1, 10, 7, 29) + 59.5, TZ_UTC) == at(
        TZ_UTC, 2026, 1, 10, 7, 30)
    # Across the end of a year.
    assert next_run(when, at(TZ_UTC, 2026, 12, 31, 8, 0), TZ_UTC) == at(TZ_UTC, 2027, 1, 1, 7, 30)


def test_daily_berlin_follows_local_clock() -> None:
    when = parse_when("daily 07:30")
    winter = next_run(when, at(BERLIN, 2026, 1, 10, 12, 0), BERLIN)
    summer = next_run(when, at(BERLIN, 2026, 7, 10, 12, 0), BERLIN)
    assert winter == datetime(2026, 1, 11, 6, 30, tzinfo=UTC).timestamp()
    assert summer == datetime(2026, 7, 11, 5, 30, tzinfo=UTC).timestamp()


def test_weekdays_and_weekends_skip_days() -> None:
    friday = at(BERLIN, 2026, 1, 9, 8, 0)  # 2026-01-09 is a Friday
    assert next_run(parse_when("weekdays 07:00"), friday, BERLIN) == at(BERLIN, 2026, 1, 12, 7, 0)
    assert next_run(parse_when("weekends 07:00"), friday, BERLIN) == at(BERLIN, 2026, 1, 10, 7, 0)
    assert next_run(parse_when("tue,thu 07:00"), friday, BERLIN) == at(BERLIN, 2026, 1, 13, 7, 0)


def test_cron_every_15_minutes() -> None:
    when = parse_when("cron */15 * * * *")
    assert next_run(when, at(TZ_UTC, 2026, 5, 1, 10, 7) + 30, TZ_UTC) == at(
        TZ_UTC, 2026, 5, 1, 10, 15)
    assert next_run(when, at(TZ_UTC, 2026, 5, 1, 23, 45), TZ_UTC) == at(TZ_UTC, 2026, 5, 2, 0, 0)


def test_cron_workday_mornings() -> None:
    when = parse_when("cron 0 7 * * 1-5")
    friday_7 = at(BERLIN, 2026, 1, 9, 7, 0)
    assert next_run(when, friday_7 - 1, BERLIN) == friday_7
    assert next_run(when, friday_7, BERLIN) == at(BERLIN, 2026, 1, 12, 7, 0)


def test_cron_day_of_month_or_day_of_week() -> None:
    when = parse_when("cron 0 12 1 * mon")
    runs, t = [], at(TZ_UTC, 2026, 1, 1, 12, 0)  # a Thursday, the 1st
    for _ in range(6):
        t = next_run(when, t, TZ_UTC)
        runs.append(datetime.fromtimestamp(t, TZ_UTC).date().isoformat())
    # Every Monday, and the 1st of February although it is a Sunday.
    assert runs == ["2026-01-05", "2026-01-12", "2026-01-19", "2026-01-26", "2026-02-01",
                    "2026-02-02"]


def test_cron_star_step_day_of_month_is_and() -> None:
    when = parse_when("cron 0 12 */2 * mon")  # odd days that are Mondays
    first = next_run(when, at(TZ_UTC, 2026, 1, 1), TZ_UTC)
    assert first == at(TZ_UTC, 2026, 1, 5, 12, 0)
    assert next_run(when, first, TZ_UTC) == at(TZ_UTC, 2026, 1, 19, 12, 0)


def test_month_ends_and_leap_day() -> None:
    assert next_run(parse_when("cron 0 0 29 2 *"), at(TZ_UTC, 2026, 3, 1), TZ_UTC) == at(
        TZ_UTC, 2028, 2, 29)
    # The 31st skips February and April.
    thirty_first = parse_when("cron 0 0 31 * *")
    assert next_run(thirty_first, at(TZ_UTC, 2026, 1, 31), TZ_UTC) == at(TZ_UTC, 2026, 3, 31)
    assert next_run(thirty_first, at(TZ_UTC, 2026, 3, 31), TZ_UTC) == at(TZ_UTC, 2026, 5, 31)
    # 2100 is no leap year: Feb 29 on a Sunday comes 40 years after 2088.
    assert next_run(parse_when("cron 0 0 29 2 */7"), at(TZ_UTC, 2089, 1, 1), TZ_UTC) == at(
        TZ_UTC, 2128, 2, 29)


def test_spring_forward_gap_fires_once_after_the_gap() -> None:
    # Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
    gap_end = datetime(2026, 3, 29, 1, 0, tzinfo=UTC).timestamp()
    daily = parse_when("daily 02:30")
    first = next_run(daily, at(BERLIN, 2026, 3, 28, 12, 0), BERLIN)
    assert first == gap_end and local(first, BERLIN) == "2026-03-29T03:00:00+02:00"
    assert local(next_run(daily, first, BERLIN), BERLIN) == "2026-03-30T02:30:00+02:00"
    # Several times in the gap and the gap's end itself fire once together.
    quarter = parse_when("cron */15 * * * *")
    runs, t = [], at(BERLIN, 2026, 3, 29, 1, 30)
    for _ in range(3):
        t = next_run(quarter, t, BERLIN)
        runs.append(local(t, BERLIN))
    assert runs == ["2026-03-29T01:45:00+01:00", "2026-03-29T03:00:00+02:00",
                    "2026-03-29T03:15:00+02:00"]
    both = parse_when("cron 30 2,3 * * *")
    first = next_run(both, at(BERLIN, 2026, 3, 29, 0, 0), BERLIN)
    assert local(first, BERLIN) == "2026-03-29T03:00:00+02:00"
    assert local(next_run(both, first, BERLIN), BERLIN) == "2026-03-29T03:30:00+02:00"


def test_spring_forward_half_hour_gap_lord_howe() -> None:
    lord_howe = ZoneInfo("Australia/Lord_Howe")  # 2026-10-04: 02:00 jumps to 02:30
    when = parse_when("cron */10 2 * * *")
    runs, t = [], at(lord_howe, 2026, 10, 3, 12, 0)
    for _ in range(3):
        t = next_run(when, t, lord_howe)
        runs.append(local(t, lord_howe))
    assert runs == ["2026-10-04T02:30:00+11:00", "2026-10-04T02:40:00+11:00",
                    "2026-10-04T02:50:00+11:00"]


def test_fall_back_repeat_fires_only_the_first_time() -> None:
    # Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:00-02:59 happen twice.
    daily = parse_when("daily 02:30")
    first = next_run(daily, at(BERLIN, 2026, 10, 24, 12, 0), BERLIN)
    assert first == datetime(2026, 10, 25, 0, 30, tzinfo=UTC).timestamp()
    assert local(next_run(daily, first, BERLIN), BERLIN) == "2026-10-26T02:30:00+01:00"
    # Even from inside the repeated hour, the second 02:30 does not fire.
    second_0210 = at(BERLIN, 2026, 10, 25, 2, 10, fold=1)
    assert local(next_run(daily, second_0210, BERLIN), BERLIN) == "2026-10-26T02:30:00+01:00"
    # A frequent expression pauses while the hour replays.
    quarter = parse_when("cron */15 * * * *")
    last_first_pass = at(BERLIN, 2026, 10, 25, 2, 45)
    assert local(next_run(quarter, last_first_pass, BERLIN), BERLIN) == (
        "2026-10-25T03:00:00+01:00")


def test_impossible_schedules_raise() -> None:
    with pytest.raises(ScheduleError, match="never fires"):
        parse_when("cron 0 0 31 2 *")
    never = When(text="cron 0 0 31 2 *", minutes=frozenset({0}), hours=frozenset({0}),
                 days=frozenset({31}), months=frozenset({2}), weekdays=frozenset(range(7)),
                 days_restricted=True, weekdays_restricted=False)
    with pytest.raises(ScheduleError, match="never fires within 50 years"):
        next_run(never, at(TZ_UTC, 2026, 1, 1), TZ_UTC)


@pytest.mark.parametrize("after", [math.nan, math.inf, -math.inf, 1e18, -1e12])
def test_unusable_times_raise(after: float) -> None:
    with pytest.raises(ScheduleError, match="outside the years"):
        next_run(parse_when("daily 07:00"), after, TZ_UTC)


# ---------------------------------------------------------------------------- property

T_FIRST = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
T_LAST = datetime(2035, 12, 31, tzinfo=UTC).timestamp()
WINDOW_S = 2 * DAY  # the brute-force search's reach


@functools.cache
def transitions(tz: ZoneInfo) -> list[int]:
    """The zone's offset changes in 2020..2035, to the second."""
    def offset(t: int) -> timedelta | None:
        return datetime.fromtimestamp(t, tz).utcoffset()

    found, step = [], 6 * HOUR
    for low in range(int(T_FIRST), int(T_LAST), step):
        high = low + step
        if offset(low) != offset(high):
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if offset(middle) == offset(low) else (low, middle)
            found.append(high)
    return found


def matches(when: When, wall: datetime) -> bool:
    """Whether a local wall-clock minute is one of the schedule's, by the cron rules."""
    in_days, in_weekdays = wall.day in when.days, wall.weekday() in when.weekdays
    day_ok = (in_days or in_weekdays) if when.days_restricted and when.weekdays_restricted \
        else (in_days and in_weekdays)
    return (wall.minute in when.minutes and wall.hour in when.hours
            and wall.month in when.months and day_ok)


def brute_next(when: When, after: float, tz: ZoneInfo) -> float | None:
    """The first firing after `after` within WINDOW_S, minute by minute; None if none."""
    t = math.floor(after / MINUTE) * MINUTE
    previous = datetime.fromtimestamp(t - MINUTE, tz).replace(tzinfo=None)
    while t <= after + WINDOW_S:
        now = datetime.fromtimestamp(t, tz)
        wall = now.replace(tzinfo=None, fold=0)
        if t > after:
            if now.fold == 0 and matches(when, wall):  # fold 1: the repeat, never fires
                return t
            skipped = previous + timedelta(minutes=1)  # wall minutes a jump forward skipped
            while skipped < wall:
                if matches(when, skipped):
                    return t
                skipped += timedelta(minutes=1)
        previous, t = wall, t + MINUTE
    return None


def cron_field(low: int, high: int) -> st.SearchStrategy[str]:
    number = st.integers(low, high)
    span = st.tuples(number, number).map(sorted)
    item = st.one_of(
        number.map(str),
        span.map(lambda ab: f"{ab[0]}-{ab[1]}"),
        st.tuples(span, st.integers(1, high - low + 1)).map(
            lambda s: f"{s[0][0]}-{s[0][1]}/{s[1]}"),
        st.integers(1, high - low + 1).map(lambda n: f"*/{n}"),
    )
    return st.one_of(st.just("*"), st.lists(item, min_size=1, max_size=3).map(",".join))


@st.composite
def schedules(draw: st.DrawFn) -> When:
    if draw(st.booleans()):
        days = draw(st.sampled_from(["daily", "weekdays", "weekends", "mon,thu", "sun"]))
        hour = draw(st.one_of(st.just(2), st.integers(0, 23)))  # 2 o'clock: DST changes
        return parse_when(f"{days} {hour:02d}:{draw(st.integers(0, 59)):02d}")
    hours = st.one_of(st.sampled_from(["*", "2", "1-3"]), cron_field(0, 23))
    fields = [draw(cron_field(0, 59)), draw(hours),
              draw(cron_field(1, 31)), draw(cron_field(1, 12)), draw(cron_field(0, 7))]
    try:
        return parse_when("cron " + " ".join(fields))
    except ScheduleError:  # a day of month that never occurs in the months given
        return parse_when("cron " + " ".join(fields[:2]) + " * * *")


@st.composite
def moments(draw: st.DrawFn) -> tuple[ZoneInfo, float]:
    tz = draw(st.sampled_from(ZONES))
    if tz is TZ_UTC or draw(st.integers(0, 3)) == 0:
        return tz, draw(st.floats(T_FIRST, T_LAST))
    # Mostly shortly before a DST change, where the interesting cases are.
    change = draw(st.sampled_from(transitions(tz)))
    return tz, change + draw(st.floats(-DAY, HOUR))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules(), moments())
def test_next_run_is_the_first_firing(when: When, moment: tuple[ZoneInfo, float]) -> None:
    tz, after = moment
    result = next_run(when, after, tz)
    assert result > after
    fired = datetime.fromtimestamp(result, tz)
    assert fired.second == 0
    if not (fired.fold == 0 and matches(when, fired.replace(tzinfo=None))):
        # Only the end of a spring-forward gap may fire at a time not in the schedule.
        before, after_change = (datetime.fromtimestamp(result - 1, tz).utcoffset(),
                                fired.utcoffset())
        assert before is not None and after_change is not None and before < after_change
    expected = brute_next(when, after, tz)
    if expected is None:
        assert result > after + WINDOW_S
    else:
        assert result == expected
    # Nothing fires in between, however far away the result is (when floats have a
    # moment in between: a fraction of a microsecond before a whole second may have none).
    middle = (after + result) / 2
    if after < middle < result:
        assert next_run(when, middle, tz) == result
    assert next_run(when, result - 0.5, tz) == result


# ---------------------------------------------------------------------------- due


DAILY_7 = parse_when("daily 07:00")
GRACE = 15 * MINUTE


def test_due_nothing_scheduled_in_window() -> None:
    decision = due(DAILY_7, at(BERLIN, 2026, 5, 4, 7, 10), at(BERLIN, 2026, 5, 4, 8, 0), BERLIN,
                   GRACE)
    assert decision == Due(run=False, missed=0, next_at=at(BERLIN, 2026, 5, 5, 7, 0))


def test_due_recent_run_within_grace_runs() -> None:
    # Down overnight, boots at 07:05: the 07:00 run still happens, once.
    last = at(BERLIN, 2026, 5, 3, 7, 0)
    decision = due(DAILY_7, last, at(BERLIN, 2026, 5, 4, 7, 5), BERLIN, GRACE)
    assert decision == Due(run=True, missed=0, next_at=at(BERLIN, 2026, 5, 5, 7, 0))
    # Exactly at the edge of grace still runs; a second later it does not.
    edge = at(BERLIN, 2026, 5, 4, 7, 15)
    assert due(DAILY_7, last, edge, BERLIN, GRACE).run
    assert not due(DAILY_7, last, edge + 1, BERLIN, GRACE).run
    # On time, with no grace at all.
    assert due(DAILY_7, last, at(BERLIN, 2026, 5, 4, 7, 0), BERLIN, 0).run


def test_due_too_old_is_missed() -> None:
    decision = due(DAILY_7, at(BERLIN, 2026, 5, 3, 7, 0), at(BERLIN, 2026, 5, 4, 9, 0), BERLIN,
                   GRACE)
    assert decision == Due(run=False, missed=1, next_at=at(BERLIN, 2026, 5, 5, 7, 0))


def test_due_several_missed_runs_only_the_latest() -> None:
    last = at(BERLIN, 2026, 5, 1, 8, 0)  # runs due on the 2nd, 3rd and 4th
    decision = due(DAILY_7, last, at(BERLIN, 2026, 5, 4, 7, 5), BERLIN, GRACE)
    assert decision == Due(run=True, missed=2, next_at=at(BERLIN, 2026, 5, 5, 7, 0))
    late = due(DAILY_7, last, at(BERLIN, 2026, 5, 4, 12, 0), BERLIN, GRACE)
    assert late == Due(run=False, missed=3, next_at=at(BERLIN, 2026, 5, 5, 7, 0))


def test_due_new_schedule_counts_from_creation() -> None:
    created = at(BERLIN, 2026, 5, 4, 7, 1)  # just after today's 07:00: not run
    assert due(DAILY_7, created, at(BERLIN, 2026, 5, 4, 7, 5), BERLIN, GRACE).run is False


def test_due_missed_count_is_capped() -> None:
    every_minute = parse_when("cron * * * * *")
    now = at(TZ_UTC, 2026, 5, 4, 7, 0) + 10
    decision = due(every_minute, now - 30 * DAY, now, TZ_UTC, GRACE)
    assert decision == Due(run=True, missed=MAX_MISSED, next_at=now + 50)


def test_due_clock_going_back_runs_nothing() -> None:
    last = at(BERLIN, 2026, 5, 4, 7, 30)
    decision = due(DAILY_7, last, last - HOUR, BERLIN, GRACE)
    assert (decision.run, decision.missed) == (False, 0)


def test_due_rejects_negative_grace() -> None:
    with pytest.raises(ScheduleError, match="grace period"):
        due(DAILY_7, 0.0, HOUR, TZ_UTC, -1)


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(["cron */7 * * * *", "cron 0,30 2 * * *", "daily 02:30", "cron * 3 * * *"]),
       st.sampled_from(ZONES), st.floats(T_FIRST, T_LAST), st.floats(0, 6 * HOUR),
       st.floats(0, HOUR))
def test_due_accounts_for_every_scheduled_time(text: str, tz: ZoneInfo, last_at: float,
                                               gap_s: float, grace_s: float) -> None:
    when, now = parse_when(text), last_at + gap_s
    instants, t = [], next_run(when, last_at, tz)
    while t <= now:
        instants.append(t)
        t = next_run(when, t, tz)
    decision = due(when, last_at, now, tz, grace_s)
    assert decision.run == (bool(instants) and now - instants[-1] <= grace_s)
    assert decision.run + decision.missed == len(instants)
    assert decision.next_at == t
