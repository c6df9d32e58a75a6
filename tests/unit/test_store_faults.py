"""Storage faults in the store and the dispatcher, caused for real on a SQLite file: another
connection's write lock, a read-only connection, corrupt pages; the quarantine of events that
keep failing for another reason. (A full disk is caused for real in the integration tests.)"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import peewee  # nio's key store's (matrix-nio[e2e])
import pytest

from bot.dispatch import Incoming, Unsaved
from bot.faults import (
    BUSY,
    CORRUPT,
    READ_ONLY,
    AlreadyRunning,
    StorageFault,
    key_store_fault,
    kind_of,
    lock_data_dir,
)
from bot.roadmap import Roadmap
from bot.store import CommandRecord, OutboxItem, Store
from tests.unit.conftest import NEWCOMER, ROOM, make_dispatcher

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
