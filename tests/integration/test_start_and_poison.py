"""A start that cannot go on, and events that could take the bot down, against a real Synapse
with the bot as its own process: a full disk at the first start and at login, a database a
tool holds locked, admin commands on a corrupt database, and malformed events a person sends.

Each checks what ops and people see: the process exits within seconds with one line naming
the fault (its traceback only at logging.level DEBUG), or it stays up and answers everyone.
Run as root: the tests mount filesystems."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.dev.process import NotReady
from tests.harness import MakePerson, Person, Synapse
from tests.harness.bot import REPO, BotProcess, new_bot, open_chat, running
from tests.harness.conversation import reply_to
from tests.harness.disks import fill, tmpfs

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

CANNOT_START = "cannot start:"
GIVES_UP_WITHIN_S = 15.0  # SQLite's busy timeout (5 s) and a start's imports, with room


async def fails_to_start(bot: BotProcess) -> tuple[str, float]:
    """Starts the bot, which must exit with 1 before it is ready: what it logged, and how long
    it took."""
    log_at = bot.log_path.stat().st_size if bot.log_path.exists() else 0
    began = time.monotonic()
    with pytest.raises(NotReady, match="exited with 1 before"):
        await bot.start(timeout=30)
    took = time.monotonic() - began
    said = bot.log_path.read_bytes()[log_at:].decode(errors="replace")
    assert took < GIVES_UP_WITHIN_S, f"{took:.1f}s to give up:\n{said}"
    return said, took


def one_line(said: str, *needles: str) -> str:
    """The one `cannot start:` line, naming each of `needles`; no traceback with it."""
    lines = [line for line in said.splitlines() if CANNOT_START in line]
    assert len(lines) == 1, said
    assert " ERROR " in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert "Traceback" not in said, said
    return lines[0]


# --------------------------------------------------------------------- a start that cannot go on


async def test_a_full_disk_at_the_first_start_exits_with_one_line(
    synapse: Synapse, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("full-start-bot")
    with tmpfs(workdir / "data", "4m") as data:
        filler = fill(data)
        bot = await new_bot(synapse, workdir, "full-start-bot", logging={"level": "INFO"})
        said, _ = await fails_to_start(bot)
        one_line(said, f"no space left on {data}", "free some space there")

        # At DEBUG the line comes with the traceback, for whoever asked for it.
        debug = await new_bot(  # the tests' bots log at DEBUG unless told otherwise
            synapse,
            tmp_path_factory.mktemp("full-start-debug"),
            "full-start-bot",
            storage={"data_dir": str(data)},
        )
        said, _ = await fails_to_start(debug)
        assert said.count(CANNOT_START) == 1 and f"no space left on {data}" in said, said
        assert "Traceback (most recent call last)" in said, said

        filler.unlink()  # space again: the same start goes through
        async with running(bot):
            pass


async def test_a_full_disk_at_login_exits_with_one_line(
    synapse: Synapse, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The database opens on a full disk (it needs no new page to be read), but a bot whose
    # session was lost logs in as a new device: its session and nio's key store for it are
    # written before anything else happens.
    workdir = tmp_path_factory.mktemp("full-login-bot")
    with tmpfs(workdir / "data", "16m") as data:
        bot = await new_bot(synapse, workdir, "full-login-bot", logging={"level": "INFO"})
        async with running(bot):
            pass  # killed, as a crash would: the database's write-ahead log stays
        (data / "session.json").unlink()
        filler = fill(data)

        said, _ = await fails_to_start(bot)
        line = one_line(said, f"no space left on {data}")
        assert "at login" in line or "session.json" in line, line

        filler.unlink()
        async with running(bot):
            pass


async def test_a_database_locked_at_the_first_start_exits_with_one_line(
    synapse: Synapse, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("locked-start-bot")
    bot = await new_bot(synapse, workdir, "locked-start-bot", logging={"level": "INFO"})
    bot.data_dir.mkdir(mode=0o700)
    # An sqlite3 shell opened on the path before the bot's first start, in a write: the bot
    # cannot create its tables.
    shell = sqlite3.connect(bot.data_dir / "bot.db", isolation_level=None)
    try:
        shell.execute("BEGIN IMMEDIATE")
        said, _ = await fails_to_start(bot)
        one_line(said, "database locked by another process", "stop it")
    finally:
        shell.execute("ROLLBACK")
        shell.close()
    async with running(bot):  # the shell closed: it starts
        pass


def write_config(workdir: Path, level: str) -> Path:
    """A config as ops write it, for the admin commands (which never reach the homeserver)."""
    config = workdir / "config.yaml"
    data: dict[str, Any] = {
        "matrix": {
            "homeserver": "http://127.0.0.1:9",
            "user_id": "@admin-cli-bot:localhost",
            "password": "unused",
        },
        "storage": {"data_dir": str(workdir / "data")},
        "roadmap": str(REPO / "roadmap.yaml"),
        "logging": {"level": level},
    }
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    return config


async def onboarding_bot(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`onboarding-bot ARGS --config CONFIG`, as ops run it."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bot", *args, "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_admin_commands_on_a_corrupt_database_say_so_in_one_line(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    workdir = tmp_path_factory.mktemp("corrupt-cli")
    (workdir / "data").mkdir()
    db = workdir / "data" / "bot.db"
    db.write_bytes(b"\x13 not a database, whatever it was " * 400)
    config = write_config(workdir, "INFO")
    for args in (
        ["status"],
        ["status", "@ann:localhost"],
        ["status", "--quarantine"],
        ["export"],
        ["backup", "--to", str(workdir / "copy.db")],
    ):
        done = await onboarding_bot(config, *args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stdout == "", (args, done.stdout)
        [line] = done.stderr.splitlines()
        assert line.startswith(f"cannot go on: database corrupt: {db}"), (args, line)
        assert "restore a backup" in line, (args, line)

    debug = await onboarding_bot(write_config(workdir, "DEBUG"), "status")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr, debug.stderr
    assert debug.stderr.splitlines()[-1].startswith("cannot go on: database corrupt:")


# --------------------------------------------------------------------------- malformed events


async def malformed(person: Person, room: str, command: str) -> list[str]:
    """Events whose content is not what the spec says, as any client (or a script) can send
    them; returns the ids of those that are commands all the same."""
    text = {"msgtype": "m.text", "body": command}
    commands = [
        await person.send(room, {**text, "m.relates_to": "x"}),
        await person.send(room, {**text, "m.relates_to": ["x", 1]}),
        await person.send(room, {**text, "m.relates_to": {"rel_type": 5, "event_id": []}}),
    ]
    await person.send(room, {**text, "format": "org.matrix.custom.html", "formatted_body": 5})
    target = commands[0]
    for relates in ("x", [target]):
        await person.send(room, {"m.relates_to": relates}, "m.reaction")
    # A key that is no string Synapse refuses itself: such a reaction never reaches the bot.
    with pytest.raises(AssertionError, match="Missing aggregation key"):
        await person.send(
            room,
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": 5}},
            "m.reaction",
        )
    for answers in ("1", None, [{"id": "1"}], ["²"]):
        vote = {
            "m.relates_to": {"rel_type": "m.reference", "event_id": target},
            "org.matrix.msc3381.poll.response": {"answers": answers},
        }
        await person.send(room, vote, "org.matrix.msc3381.poll.response")
    await person.send(room, {"m.relates_to": "x", "m.poll.response": "1"}, "m.poll.response")
    return commands


async def test_malformed_events_neither_end_the_bot_nor_come_back_to_end_it(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bot = await new_bot(synapse, tmp_path_factory.mktemp("poison-bot"), "poison-bot")
    ann = await make_person("ann-poison")
    bob = await make_person("bob-poison")
    async with running(bot):
        pid = bot.pid
        room = await open_chat(ann, bot.user_id)
        bobs = await open_chat(bob, bot.user_id)
        odd = await malformed(ann, room, "!status")
        status = await ann.say(room, "!status")
        for event_id in [*odd, status]:  # what is a command is answered, once each
            assert (await reply_to(ann, room, event_id)).body
        assert (await reply_to(bob, bobs, await bob.say(bobs, "!status"))).body
        await ann.no_more_replies(room, wait=2)
        assert bot.running and bot.pid == pid, "the bot exited"
        assert "Traceback" not in bot.log_text()
        assert await bot.stop() == 0

    # Sent while it is down, they come with its first sync (from the saved token) at start.
    odd = await malformed(ann, room, "!progress")
    async with running(bot):
        status = await ann.say(room, "!status")
        for event_id in [*odd, status]:
            assert (await reply_to(ann, room, event_id)).body
        assert (await reply_to(bob, bobs, await bob.say(bobs, "!status"))).body
        await ann.no_more_replies(room, wait=2)
        assert bot.running, "the bot exited"
        assert await bot.stop() == 0
    assert "Traceback" not in bot.log_text()
