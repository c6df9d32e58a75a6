"""Storage and clock faults as people cause them, against a real Synapse with the bot as its own
process: a full disk, a tool holding the database's lock, a corrupt file, a read-only or failing
disk, a second bot on the same data, a power cut, and a machine whose clock is days ahead.

Each checks what ops and newcomers see: the process up (or gone with one clear line), /healthz
saying why, no acknowledged change lost, nothing answered twice, and healing without a restart
wherever the fault clears by itself. Run as root: the tests mount filesystems."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest

from bot.dev.process import NotReady
from bot.identity import read_session
from tests.harness import MakePerson, Person, Synapse
from tests.harness.bot import BotProcess, new_bot, open_chat, running
from tests.harness.conversation import (
    answered,
    ask,
    assert_each_answered_once,
    collect_replies,
    read_only_db,
)
from tests.harness.disks import Ext4Volume, fill, sh, tmpfs
from tests.harness.listener import Listener

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
UNSAVED = "I can't save progress right now"
STANDS = "the answer above stands"
STORAGE_FAULT = "storage fault:"  # the ERROR line, once per fault
# The store tries a write again after a random pause that doubles up to 30 s: a fault held for
# the few seconds these tests hold one is found cleared within seconds.
HEALED_WITHIN_S = 15.0


# --------------------------------------------------------------------------- helpers


async def health_says(listener: Listener, status: int, *, timeout: float = 30) -> str:
    """/healthz's reason, once it answers `status` (polled)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, why = await listener.healthz()
        except aiohttp.ClientConnectionError as exc:
            raise AssertionError(f"nothing answers on {listener.base}: did the bot exit?") from exc
        if got == status:
            return why
        if time.monotonic() > deadline:
            raise AssertionError(f"/healthz not {status} within {timeout}s: {got} {why}")
        await asyncio.sleep(0.2)


def the_fault_line(bot: BotProcess) -> str:
    """The one ERROR line the fault was worth."""
    lines = [line for line in bot.log_text().splitlines() if STORAGE_FAULT in line]
    assert len(lines) == 1, lines
    assert " ERROR " in lines[0] and "statement: " in lines[0], lines[0]
    assert str(bot.data_dir / "bot.db") in lines[0], lines[0]
    return lines[0]


def still_up(bot: BotProcess, pid: int | None) -> None:
    assert bot.running and bot.pid == pid, "the bot exited or was restarted"


def log_since(bot: BotProcess, offset: int) -> str:
    return bot.log_path.read_bytes()[offset:].decode(errors="replace")


async def quiet(person: Person, room: str) -> None:
    """Waits until the bot is done with its last reply (the sync that brings it back, the sync
    token saved after it), so that the fault to come meets a command first."""
    await person.no_more_replies(room, wait=1.0)


async def waiting_commands(
    person: Person, room: str, commands: list[str], *, answered_ahead: int = 0
) -> tuple[list[str], list[str]]:
    """Sends commands the bot cannot save, and waits until the person has heard, once, that
    they wait. The first `answered_ahead` are answered before that notice (their replies went
    out while their commit was being tried), and the notice says that those answers stand.
    Returns the bodies of those answers, and the ids of the commands still to be answered."""
    sent = [await person.say(room, command) for command in commands]
    early = [await person.reply(room, timeout=30) for _ in range(answered_ahead)]
    assert [answered(r) for r in early] == sent[:answered_ahead], [r.body for r in early]
    notice = await person.reply(room, timeout=30)
    assert UNSAVED in notice.body and answered(notice) in sent, notice.body
    assert (STANDS in notice.body) == (answered_ahead > 0), notice.body
    return [r.body for r in early], sent[answered_ahead:]


async def answered_once_when_healed(
    person: Person, room: str, sent: list[str], *, cleared_at: float | None = None
) -> list[str]:
    """The waiting commands' replies' bodies, in order, each answering its command once; with
    `cleared_at` (time.perf_counter() when the fault cleared), the first came soon after."""
    replies = await collect_replies(person, room, sent, timeout=60)
    assert_each_answered_once(replies, sent)
    assert [answered(r) for r in replies] == sent, "replies out of order"
    assert not any(UNSAVED in r.body for r in replies), "told twice during one fault"
    if cleared_at is not None:
        took = replies[0].arrived - cleared_at
        assert took < HEALED_WITHIN_S, f"the first answer came {took:.1f}s after the fault cleared"
    return [r.body for r in replies]


def device_of(bot: BotProcess) -> str:
    session = read_session(bot.data_dir)
    assert session is not None, f"no readable session in {bot.data_dir}"
    return session.device_id


def done_in_db(bot: BotProcess, person: Person) -> int:
    with read_only_db(bot.data_dir) as db:
        (n,) = db.execute(
            "SELECT count(*) FROM progress WHERE user_id = ? AND state = 'done'",
            (person.user_id,),
        ).fetchone()
    return int(n)


@dataclass
class OnSmallDisk:
    """A running bot whose data_dir is a 16 MB tmpfs, and a newcomer enrolled with it in an
    encrypted chat (as Element's direct chats are: nio's key store shares the disk)."""

    bot: BotProcess
    listener: Listener
    data: Path
    person: Person
    room: str
    pid: int | None


@contextlib.asynccontextmanager
async def on_a_small_disk(
    synapse: Synapse, make_person: MakePerson, workdir: Path, name: str
) -> AsyncIterator[OnSmallDisk]:
    listener = Listener()
    with tmpfs(workdir / "data", "16m") as data:
        bot = await new_bot(synapse, workdir, f"{name}-bot", http=listener.config)
        async with running(bot):
            person = await make_person(name)
            room = await open_chat(person, bot.user_id, encrypted=True)
            assert "step 1 of" in (await ask(person, room, "!start")).body
            yield OnSmallDisk(bot, listener, data, person, room, bot.pid)


# ----------------------------------------------------------------------------------- tests


async def test_a_full_disk_is_waited_out_and_healed_without_restart(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("full-bot")
    async with on_a_small_disk(synapse, make_person, workdir, "ada-full") as run:
        bot, listener, data = run.bot, run.listener, run.data
        ada, room, pid = run.person, run.room, run.pid
        await quiet(ada, room)

        filler = fill(data)
        # The !done's reply goes out while its commit meets the full disk: it stands, and
        # the !done is recorded once the disk has room (the repeat of its reply, under the
        # same transaction id, is not shown twice).
        early, sent = await waiting_commands(ada, room, ["!done", "!progress"], answered_ahead=1)
        assert "✓ Done:" in early[0]
        assert f"no space left on {data}" in await health_says(listener, 503)
        sent.append(await ada.say(room, "!done"))  # while it waits: no second notice
        await ada.no_more_replies(room, wait=2)
        still_up(bot, pid)

        filler.unlink()
        bodies = await answered_once_when_healed(ada, room, sent, cleared_at=time.perf_counter())
        assert "1 done, 0 skipped" in bodies[0] and "✓ Done:" in bodies[1]
        await ada.no_more_replies(room, wait=2)
        assert await health_says(listener, 200) == "ok\n"
        still_up(bot, pid)
        assert done_in_db(bot, ada) == 2
        assert f"no space left on {data}" in the_fault_line(bot)
        assert await listener.metric('onboarding_storage_errors_total{kind="full"}') >= 1


async def test_a_room_key_arriving_on_a_full_disk_is_waited_out(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Bug (issue 14): nio's key store, SQLite in data_dir too, failed inside the sync with
    # "database or disk is full", and the bot exited with a traceback.
    workdir = tmp_path_factory.mktemp("full-keys-bot")
    async with on_a_small_disk(synapse, make_person, workdir, "hal-keys") as run:
        bot, listener, data, room, pid = run.bot, run.listener, run.data, run.room, run.pid
        laptop = await make_person("hal-keys")  # a new device: its own room key, by to-device

        filler = fill(data)
        await laptop.say(room, "!done")
        assert f"no space left on {data}" in await health_says(listener, 503)
        await laptop.no_more_replies(room, wait=2)
        still_up(bot, pid)

        filler.unlink()
        assert await health_says(listener, 200, timeout=60) == "ok\n"
        # The key nio could not save is lost to this run of the bot: it says so, and asks.
        reply = await laptop.reply(room, timeout=30)
        assert "✓ Done" in reply.body or "couldn't decrypt your message" in reply.body
        await laptop.no_more_replies(room, wait=2)
        still_up(bot, pid)


async def test_a_tool_holding_the_database_lock_is_waited_out(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    listener = Listener()
    bot = await new_bot(
        synapse, tmp_path_factory.mktemp("locked-db-bot"), "locked-db-bot", http=listener.config
    )
    async with running(bot):
        pid = bot.pid
        bea = await make_person("bea-locked")
        room = await open_chat(bea, bot.user_id)
        assert "step 1 of" in (await ask(bea, room, "!start")).body
        await quiet(bea, room)

        # An sqlite3 shell left in the middle of a write: the bot's writes wait 5 s, then fail.
        shell = sqlite3.connect(bot.data_dir / "bot.db", timeout=10, isolation_level=None)
        try:
            shell.execute("BEGIN IMMEDIATE")
            early, sent = await waiting_commands(
                bea, room, ["!done", "!done", "!progress"], answered_ahead=1
            )
            assert "✓ Done" in early[0]
            assert "locked by another process" in await health_says(listener, 503)
            sent.append(await bea.say(room, "!done"))  # while it waits
            await bea.no_more_replies(room, wait=2)
            still_up(bot, pid)
        finally:
            shell.execute("ROLLBACK")
            shell.close()

        bodies = await answered_once_when_healed(bea, room, sent, cleared_at=time.perf_counter())
        assert [b.split(":")[0] for b in bodies] == ["✓ Done", "Your progress", "✓ Done"]
        assert "2 done, 0 skipped" in bodies[1]
        await bea.no_more_replies(room, wait=2)
        assert await health_says(listener, 200) == "ok\n"
        still_up(bot, pid)
        assert done_in_db(bot, bea) == 3
        assert "database locked by another process" in the_fault_line(bot)
        assert await listener.metric('onboarding_storage_errors_total{kind="busy"}') >= 1


async def test_a_corrupt_database_stops_the_start_with_one_line_and_the_remedy(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # INFO, as deployed: at DEBUG the bot adds the traceback on purpose.
    bot = await new_bot(
        synapse, tmp_path_factory.mktemp("corrupt-bot"), "corrupt-bot", logging={"level": "INFO"}
    )
    cy = await make_person("cy-corrupt")
    async with running(bot):
        room = await open_chat(cy, bot.user_id)
        await ask(cy, room, "!start")
        assert "✓ Done" in (await ask(cy, room, "!done")).body
        assert await bot.stop() == 0
    db_path = bot.data_dir / "bot.db"
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file itself
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
        roots = dict(db.execute("SELECT name, rootpage FROM sqlite_master WHERE type = 'table'"))
    backup = db_path.read_bytes()
    damages = {
        "the header": (0, 100),
        "a page of progress": ((roots["progress"] - 1) * page_size, page_size),
        "a page of newcomers": ((roots["newcomers"] - 1) * page_size, page_size),
        "the kv table's page": ((roots["kv"] - 1) * page_size, page_size),
    }
    for what, (offset, length) in damages.items():
        garbage = random.Random(what).randbytes(length)
        db_path.write_bytes(backup[:offset] + garbage + backup[offset + length :])
        log_at = bot.log_path.stat().st_size
        began = time.monotonic()
        with pytest.raises(NotReady, match="exited with 1 before"):
            await bot.start(timeout=15)
        took = time.monotonic() - began
        said = log_since(bot, log_at)
        assert said.count("cannot start: database corrupt") == 1, f"{what}:\n{said}"
        assert f"database corrupt: {db_path}" in said
        assert "restore a backup: `onboarding-bot backup --to FILE`" in said, said
        assert "Traceback" not in said, f"{what}:\n{said}"
        assert took < 15, f"{what}: {took:.1f}s to give up"

    # The remedy the line gives: the copy in place of the database, and the bot goes on.
    db_path.write_bytes(backup)
    async with running(bot):
        assert "1 done, 0 skipped" in (await ask(cy, room, "!progress")).body
        await cy.no_more_replies(room, wait=1)


async def test_a_read_only_data_dir_stops_the_start_with_one_line(
    synapse: Synapse, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("ro-start-bot")
    with tmpfs(workdir / "data", "16m") as data:
        bot = await new_bot(synapse, workdir, "ro-start-bot", logging={"level": "INFO"})
        async with running(bot):
            assert await bot.stop() == 0
        sh("mount", "-o", "remount,ro", str(data))  # as a volume that came back read-only
        log_at = bot.log_path.stat().st_size
        began = time.monotonic()
        with pytest.raises(NotReady, match="exited with 1 before"):
            await bot.start(timeout=15)
        took = time.monotonic() - began
        said = log_since(bot, log_at)
        assert said.count("cannot start:") == 1 and f"data_dir read-only: {data}" in said, said
        assert "make the directory writable" in said
        assert "Traceback" not in said
        assert took < 15, f"{took:.1f}s to give up"


async def test_a_disk_error_turning_the_filesystem_read_only_is_waited_out(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("ro-bot")
    listener = Listener()
    volume = Ext4Volume(workdir / "disk.img", workdir / "data")
    try:
        bot = await new_bot(synapse, workdir, "ro-bot", http=listener.config)
        dan = await make_person("dan-ro")
        async with running(bot):
            pid = bot.pid
            room = await open_chat(dan, bot.user_id)
            await ask(dan, room, "!start")
            await quiet(dan, room)

            volume.disk_error()  # ext4 aborts its journal and goes read-only under the bot
            early, sent = await waiting_commands(dan, room, ["!done"], answered_ahead=1)
            assert "✓ Done" in early[0]
            assert f"data_dir read-only: {bot.data_dir}" in await health_says(listener, 503)
            sent.append(await dan.say(room, "!progress"))
            await dan.no_more_replies(room, wait=2)
            still_up(bot, pid)
            assert f"data_dir read-only: {bot.data_dir}" in the_fault_line(bot)
            assert await listener.metric('onboarding_storage_errors_total{kind="read_only"}') >= 1
            # This fault does not clear by itself: ext4 refuses to go read-write again after a
            # disk error (and no filesystem can be remounted read-only, or back, under files
            # open for writing). Ops stop the bot, check the filesystem and start it again.
            assert await bot.stop() == 0
        volume.repair()
        async with running(bot):
            # The !done runs again after the restart, and its reply's repeat is not shown.
            bodies = await answered_once_when_healed(dan, room, sent)
            assert "1 done, 0 skipped" in bodies[0]
            await dan.no_more_replies(room, wait=2)
        assert done_in_db(bot, dan) == 1
    finally:
        volume.close()


async def test_a_second_bot_on_the_same_data_dir_is_refused(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    first = await new_bot(synapse, tmp_path_factory.mktemp("twin-bot"), "twin-bot")
    eve = await make_person("eve-twin")
    async with running(first):
        pid = first.pid
        room = await open_chat(eve, first.user_id)
        await ask(eve, room, "!start")

        second = await new_bot(
            synapse,
            tmp_path_factory.mktemp("twin-bot-again"),
            "twin-bot",
            storage={"data_dir": str(first.data_dir)},
        )
        began = time.monotonic()
        with pytest.raises(NotReady, match="exited with 1 before"):
            await second.start(timeout=15)
        took = time.monotonic() - began
        said = second.log_text()
        assert said.count(f"another bot is running on {first.data_dir} (pid {pid})") == 1, said
        assert "Traceback" not in said
        assert took < 10, f"{took:.1f}s to give up"

        still_up(first, pid)
        assert "✓ Done" in (await ask(eve, room, "!done")).body
        await eve.no_more_replies(room, wait=1)


def faketime(offset: str) -> dict[str, str]:
    """The environment that runs a process with its clock `offset` off ("+3d"); monotonic
    clocks stay real, as NTP would leave them."""
    if not LIBFAKETIME.exists():
        raise AssertionError(f"{LIBFAKETIME} is missing: apt-get install faketime")
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME": offset,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


async def test_a_clock_days_ahead_goes_by_the_homeservers(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    listener = Listener()
    bot = await new_bot(
        synapse,
        tmp_path_factory.mktemp("clock-bot"),
        "clock-bot",
        http=listener.config,
        env=faketime("+3d"),
    )
    fay = await make_person("fay-clock")
    async with running(bot):
        room = await open_chat(fay, bot.user_id)  # a chat it joins while 3 days ahead
        assert "step 1 of" in (await ask(fay, room, "!start")).body
        assert await listener.metric("onboarding_clock_skewed") == 1
        offset = await listener.metric("onboarding_clock_offset_seconds")
        assert abs(offset + 3 * 86400) < 60, offset
        warned = re.search(r"this machine's clock is ([+-]\d+) s off", bot.log_text())
        assert warned is not None and abs(int(warned[1]) - 3 * 86400) < 60
        assert await bot.stop() == 0
    now = time.time()
    with read_only_db(bot.data_dir) as db:
        (joined_ms,) = db.execute(
            "SELECT joined_at_ms FROM rooms WHERE room_id = ?", (room,)
        ).fetchone()
        (enrolled,) = db.execute(
            "SELECT enrolled_at FROM newcomers WHERE user_id = ?", (fay.user_id,)
        ).fetchone()
    assert abs(joined_ms / 1000 - now) < 60, "the join time is this machine's, not the server's"
    assert abs(datetime.fromisoformat(enrolled).timestamp() - now) < 60, enrolled

    bot.env.clear()  # NTP fixed the clock
    async with running(bot):
        assert "✓ Done" in (await ask(fay, room, "!done")).body
        assert await listener.metric("onboarding_clock_skewed") == 0
        await fay.no_more_replies(room, wait=1)


async def test_a_power_cut_loses_no_acknowledged_change(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("power-bot")
    volume = Ext4Volume(workdir / "disk.img", workdir / "data")
    try:
        bot = await new_bot(synapse, workdir, "power-bot")
        gil = await make_person("gil-power")
        async with running(bot):  # its first start: a new device, identity and database
            device = device_of(bot)
            room = await open_chat(gil, bot.user_id)
            await ask(gil, room, "!start")
            for _ in range(3):
                assert "✓ Done" in (await ask(gil, room, "!done")).body
            # Power goes the moment the last answer arrived: whatever was not on the disk yet
            # (page cache, the journal's last commit) is gone, and so is the process.
            volume.pull_the_plug()
            bot.kill()
        volume.repair()
        async with running(bot):
            assert device_of(bot) == device, "the bot came back as a new device"
            assert "3 done, 0 skipped" in (await ask(gil, room, "!progress")).body
            await gil.no_more_replies(room, wait=3)
        assert done_in_db(bot, gil) == 3
    finally:
        volume.close()
