"""Time rules for nudges: durations, working days, quiet hours, idle working time. Pure functions.

Nothing here reads the clock; callers pass `now`. Days are judged as calendar days in the
team's time zone, so a weekend or a daylight-saving night is measured the way people live it.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot import texts

DAY_NAMES: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_WORKING_DAYS: frozenset[int] = frozenset({0, 1, 2, 3, 4})

_DURATION = re.compile(r"([+-]?[0-9]+(?:\.[0-9]+)?)([smhdw])", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_QUIET = re.compile(r"([0-9]{1,2}):([0-9]{2})\s*-\s*([0-9]{1,2}):([0-9]{2})")
_DAY = timedelta(days=1)
# Longer is no plan but a typo, and `now + 500000w` would not fit a datetime.
MAX_DURATION = timedelta(days=365)


class BadValue(ValueError):
    """A value that cannot be used. `problem` says why without repeating the value, so a chat
    reply can show the value its own (shortened, inert) way; str() is "'value' problem"."""

    def __init__(self, value: str, problem: str) -> None:
        super().__init__(f"{value!r} {problem}")
        self.value, self.problem = value, problem


def parse_duration(value: str) -> timedelta:
    """Parse "30s", "45m", "12h", "3d", "1w" or "1.5h" into a positive timedelta, at most a year."""
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise BadValue(value, texts.NOT_A_DURATION)
    amount = float(match.group(1))
    if amount <= 0:
        raise BadValue(value, texts.DURATION_NOT_POSITIVE)
    too_long = BadValue(value, texts.DURATION_TOO_LONG)
    try:
        delta = timedelta(**{_UNITS[match.group(2).lower()]: amount})
    except OverflowError:
        raise too_long from None
    if delta > MAX_DURATION:
        raise too_long
    if delta <= timedelta(0):  # e.g. "0.0000001s" rounds down to nothing
        raise BadValue(value, texts.DURATION_NOT_POSITIVE)
    return delta


def parse_working_days(names: Iterable[str]) -> frozenset[int]:
    """Turn day names like ["mon", "tue"] into weekday numbers (Monday is 0)."""
    if isinstance(names, str):  # a bare "mon" would otherwise be read letter by letter
        names = [names]
    days: set[int] = set()
    for name in names:
        key = str(name).strip().lower()
        if key not in DAY_NAMES:
            raise ValueError(f"{name!r} is not a day; use {', '.join(DAY_NAMES)}")
        days.add(DAY_NAMES.index(key))
    if not days:
        raise ValueError(f"working days must name at least one of {', '.join(DAY_NAMES)}")
    return frozenset(days)


@dataclass(frozen=True)
class QuietHours:
    """A daily span of local wall-clock time without nudges; it may wrap past midnight."""

    start: time
    end: time

    def contains(self, local: time) -> bool:
        """Start is inclusive, end exclusive; equal start and end means never quiet."""
        at = local.replace(tzinfo=None)
        start, end = self.start.replace(tzinfo=None), self.end.replace(tzinfo=None)
        if start == end:
            return False
        if start < end:
            return start <= at < end
        return at >= start or at < end


def parse_quiet_hours(value: str | None) -> QuietHours | None:
    """Parse "20:00-08:00"; None means quiet hours are off."""
    if value is None:
        return None
    match = _QUIET.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a quiet-hours range like 20:00-08:00")
    h1, m1, h2, m2 = (int(part) for part in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError(f"{value!r} has a time out of range; use 00:00 to 23:59, like 20:00-08:00")
    return QuietHours(time(h1, m1), time(h2, m2))


def parse_timezone(name: str) -> ZoneInfo:
    """Load an IANA time zone such as "Europe/Berlin"."""
    problem = BadValue(name, texts.NOT_A_TIME_ZONE)
    if not name or ".." in name or name.startswith("/") or name != name.strip():
        raise problem
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise problem from None


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {value.isoformat()}")
    return value.astimezone(UTC)


@lru_cache(maxsize=4096)
def _midnight(day: date, tz: ZoneInfo) -> datetime:
    # Where a zone skips midnight, fold=0 lands on the instant of the jump, so consecutive
    # midnights never go backwards and the days tile the timeline without gaps or overlaps.
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def local_day(at: datetime, tz: ZoneInfo) -> date:
    """The calendar day in `tz` whose midnight-to-midnight holds `at`: its local date, unless a
    clock change across midnight puts that date outside its own day's span (no zone does so
    from 1970 to 2030, by a scan of tzdata; the days must tile the timeline whatever a future
    rule does, as `working_time_between` adds them up)."""
    at = _aware(at, "at")
    day = at.astimezone(tz).date()
    if _midnight(day, tz) > at:
        return day - _DAY
    if _midnight(day + _DAY, tz) <= at:
        return day + _DAY
    return day


def day_end(day: date, tz: ZoneInfo) -> datetime:
    """The instant (UTC) `day` ends in `tz`: the next day's midnight."""
    return _midnight(day + _DAY, tz)


@lru_cache(maxsize=256)
def _year_of_working_time(
    year: int, tz: ZoneInfo, working_days: frozenset[int]
) -> tuple[timedelta, ...]:
    """[i]: the working time of the year's first i days (each working day as long as it is in
    `tz`: 23 or 25 hours across a clock change); [-1] is the whole year's."""
    day = date(year, 1, 1)
    start, total, out = _midnight(day, tz), timedelta(0), [timedelta(0)]
    while day.year == year:
        end = _midnight(day + _DAY, tz)
        if day.weekday() in working_days:
            total += end - start
        out.append(total)
        day, start = day + _DAY, end
    return tuple(out)


def _whole_days(first: date, last: date, tz: ZoneInfo, working_days: frozenset[int]) -> timedelta:
    """The working time of the days from `first` up to, not including, `last`: a year's days
    are added up once, so a span of months costs a few lookups, not a walk."""
    if last <= first:
        return timedelta(0)
    total = -_year_of_working_time(first.year, tz, working_days)[first.timetuple().tm_yday - 1]
    for year in range(first.year, last.year):
        total += _year_of_working_time(year, tz, working_days)[-1]
    return total + _year_of_working_time(last.year, tz, working_days)[last.timetuple().tm_yday - 1]


def working_time_between(
    start: datetime, end: datetime, tz: ZoneInfo, working_days: frozenset[int]
) -> timedelta:
    """The elapsed part of [start, end) that falls on working days, as calendar days in `tz`."""
    # Subtracting datetimes that share a tzinfo compares wall clocks, so work in UTC throughout.
    start, end = _aware(start, "start"), _aware(end, "end")
    if end <= start:
        return timedelta(0)
    if len(working_days) == 7:
        return end - start
    first, last = local_day(start, tz), local_day(end, tz)
    if first == last:
        return end - start if first.weekday() in working_days else timedelta(0)
    total = _whole_days(first + _DAY, last, tz, working_days)
    if first.weekday() in working_days:
        total += day_end(first, tz) - start
    if last.weekday() in working_days:
        total += end - _midnight(last, tz)
    return total


def day_work_is_done(
    start: datetime, work: timedelta, tz: ZoneInfo, working_days: frozenset[int]
) -> date:
    """The first calendar day in `tz` by whose end `work` of working time from `start` is done
    (as `working_time_between` counts it): `start`'s own day when there is none to do. Found in
    the years' running sums, not by a walk. ValueError when there are no working days."""
    if not working_days:
        raise ValueError("no working days: no work is ever done")
    start = _aware(start, "start")
    first = local_day(start, tz)
    done = day_end(first, tz) - start if first.weekday() in working_days else timedelta(0)
    if done >= work:
        return first
    need, day = work - done, first + _DAY  # still to do, from the start of `day` on
    while True:
        sums = _year_of_working_time(day.year, tz, working_days)
        before = sums[day.timetuple().tm_yday - 1]
        if sums[-1] - before >= need:
            # sums[i] covers the year's first i days: the i-th day (1-based) is the one.
            return date(day.year, 1, 1) + (bisect_left(sums, before + need) - 1) * _DAY
        need -= sums[-1] - before
        day = date(day.year + 1, 1, 1)


def is_working_day(at: datetime, tz: ZoneInfo, working_days: frozenset[int]) -> bool:
    """Whether the local calendar day of `at` in `tz` is a working day."""
    return _aware(at, "at").astimezone(tz).weekday() in working_days


def may_nudge_now(
    now: datetime, tz: ZoneInfo, working_days: frozenset[int], quiet: QuietHours | None
) -> bool:
    """True when local `now` is on a working day and outside quiet hours."""
    local = _aware(now, "now").astimezone(tz)
    if local.weekday() not in working_days:
        return False
    return quiet is None or not quiet.contains(local.time())


def working_days_between(
    start: datetime, end: datetime, tz: ZoneInfo, working_days: frozenset[int]
) -> int:
    """Whole working days of idle time: 24-hour blocks of working time, rounded down."""
    return working_time_between(start, end, tz, working_days) // _DAY
