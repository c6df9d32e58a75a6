"""Wiring: the one place that builds the store, the dispatcher and the Matrix edge."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from bot.commands import all_commands
from bot.config import Config
from bot.dispatch import Dispatcher, People
from bot.matrix import MatrixBot
from bot.roadmap import Roadmap
from bot.store import Store

log = logging.getLogger(__name__)


async def run_bot(config: Config, roadmap: Roadmap, stop: asyncio.Event) -> None:
    store = await Store.open(config.database_path)
    dispatcher = Dispatcher(
        roadmap=roadmap,
        commands=all_commands(),
        store=store,
        people=People(frozenset(config.people.mentors), frozenset(config.people.admins)),
        prefix=config.bot.command_prefix,
    )
    matrix = MatrixBot(config, store, dispatcher)
    try:
        await matrix.login()
        sync = asyncio.create_task(matrix.run(), name="sync")
        stopper = asyncio.create_task(stop.wait(), name="stop")
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
        # The device is never logged out: its keys must survive to the next start.
        await matrix.close()
        await store.close()
        log.info("stopped")
