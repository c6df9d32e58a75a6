"""Wiring: the one place that builds the store, the dispatcher, the jobs and the Matrix edge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from bot.commands import all_commands
from bot.config import Config
from bot.dispatch import Dispatcher, People, Services
from bot.matrix import MatrixBot
from bot.nudges import NudgePolicy
from bot.roadmap import Roadmap, load_roadmap
from bot.scheduler import DIGEST, NUDGES, Jobs, Scheduler
from bot.store import Store

log = logging.getLogger(__name__)


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
    )


async def run_bot(config: Config, roadmap: Roadmap, stop: asyncio.Event) -> None:
    store = await Store.open(config.database_path)
    mentors = frozenset(config.people.mentors)
    matrix: MatrixBot | None = None

    def power_level(user_id: str) -> int:
        return matrix.power_level(user_id) if matrix else 0

    services = Services(
        store=store,
        policy=nudge_policy(config, None),
        mentors=mentors,
        server_name=config.matrix.server_name,
        load_roadmap=lambda: load_roadmap(config.roadmap),
    )
    dispatcher = Dispatcher(
        roadmap=roadmap,
        commands=all_commands(),
        store=store,
        people=People(mentors, frozenset(config.people.admins), power_level),
        services=services,
        prefix=config.bot.command_prefix,
        mentor_commands_in_rooms=config.bot.mentor_commands_in_rooms,
    )
    matrix = MatrixBot(config, store, dispatcher)
    scheduler: Scheduler | None = None
    try:
        await matrix.login()
        sync = asyncio.create_task(matrix.run(), name="sync")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        synced = asyncio.create_task(matrix.synced.wait(), name="synced")
        done, _ = await asyncio.wait({sync, stopper, synced}, return_when=asyncio.FIRST_COMPLETED)
        if synced in done:
            # Jobs start only once logged in and synced: a nudge needs the rooms in memory.
            await matrix.join_team_room()
            services.policy = nudge_policy(config, matrix.team_room_id)
            scheduler = _start_jobs(config, store, dispatcher, services, matrix)
            await scheduler.start()
            done, _ = await asyncio.wait({sync, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if sync in done:
            stopper.cancel()
            sync.result()  # a fatal error ends the bot with its message
        log.info("stopping")
        matrix.stop()
        sync.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sync
    finally:
        if scheduler is not None:
            scheduler.shutdown()
        # The device is never logged out: its keys must survive to the next start.
        await matrix.close()
        await store.close()
        log.info("stopped")


def _start_jobs(
    config: Config, store: Store, dispatcher: Dispatcher, services: Services, matrix: MatrixBot
) -> Scheduler:
    jobs = Jobs(
        store=store,
        roadmap=lambda: dispatcher.roadmap,
        policy=services.policy,
        mentors=lambda: services.mentors,
        prefix=config.bot.command_prefix,
        on_queued=matrix.flush_outbox,
    )
    scheduler = Scheduler(jobs, store)
    if config.nudges.enabled:
        scheduler.add(NUDGES, config.nudges.schedule, config.nudges.timezone)
        # `kill -USR1 <pid>` runs the nudge sweep now, through the scheduler.
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, scheduler.run_now, NUDGES)
    if config.digest is not None:
        scheduler.add(DIGEST, config.digest.schedule, config.digest.timezone)
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, scheduler.run_now, DIGEST)
    return scheduler
