"""Pace forecast: when a newcomer will finish at their pace so far, and how far off the
roadmap's estimates they are. Pure: `now` is a parameter, time zones and working days are given.

Working time is timeutil's: the whole of each working calendar day in the newcomer's zone
counts, nights included, so a working day of estimate is one day of such working time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from bot.progress import Progress, State, is_finished
from bot.roadmap import ESTIMATE, Roadmap
from bot.timeutil import day_work_is_done, working_time_between

WORKING_DAY = timedelta(days=1)  # of working time, as timeutil counts it
HOURS_PER_WORKING_DAY = 8  # what an estimate in hours is a share of: "4h" is half a day
DAYS_PER_WORKING_WEEK = 5  # "1w", whatever the team's working days
# Further off than this much working time is no date but a guess (and a runaway pace's
# timedelta could overflow).
HORIZON = timedelta(days=1000)

_UNIT_DAYS = {"h": 1 / HOURS_PER_WORKING_DAY, "d": 1.0, "w": float(DAYS_PER_WORKING_WEEK)}


@lru_cache(maxsize=1024)  # a roadmap has a few dozen distinct ones; every forecast reads all
def estimate_days(estimate: str) -> float:
    """Working days of a step's estimate ("4h" 0.5, "2d" 2, "1w" 5); 0 for none or an unreadable
    one (the roadmap loader has refused those already)."""
    value = estimate.strip().lower()
    if not ESTIMATE.match(value):
        return 0.0
    return float(value[:-1]) * _UNIT_DAYS[value[-1]]


@dataclass(frozen=True)
class Forecast:
    """Where an unfinished newcomer stands against the estimates. Durations are working time;
    dates are calendar days in the newcomer's zone."""

    today: date
    elapsed: timedelta  # since enrolment
    done: timedelta  # estimated, of the steps done
    remaining: timedelta  # estimated, of the steps neither done nor skipped
    expected: date | None  # enrolment + the estimates of every step not skipped; None: beyond
    pace: float | None  # working time taken per estimated working time; None: nothing to go on
    finish: date | None  # at that pace; None without a pace or beyond the horizon

    @property
    def behind(self) -> timedelta:
        """Working time behind the estimates; negative: ahead of them."""
        return self.elapsed - self.done

    @property
    def behind_days(self) -> int:
        """`behind` in whole working days, rounded towards zero (negative: ahead)."""
        return int(self.behind / WORKING_DAY)

    @property
    def too_far(self) -> bool:
        """A pace so slow that the finish lies beyond the horizon."""
        return self.pace is not None and self.finish is None


def forecast(
    roadmap: Roadmap,
    progress: Progress,
    now: datetime,
    tz: ZoneInfo,
    working_days: frozenset[int],
) -> Forecast | None:
    """The forecast for `progress`, judged in `tz` on `working_days`; None when the newcomer is
    not enrolled or has finished.

    Skipped steps count neither as work done nor as work left, and a step without an estimate
    as neither either. A pace needs an estimated step done and some working time gone by.
    """
    enrolled = progress.enrolled_at
    if enrolled is None or is_finished(roadmap, progress):
        return None
    done = remaining = 0.0
    for step in roadmap:
        state = progress.state(step.id)
        if state == State.DONE:
            done += estimate_days(step.estimate)
        elif state != State.SKIPPED:
            remaining += estimate_days(step.estimate)
    elapsed = working_time_between(enrolled, now, tz, working_days)
    pace = elapsed / (done * WORKING_DAY) if done and elapsed else None
    return Forecast(
        today=now.astimezone(tz).date(),
        elapsed=elapsed,
        done=done * WORKING_DAY,
        remaining=remaining * WORKING_DAY,
        expected=_land(enrolled, done + remaining, tz, working_days),
        pace=pace,
        finish=None if pace is None else _land(now, remaining * pace, tz, working_days),
    )


def _land(start: datetime, days: float, tz: ZoneInfo, working_days: frozenset[int]) -> date | None:
    """landing_day for `days` working days, or None beyond the horizon."""
    # Compared as a number first: a timedelta of a runaway pace could overflow.
    if days > HORIZON / WORKING_DAY:
        return None
    return landing_day(start, days * WORKING_DAY, tz, working_days)


def landing_day(
    start: datetime, work: timedelta, tz: ZoneInfo, working_days: frozenset[int]
) -> date:
    """The working day in `tz` on which `work` of working time from `start` is complete: the
    first working day from `start`'s when there is none to do."""
    day = day_work_is_done(start, work, tz, working_days)
    # Done by a day off only when there was nothing to do that day: the next working day.
    while day.weekday() not in working_days:
        day += timedelta(days=1)
    return day
