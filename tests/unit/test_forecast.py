"""The pace forecast with a frozen clock: working days in the newcomer's zone, weekends,
daylight-saving changes, skipped steps, and newcomers ahead, on pace and behind.

2 March 2026 is a Monday. Berlin moves its clocks on Sunday 29 March (a 23-hour day) and on
Sunday 25 October (a 25-hour day); a team that works Sunday to Thursday has those in its week.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.forecast import HORIZON, Forecast, estimate_days, forecast, landing_day
from bot.progress import Progress, State
from bot.roadmap import Roadmap, parse_roadmap
from bot.timeutil import DEFAULT_WORKING_DAYS, parse_working_days, working_time_between
from tests.unit.common import BERLIN

TOKYO = ZoneInfo("Asia/Tokyo")
MON_FRI = DEFAULT_WORKING_DAYS
SUN_THU = parse_working_days(["sun", "mon", "tue", "wed", "thu"])
DAY = timedelta(days=1)


def berlin(month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=BERLIN)


@pytest.fixture(scope="module")
def paced() -> Roadmap:
    """Five steps, 8.5 working days estimated: 1d, 2d, 4h, 1w and one without an estimate."""
    estimates = {"one": "1d", "two": "2d", "three": "4h", "four": "1w", "five": ""}
    steps = [
        {"id": sid, "title": sid.title(), **({"estimate": est} if est else {})}
        for sid, est in estimates.items()
    ]
    data = {"title": "Paced", "sections": [{"id": "all", "title": "All", "steps": steps}]}
    return parse_roadmap(data, Path("paced.yaml"))


def newcomer(enrolled: datetime | None, **states: State) -> Progress:
    return Progress("@n:example.org", enrolled_at=enrolled, states=states)


def outlook(
    roadmap: Roadmap,
    progress: Progress,
    now: datetime,
    tz: ZoneInfo = BERLIN,
    working_days: frozenset[int] = MON_FRI,
) -> Forecast:
    found = forecast(roadmap, progress, now, tz, working_days)
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("estimate", "days"),
    [("4h", 0.5), ("2h", 0.25), ("1d", 1), ("1.5d", 1.5), ("2d", 2), ("1w", 5), ("", 0)],
)
def test_an_estimate_in_working_days(estimate: str, days: float) -> None:
    assert estimate_days(estimate) == days


# --- no forecast at all ------------------------------------------------------------------


def test_no_forecast_before_enrolment_or_after_the_finish(paced: Roadmap) -> None:
    now = berlin(3, 9, 12)
    assert forecast(paced, newcomer(None), now, BERLIN, MON_FRI) is None
    everything = {s.id: State.DONE for s in paced}
    assert forecast(paced, newcomer(berlin(3, 2, 9), **everything), now, BERLIN, MON_FRI) is None
    skipped = {s.id: State.SKIPPED for s in paced}
    assert forecast(paced, newcomer(berlin(3, 2, 9), **skipped), now, BERLIN, MON_FRI) is None


# --- no pace yet ---------------------------------------------------------------------------


def test_nothing_done_yet_has_no_pace_but_an_expected_finish(paced: Roadmap) -> None:
    # Monday 09:00 to Thursday 09:00: three working days, nothing to show for them.
    found = outlook(paced, newcomer(berlin(3, 2, 9), one=State.LEARNING), berlin(3, 5, 9))
    assert (found.pace, found.finish, found.too_far) == (None, None, False)
    assert found.elapsed == 3 * DAY
    assert found.remaining == 8.5 * DAY
    # Monday 15 h, Tuesday to Friday, Monday to Wednesday: 7.625 days; Thursday completes 8.5.
    assert found.expected == date(2026, 3, 12)
    assert (found.behind, found.behind_days) == (3 * DAY, 3)


def test_only_skipped_and_unestimated_steps_finished_give_no_pace(paced: Roadmap) -> None:
    progress = newcomer(berlin(3, 2, 9), one=State.SKIPPED, two=State.SKIPPED, five=State.DONE)
    found = outlook(paced, progress, berlin(3, 5, 9))
    assert found.pace is None and found.finish is None
    assert found.done == timedelta(0)
    assert found.remaining == 5.5 * DAY  # 4h and 1w; the skipped steps are no longer work left
    assert found.expected == date(2026, 3, 9)  # 5.5 working days from Monday 09:00


def test_work_done_in_no_working_time_gives_no_pace(paced: Roadmap) -> None:
    # Enrolled on Saturday, a step done by Sunday: no working day has gone by to measure.
    found = outlook(paced, newcomer(berlin(3, 7, 10), one=State.DONE), berlin(3, 8, 18))
    assert found.elapsed == timedelta(0) and found.pace is None
    assert found.behind_days == -1  # a day's estimate done in no working time: ahead
    assert found.expected == date(2026, 3, 19)  # 8.5 working days from Monday 9 March


# --- on pace, behind, ahead ------------------------------------------------------------------


def test_on_pace_the_forecast_is_the_expected_finish(paced: Roadmap) -> None:
    # Monday 23 March 09:00 to Thursday 26 March 09:00: three working days for 1d + 2d.
    progress = newcomer(berlin(3, 23, 9), one=State.DONE, two=State.DONE)
    found = outlook(paced, progress, berlin(3, 26, 9))
    assert found.pace == 1.0
    assert (found.behind, found.behind_days) == (timedelta(0), 0)
    # 5.5 days left from Thursday 09:00, over the weekend of the clock change: Thursday 2 April.
    assert found.finish == found.expected == date(2026, 4, 2)


def test_behind_pace_the_forecast_stretches_and_the_gap_shows(paced: Roadmap) -> None:
    # A week (five working days) for one day's estimate: five times slower than estimated.
    progress = newcomer(berlin(3, 2, 9), one=State.DONE, two=State.LEARNING)
    found = outlook(paced, progress, berlin(3, 9, 9))
    assert found.pace == 5.0
    assert (found.elapsed, found.done, found.remaining) == (5 * DAY, DAY, 7.5 * DAY)
    assert (found.behind, found.behind_days) == (4 * DAY, 4)
    # 37.5 working days from Monday 9 March 09:00: that Monday's 15 hours, the rest of the week,
    # six more weeks, Monday and Tuesday make 36.625; Wednesday 29 April completes it.
    assert found.finish == date(2026, 4, 29)
    assert found.expected == date(2026, 3, 12)


def test_ahead_of_pace(paced: Roadmap) -> None:
    # 3.5 days' estimate done in two working days.
    progress = newcomer(berlin(3, 2, 9), one=State.DONE, two=State.DONE, three=State.DONE)
    found = outlook(paced, progress, berlin(3, 4, 9))
    assert found.pace == pytest.approx(2 / 3.5)
    assert found.behind == -1.5 * DAY
    assert found.behind_days == -1  # whole days, rounded towards zero
    # The 1w left takes 2.86 working days at this pace: Wednesday 15 h, Thursday, Friday, and
    # Monday completes it.
    assert found.finish == date(2026, 3, 9)
    assert found.expected == date(2026, 3, 12)


def test_skipped_steps_are_neither_done_nor_left(paced: Roadmap) -> None:
    progress = newcomer(berlin(3, 2, 9), one=State.DONE, four=State.SKIPPED)
    found = outlook(paced, progress, berlin(3, 9, 9))
    assert (found.done, found.remaining) == (DAY, 2.5 * DAY)
    assert found.behind_days == 4
    # 12.5 working days from Monday 9 March 09:00: 0.625 + 4 + 5 + Monday, Tuesday and
    # Wednesday 25 March make 12.625.
    assert found.finish == date(2026, 3, 25)
    assert found.expected == date(2026, 3, 5)  # 3.5 days from Monday 2 March 09:00


def test_a_pace_too_slow_to_date_is_too_far(paced: Roadmap) -> None:
    # Two working years for a 4h step: the 8 days left would take 32 years.
    progress = newcomer(berlin(3, 2, 9), three=State.DONE)
    found = outlook(paced, progress, berlin(3, 2, 9) + timedelta(weeks=104))
    assert found.pace is not None and found.pace > HORIZON / found.remaining
    assert found.finish is None and found.too_far
    assert found.expected == date(2026, 3, 12)


# --- weekends, zones and other working weeks -----------------------------------------------


def test_a_forecast_lands_on_a_working_day(paced: Roadmap) -> None:
    # Everything estimated is done; only the step without an estimate is left.
    done = {s.id: State.DONE for s in paced if s.estimate}
    found = outlook(paced, newcomer(berlin(3, 2, 9), **done), berlin(3, 7, 11))  # a Saturday
    assert found.remaining == timedelta(0)
    assert found.finish == date(2026, 3, 9)  # the Monday after
    assert landing_day(berlin(3, 7, 11), timedelta(0), BERLIN, MON_FRI) == date(2026, 3, 9)
    assert landing_day(berlin(3, 6, 11), timedelta(0), BERLIN, MON_FRI) == date(2026, 3, 6)
    # Work that ends exactly at midnight is done on the day it filled, not the next.
    assert landing_day(berlin(3, 6, 11), timedelta(hours=13), BERLIN, MON_FRI) == date(2026, 3, 6)


def test_days_are_the_newcomers_own(paced: Roadmap) -> None:
    # Friday 18:00 in Berlin is Saturday 02:00 in Tokyo: there, the week is over.
    progress = newcomer(berlin(3, 2, 9), one=State.DONE)
    in_berlin = outlook(paced, progress, berlin(3, 6, 18), BERLIN)
    in_tokyo = outlook(paced, progress, berlin(3, 6, 18), TOKYO)
    assert (in_berlin.today, in_tokyo.today) == (date(2026, 3, 6), date(2026, 3, 7))
    # Berlin: Monday 09:00 to Friday 18:00. Tokyo: Monday 17:00 to Saturday 00:00.
    assert in_berlin.elapsed == 4 * DAY + timedelta(hours=9)
    assert in_tokyo.elapsed == 4 * DAY + timedelta(hours=7)


def test_a_sunday_to_thursday_week_across_the_spring_clock_change(paced: Roadmap) -> None:
    # Sunday 29 March has 23 hours in Berlin, and working time is time as it passes.
    assert landing_day(berlin(3, 29), timedelta(hours=23), BERLIN, SUN_THU) == date(2026, 3, 29)
    assert landing_day(berlin(3, 29), timedelta(hours=24), BERLIN, SUN_THU) == date(2026, 3, 30)
    # Friday and Saturday are days off: work left on Thursday night resumes on Sunday.
    assert landing_day(berlin(3, 26, 12), DAY, BERLIN, SUN_THU) == date(2026, 3, 29)
    # Enrolled Thursday 26 March 00:00, 1d + 2d done by Tuesday 31 March 00:00: Thursday,
    # the short Sunday and Monday make 71 hours, one short of the three days estimated.
    progress = newcomer(berlin(3, 26), one=State.DONE, two=State.DONE)
    found = outlook(paced, progress, berlin(3, 31), working_days=SUN_THU)
    assert found.elapsed == timedelta(hours=71)
    assert (found.behind, found.behind_days) == (-timedelta(hours=1), 0)
    assert found.pace == pytest.approx(71 / 72)
    # 5.5 days left from Tuesday 31 March at a pace of 71/72: Tuesday, Wednesday, Thursday,
    # Sunday, Monday, and Tuesday 7 April for the last 0.42 day.
    assert found.finish == date(2026, 4, 7)
    # 8.5 days of estimate from Thursday 26 March, with the 23-hour Sunday among them.
    assert found.expected == date(2026, 4, 7)


def test_a_sunday_to_thursday_week_across_the_autumn_clock_change(paced: Roadmap) -> None:
    # Sunday 25 October has 25 hours in Berlin.
    sunday = berlin(10, 25)
    assert landing_day(sunday, timedelta(hours=25), BERLIN, SUN_THU) == date(2026, 10, 25)
    later = timedelta(hours=25, minutes=1)
    assert landing_day(sunday, later, BERLIN, SUN_THU) == date(2026, 10, 26)
    # Mondays to Fridays never see the change: Friday 12:00 plus a working day is Monday 12:00.
    assert landing_day(berlin(10, 23, 12), DAY, BERLIN, MON_FRI) == date(2026, 10, 26)
    progress = newcomer(berlin(10, 19, 8), one=State.DONE, two=State.DONE)
    found = outlook(paced, progress, berlin(10, 26, 8))
    assert found.elapsed == 5 * DAY  # Monday 08:00 to Monday 08:00, the long Sunday off
    assert found.behind_days == 2
    assert found.finish is not None and found.finish.weekday() in MON_FRI


# --- the walk against the definition --------------------------------------------------------

ZONES = [BERLIN, TOKYO, ZoneInfo("America/Santiago"), ZoneInfo("Pacific/Apia"), ZoneInfo("UTC")]
WEEKS = [MON_FRI, SUN_THU, frozenset({2}), frozenset(range(7))]


def landing_day_by_definition(
    start: datetime, work: timedelta, tz: ZoneInfo, working_days: frozenset[int]
) -> date:
    """The first working day by whose end `work` of working time from `start` is done, each
    day's share taken from working_time_between (what landing_day must agree with)."""
    day, cursor = start.astimezone(tz).date(), start
    while True:
        midnight = datetime.combine(day + DAY, datetime.min.time(), tzinfo=tz).astimezone(UTC)
        available = working_time_between(cursor, midnight, tz, working_days)
        if day.weekday() in working_days and available >= work:
            return day
        work -= available
        cursor, day = max(cursor, midnight), day + DAY


@settings(max_examples=300, deadline=None)
@given(
    start=st.datetimes(datetime(2025, 1, 1), datetime(2028, 12, 31), timezones=st.just(UTC)),
    minutes=st.integers(0, 60 * 24 * 200),
    tz=st.sampled_from(ZONES),
    working_days=st.sampled_from(WEEKS),
)
def test_landing_day_walks_the_days_as_working_time_counts_them(
    start: datetime, minutes: int, tz: ZoneInfo, working_days: frozenset[int]
) -> None:
    work = timedelta(minutes=minutes)
    expected = landing_day_by_definition(start, work, tz, working_days)
    assert landing_day(start, work, tz, working_days) == expected


@pytest.mark.parametrize(
    ("tz", "change"),
    [  # the instants clocks change, in UTC: Santiago changes at local midnight
        (ZoneInfo("America/Santiago"), datetime(2026, 4, 5, 3, 0, tzinfo=UTC)),
        (ZoneInfo("America/Santiago"), datetime(2026, 9, 6, 4, 0, tzinfo=UTC)),
        (BERLIN, datetime(2026, 3, 29, 1, 0, tzinfo=UTC)),
        (BERLIN, datetime(2026, 10, 25, 1, 0, tzinfo=UTC)),
    ],
)
def test_landing_day_around_clock_changes(tz: ZoneInfo, change: datetime) -> None:
    for quarter in range(-12, 13):
        start = change + timedelta(minutes=15 * quarter)
        for hours in (0, 1, 22, 23, 24, 25, 26, 49):
            for week in WEEKS:
                work = timedelta(hours=hours)
                expected = landing_day_by_definition(start, work, tz, week)
                assert landing_day(start, work, tz, week) == expected, (start, hours, week)


@settings(max_examples=40, deadline=None)
@given(
    start=st.datetimes(datetime(2025, 1, 1), datetime(2028, 12, 31), timezones=st.just(UTC)),
    days=st.integers(200, HORIZON.days),
    tz=st.sampled_from(ZONES),
    working_days=st.sampled_from(WEEKS),
)
def test_landing_day_years_ahead(
    start: datetime, days: int, tz: ZoneInfo, working_days: frozenset[int]
) -> None:
    # Work that runs through one or more New Years: the search goes from one year's running
    # sums to the next.
    work = timedelta(days=days, minutes=start.minute)
    assert landing_day(start, work, tz, working_days) == landing_day_by_definition(
        start, work, tz, working_days
    )


def test_no_working_days_is_refused_not_searched_for_ever() -> None:
    with pytest.raises(ValueError, match="no working days"):
        landing_day(berlin(3, 2), DAY, BERLIN, frozenset())
