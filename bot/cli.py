"""The `onboarding-bot` command line: run the bot, check its config, admin tasks, the demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from bot import admin
from bot.app import run_bot
from bot.config import Config, ConfigError, load_config
from bot.faults import AlreadyRunning, StorageFault, lock_data_dir
from bot.identity import FatalMatrixError
from bot.logs import setup_logging
from bot.roadmap import Roadmap, RoadmapError, load_roadmap
from bot.store import SchemaTooNew

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
    if args.online:
        try:
            problems = asyncio.run(admin.online_check(config))
        except (StorageFault, SchemaTooNew) as exc:
            return _storage_failed(config, exc)
        for problem in problems:
            print(f"{args.config}: {problem}", file=sys.stderr)
        if problems:
            return EXIT_CONFIG
        print(f"{config.matrix.homeserver}: reachable; logged in as {config.matrix.user_id}")
    return EXIT_OK


def _loaded(args: argparse.Namespace) -> tuple[Config, Roadmap] | int:
    try:
        loaded = _load(args.config)
    except (ConfigError, RoadmapError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    _admin_logging(loaded[0])
    return loaded


def _admin_logging(config: Config) -> None:
    """An admin command says what went wrong itself, in one line on stderr (its output is on
    stdout): the store's own ERROR line would say it twice. At logging.level DEBUG everything
    goes to stderr."""
    if config.logging.level == "DEBUG":
        logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
    else:
        logging.getLogger().addHandler(logging.NullHandler())


def cmd_export(args: argparse.Namespace) -> int:
    loaded = _loaded(args)
    if isinstance(loaded, int):
        return loaded
    try:
        text = asyncio.run(admin.export(loaded[0], args.format, args.table))
    except (StorageFault, SchemaTooNew) as exc:
        return _storage_failed(loaded[0], exc)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    loaded = _loaded(args)
    if isinstance(loaded, int):
        return loaded
    try:
        if args.quarantine:
            sys.stdout.write(asyncio.run(admin.quarantine(loaded[0])))
        else:
            sys.stdout.write(asyncio.run(admin.status(*loaded, args.user)))
    except LookupError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILURE
    except (StorageFault, SchemaTooNew) as exc:
        return _storage_failed(loaded[0], exc)
    return EXIT_OK


def cmd_backup(args: argparse.Namespace) -> int:
    loaded = _loaded(args)
    if isinstance(loaded, int):
        return loaded
    try:
        asyncio.run(admin.backup(loaded[0], args.to))
    except (StorageFault, SchemaTooNew) as exc:
        return _storage_failed(loaded[0], exc)
    print(f"backed up {loaded[0].database_path} to {args.to}")
    return EXIT_OK


def cmd_healthcheck(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILURE
    ok, why = asyncio.run(admin.healthcheck(config))
    print(why)
    return EXIT_OK if ok else EXIT_FAILURE


def cmd_run(args: argparse.Namespace) -> int:
    os.umask(0o077)  # everything the bot writes (database, keys, session) is owner-only
    try:
        config, roadmap = _load(args.config)
    except (ConfigError, RoadmapError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.logging, _secrets(config))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_bot(config, roadmap, stop)

    try:
        lock = lock_data_dir(config.storage.data_dir)  # before anything touches the directory
    except (AlreadyRunning, StorageFault) as exc:
        return _cannot_start(exc)
    try:
        asyncio.run(main())
    except FatalMatrixError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except (StorageFault, SchemaTooNew) as exc:
        return _cannot_start(exc)
    finally:
        os.close(lock)
    return EXIT_OK


def _cannot_start(exc: Exception) -> int:
    """One line ops can act on, with what to do; the traceback of a storage error only for
    those who asked (logging.level DEBUG)."""
    if not isinstance(exc, AlreadyRunning):  # not an error of the bot's: nothing to trace
        log.debug("the data directory or the database could not be opened", exc_info=True)
    advice = exc.advice if isinstance(exc, StorageFault) else ""
    log.error("cannot start: %s%s", exc, f"; {advice}" if advice else "")
    return EXIT_FAILURE


def _storage_failed(config: Config, exc: StorageFault | SchemaTooNew) -> int:
    """An admin command that met a storage fault: one line on stderr with what to do (the
    traceback too at logging.level DEBUG)."""
    if config.logging.level == "DEBUG":
        traceback.print_exception(exc, file=sys.stderr)
    advice = exc.advice if isinstance(exc, StorageFault) else ""
    print(f"cannot go on: {exc}{f'; {advice}' if advice else ''}", file=sys.stderr)
    return EXIT_FAILURE


def _secrets(config: Config) -> list[str]:
    """What the log must never show."""
    m = config.matrix
    return [m.password or "", m.access_token or "", m.recovery_key or ""]


def cmd_reset_identity(args: argparse.Namespace) -> int:
    loaded = _loaded(args)
    if isinstance(loaded, int):
        return loaded
    config = loaded[0]
    if not args.yes:
        print(
            f"This replaces the cross-signing identity of {config.matrix.user_id}: the old "
            "recovery key stops working, and newcomers' clients will say the bot's identity "
            "changed."
        )
        try:
            answer = input("Type 'reset' to go on: ")
        except EOFError:
            answer = ""  # no terminal: no confirmation
        if answer.strip() != "reset":
            print("Nothing changed.")
            return EXIT_FAILURE
    os.umask(0o077)
    setup_logging(config.logging, _secrets(config))
    try:
        where = asyncio.run(admin.reset_identity(config))
    except FatalMatrixError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILURE
    except StorageFault as exc:
        return _storage_failed(config, exc)
    print(f"{config.matrix.user_id} has a new cross-signing identity.")
    if where is not None:
        print(f"Its new recovery key is in {where}: move it to your secret store now.")
    else:
        print("Its Secret Storage is under the configured recovery key.")
    return EXIT_OK


def default_config() -> Path:
    """$ONBOARDING_BOT_CONFIG (the container sets /data/config.yaml), else ./config.yaml."""
    return Path(os.environ.get("ONBOARDING_BOT_CONFIG") or "config.yaml")


def cmd_chat(args: argparse.Namespace) -> int:
    from bot.chat import main as chat_main  # a terminal client: not needed by the bot itself

    return chat_main(args.config, args.user, args.password)


def cmd_demo(args: argparse.Namespace) -> int:
    from bot.demo import main as demo_main  # needs matrix-synapse, the `demo` extra

    return demo_main(args.dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onboarding-bot", description="A Matrix bot that mentors newcomers through a roadmap."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: object, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument(
            "--config",
            type=Path,
            default=default_config(),
            help="config file (default: $ONBOARDING_BOT_CONFIG or ./config.yaml)",
        )
        p.set_defaults(func=func)
        return p

    command("run", cmd_run, "connect to the homeserver and answer commands")
    check = command("check", cmd_check, "validate the config and roadmap; exit 0 if good, 2 if not")
    check.add_argument(
        "--online", action="store_true", help="also reach the homeserver and log in as the bot"
    )
    export = command("export", cmd_export, "all progress and the activity log, as JSON or CSV")
    export.add_argument("--format", choices=("json", "csv"), default="json")
    export.add_argument(
        "--table", choices=admin.EXPORT_TABLES, default="progress", help="which table, for CSV"
    )
    export.add_argument("--output", "-o", help="file to write (default: standard output)")
    status = command("status", cmd_status, "a newcomer's status (or the team), as in the chat")
    status.add_argument("user", nargs="?", help="@user:server; without it, the whole team")
    status.add_argument(
        "--quarantine",
        action="store_true",
        help="the events skipped after failing again and again, with their errors",
    )
    backup = command("backup", cmd_backup, "copy the database safely, even while the bot runs")
    backup.add_argument("--to", type=Path, required=True, help="the backup file to write")
    reset = command(
        "reset-identity",
        cmd_reset_identity,
        "replace the bot's cross-signing identity (when its recovery key is lost)",
    )
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    command("healthcheck", cmd_healthcheck, "exit 0 if the running bot's /healthz says healthy")
    chat = command("chat", cmd_chat, "chat with the bot from this terminal as a Matrix user")
    chat.add_argument(
        "--as", dest="user", required=True, help="your Matrix id, e.g. @nina:localhost"
    )
    chat.add_argument(
        "--password",
        default=os.environ.get("ONBOARDING_BOT_CHAT_PASSWORD"),
        help="your password (default: $ONBOARDING_BOT_CHAT_PASSWORD, else asked for)",
    )
    demo = sub.add_parser(
        "demo",
        help="a throwaway local Synapse, the bot, and a terminal chat with it",
    )
    demo.add_argument("--dir", type=Path, default=Path("demo-data"), help="where it all lives")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
