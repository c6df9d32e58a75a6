"""The bot's time comes from the homeserver: the offset from its Date header, and nudges held
while the two clocks disagree by more than five minutes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.clock import MAX_SKEW, RESOLUTION, ServerClock, offset_from
from bot.roadmap import Roadmap
from bot.scheduler import Jobs
from bot.store import Store
from bot.team import Team, TeamState
from tests.unit.common import POLICY

LOCAL = datetime(2026, 3, 5, 10, 0, 0, 500_000, tzinfo=UTC)


def test_the_offset_never_puts_the_bot_ahead_of_the_server() -> None:
    # The header says 10:00:00 and was truncated: the server's true time was 10:00:00.999 at
    # most, and the answer arrived at 10:00:00.5 local time.
    offset = offset_from("Thu, 05 Mar 2026 10:00:00 GMT", LOCAL)
    assert offset == timedelta(milliseconds=-500)
    assert LOCAL + offset <= datetime(2026, 3, 5, 10, 0, 0, 999_000, tzinfo=UTC)


def test_a_clock_three_days_ahead_is_corrected_and_reported() -> None:
    ahead = LOCAL + timedelta(days=3)
    clock = ServerClock(lambda: ahead)
    assert not clock.skewed and clock.due()

    clock.observe(offset_from("Thu, 05 Mar 2026 10:00:00 GMT", ahead))

    assert clock.skewed and not clock.due()
    assert clock.now() == datetime(2026, 3, 5, 10, 0, tzinfo=UTC)
    assert clock.now_ms() == int(datetime(2026, 3, 5, 10, 0, tzinfo=UTC).timestamp() * 1000)


def test_an_offset_the_header_cannot_resolve_is_not_applied() -> None:
    # Found in CI: two measurements a restart apart differed by most of a second, and a
    # newcomer nudged 10.5 s earlier was "idle for 9.6 s" by the restarted bot's clock.
    clock = ServerClock(lambda: LOCAL)
    clock.observe(timedelta(milliseconds=-900))
    assert clock.now() == LOCAL
    clock.observe(-RESOLUTION - timedelta(milliseconds=1))
    assert clock.now() == LOCAL - RESOLUTION - timedelta(milliseconds=1)


def test_skew_is_judged_at_five_minutes() -> None:
    clock = ServerClock(lambda: LOCAL)
    clock.observe(MAX_SKEW)
    assert not clock.skewed
    clock.observe(-MAX_SKEW - timedelta(seconds=1))
    assert clock.skewed
    clock.observe(timedelta(seconds=2))
    assert not clock.skewed


async def test_nudges_are_held_while_the_clock_is_skewed(store: Store, roadmap: Roadmap) -> None:
    clock = ServerClock(lambda: LOCAL)
    clock.observe(timedelta(hours=-1))
    jobs = Jobs(
        store=store,
        team=Team(TeamState(roadmap, POLICY)),
        prefix="!",
        clock=clock,
    )
    calls: list[datetime] = []

    async def plan(now: datetime) -> tuple[list[object], list[object]]:
        calls.append(now)
        return [], []

    jobs.plan_nudges = plan  # type: ignore[method-assign]
    assert await jobs.nudge_sweep() == 0
    assert calls == []

    clock.observe(timedelta(0))
    await jobs.nudge_sweep()
    assert calls == [LOCAL]
