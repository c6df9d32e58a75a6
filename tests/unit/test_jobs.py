"""The hourly job that keeps handled event ids from growing for ever (issue 10, bug 3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.app import KEEP_HANDLED_MARGIN, _scheduler
from bot.clock import ServerClock
from bot.config import Config
from bot.metrics import Metrics
from bot.roadmap import Roadmap
from bot.scheduler import PRUNE, Jobs
from bot.store import Store
from bot.team import Team, TeamState
from tests.unit.common import POLICY

NOW = datetime(2026, 3, 5, 10, 0, tzinfo=UTC)


async def handled(store: Store, event_id: str, at: datetime) -> None:
    await store.commit_command(
        event_id=event_id, room_id="!r:x.org", sender="@a:x.org", changes=(), messages=(), at=at
    )


async def test_pruning_forgets_only_ids_a_restart_can_no_longer_redeliver(
    store: Store, roadmap: Roadmap
) -> None:
    jobs = Jobs(
        store=store,
        team=Team(TeamState(roadmap, POLICY)),
        prefix="!",
        keep_handled=timedelta(days=8),
        clock=ServerClock(lambda: NOW),
    )
    await handled(store, "$old", NOW - timedelta(days=8, seconds=1))
    await handled(store, "$recent", NOW - timedelta(days=7, hours=23))

    assert await jobs.prune() == 1

    assert not await store.was_handled("$old")
    assert await store.was_handled("$recent")


async def test_the_bot_schedules_pruning_past_the_oldest_event_it_answers(
    store: Store, roadmap: Roadmap
) -> None:
    config = Config.model_validate(
        {
            "matrix": {"homeserver": "https://h.org", "user_id": "@b:h.org", "password": "x"},
            "bot": {"max_event_age": "3d"},
        }
    )

    team = Team(TeamState(roadmap, POLICY))
    scheduler = _scheduler(config, store, team, Metrics())

    assert scheduler.scheduler.get_job(PRUNE) is not None
    assert scheduler.jobs.keep_handled == timedelta(days=3) + KEEP_HANDLED_MARGIN
    assert timedelta(0) < KEEP_HANDLED_MARGIN
