"""Durations, working days, quiet hours and idle working time, judged in the team's time zone."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.texts import format_duration
from bot.timeutil import (
    DAY_NAMES,
    DEFAULT_WORKING_DAYS,
    QuietHours,
    is_working_day,
    may_nudge_now,
    parse_duration,
    parse_quiet_hours,
    parse_timezone,
    parse_working_days,
    working_days_between,
    working_time_between,
)

BERLIN = ZoneInfo("Europe/Berlin")
TOKYO = ZoneInfo("Asia/Tokyo")
MON_FRI = DEFAULT_WORKING_DAYS
EVERY_DAY = frozenset(range(7))
H = timedelta(hours=1)


def berlin(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("45m", timedelta(minutes=45)),
        ("12h", timedelta(hours=12)),
        ("3d", timedelta(days=3)),
        ("1w", timedelta(weeks=1)),
        ("1.5h", timedelta(minutes=90)),
        ("  2D ", timedelta(days=2)),
        ("10M", timedelta(minutes=10)),
    ],
)
def test_parse_duration_accepts_a_number_and_a_unit(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["3 days", "", "   ", "d", "3", "3x", "1h30m", "1,5h", ".5h", "h3"]
)
def test_parse_duration_rejects_other_text_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration like 30s, 45m, 12h, 3d or 1w"):
        parse_duration(text)


def test_parse_duration_names_the_bad_value() -> None:
    with pytest.raises(ValueError) as error:
        parse_duration("3 days")
    assert str(error.value) == "'3 days' is not a duration like 30s, 45m, 12h, 3d or 1w"


@pytest.mark.parametrize("text", ["0d", "0s", "0.0h", "-3d", "-1.5h"])
def test_parse_duration_rejects_zero_and_negative(text: str) -> None:
    with pytest.raises(ValueError, match="must be more than zero"):
        parse_duration(text)


def test_parse_duration_rejects_absurdly_long_values_as_value_error() -> None:
    with pytest.raises(ValueError, match="longer than a year"):
        parse_duration("99999999999w")


@pytest.mark.parametrize("text", ["53w", "366d", "500000w", "8785h"])
def test_parse_duration_is_capped_at_a_year(text: str) -> None:
    # 500000w still fits a timedelta, but now + it does not fit a datetime (OverflowError).
    with pytest.raises(ValueError) as error:
        parse_duration(text)
    assert str(error.value) == f"{text!r} is longer than a year (365d), the longest I accept"


@pytest.mark.parametrize(("text", "days"), [("52w", 364), ("365d", 365), ("8760h", 365)])
def test_parse_duration_accepts_up_to_a_year(text: str, days: int) -> None:
    assert parse_duration(text) == timedelta(days=days)


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (timedelta(seconds=45), "45 s"),
        (timedelta(0), "0 s"),
        (timedelta(minutes=12, seconds=59), "12 min"),
        (timedelta(hours=5, minutes=59), "5 h"),
        (timedelta(days=1, hours=23), "1 day"),
        (timedelta(days=3), "3 days"),
        (timedelta(days=6, hours=23), "6 days"),
        (timedelta(weeks=1, days=6), "1 week"),
        (timedelta(weeks=2), "2 weeks"),
    ],
)
def test_format_duration_uses_the_largest_unit_rounded_down(
    delta: timedelta, expected: str
) -> None:
    assert format_duration(delta) == expected


# --- working days, quiet hours, time zones ---------------------------------------------------


def test_parse_working_days_maps_names_to_weekday_numbers() -> None:
    assert parse_working_days(["mon", "tue"]) == frozenset({0, 1})
    assert parse_working_days(["Sun", " SAT "]) == frozenset({5, 6})
    assert parse_working_days(DAY_NAMES[:5]) == DEFAULT_WORKING_DAYS == frozenset(range(5))


def test_parse_working_days_names_the_bad_item_and_the_valid_ones() -> None:
    with pytest.raises(ValueError) as error:
        parse_working_days(["mon", "monday"])
    assert "'monday'" in str(error.value)
    assert "mon, tue, wed, thu, fri, sat, sun" in str(error.value)


def test_parse_working_days_rejects_an_empty_list() -> None:
    with pytest.raises(ValueError, match="at least one"):
        parse_working_days([])


def test_parse_working_days_reads_a_bare_string_as_one_name() -> None:
    assert parse_working_days("fri") == frozenset({4})


@pytest.mark.parametrize(
    ("local", "quiet"),
    [
        (time(19, 59), False),
        (time(20, 0), True),  # start is inclusive
        (time(23, 59), True),
        (time(0, 0), True),
        (time(7, 59, 59), True),
        (time(8, 0), False),  # end is exclusive
        (time(12, 0), False),
    ],
)
def test_quiet_hours_wrap_past_midnight(local: time, quiet: bool) -> None:
    assert QuietHours(time(20), time(8)).contains(local) is quiet


@pytest.mark.parametrize(
    ("local", "quiet"),
    [(time(12, 59), False), (time(13), True), (time(13, 59), True), (time(14), False)],
)
def test_quiet_hours_within_one_day(local: time, quiet: bool) -> None:
    assert QuietHours(time(13), time(14)).contains(local) is quiet


def test_quiet_hours_with_equal_start_and_end_are_never_quiet() -> None:
    hours = QuietHours(time(9), time(9))
    assert not any(hours.contains(time(h, m)) for h in range(24) for m in (0, 30))


def test_parse_quiet_hours() -> None:
    assert parse_quiet_hours("20:00-08:00") == QuietHours(time(20), time(8))
    assert parse_quiet_hours(" 7:30 - 09:15 ") == QuietHours(time(7, 30), time(9, 15))
    assert parse_quiet_hours(None) is None


@pytest.mark.parametrize("text", ["22-7", "", "20:00", "20:00-", "8pm-8am", "20.00-08.00", "x"])
def test_parse_quiet_hours_rejects_other_shapes(text: str) -> None:
    with pytest.raises(ValueError, match="is not a quiet-hours range like 20:00-08:00"):
        parse_quiet_hours(text)


@pytest.mark.parametrize("text", ["24:00-08:00", "20:00-08:60", "99:00-01:00"])
def test_parse_quiet_hours_rejects_times_out_of_range(text: str) -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_quiet_hours(text)


def test_parse_timezone_loads_iana_names() -> None:
    assert parse_timezone("Europe/Berlin") == BERLIN
    assert parse_timezone("UTC").utcoffset(datetime(2026, 1, 1)) == timedelta(0)


@pytest.mark.parametrize(
    "name", ["Mars/Base", "", "Europe", "europe/berlin", "../etc/passwd", "/etc/localtime",
             "Europe/../Europe/Berlin", " Europe/Berlin", "Europe/Berlin\x00"],
)  # fmt: skip
def test_parse_timezone_rejects_unknown_and_malformed_names(name: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_timezone(name)
    assert str(error.value) == f"{name!r} is not a time zone like Europe/Berlin"


# --- working time ----------------------------------------------------------------------------


def test_friday_evening_to_monday_morning_counts_only_friday_and_monday() -> None:
    friday, monday = berlin(2026, 1, 9, 17), berlin(2026, 1, 12, 9)
    assert (friday.strftime("%a"), monday.strftime("%a")) == ("Fri", "Mon")
    assert working_time_between(friday, monday, BERLIN, MON_FRI) == 7 * H + 9 * H


def test_a_whole_weekend_counts_nothing() -> None:
    assert working_time_between(berlin(2026, 1, 10), berlin(2026, 1, 12), BERLIN, MON_FRI) == (
        timedelta(0)
    )


def test_spring_forward_sunday_is_23_hours_long() -> None:
    sunday = date(2026, 3, 29)
    assert sunday.weekday() == 6
    only_sunday = frozenset({6})
    start, end = berlin(2026, 3, 28), berlin(2026, 3, 31)
    assert working_time_between(start, end, BERLIN, only_sunday) == 23 * H
    assert working_time_between(start, end, BERLIN, EVERY_DAY) == 71 * H
    # 01:00 to 04:00 on the wall clock is two real hours: 02:00-03:00 does not exist.
    one_am, four_am = berlin(2026, 3, 29, 1), berlin(2026, 3, 29, 4)
    assert working_time_between(one_am, four_am, BERLIN, only_sunday) == 2 * H


def test_fall_back_sunday_is_25_hours_long() -> None:
    assert date(2026, 10, 25).weekday() == 6
    start, end = berlin(2026, 10, 24), berlin(2026, 10, 27)
    assert working_time_between(start, end, BERLIN, frozenset({6})) == 25 * H
    assert working_time_between(start, end, BERLIN, EVERY_DAY) == 73 * H
    assert working_time_between(start, end, BERLIN, MON_FRI) == 24 * H


def test_same_tzinfo_on_both_ends_still_measures_elapsed_time() -> None:
    # Python subtracts same-tzinfo datetimes by wall clock; that would say 3 h here.
    one_am, four_am = berlin(2026, 10, 25, 1), berlin(2026, 10, 25, 4)
    assert working_time_between(one_am, four_am, BERLIN, EVERY_DAY) == 4 * H


def test_utc_instants_are_judged_by_the_day_in_the_team_zone() -> None:
    # Friday 20:00 UTC to Saturday 04:00 UTC: in Berlin that is Friday 21:00 to Saturday 05:00,
    # in Tokyo it is already Saturday 05:00 to 13:00.
    start, end = utc(2026, 1, 9, 20), utc(2026, 1, 10, 4)
    assert working_time_between(start, end, BERLIN, MON_FRI) == 3 * H
    assert working_time_between(start, end, TOKYO, MON_FRI) == timedelta(0)
    # Sunday 20:00 UTC to Monday 04:00 UTC: Berlin sees 5 h of Monday, Tokyo all 8 h.
    start, end = utc(2026, 1, 11, 20), utc(2026, 1, 12, 4)
    assert working_time_between(start, end, BERLIN, MON_FRI) == 5 * H
    assert working_time_between(start, end, TOKYO, MON_FRI) == 8 * H


def test_end_at_or_before_start_is_no_time() -> None:
    at = berlin(2026, 1, 7, 12)
    assert working_time_between(at, at, BERLIN, MON_FRI) == timedelta(0)
    assert working_time_between(at, at - H, BERLIN, MON_FRI) == timedelta(0)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        working_time_between(datetime(2026, 1, 1), utc(2026, 1, 2), BERLIN, MON_FRI)


def test_a_whole_year_counts_every_weekday_in_full() -> None:
    start, end = berlin(2027, 1, 1), berlin(2028, 1, 1)
    days = [date(2027, 1, 1) + timedelta(days=i) for i in range(365)]
    weekdays = sum(1 for d in days if d.weekday() < 5)
    # Both 2027 DST changes fall on Sundays, so every weekday is exactly 24 h long.
    assert date(2027, 3, 28).weekday() == date(2027, 10, 31).weekday() == 6
    assert weekdays == 261
    assert working_time_between(start, end, BERLIN, MON_FRI) == 261 * 24 * H
    assert working_days_between(start, end, BERLIN, MON_FRI) == 261


def test_working_days_between_counts_whole_days_of_working_time() -> None:
    friday_noon = berlin(2026, 1, 9, 12)  # 12 h of Friday, all of Monday, then Tuesday
    assert working_days_between(friday_noon, berlin(2026, 1, 13, 11, 59), BERLIN, MON_FRI) == 1
    assert working_days_between(friday_noon, berlin(2026, 1, 13, 12), BERLIN, MON_FRI) == 2
    assert working_days_between(friday_noon, berlin(2026, 1, 14, 12), BERLIN, MON_FRI) == 3


def test_is_working_day_uses_the_local_calendar_day() -> None:
    saturday_morning_tokyo = utc(2026, 1, 9, 22, 30)  # Friday 23:30 in Berlin
    assert is_working_day(saturday_morning_tokyo, BERLIN, MON_FRI)
    assert not is_working_day(saturday_morning_tokyo, TOKYO, MON_FRI)


@pytest.mark.parametrize(
    ("now", "allowed"),
    [
        (berlin(2026, 1, 7, 12), True),  # Wednesday noon
        (berlin(2026, 1, 7, 20), False),  # quiet hours start
        (berlin(2026, 1, 7, 7, 59), False),
        (berlin(2026, 1, 7, 8), True),  # quiet hours end
        (berlin(2026, 1, 10, 12), False),  # Saturday
        (utc(2026, 1, 7, 18, 30), True),  # 19:30 in Berlin
        (utc(2026, 1, 7, 19, 30), False),  # 20:30 in Berlin
    ],
)
def test_may_nudge_now(now: datetime, allowed: bool) -> None:
    quiet = QuietHours(time(20), time(8))
    assert may_nudge_now(now, BERLIN, MON_FRI, quiet) is allowed


def test_may_nudge_now_without_quiet_hours_only_checks_the_day() -> None:
    assert may_nudge_now(berlin(2026, 1, 7, 3), BERLIN, MON_FRI, None)
    assert not may_nudge_now(berlin(2026, 1, 11, 12), BERLIN, MON_FRI, None)


# --- properties ------------------------------------------------------------------------------

ZONES = [
    ZoneInfo(name)
    for name in (
        "UTC",
        "Europe/Berlin",
        "Asia/Tokyo",
        "America/New_York",
        "Asia/Kolkata",
        "Australia/Lord_Howe",  # 30-minute DST shift
        "America/Santiago",  # DST changes at midnight
        "Pacific/Apia",  # skipped 2011-12-30 entirely
    )
]
instants = st.datetimes(
    min_value=datetime(2009, 1, 1), max_value=datetime(2031, 1, 1), timezones=st.just(UTC)
)
zones = st.sampled_from(ZONES)
day_sets = st.frozensets(st.integers(0, 6))


@given(st.lists(instants, min_size=3, max_size=3).map(sorted), zones, day_sets)
def test_working_time_adds_up_over_consecutive_spans(
    points: list[datetime], tz: ZoneInfo, days: frozenset[int]
) -> None:
    a, b, c = points
    assert working_time_between(a, b, tz, days) + working_time_between(b, c, tz, days) == (
        working_time_between(a, c, tz, days)
    )


@given(instants, instants, zones, day_sets)
def test_working_time_is_between_nothing_and_the_whole_span(
    start: datetime, end: datetime, tz: ZoneInfo, days: frozenset[int]
) -> None:
    result = working_time_between(start, end, tz, days)
    assert timedelta(0) <= result <= max(end - start, timedelta(0))


@given(instants, instants, zones)
def test_every_day_working_counts_the_whole_span(
    start: datetime, end: datetime, tz: ZoneInfo
) -> None:
    assert working_time_between(start, end, tz, EVERY_DAY) == max(end - start, timedelta(0))
    assert working_time_between(start, end, tz, frozenset()) == timedelta(0)


@given(
    st.integers(0, 24 * 365 * 3),
    st.integers(0, 24 * 60),
    st.sampled_from([BERLIN, TOKYO, ZoneInfo("America/New_York")]),
    day_sets,
)
def test_working_time_matches_an_hour_by_hour_count(
    offset: int, hours: int, tz: ZoneInfo, days: frozenset[int]
) -> None:
    # In whole-hour zones every UTC hour lies inside one local day, so counting hours is exact.
    start = utc(2025, 1, 1) + offset * H
    expected = sum(
        (H for i in range(hours) if (start + i * H).astimezone(tz).weekday() in days),
        timedelta(0),
    )
    assert working_time_between(start, start + hours * H, tz, days) == expected


def working_time_by_walking(
    start: datetime, end: datetime, tz: ZoneInfo, days: frozenset[int]
) -> timedelta:
    """The definition, one local day at a time: each working day's overlap with [start, end),
    a day running from its midnight to the next (what the year sums must add up to)."""
    total = timedelta(0)
    day = start.astimezone(tz).date() - timedelta(days=1)
    while day <= end.astimezone(tz).date() + timedelta(days=1):
        begins = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
        ends = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
        if day.weekday() in days:
            total += max(timedelta(0), min(end, ends) - max(start, begins))
        day += timedelta(days=1)
    return total


@given(instants, st.integers(0, 60 * 24 * 800), zones, day_sets)
def test_working_time_matches_a_walk_of_the_days(
    start: datetime, minutes: int, tz: ZoneInfo, days: frozenset[int]
) -> None:
    end = start + timedelta(minutes=minutes)
    assert working_time_between(start, end, tz, days) == working_time_by_walking(
        start, end, tz, days
    )


def test_working_time_across_years_and_a_skipped_day() -> None:
    apia = ZoneInfo("Pacific/Apia")  # 2011-12-30 never happened there
    start, end = utc(2010, 6, 1, 13, 7), utc(2013, 2, 3, 5, 55)
    for tz in (BERLIN, apia, ZoneInfo("America/Santiago")):
        for days in (MON_FRI, frozenset({4}), frozenset({5, 6})):
            assert working_time_between(start, end, tz, days) == working_time_by_walking(
                start, end, tz, days
            )
