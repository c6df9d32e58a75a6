"""The bot's time comes from the homeserver: the offset from its Date header, and nudges held
while the two clocks disagree by more than five minutes."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nio import AsyncClient, Event, MatrixRoom

from bot.clock import CHECK_EVERY_S, MAX_SKEW, RESOLUTION, ServerClock, offset_from
from bot.matrix import FIRST_START_KEY
from bot.roadmap import Roadmap
from bot.scheduler import Jobs
from bot.store import Store
from bot.team import Team, TeamState
from tests.unit.common import POLICY
from tests.unit.conftest import NEWCOMER, ROOM, make_dispatcher
from tests.unit.test_store_faults import BOT, matrix_bot

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


class HomeserverDate(ServerClock):
    """A clock whose `check` reads `server` as the homeserver's Date header would give it
    (no network: what the header says is the test's to choose)."""

    def __init__(self, local: Callable[[], datetime], server: datetime) -> None:
        super().__init__(local)
        self.server = server
        self.checks = 0

    async def check(self, client: AsyncClient) -> None:
        self.checks += 1
        self.observe(self.server - self.local())


async def test_join_times_stored_ahead_of_the_server_are_brought_back_at_start(
    store: Store, roadmap: Roadmap, tmp_path: Path
) -> None:
    # Bug (issue 14): an older bot, its clock 3 days ahead, stored its own time as the join
    # time; with the clock fixed every command in that room was ignored for those 3 days.
    server_now = datetime.now(UTC)
    ms = int(server_now.timestamp() * 1000)
    days_ahead, an_hour_ago = ms + 3 * 86_400_000, ms - 3_600_000
    await store.set_room_joined(ROOM, days_ahead)
    await store.set_room_joined("!older:example.org", an_hour_ago)
    await store.set_value(FIRST_START_KEY, str(days_ahead))
    clock = HomeserverDate(lambda: server_now, server_now)  # the clock is right again
    bot = matrix_bot(store, make_dispatcher(store, roadmap), tmp_path, clock)

    await bot._check_clock()  # at login: the homeserver's time is known from here

    with contextlib.closing(sqlite3.connect(store.path)) as db:
        joined = dict(db.execute("SELECT room_id, joined_at_ms FROM rooms"))
    assert joined == {ROOM: clock.now_ms(), "!older:example.org": an_hour_ago}
    assert await store.get_value(FIRST_START_KEY) == str(clock.now_ms())
    command = Event.parse_event(
        {
            "type": "m.room.message",
            "event_id": "$now",
            "sender": NEWCOMER,
            "origin_server_ts": ms + 1000,
            "content": {"msgtype": "m.text", "body": "!status"},
        }
    )
    assert await bot._admissible(MatrixRoom(ROOM, BOT), command)


async def test_the_hourly_check_after_a_sync_notices_the_clock_running_off(
    store: Store, roadmap: Roadmap, tmp_path: Path
) -> None:
    local = datetime.now(UTC)
    clock = HomeserverDate(lambda: local, local)
    bot = matrix_bot(store, make_dispatcher(store, roadmap), tmp_path, clock)
    registry = bot.metrics.registry
    await bot._check_clock()  # at login
    await bot._after_sync()
    assert clock.checks == 1  # not due again within the hour
    assert registry.get_sample_value("onboarding_clock_skewed") == 0

    clock.server = local - timedelta(hours=1)  # this machine's clock now runs an hour ahead
    assert clock.checked_at is not None
    clock.checked_at = time.monotonic() - CHECK_EVERY_S  # an hour after the last check
    await bot._after_sync()
    assert clock.checks == 2
    assert registry.get_sample_value("onboarding_clock_skewed") == 1
    assert registry.get_sample_value("onboarding_clock_offset_seconds") == -3600
    assert clock.now() == local - timedelta(hours=1)
