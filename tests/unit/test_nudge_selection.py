"""Choosing whom to nudge from a real SQLite store, the nudge sweep and escalation, and the
scheduler's catch-up of a run missed while the bot was down. Every clock here is frozen.

Times are UTC in March 2026 (2 March is a Monday); the team works Monday to Friday in Berlin
(UTC+1 then) with quiet hours 20:00-08:00 and nudges after one working day of silence.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
import yaml
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.triggers.cron import CronTrigger

from bot import progress as rules
from bot.clock import ServerClock
from bot.nudges import NudgePolicy
from bot.ops import PAUSED_FOREVER, Op, RecordNudge, SetMentor, SetPause, SetTimezone
from bot.progress import Progress, State
from bot.roadmap import Roadmap, load_roadmap, parse_roadmap
from bot.scheduler import NUDGES, Jobs, Scheduler
from bot.store import OutboxItem, Store, ts
from bot.team import Team, TeamState
from tests.unit.common import POLICY, ROADMAP_FILE

ROOM = "!dm:example.org"
MENTOR = "@mentor:example.org"
TEAM_ROOM = "!team:example.org"


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, second, tzinfo=UTC)


NOW = at(5, 10)  # Thursday, 11:00 in Berlin
_event_ids = itertools.count(1)


class Clock:
    """A frozen clock that a test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def roadmap() -> Roadmap:
    return load_roadmap(ROADMAP_FILE)


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "bot.db")
    yield s
    await s.close()


async def enroll(
    store: Store, roadmap: Roadmap, user: str, when: datetime, ops: Iterable[Op] = ()
) -> None:
    """The newcomer's first command, at `when`."""
    change = rules.enroll(roadmap, Progress(user))
    assert change is not None
    await store.commit_command(
        event_id=f"$e{next(_event_ids)}",
        room_id=ROOM,
        sender=user,
        changes=[change],
        ops=ops,
        messages=[],
        at=when,
    )


async def speak(
    store: Store, user: str, when: datetime, *, changes: Iterable[rules.Change] = ()
) -> None:
    """Any command from the newcomer counts as activity."""
    await store.commit_command(
        event_id=f"$e{next(_event_ids)}",
        room_id=ROOM,
        sender=user,
        changes=changes,
        messages=[],
        at=when,
    )


async def candidate_ids(store: Store, now: datetime = NOW) -> list[str]:
    """Whom the store short-lists at `now`, in its order."""
    found = await store.nudge_candidates(now, now - POLICY.idle_after)
    return [c.user_id for c in found]


def make_jobs(
    store: Store,
    roadmap: Roadmap,
    *,
    policy: NudgePolicy = POLICY,
    mentors: Iterable[str] = (MENTOR,),
    clock: Clock | None = None,
    queued: list[int] | None = None,
) -> Jobs:
    if queued is not None:
        store.on_queued = lambda items: queued.append(len(items))
    return Jobs(
        store=store,
        team=Team(TeamState(roadmap, policy, configured_mentors=frozenset(mentors))),
        prefix="!",
        clock=ServerClock(clock or Clock(NOW)),
    )


# --- Store.nudge_candidates ----------------------------------------------------------------


async def test_candidates_are_the_idle_unfinished_unpaused_unnudged_oldest_first(
    store: Store, roadmap: Roadmap
) -> None:
    # The cutoff is Wednesday 10:00, one day before NOW.
    await enroll(store, roadmap, "@idle-tue:x.org", at(3, 9))
    await enroll(store, roadmap, "@idle-mon:x.org", at(2, 9))
    await enroll(store, roadmap, "@at-cutoff:x.org", at(4, 10))
    await enroll(store, roadmap, "@active:x.org", at(2, 9))
    await speak(store, "@active:x.org", at(4, 15))

    await enroll(store, roadmap, "@finished:x.org", at(2, 8))
    await store.commit_command(
        event_id="$finish",
        room_id=ROOM,
        sender="@finished:x.org",
        changes=[],
        messages=[],
        at=at(2, 8, 30),
        finished=True,
    )

    await enroll(store, roadmap, "@paused:x.org", at(2, 10))
    await enroll(store, roadmap, "@paused-forever:x.org", at(2, 10))
    await enroll(store, roadmap, "@pause-over:x.org", at(2, 11))
    await store.commit_job(
        ops=[
            SetPause("@paused:x.org", NOW + timedelta(days=2)),
            SetPause("@paused-forever:x.org", PAUSED_FOREVER),
            SetPause("@pause-over:x.org", NOW - timedelta(hours=1)),
        ],
        messages=[],
        at=at(2, 12),
    )

    await enroll(store, roadmap, "@nudged-lately:x.org", at(2, 7))
    await store.commit_job(
        ops=[RecordNudge("@nudged-lately:x.org", "nudge", None, "scheduler")],
        messages=[],
        at=at(4, 16),
    )
    await enroll(store, roadmap, "@nudged-long-ago:x.org", at(2, 6))
    await store.commit_job(
        ops=[RecordNudge("@nudged-long-ago:x.org", "nudge", None, "scheduler")],
        messages=[],
        at=at(3, 9),
    )

    assert await candidate_ids(store) == [
        "@nudged-long-ago:x.org",  # Monday 06:00
        "@idle-mon:x.org",  # Monday 09:00
        "@pause-over:x.org",  # Monday 11:00, paused until an hour ago
        "@idle-tue:x.org",  # Tuesday 09:00
        "@at-cutoff:x.org",  # Wednesday 10:00, exactly one day ago
    ]


async def test_a_candidate_carries_what_the_rules_need(store: Store, roadmap: Roadmap) -> None:
    user = "@tokyo:x.org"
    await enroll(
        store,
        roadmap,
        user,
        at(2, 9),
        ops=[SetTimezone(user, "Asia/Tokyo"), SetMentor(user, MENTOR)],
    )
    done = rules.finish(roadmap, await store.load_progress(user), roadmap.steps[0], State.DONE)
    await speak(store, user, at(2, 10), changes=[done] if done else [])
    await store.commit_job(
        ops=[RecordNudge(user, "nudge", "basic-internet", "scheduler")] * 2,
        messages=[],
        at=at(3, 11),
    )

    [c] = await store.nudge_candidates(NOW, NOW - POLICY.idle_after)
    assert c.user_id == user
    assert c.current_step == "basic-internet"
    assert c.last_activity_at == at(2, 10)
    assert c.last_nudged_at == at(3, 11)
    assert c.timezone == "Asia/Tokyo"
    assert c.mentor == MENTOR
    assert c.nudges_in_row == 2


async def test_finished_after_a_reload_is_no_candidate_until_unfinished(
    store: Store, roadmap: Roadmap
) -> None:
    await enroll(store, roadmap, "@a:x.org", at(2, 9))
    await enroll(store, roadmap, "@b:x.org", at(2, 10))
    await store.set_finished({"@a:x.org": True, "@b:x.org": False}, at(3, 9))
    assert await candidate_ids(store) == ["@b:x.org"]

    await store.set_finished({"@a:x.org": False}, at(3, 10))
    assert await candidate_ids(store) == ["@a:x.org", "@b:x.org"]


async def test_a_newcomer_who_speaks_again_is_no_longer_a_candidate(
    store: Store, roadmap: Roadmap
) -> None:
    await enroll(store, roadmap, "@a:x.org", at(2, 9))
    await store.commit_job(
        ops=[RecordNudge("@a:x.org", "nudge", None, "scheduler")], messages=[], at=at(3, 9)
    )
    assert await candidate_ids(store) == ["@a:x.org"]

    await speak(store, "@a:x.org", at(5, 9))
    assert await candidate_ids(store) == []
    [info] = await store.newcomers([s.id for s in roadmap])
    assert info.nudges_in_row == 0  # answering resets the streak


def query_plan(path: Path, sql: str) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql)]


async def captured_candidate_query(store: Store) -> str:
    """The SQL nudge_candidates really runs, with its parameters bound."""
    statements: list[str] = []
    await store._db.set_trace_callback(statements.append)
    try:
        await store.nudge_candidates(NOW, NOW - POLICY.idle_after)
    finally:
        await store._db.set_trace_callback(None)
    [sql] = [s for s in statements if "FROM newcomers" in s]
    return sql


async def test_the_candidate_query_reads_the_idle_index_not_the_whole_table(
    store: Store, roadmap: Roadmap
) -> None:
    for n in range(20):
        await enroll(store, roadmap, f"@n{n}:x.org", at(2, 9) + timedelta(minutes=n))

    plan = query_plan(store.path, await captured_candidate_query(store))

    assert any("USING INDEX newcomers_idle" in step for step in plan), plan
    assert not any(step.startswith("SCAN newcomers") for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan  # the index gives the order


async def test_ten_thousand_newcomers_yield_exactly_the_idle_ones(
    store: Store, roadmap: Roadmap
) -> None:
    now = at(9, 10)  # Monday, 11:00 in Berlin
    old, step = ts(at(5, 9)), roadmap.steps[0].id
    expected: set[str] = set()
    rows = []
    for n in range(10_000):
        user = f"@n{n}:x.org"
        row = {
            "user_id": user,
            "enrolled_at": old,
            "current_step": step,
            "last_activity_at": ts(at(5, 9) + timedelta(seconds=n)),
            "timezone": None,
            "finished_at": None,
            "paused_until": None,
            "last_nudged_at": None,
        }
        match n % 8:
            case 0:  # idle since Thursday: due
                expected.add(user)
            case 1:  # idle since Friday 17:00 Berlin: only 18 working hours by now
                row["last_activity_at"] = ts(at(6, 16))
            case 2:
                row["finished_at"] = ts(at(6, 9))
            case 3:
                row["paused_until"] = ts(now + timedelta(days=3))
            case 4:  # 03:00 in Los Angeles: quiet hours there
                row["timezone"] = "America/Los_Angeles"
            case 5:  # active an hour ago
                row["last_activity_at"] = ts(now - timedelta(hours=1))
            case 6:  # nudged this morning
                row["last_nudged_at"] = ts(now - timedelta(hours=3))
            case 7:  # a pause that ran out yesterday: due
                row["paused_until"] = ts(now - timedelta(days=1))
                expected.add(user)
        rows.append(row)
    with sqlite3.connect(store.path) as db:
        db.executemany(
            "INSERT INTO newcomers (user_id, enrolled_at, current_step, last_activity_at, "
            "timezone, finished_at, paused_until, last_nudged_at) VALUES (:user_id, "
            ":enrolled_at, :current_step, :last_activity_at, :timezone, :finished_at, "
            ":paused_until, :last_nudged_at)",
            rows,
        )
    jobs = make_jobs(store, roadmap, clock=Clock(now))

    ops, messages = await jobs.plan_nudges(now)

    assert len(expected) == 2_500
    assert {op.user_id for op in ops if op.kind == "nudge"} == expected
    assert len(ops) == len(messages) == len(expected)  # no escalations on a first nudge
    assert await store.outbox() == []  # planning writes nothing


# --- Jobs: the nudge sweep -----------------------------------------------------------------


async def test_plan_nudges_one_per_idle_newcomer_and_none_for_the_paused(
    store: Store, roadmap: Roadmap
) -> None:
    await enroll(store, roadmap, "@idle-b:x.org", at(2, 10))
    await enroll(store, roadmap, "@idle-a:x.org", at(2, 9))
    await enroll(store, roadmap, "@paused:x.org", at(2, 8))
    await store.commit_job(
        ops=[SetPause("@paused:x.org", NOW + timedelta(days=5))], messages=[], at=at(2, 8)
    )
    await enroll(store, roadmap, "@busy:x.org", at(5, 9))

    ops, messages = await make_jobs(store, roadmap).plan_nudges(NOW)

    first = roadmap.steps[0].id
    assert ops == [
        RecordNudge("@idle-a:x.org", "nudge", first, "scheduler"),
        RecordNudge("@idle-b:x.org", "nudge", first, "scheduler"),
    ]
    assert [(send.key, send.to_user, send.room_id) for _, send in messages] == [
        ("nudge", "@idle-a:x.org", None),
        ("nudge", "@idle-b:x.org", None),
    ]
    assert len({txn for txn, _ in messages}) == 2


async def test_sweeping_twice_at_the_same_moment_queues_nothing_the_second_time(
    store: Store, roadmap: Roadmap
) -> None:
    await enroll(store, roadmap, "@a:x.org", at(2, 9))
    await enroll(store, roadmap, "@b:x.org", at(3, 9))
    queued: list[int] = []
    jobs = make_jobs(store, roadmap, queued=queued)

    assert await jobs.nudge_sweep() == 2
    assert len(await store.outbox()) == 2
    assert queued == [2]  # handed to the outbox in one go

    assert await jobs.nudge_sweep() == 0
    assert len(await store.outbox()) == 2
    assert queued == [2]  # nothing new to deliver
    infos = {i.user_id: i for i in await store.newcomers([s.id for s in roadmap])}
    assert [infos[u].nudges_in_row for u in ("@a:x.org", "@b:x.org")] == [1, 1]
    assert infos["@a:x.org"].last_nudged_at == NOW


async def test_a_nudge_mentions_the_newcomer_and_names_the_current_step(
    store: Store, roadmap: Roadmap
) -> None:
    user = "@newbie:x.org"
    await enroll(store, roadmap, user, at(2, 9))
    done = rules.finish(roadmap, await store.load_progress(user), roadmap.steps[0], State.DONE)
    assert done is not None
    await speak(store, user, at(2, 10), changes=[done])

    await make_jobs(store, roadmap).nudge_sweep()

    [item] = await store.outbox()
    assert item.to_user == user
    assert item.content["m.mentions"] == {"user_ids": [user]}
    assert "You are on 1.2 Basic Internet." in item.content["body"]
    url = "https://pediaa.com/difference-between-domain-and-dns/"
    assert roadmap.steps[1].resources[0].url == url
    assert f"Difference Between Domain and DNS <{url}>" in item.content["body"]
    assert (
        f'<a href="{url}">Difference Between Domain and DNS</a>' in item.content["formatted_body"]
    )


async def test_a_nudge_after_the_current_step_was_removed_names_the_first_unfinished_one(
    store: Store, roadmap: Roadmap
) -> None:
    user = "@newbie:x.org"
    await enroll(store, roadmap, user, at(2, 9))
    stomp = roadmap.get("stomp")
    assert stomp is not None
    moved = rules.goto(roadmap, await store.load_progress(user), stomp)
    await speak(store, user, at(2, 10), changes=[moved] if moved else [])
    data = yaml.load(ROADMAP_FILE.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    for section in data["sections"]:
        section["steps"] = [s for s in section["steps"] if s["id"] != "stomp"]
    reloaded = parse_roadmap(data, ROADMAP_FILE)
    assert rules.current_step(reloaded, await store.load_progress(user)) == reloaded.steps[0]

    ops, messages = await make_jobs(store, reloaded).plan_nudges(NOW)

    assert ops == [RecordNudge(user, "nudge", "bash-terminal", "scheduler")]
    assert "You are on 1.1 Bash/Terminal." in messages[0][1].content["body"]


async def sweep_at(jobs: Jobs, clock: Clock, when: datetime, store: Store) -> list[OutboxItem]:
    """Runs the sweep at `when` and returns only what it queued."""
    before = {item.id for item in await store.outbox()}
    clock.now = when
    await jobs.nudge_sweep()
    return [item for item in await store.outbox() if item.id not in before]


def addressed(items: list[OutboxItem]) -> list[tuple[str, str | None]]:
    """(what, to whom) for each queued item; a nudge greets, an escalation does not."""
    return [
        ("nudge" if i.content["body"].startswith("Hi ") else "escalation", i.to_user or i.room_id)
        for i in items
    ]


async def test_escalation_goes_to_the_assigned_mentor_once_per_streak(
    store: Store, roadmap: Roadmap
) -> None:
    user = "@quiet:x.org"
    await enroll(store, roadmap, user, at(2, 9), ops=[SetMentor(user, MENTOR)])
    clock = Clock(NOW)
    policy = replace(POLICY, escalate_after=2)
    jobs = make_jobs(store, roadmap, policy=policy, mentors=[MENTOR, "@other:x.org"], clock=clock)

    assert addressed(await sweep_at(jobs, clock, at(3, 10), store)) == [("nudge", user)]
    second = await sweep_at(jobs, clock, at(4, 10), store)
    assert addressed(second) == [("nudge", user), ("escalation", MENTOR)]
    escalation = second[1].content
    assert escalation["msgtype"] == second[0].content["msgtype"] == "m.text"
    assert escalation["m.mentions"] == {"user_ids": [MENTOR]}
    assert f"{user} has been idle for" in escalation["body"]
    assert "has not answered 2 nudges" in escalation["body"]
    # The third nudge of the same streak does not escalate again.
    assert addressed(await sweep_at(jobs, clock, at(5, 10), store)) == [("nudge", user)]

    # The newcomer answers; a new streak escalates again when it reaches two.
    await speak(store, user, at(5, 11))
    assert addressed(await sweep_at(jobs, clock, at(6, 11), store)) == [("nudge", user)]
    assert addressed(await sweep_at(jobs, clock, at(9, 11), store)) == [
        ("nudge", user),
        ("escalation", MENTOR),
    ]


async def test_escalation_without_an_assigned_mentor_goes_to_every_mentor(
    store: Store, roadmap: Roadmap
) -> None:
    user = "@alone:x.org"
    await enroll(store, roadmap, user, at(2, 9))
    mentors = ["@zoe:x.org", "@adam:x.org"]
    jobs = make_jobs(store, roadmap, policy=replace(POLICY, escalate_after=1), mentors=mentors)

    await jobs.nudge_sweep()

    items = await store.outbox()
    assert addressed(items) == [
        ("nudge", user),
        ("escalation", "@adam:x.org"),
        ("escalation", "@zoe:x.org"),
    ]
    # Each mentor's note notifies that mentor only.
    assert [i.content["m.mentions"] for i in items[1:]] == [
        {"user_ids": ["@adam:x.org"]},
        {"user_ids": ["@zoe:x.org"]},
    ]


async def test_escalation_reaches_mentors_by_power_level_too(
    store: Store, roadmap: Roadmap
) -> None:
    # Bug (issue 10): a mentor by power level in rooms.team was never told of a stuck newcomer.
    user = "@alone:x.org"
    await enroll(store, roadmap, user, at(2, 9))
    state = TeamState(
        roadmap,
        replace(POLICY, escalate_after=1),
        configured_mentors=frozenset({"@zoe:x.org"}),
        mentors_by_power=frozenset({"@power:x.org"}),
    )
    jobs = Jobs(store=store, team=Team(state), prefix="!", clock=ServerClock(Clock(NOW)))

    await jobs.nudge_sweep()

    assert addressed(await store.outbox()) == [
        ("nudge", user),
        ("escalation", "@power:x.org"),
        ("escalation", "@zoe:x.org"),
    ]


async def test_team_target_nudges_in_the_team_room_but_escalates_privately(
    store: Store, roadmap: Roadmap
) -> None:
    user = "@newbie:x.org"
    await enroll(store, roadmap, user, at(2, 9), ops=[SetMentor(user, MENTOR)])
    policy = replace(POLICY, target="team", team_room=TEAM_ROOM, escalate_after=1)

    await make_jobs(store, roadmap, policy=policy).nudge_sweep()

    nudge, escalation = await store.outbox()
    assert (nudge.room_id, nudge.to_user) == (TEAM_ROOM, None)
    assert nudge.content["m.mentions"] == {"user_ids": [user]}
    assert escalation.to_user == MENTOR
    assert escalation.room_id != TEAM_ROOM


# --- Scheduler: catch-up at start ------------------------------------------------------------

DAILY = "0 10 * * *"  # 10:00 Berlin, 09:00 UTC in March
LAST_RUN = f"job:{NUDGES}:last_run"


def natural_next_run() -> datetime:
    """When the daily job would next run by its timetable alone, seen from the real clock."""
    trigger = CronTrigger.from_crontab(DAILY, timezone="Europe/Berlin")
    when = trigger.get_next_fire_time(None, datetime.now(UTC))
    assert when is not None
    return when


async def test_a_run_missed_while_down_runs_once_at_start(store: Store, roadmap: Roadmap) -> None:
    await enroll(store, roadmap, "@idle:x.org", at(2, 9))
    await store.set_value(LAST_RUN, ts(NOW - timedelta(days=2)))  # missed Wed and Thu 09:00
    scheduler = Scheduler(make_jobs(store, roadmap), store)
    scheduler.add(NUDGES, CronTrigger.from_crontab(DAILY, timezone="Europe/Berlin"))
    finished = asyncio.Event()
    events: list[JobExecutionEvent] = []

    def listen(event: JobExecutionEvent) -> None:
        events.append(event)
        finished.set()

    scheduler.scheduler.add_listener(listen, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    try:
        await scheduler.start()
        job = scheduler.scheduler.get_job(NUDGES)
        assert job is not None
        assert abs(job.next_run_time - datetime.now(UTC)) < timedelta(seconds=5)

        await asyncio.wait_for(finished.wait(), timeout=5)
        assert [e.exception for e in events] == [None]
        [nudge] = await store.outbox()
        assert nudge.to_user == "@idle:x.org"
        assert await store.get_value(LAST_RUN) == ts(NOW)
        assert job.next_run_time == natural_next_run()  # then back on its timetable
    finally:
        scheduler.shutdown()


async def test_no_catch_up_when_the_last_run_came_after_the_last_due_time(
    store: Store, roadmap: Roadmap
) -> None:
    today_run = ts(at(5, 9, 0, 3))  # Thursday's 09:00 UTC run, before NOW (10:00)
    await store.set_value(LAST_RUN, today_run)
    scheduler = Scheduler(make_jobs(store, roadmap), store)
    scheduler.add(NUDGES, CronTrigger.from_crontab(DAILY, timezone="Europe/Berlin"))
    try:
        await scheduler.start()
        job = scheduler.scheduler.get_job(NUDGES)
        assert job is not None
        assert job.next_run_time == natural_next_run()
        assert await store.get_value(LAST_RUN) == today_run
    finally:
        scheduler.shutdown()


async def test_the_first_start_records_the_time_without_running(
    store: Store, roadmap: Roadmap
) -> None:
    scheduler = Scheduler(make_jobs(store, roadmap), store)
    scheduler.add(NUDGES, CronTrigger.from_crontab(DAILY, timezone="Europe/Berlin"))
    try:
        await scheduler.start()
        job = scheduler.scheduler.get_job(NUDGES)
        assert job is not None
        assert job.next_run_time == natural_next_run()
        assert await store.get_value(LAST_RUN) == ts(NOW)
    finally:
        scheduler.shutdown()
