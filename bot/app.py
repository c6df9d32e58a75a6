"""Wiring: the one place that builds the store, the dispatcher, the jobs and the Matrix edge.

Start: store, login, first sync, team room, then the jobs. Stop (SIGTERM/SIGINT): no more
commands, replies already committed are sent, the scheduler stops, the database closes.
The device is never logged out: its keys must survive to the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bot import EARLY_SIGNALS
from bot.clock import ServerClock
from bot.commands import all_commands
from bot.config import Config
from bot.dispatch import Dispatcher, FloodGate
from bot.health import HealthServer
from bot.matrix import MatrixBot
from bot.metrics import Metrics
from bot.nudges import NudgePolicy
from bot.reports import team_reasons
from bot.roadmap import Roadmap, load_roadmap
from bot.scheduler import DIGEST, NUDGES, PRUNE, PRUNE_TRIGGER, Jobs, Scheduler
from bot.store import Store
from bot.team import Team, TeamState

log = logging.getLogger(__name__)

FLUSH_ON_STOP_SECONDS = 5.0  # of the 10 s a container runtime gives before SIGKILL
GAUGE_REFRESH_SECONDS = 30.0
KEEP_HANDLED_MARGIN = timedelta(days=1)


def build_dispatcher(
    store: Store,
    team: Team,
    *,
    server_name: str,
    load_roadmap: Callable[[], Roadmap] | None = None,
    prefix: str = "!",
    mentor_commands_in_rooms: bool = False,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    metrics: Metrics | None = None,
    flood: FloodGate | None = None,
) -> Dispatcher:
    """The dispatcher with every command, as the bot runs it (the tests and benchmarks build
    theirs here too). `load_roadmap` is what !reload reads."""
    return Dispatcher(
        team=team,
        commands=all_commands(),
        store=store,
        server_name=server_name,
        load_roadmap=load_roadmap or (lambda: team.state.roadmap),
        prefix=prefix,
        mentor_commands_in_rooms=mentor_commands_in_rooms,
        clock=clock,
        metrics=metrics,
        flood=flood,
    )


def nudge_policy(config: Config, team_room_id: str | None = None) -> NudgePolicy:
    n = config.nudges
    return NudgePolicy(
        idle_after=n.idle_after,
        timezone=n.timezone,
        working_days=n.working_days,
        quiet=n.quiet_hours,
        escalate_after=n.escalate_after,
        target=n.target,
        team_room=team_room_id,
        manual_cooldown=n.manual_cooldown,
        behind_pace_after=n.behind_pace_after,
    )


def team_state(config: Config, roadmap: Roadmap) -> TeamState:
    """The team at start; the team room and its mentors by power level come once it is joined."""
    return TeamState(
        roadmap=roadmap,
        policy=nudge_policy(config),
        admins=frozenset(config.people.admins),
        configured_mentors=frozenset(config.people.mentors),
        checks_required=config.checks.required,
    )


class Gauges:
    """Newcomer counts and database size for /metrics, recomputed at most every 30 s."""

    def __init__(self, store: Store, team: Team, metrics: Metrics):
        self.store, self.team, self.metrics = store, team, metrics
        self._at = 0.0

    async def refresh(self) -> None:
        self.metrics.database_bytes.set(self.store.size_bytes())
        if time.monotonic() - self._at < GAUGE_REFRESH_SECONDS:
            return
        now = datetime.now(UTC)
        team = self.team.state
        infos = await self.store.newcomers([s.id for s in team.roadmap])
        finished = sum(1 for i in infos if i.finished_at)
        states = await self.store.states_of(i.user_id for i in infos)
        attention = sum(1 for i in infos if team_reasons(team.roadmap, i, team.policy, now, states))
        self.metrics.newcomers.labels("enrolled").set(len(infos))
        self.metrics.newcomers.labels("finished").set(finished)
        self.metrics.newcomers.labels("needs_attention").set(attention)
        self._at = time.monotonic()


async def run_bot(config: Config, roadmap: Roadmap, stop: asyncio.Event) -> None:
    metrics = Metrics()
    store = await Store.open(
        config.database_path,
        check=True,
        on_fault=lambda fault: metrics.storage_errors.labels(fault.kind).inc(),
    )
    clock = ServerClock()  # set from the homeserver's clock at login, checked every hour
    team = Team(team_state(config, roadmap))
    dispatcher = build_dispatcher(
        store,
        team,
        server_name=config.matrix.server_name,
        load_roadmap=lambda: load_roadmap(config.roadmap),
        prefix=config.bot.command_prefix,
        mentor_commands_in_rooms=config.bot.mentor_commands_in_rooms,
        clock=clock.now,
        metrics=metrics,
        flood=FloodGate(
            config.bot.flood_limit, int(config.bot.flood_window.total_seconds() * 1000)
        ),
    )
    signals = JobSignals()
    matrix = MatrixBot(config, store, dispatcher, team, metrics, clock)
    health: HealthServer | None = None
    scheduler: Scheduler | None = None
    sync: asyncio.Task[None] | None = None
    try:
        if (listen := config.http.host_port) is not None:
            gauges = Gauges(store, team, metrics)
            health = HealthServer(*listen, metrics, matrix.healthy, gauges.refresh)
            await health.start()
        await matrix.login()
        sync = asyncio.create_task(matrix.run(), name="sync")
        if await _first(sync, stop, matrix.synced):
            # Jobs start only once logged in and synced (the team room joined with the first
            # sync): a nudge needs the rooms in memory.
            scheduler = _scheduler(config, store, team, metrics, clock)
            await scheduler.start()
            signals.attach(scheduler)
            await _first(sync, stop)
        if sync.done():
            sync.result()  # a fatal error ends the bot with its message
        log.info("stopping: no more commands; sending the replies already queued")
    finally:
        if scheduler is not None:
            scheduler.shutdown()
        matrix.stop()
        if sync is not None:
            sync.cancel()
            # Its error, if any, was raised above already; here it must not skip the cleanup,
            # or the database's worker thread keeps the process alive.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sync
        with contextlib.suppress(Exception):
            await asyncio.wait_for(matrix.flush_outbox(), FLUSH_ON_STOP_SECONDS)
        if health is not None:
            await health.stop()
        await matrix.close()
        await store.close()
        log.info("stopped")


async def _first(
    sync: asyncio.Task[None], stop: asyncio.Event, synced: asyncio.Event | None = None
) -> bool:
    """Waits until the sync task ends, `stop` is set or `synced` is; True if synced came."""
    waiters = [asyncio.create_task(e.wait()) for e in (stop, synced) if e is not None]
    await asyncio.wait({sync, *waiters}, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    return synced is not None and synced.is_set() and not stop.is_set() and not sync.done()


def _scheduler(
    config: Config,
    store: Store,
    team: Team,
    metrics: Metrics,
    clock: ServerClock | None = None,
) -> Scheduler:
    jobs = Jobs(
        store=store,
        team=team,
        prefix=config.bot.command_prefix,
        # Longer than bot.max_event_age, past which a re-delivered event is dropped unread.
        keep_handled=config.bot.max_event_age + KEEP_HANDLED_MARGIN,
        clock=clock,
        metrics=metrics,
    )
    scheduler = Scheduler(jobs, store)
    if config.nudges.enabled:
        scheduler.add(NUDGES, config.nudges.trigger)
    if config.digest is not None:
        scheduler.add(DIGEST, config.digest.trigger)
    scheduler.add(PRUNE, PRUNE_TRIGGER)
    return scheduler


class JobSignals:
    """`kill -USR1 <pid>` runs the nudge sweep now, `-USR2` the digest, through the scheduler.
    Installed first thing: a signal that comes while the bot is still starting waits for the
    scheduler, instead of ending the process (those signals' default action)."""

    JOBS: dict[int, str] = {signal.SIGUSR1: NUDGES, signal.SIGUSR2: DIGEST}

    def __init__(self) -> None:
        self.scheduler: Scheduler | None = None
        loop = asyncio.get_running_loop()
        for signum, job in self.JOBS.items():
            loop.add_signal_handler(signum, self._fire, job)
        # Those that came before this loop was there (bot/__init__.py noted them).
        self.waiting: list[str] = [self.JOBS[s] for s in EARLY_SIGNALS if s in self.JOBS]
        EARLY_SIGNALS.clear()

    def _fire(self, job: str) -> None:
        if self.scheduler is None:
            self.waiting.append(job)
        else:
            self.scheduler.run_now(job)

    def attach(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        for job in self.waiting:
            scheduler.run_now(job)
        self.waiting.clear()
