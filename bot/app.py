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
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from bot import EARLY_SIGNALS
from bot.commands import all_commands
from bot.commands.registry import Services
from bot.config import Config
from bot.dispatch import Dispatcher, FloodGate, People
from bot.health import HealthServer
from bot.matrix import MatrixBot
from bot.metrics import Metrics
from bot.nudges import NudgePolicy
from bot.reports import reasons_for
from bot.roadmap import Roadmap, load_roadmap
from bot.scheduler import DIGEST, NUDGES, Jobs, Scheduler
from bot.store import Store
from bot.timeutil import parse_duration

log = logging.getLogger(__name__)

FLUSH_ON_STOP_SECONDS = 5.0  # of the 10 s a container runtime gives before SIGKILL
GAUGE_REFRESH_SECONDS = 30.0


def build_dispatcher(
    store: Store,
    roadmap: Roadmap,
    *,
    policy: NudgePolicy,
    server_name: str,
    mentors: Iterable[str] = (),
    admins: Iterable[str] = (),
    power_level: Callable[[str], int] = lambda _user: 0,
    load_roadmap: Callable[[], Roadmap] | None = None,
    prefix: str = "!",
    mentor_commands_in_rooms: bool = False,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    metrics: Metrics | None = None,
    flood: FloodGate | None = None,
) -> Dispatcher:
    """The dispatcher with every command and the services they use, as the bot runs it (the
    tests and benchmarks build theirs here too). `load_roadmap` is what !reload reads."""
    mentor_set = frozenset(mentors)
    services = Services(
        store=store,
        policy=policy,
        mentors=mentor_set,
        server_name=server_name,
        load_roadmap=load_roadmap or (lambda: roadmap),
    )
    return Dispatcher(
        roadmap=roadmap,
        commands=all_commands(),
        store=store,
        people=People(mentor_set, frozenset(admins), power_level),
        services=services,
        prefix=prefix,
        mentor_commands_in_rooms=mentor_commands_in_rooms,
        clock=clock,
        metrics=metrics,
        flood=flood,
    )


def nudge_policy(config: Config, team_room_id: str | None) -> NudgePolicy:
    n = config.nudges
    return NudgePolicy(
        idle_after=n.idle_delta,
        timezone=n.zone,
        working_days=n.working_day_set,
        quiet=n.quiet,
        escalate_after=n.escalate_after,
        target=n.target,
        team_room=team_room_id,
        manual_cooldown=n.manual_cooldown_delta,
    )


class Gauges:
    """Newcomer counts and database size for /metrics, recomputed at most every 30 s."""

    def __init__(self, store: Store, dispatcher: Dispatcher, services: Services, metrics: Metrics):
        self.store, self.dispatcher, self.services, self.metrics = (
            store,
            dispatcher,
            services,
            metrics,
        )
        self._at = 0.0

    async def refresh(self) -> None:
        self.metrics.database_bytes.set(self.store.size_bytes())
        if time.monotonic() - self._at < GAUGE_REFRESH_SECONDS:
            return
        now = datetime.now(UTC)
        infos = await self.store.newcomers([s.id for s in self.dispatcher.roadmap])
        policy = self.services.policy
        finished = sum(1 for i in infos if i.finished_at)
        attention = sum(1 for i in infos if reasons_for(i, policy, now))
        self.metrics.newcomers.labels("enrolled").set(len(infos))
        self.metrics.newcomers.labels("finished").set(finished)
        self.metrics.newcomers.labels("needs_attention").set(attention)
        self._at = time.monotonic()


async def run_bot(config: Config, roadmap: Roadmap, stop: asyncio.Event) -> None:
    store = await Store.open(config.database_path)
    metrics = Metrics()
    matrix: MatrixBot | None = None

    def power_level(user_id: str) -> int:
        return matrix.power_level(user_id) if matrix else 0

    dispatcher = build_dispatcher(
        store,
        roadmap,
        policy=nudge_policy(config, None),
        server_name=config.matrix.server_name,
        mentors=config.people.mentors,
        admins=config.people.admins,
        power_level=power_level,
        load_roadmap=lambda: load_roadmap(config.roadmap),
        prefix=config.bot.command_prefix,
        mentor_commands_in_rooms=config.bot.mentor_commands_in_rooms,
        metrics=metrics,
        flood=FloodGate(
            config.bot.flood_limit,
            int(parse_duration(config.bot.flood_window).total_seconds() * 1000),
        ),
    )
    services = dispatcher.services
    signals = JobSignals()
    matrix = MatrixBot(config, store, dispatcher, metrics)
    health: HealthServer | None = None
    scheduler: Scheduler | None = None
    sync: asyncio.Task[None] | None = None
    try:
        if (listen := config.http.host_port) is not None:
            gauges = Gauges(store, dispatcher, services, metrics)
            health = HealthServer(*listen, metrics, matrix.healthy, gauges.refresh)
            await health.start()
        await matrix.login()
        sync = asyncio.create_task(matrix.run(), name="sync")
        if await _first(sync, stop, matrix.synced):
            # Jobs start only once logged in and synced: a nudge needs the rooms in memory.
            await matrix.join_team_room()
            services.policy = nudge_policy(config, matrix.team_room_id)
            scheduler = _scheduler(config, store, dispatcher, services, matrix, metrics)
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
    dispatcher: Dispatcher,
    services: Services,
    matrix: MatrixBot,
    metrics: Metrics,
) -> Scheduler:
    jobs = Jobs(
        store=store,
        roadmap=lambda: dispatcher.roadmap,
        policy=services.policy,
        mentors=lambda: services.mentors,
        prefix=config.bot.command_prefix,
        on_queued=matrix.queued,
        metrics=metrics,
    )
    scheduler = Scheduler(jobs, store)
    if config.nudges.enabled:
        scheduler.add(NUDGES, config.nudges.schedule, config.nudges.timezone)
    if config.digest is not None:
        scheduler.add(DIGEST, config.digest.schedule, config.digest.timezone)
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
