"""The `onboarding-bot` command line: run the bot, or check a config and roadmap."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from bot.app import run_bot
from bot.config import Config, ConfigError, load_config
from bot.logs import setup_logging
from bot.matrix import FatalMatrixError
from bot.roadmap import Roadmap, RoadmapError, load_roadmap

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
log = logging.getLogger("bot")


def _load(config_path: Path) -> tuple[Config, Roadmap]:
    config = load_config(config_path)
    return config, load_roadmap(config.roadmap)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config, roadmap = _load(args.config)
    except (ConfigError, RoadmapError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    print(
        f"{args.config}: OK — {config.matrix.user_id} on {config.matrix.homeserver}; "
        f"roadmap {config.roadmap}: {len(roadmap)} steps in {len(roadmap.sections)} sections, "
        f"{len(roadmap.all_urls())} links"
    )
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    os.umask(0o077)  # everything the bot writes (database, keys, session) is owner-only
    try:
        config, roadmap = _load(args.config)
    except (ConfigError, RoadmapError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.logging)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_bot(config, roadmap, stop)

    try:
        asyncio.run(main())
    except FatalMatrixError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onboarding-bot", description="A Matrix bot that mentors newcomers through a roadmap."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_ in (
        ("run", cmd_run, "connect to the homeserver and answer commands"),
        ("check", cmd_check, "validate the config and the roadmap; exit 0 if good, 2 if not"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", type=Path, default=Path("config.yaml"), help="config file")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
