"""Storage faults in the store and the dispatcher, caused for real on a SQLite file: another
connection's write lock, a read-only connection, corrupt pages; the quarantine of events that
keep failing for another reason. (A full disk is caused for real in the integration tests.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import peewee  # nio's key store's (matrix-nio[e2e])
import pytest
import yaml
from nio import Event, MatrixRoom, ReactionEvent

from bot.clock import ServerClock
from bot.config import Config
from bot.dispatch import Dispatcher, Incoming, Unsaved, reply_txn_id
from bot.faults import (
    BUSY,
    CORRUPT,
    FULL,
    READ_ONLY,
    AlreadyRunning,
    StorageFault,
    key_store_fault,
    kind_of,
    lock_data_dir,
)
from bot.identity import Session, read_session, write_session
from bot.matrix import QUARANTINE_AFTER, STORAGE_RETRY_CAP_S, MatrixBot, Retry
from bot.metrics import Metrics
from bot.outbox import Backoff
from bot.roadmap import Roadmap
from bot.store import CommandRecord, OutboxItem, Store
from tests.unit.common import ForgetfulHomeserver
from tests.unit.conftest import NEWCOMER, ROADMAP_FILE, ROOM, make_dispatcher

BOT = "@mentor-bot:example.org"
OTHER = "@other:example.org"

AT = datetime(2026, 3, 2, 9, tzinfo=UTC)


async def pragma(store: Store, setting: str) -> None:
    """Sets a PRAGMA on the store's own connection."""
    async with store._unit(write=False) as unit:
        unit.read(f"PRAGMA {setting}")


def test_sqlite_errors_are_told_apart_from_bugs(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError) as not_a_db:
        sqlite3.connect(garbage).execute("SELECT * FROM sqlite_master")
    assert kind_of(not_a_db.value, garbage) == CORRUPT

    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(sqlite3.OperationalError) as read_only:
        ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        ro.execute("INSERT INTO t VALUES (1)")
    assert kind_of(read_only.value, path) == READ_ONLY

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError) as busy:
        sqlite3.connect(path, timeout=0).execute("INSERT INTO t VALUES (1)")
    holder.execute("ROLLBACK")
    assert kind_of(busy.value, path) == BUSY

    with pytest.raises(sqlite3.IntegrityError) as bug:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE u (x UNIQUE)")
        db.execute("INSERT INTO u VALUES (1), (1)")
    assert kind_of(bug.value, path) is None
    assert kind_of(ValueError("a bug"), path) is None


def test_a_failure_of_nios_key_store_is_told_by_the_sqlite_error_under_peewees(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.db"
    keys = peewee.SqliteDatabase(str(path))
    keys.execute_sql("CREATE TABLE t (x UNIQUE)")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(peewee.OperationalError) as locked:
        peewee.SqliteDatabase(str(path), timeout=0).execute_sql("INSERT INTO t VALUES (1)")
    holder.execute("ROLLBACK")
    fault = key_store_fault(locked.value, path)
    assert fault is not None and fault.kind == BUSY and fault.path == path
    assert "nio's key store" in fault.statement

    keys.execute_sql("INSERT INTO t VALUES (1)")
    with pytest.raises(peewee.IntegrityError) as bug:
        keys.execute_sql("INSERT INTO t VALUES (1)")
    assert key_store_fault(bug.value, path) is None  # a constraint is no fault of the disk's
    assert key_store_fault(ValueError("a bug"), path) is None


async def test_a_command_that_cannot_be_saved_waits_and_runs_once_storage_works(
    store: Store, roadmap: Roadmap
) -> None:
    chat_dispatcher = make_dispatcher(store, roadmap)
    start = Incoming("$start", ROOM, NEWCOMER, "!start")
    assert await chat_dispatcher.handle(start)
    await pragma(store, "busy_timeout = 50")
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing, for as long as it likes

    done = Incoming("$done", ROOM, NEWCOMER, "!done")
    progress = Incoming("$progress", ROOM, "@other:example.org", "!progress")
    chatter = Incoming("$chatter", ROOM, NEWCOMER, "thanks!")
    queued: list[list[OutboxItem]] = []
    store.on_queued = queued.append
    shown: list[list[str]] = []

    async def ahead(records: Sequence[CommandRecord]) -> None:
        shown.append([r.event_id for r in records])

    with pytest.raises(Unsaved) as unsaved:
        await chat_dispatcher.handle_all(
            [done, chatter, progress], values={"sync_token": "s2"}, ahead=ahead
        )
    assert shown == [["$done", "$progress"]]  # shown before the commit that failed
    assert queued == []  # the outbox is handed nothing that was not committed
    assert await store.get_value("sync_token") is None  # nor does the token move
    assert unsaved.value.fault.kind == BUSY
    assert unsaved.value.waiting == [done, progress]  # not the chatter: it is no command
    assert store.fault is not None and store.fault.reason == "database locked by another process"
    assert "handled_events" in store.fault.statement or "BEGIN" in store.fault.statement
    assert not await store.was_handled("$done")  # nothing committed, nothing marked handled
    with pytest.raises(StorageFault):
        await store.probe()

    holder.execute("ROLLBACK")
    holder.close()
    await store.probe()
    assert store.fault is None
    done_items, _, progress_items = await chat_dispatcher.handle_all(
        [done, chatter, progress], values={"sync_token": "s2"}
    )
    assert done_items and "✓ Done:" in done_items[0].content["body"]  # no apology: it ran
    assert progress_items
    assert queued == [[*done_items, *progress_items]]
    assert await store.get_value("sync_token") == "s2"
    assert await chat_dispatcher.handle_all([done]) == [None]  # and once only


async def test_another_process_holding_the_write_lock_is_a_fault(store: Store) -> None:
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("PRAGMA busy_timeout = 0")
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StorageFault) as fault:
            await store.set_value("k", "v")
        assert fault.value.kind == BUSY
        assert fault.value.reason == "database locked by another process"
        assert await store.get_value("k") is None  # reads go on in WAL mode
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await store.set_value("k", "v")
    assert store.fault is None and await store.get_value("k") == "v"


async def test_opening_a_file_that_is_no_database_closes_what_it_opened(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    path.write_bytes(os.urandom(8192))
    before = set(threading.enumerate())  # a thread another test left may end meanwhile

    with pytest.raises(StorageFault) as fault:
        await Store.open(path, check=True)

    assert fault.value.kind == CORRUPT
    assert "restore a backup" in fault.value.advice
    for _ in range(100):  # aiosqlite's thread ends once closed: nothing keeps the process
        if not set(threading.enumerate()) - before:
            break
        await asyncio.sleep(0.01)
    assert not set(threading.enumerate()) - before, "a thread the open started is still alive"


async def test_quick_check_finds_a_damaged_table_page(tmp_path: Path, roadmap: Roadmap) -> None:
    path = tmp_path / "bot.db"
    store = await Store.open(path)
    dispatcher = make_dispatcher(store, roadmap)
    for i in range(40):
        await dispatcher.handle(Incoming(f"$s{i}", ROOM, f"@n{i}:x.org", "!start"))
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        [root] = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'newcomers'"
        ).fetchone()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)  # the page's header: its type and cell count
        f.write(b"\xff" * 12)

    with pytest.raises(StorageFault) as fault:
        await Store.open(path, check=True)
    assert fault.value.kind == CORRUPT and fault.value.statement == "PRAGMA quick_check"


async def test_an_event_failing_five_times_is_quarantined(store: Store) -> None:
    failures = [
        await store.record_failure(
            event_id="$poison",
            room_id=ROOM,
            sender=NEWCOMER,
            body="!done",
            error="KeyError: 'x'",
            at=AT,
            quarantine_after=5,
        )
        for _ in range(5)
    ]
    assert failures == [False, False, False, False, True]
    assert await store.was_handled("$poison")
    [q] = await store.quarantined()
    assert (q.event_id, q.failures, q.body, q.error) == ("$poison", 5, "!done", "KeyError: 'x'")


def test_a_second_bot_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    first = lock_data_dir(tmp_path / "data")
    try:
        with pytest.raises(
            AlreadyRunning, match=rf"another bot is running on .* \(pid {os.getpid()}\)"
        ):
            lock_data_dir(tmp_path / "data")
    finally:
        os.close(first)
    os.close(lock_data_dir(tmp_path / "data"))  # free again once the first is gone


# --------------------------------------------------------------------- a fault left for hours


def test_a_fault_left_alone_for_hours_keeps_its_retries_capped() -> None:
    # Bug: base * 2 ** failures overflowed a float after about 1025 tries (the storage retry
    # every 30 s or less: a night) and the OverflowError ended the bot.
    storage = Backoff(base=0.5, cap=STORAGE_RETRY_CAP_S)
    storage.failures = 5000
    assert 0 <= storage.next_delay() <= STORAGE_RETRY_CAP_S
    sync = Backoff()  # the homeserver's sync, retried as long as it fails
    delays = [sync.next_delay() for _ in range(5000)]
    assert max(delays) <= 60.0


# ------------------------------------------------------------------ the Matrix edge, no network


def matrix_bot(
    store: Store, dispatcher: Dispatcher, tmp_path: Path, clock: ServerClock | None = None
) -> MatrixBot:
    """The bot's Matrix edge on a real store and dispatcher; its client never connects."""
    config = Config.model_validate(
        {
            "matrix": {
                "homeserver": "https://matrix.example.org",
                "user_id": BOT,
                "password": "unused",
                "encryption": False,
            },
            "storage": {"data_dir": str(tmp_path / "bot-data")},
        }
    )
    clock = clock or ServerClock()
    return MatrixBot(config, store, dispatcher, dispatcher.team, Metrics(), clock)


def quarantined_count(bot: MatrixBot) -> float:
    return bot.metrics.registry.get_sample_value("onboarding_quarantined_total") or 0.0


def source(event_id: str, event_type: str = "m.reaction", **content: Any) -> dict[str, Any]:
    return {
        "type": event_type,
        "event_id": event_id,
        "sender": NEWCOMER,
        "origin_server_ts": int(time.time() * 1000),
        "content": content,
    }


def room_event(event_type: str, content: dict[str, Any], event_id: str) -> Any:
    """An event as nio parses it from a sync: whatever its sender put in its content."""
    return Event.parse_event(source(event_id, event_type, **content))


async def test_a_command_whose_handling_keeps_failing_is_retried_then_quarantined(
    store: Store, roadmap: Roadmap, tmp_path: Path
) -> None:
    dispatcher = make_dispatcher(store, roadmap)
    real = dispatcher.handle_all
    seen: list[list[str]] = []

    async def handle_all(msgs: Sequence[Incoming], **kwargs: Any) -> Any:
        seen.append([m.event_id for m in msgs])
        if any(m.event_id == "$poison" for m in msgs):
            raise KeyError("a bug")  # not the disk's
        return await real(msgs, **kwargs)

    dispatcher.handle_all = handle_all  # type: ignore[method-assign]
    bot = matrix_bot(store, dispatcher, tmp_path)
    fine = Incoming("$fine", ROOM, OTHER, "!start")
    poison = Incoming("$poison", ROOM, NEWCOMER, "!start")
    for attempt in range(1, QUARANTINE_AFTER):
        bot._inbox = [(fine, 0.0), (poison, 0.0)]
        with pytest.raises(Retry, match=r"event \$poison failed"):
            await bot._handle_inbox(f"s{attempt}", send_ahead=False)
        assert await store.get_value("sync_token") is None  # the sync comes again
        assert quarantined_count(bot) == 0
    assert await store.was_handled("$fine")  # the others were answered meanwhile

    bot._inbox = [(fine, 0.0), (poison, 0.0)]
    await bot._handle_inbox("s5", send_ahead=False)
    assert await store.get_value("sync_token") == "s5"
    assert quarantined_count(bot) == 1
    [q] = await store.quarantined()
    assert (q.event_id, q.failures, q.error) == ("$poison", QUARANTINE_AFTER, "KeyError: 'a bug'")

    # Skipped from now on, by this bot and by the next start's.
    restarted = matrix_bot(store, dispatcher, tmp_path)
    await restarted._remember_quarantined()
    for edge in (bot, restarted):
        seen.clear()
        edge._inbox = [(poison, 0.0)]
        await edge._handle_inbox("s6", send_ahead=False)
        assert seen == [[]]
    assert quarantined_count(bot) == 1 and quarantined_count(restarted) == 0


async def test_an_error_escaping_an_event_callback_is_counted_not_fatal(
    store: Store, roadmap: Roadmap, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bot = matrix_bot(store, make_dispatcher(store, roadmap), tmp_path)
    room = MatrixRoom(ROOM, BOT)
    event = room_event("m.room.message", {"msgtype": "m.text", "body": "!status"}, "$bad")
    calls = 0

    async def broken(room: MatrixRoom, event: Any) -> None:
        nonlocal calls
        calls += 1
        raise AttributeError("'str' object has no attribute 'get'")

    guarded = bot._guarded(broken)
    for _ in range(QUARANTINE_AFTER - 1):
        bot._failed_in_sync.clear()
        with caplog.at_level(logging.ERROR, logger="bot.matrix"):
            await guarded(room, event)  # nio's sync goes on
        assert bot._failed_in_sync == ["$bad"]  # and then comes again
    assert "event $bad (RoomMessageText) failed" in caplog.text
    bot._failed_in_sync.clear()
    await guarded(room, event)
    assert bot._failed_in_sync == [] and quarantined_count(bot) == 1
    [q] = await store.quarantined()
    assert q.event_id == "$bad" and "AttributeError" in q.error and q.body == "!status"
    await guarded(room, event)
    assert calls == QUARANTINE_AFTER  # skipped once quarantined


async def test_malformed_events_do_not_break_the_event_callbacks(
    store: Store, roadmap: Roadmap, tmp_path: Path
) -> None:
    bot = matrix_bot(store, make_dispatcher(store, roadmap), tmp_path)
    room = MatrixRoom(ROOM, BOT)
    text = {"msgtype": "m.text", "body": "!status"}
    malformed = [
        (bot._on_message, room_event("m.room.message", {**text, "m.relates_to": "x"}, "$1")),
        (bot._on_message, room_event("m.room.message", {**text, "m.relates_to": ["x"]}, "$2")),
        # nio checks a reaction's key and target; the callback does not count on it.
        (bot._on_reaction, ReactionEvent(source("$3"), "$r", 5)),  # type: ignore[arg-type]
        (bot._on_reaction, ReactionEvent(source("$4"), 7, "✅")),  # type: ignore[arg-type]
    ]
    for answers in ("1", ["²"], [{"id": "1"}]):
        vote = {
            "m.relates_to": {"rel_type": "m.reference", "event_id": "$poll"},
            "org.matrix.msc3381.poll.response": {"answers": answers},
        }
        malformed.append((bot._on_poll_response, room_event("m.poll.response", vote, "$5")))
    for callback, event in malformed:
        await callback(room, event)
    # A message whose m.relates_to is no object is still a command (it edits nothing).
    assert [m.event_id for m, _ in bot._inbox] == ["$1", "$2"]


# ----------------------------------------------------------------------- corruption met running


async def test_a_damaged_page_met_while_running_is_not_healed_by_other_writes(
    tmp_path: Path, roadmap: Roadmap, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bot.db"
    store = await Store.open(path)
    try:
        dispatcher = make_dispatcher(store, roadmap)
        for i in range(40):
            await dispatcher.handle(Incoming(f"$s{i}", ROOM, f"@n{i}:x.org", "!start"))
        with contextlib.closing(sqlite3.connect(path)) as other:
            other.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file itself
            [page_size] = other.execute("PRAGMA page_size").fetchone()
            [root] = other.execute(
                "SELECT rootpage FROM sqlite_master WHERE name = 'newcomers'"
            ).fetchone()
        with open(path, "r+b") as f:  # under the open store, as a failing disk would
            f.seek((root - 1) * page_size)
            f.write(b"\xff" * 12)

        with caplog.at_level(logging.WARNING, logger="bot.store"):
            with pytest.raises(StorageFault) as met:
                await store.newcomers([step.id for step in roadmap])
            assert met.value.kind == CORRUPT
            await store.set_value("sync_token", "s1")  # a write that misses the damage
            for _ in range(3):  # the bot's tries while it waits
                with pytest.raises(StorageFault) as probed:
                    await store.probe()
                assert probed.value.kind == CORRUPT
                assert store.fault is not None
                assert store.fault.reason == f"database corrupt: {path}"  # what /healthz says
        said = [r.getMessage() for r in caplog.records]
        assert sum("storage fault:" in line for line in said) == 1, said
        assert not any("storage works again" in line for line in said), said
    finally:
        await store.close()


# ------------------------------------------------------------------------------ start-up faults


async def test_a_connection_sqlite_cannot_open_is_a_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def cannot_open(*args: Any, **kwargs: Any) -> aiosqlite.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(aiosqlite, "connect", cannot_open)
    with pytest.raises(StorageFault) as fault:
        await Store.open(tmp_path / "bot.db")
    assert fault.value.kind == READ_ONLY
    assert fault.value.statement == f"opening {tmp_path / 'bot.db'}"


def test_a_full_disk_while_writing_the_session_is_a_fault(tmp_path: Path) -> None:
    old = Session("https://matrix.example.org", BOT, "OLD", "syt_old")
    write_session(tmp_path, old)
    # The file aside that the new session is written to, on a disk with no space left.
    aside = tmp_path / ".session.json.new"
    aside.symlink_to("/dev/full")
    with pytest.raises(StorageFault) as fault:
        write_session(tmp_path, Session("https://matrix.example.org", BOT, "NEW", "syt_new"))
    assert fault.value.kind == FULL
    assert fault.value.reason == f"data_dir: no space left on {tmp_path}"
    assert "session.json" in fault.value.statement
    assert read_session(tmp_path) == old  # the old session stands, whole
    assert not aside.exists()


# ------------------------------------------------------------ the quarantine, from the CLI


def test_status_quarantine_lists_the_quarantined_events(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def quarantine_one() -> None:
        store = await Store.open(data / "bot.db")
        try:
            for _ in range(QUARANTINE_AFTER):
                await store.record_failure(
                    event_id="$poison",
                    room_id=ROOM,
                    sender=NEWCOMER,
                    body="!done 3",
                    error="KeyError: 'x'",
                    at=AT,
                    quarantine_after=QUARANTINE_AFTER,
                )
            await store.record_failure(  # failed once: not quarantined
                event_id="$once",
                room_id=ROOM,
                sender=NEWCOMER,
                body="!skip",
                error="ValueError: y",
                at=AT,
                quarantine_after=QUARANTINE_AFTER,
            )
        finally:
            await store.close()

    asyncio.run(quarantine_one())
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "matrix": {
                    "homeserver": "https://matrix.example.org",
                    "user_id": BOT,
                    "password": "unused",
                },
                "storage": {"data_dir": str(data)},
                "roadmap": str(ROADMAP_FILE),
            }
        ),
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "bot", "status", "--quarantine", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "1 quarantined event(s):",
        f"- $poison in {ROOM} from {NEWCOMER}, {QUARANTINE_AFTER} failures, "
        "last 2026-03-02T09:00:00+00:00",
        "  message: '!done 3'",
        "  error: KeyError: 'x'",
    ]


# ------------------------------------------------- a reply that went out before a failed commit


async def test_a_reply_delivered_ahead_of_a_failed_commit_is_not_posted_again(
    store: Store, roadmap: Roadmap
) -> None:
    homeserver = ForgetfulHomeserver(BOT, ROOM)
    outbox = homeserver.outbox(store)
    await outbox.flush()  # the queue, read: nothing waits
    dispatcher = make_dispatcher(store, roadmap)
    start = Incoming("$start", ROOM, NEWCOMER, "!start")
    txn = reply_txn_id(start.event_id)

    await pragma(store, "busy_timeout = 50")
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(Unsaved):
        await dispatcher.handle_all([start], ahead=outbox.send_ahead)
    assert await outbox.delivered_ahead({txn: start.event_id}) == {start.event_id}
    outbox.ahead_done()
    holder.execute("ROLLBACK")
    holder.close()
    await store.probe()

    # Days later the fault is gone: the command runs again and is committed with its reply
    # (whether or not replies may go out ahead again by then).
    [items] = await dispatcher.handle_all([start], ahead=outbox.send_ahead)
    assert items and items[0].txn_id == txn
    await outbox.flush()
    assert len([p for p in homeserver.puts if p.endswith(f"/send/m.room.message/{txn}")]) == 1
    assert [i.txn_id for i in await store.outbox()] == []
    marked = await store.marked("$posted1")  # the step it shows, under the event posted
    assert marked is not None and marked.mark.user_id == NEWCOMER
