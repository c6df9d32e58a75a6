"""The store: the only module that writes SQL. SQLite through aiosqlite's public API, one
transaction a method (see `Store._unit`).

The database is the bot's source of truth: progress, the append-only activity log, the events
already handled, the replies not yet delivered (outbox) and the sync token all live here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from bot.faults import CORRUPT, IO, StorageFault, fault_from, noting
from bot.nudges import Candidate
from bot.ops import (
    AnswerCheck,
    AskCheck,
    Mark,
    MarkFinishAnnounced,
    Op,
    RecordNudge,
    Send,
    SetMentor,
    SetPause,
    SetTimezone,
)
from bot.progress import (
    UNDOABLE,
    Action,
    ActivityEntry,
    Change,
    CheckAnswer,
    NewcomerInfo,
    OpenCheck,
    Progress,
    State,
    Undoable,
    undoable,
)
from bot.progress import apply as apply_change

log = logging.getLogger(__name__)
T = TypeVar("T")
Migration = Callable[[aiosqlite.Connection], Awaitable[None]]
Params = Sequence[Any] | Mapping[str, Any]


def ts(at: datetime) -> str:
    """Timestamps are stored as ISO-8601 UTC text, which sorts in time order."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def parse_ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


async def _script(db: aiosqlite.Connection, sql: str) -> None:
    """Runs statements one by one: executescript() would commit the migration's transaction."""
    for statement in sql.split(";"):
        if statement.strip():
            await db.execute(statement)


async def _v1(db: aiosqlite.Connection) -> None:
    await _script(
        db,
        """
        CREATE TABLE newcomers (
            user_id          TEXT PRIMARY KEY,
            enrolled_at      TEXT NOT NULL,
            current_step     TEXT,
            last_activity_at TEXT NOT NULL
        );
        CREATE TABLE progress (
            user_id    TEXT NOT NULL REFERENCES newcomers(user_id),
            step_id    TEXT NOT NULL,
            state      TEXT NOT NULL CHECK (state IN ('pending','learning','done','skipped')),
            changed_at TEXT NOT NULL,
            PRIMARY KEY (user_id, step_id)
        ) WITHOUT ROWID;
        -- Append-only: rows are never updated or deleted, and step ids are not foreign keys,
        -- so the log survives roadmap edits.
        CREATE TABLE activity (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id      TEXT NOT NULL REFERENCES newcomers(user_id),
            actor        TEXT NOT NULL,
            action       TEXT NOT NULL,
            step_id      TEXT,
            from_state   TEXT,
            to_state     TEXT,
            prev_current TEXT,
            new_current  TEXT,
            undoes       INTEGER REFERENCES activity(id),
            event_id     TEXT,
            at           TEXT NOT NULL
        );
        CREATE INDEX activity_by_user ON activity (user_id, id);
        CREATE UNIQUE INDEX activity_undone ON activity (undoes) WHERE undoes IS NOT NULL;
        CREATE TABLE handled_events (
            event_id   TEXT PRIMARY KEY,
            room_id    TEXT NOT NULL,
            sender     TEXT NOT NULL,
            handled_at TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE outbox (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            txn_id     TEXT NOT NULL UNIQUE,
            room_id    TEXT NOT NULL,
            content    TEXT NOT NULL,
            created_at TEXT NOT NULL,
            attempts   INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE rooms (
            room_id      TEXT PRIMARY KEY,
            joined_at_ms INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE kv (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID;
        """,
    )


async def _v2(db: aiosqlite.Connection) -> None:
    """Mentors, pauses, time zones, nudges; outbox messages may address a user's direct chat."""
    await _script(
        db,
        """
        ALTER TABLE newcomers ADD COLUMN mentor TEXT;
        ALTER TABLE newcomers ADD COLUMN paused_until TEXT;
        ALTER TABLE newcomers ADD COLUMN timezone TEXT;
        ALTER TABLE newcomers ADD COLUMN finished_at TEXT;
        ALTER TABLE newcomers ADD COLUMN last_nudged_at TEXT;
        ALTER TABLE newcomers ADD COLUMN nudges_in_row INTEGER NOT NULL DEFAULT 0;
        -- The nudge sweep reads only unfinished newcomers, oldest activity first.
        CREATE INDEX newcomers_idle ON newcomers (last_activity_at) WHERE finished_at IS NULL;
        CREATE TABLE nudges (
            id       INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id  TEXT NOT NULL REFERENCES newcomers(user_id),
            kind     TEXT NOT NULL CHECK (kind IN ('nudge', 'escalation')),
            step_id  TEXT,
            actor    TEXT NOT NULL,
            sent_at  TEXT NOT NULL
        );
        CREATE INDEX nudges_by_user ON nudges (user_id, id);
        CREATE TABLE direct_rooms (
            user_id TEXT PRIMARY KEY,
            room_id TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE outbox_v2 (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            txn_id     TEXT NOT NULL UNIQUE,
            room_id    TEXT,
            to_user    TEXT,
            content    TEXT NOT NULL,
            created_at TEXT NOT NULL,
            attempts   INTEGER NOT NULL DEFAULT 0,
            CHECK (room_id IS NOT NULL OR to_user IS NOT NULL)
        );
        INSERT INTO outbox_v2 (id, txn_id, room_id, content, created_at, attempts)
            SELECT id, txn_id, room_id, content, created_at, attempts FROM outbox;
        DROP TABLE outbox;
        ALTER TABLE outbox_v2 RENAME TO outbox
        """,
    )


async def _v3(db: aiosqlite.Connection) -> None:
    """A message may go out unencrypted (the notice to a device that cannot get room keys) and
    may wait behind replies (nudges, digests); rooms remember who invited the bot; a
    newcomer's finish is announced once."""
    await _script(
        db,
        """
        ALTER TABLE outbox ADD COLUMN encrypted INTEGER NOT NULL DEFAULT 1;
        ALTER TABLE outbox ADD COLUMN background INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE rooms ADD COLUMN inviter TEXT;
        CREATE INDEX rooms_by_inviter ON rooms (inviter) WHERE inviter IS NOT NULL;
        ALTER TABLE newcomers ADD COLUMN finish_announced_at TEXT;
        -- Who finished before this version was announced then: not again after an !undo.
        UPDATE newcomers SET finish_announced_at = finished_at WHERE finished_at IS NOT NULL
        """,
    )


# Applied in order at start; the database's PRAGMA user_version is the count applied so far.
async def _v4(db: aiosqlite.Connection) -> None:
    """Events that failed again and again for a reason that is not the disk's (a bug, most
    likely): kept with the error and skipped, instead of stopping the bot at every restart."""
    await _script(
        db,
        """
        CREATE TABLE quarantine (
            event_id        TEXT PRIMARY KEY,
            room_id         TEXT NOT NULL,
            sender          TEXT NOT NULL,
            body            TEXT NOT NULL,
            error           TEXT NOT NULL,
            failures        INTEGER NOT NULL,
            first_failed_at TEXT NOT NULL,
            last_failed_at  TEXT NOT NULL,
            quarantined_at  TEXT
        ) WITHOUT ROWID
        """,
    )


async def _v5(db: aiosqlite.Connection) -> None:
    """Messages that mean something once sent (a step shown, a check asked as a poll) are
    remembered by their event id, for the reactions and poll responses that come back; the
    knowledge check a newcomer was asked, and every answer."""
    await _script(
        db,
        """
        ALTER TABLE outbox ADD COLUMN event_type TEXT NOT NULL DEFAULT 'm.room.message';
        ALTER TABLE outbox ADD COLUMN mark TEXT;
        CREATE TABLE marked_events (
            event_id    TEXT PRIMARY KEY,
            room_id     TEXT NOT NULL,
            kind        TEXT NOT NULL,
            user_id     TEXT NOT NULL,
            step_id     TEXT NOT NULL,
            check_index INTEGER,
            sent_at     TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX marked_events_quiz ON marked_events (user_id, kind, sent_at);
        CREATE TABLE open_checks (
            user_id     TEXT PRIMARY KEY,
            step_id     TEXT NOT NULL,
            check_index INTEGER NOT NULL,
            room_id     TEXT NOT NULL,
            asked_at    TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE check_answers (
            id          INTEGER PRIMARY KEY,
            user_id     TEXT NOT NULL,
            step_id     TEXT NOT NULL,
            check_index INTEGER NOT NULL,
            correct     INTEGER NOT NULL,
            at          TEXT NOT NULL
        );
        CREATE INDEX check_answers_user ON check_answers (user_id, step_id);
        CREATE INDEX check_answers_at ON check_answers (at);
        """,
    )


MIGRATIONS: tuple[Migration, ...] = (_v1, _v2, _v3, _v4, _v5)


@dataclass(frozen=True)
class MarkedEvent:
    """A message the bot sent that reactions or poll responses may act on (see `Mark`)."""

    event_id: str
    room_id: str
    mark: Mark


@dataclass(frozen=True)
class Quarantined:
    event_id: str
    room_id: str
    sender: str
    body: str
    error: str
    failures: int
    first_failed_at: datetime
    last_failed_at: datetime


@dataclass(frozen=True)
class OutboxItem:
    id: int
    txn_id: str
    room_id: str | None  # None until the direct chat with `to_user` is found or made
    content: dict[str, Any]
    attempts: int = 0
    to_user: str | None = None
    encrypted: bool = True  # False: sent in the clear even in an encrypted room
    background: bool = False  # a nudge or digest: sent after the replies waiting
    event_type: str = "m.room.message"
    mark: Mark | None = None


@dataclass(frozen=True)
class CommandRecord:
    """What one handled command writes: committed together with the event marked handled."""

    event_id: str
    room_id: str
    sender: str
    changes: tuple[Change, ...]
    ops: tuple[Op, ...]
    messages: tuple[tuple[str, Send], ...]  # (txn id, message); the first is the reply
    at: datetime
    finished: bool | None = None  # whether the sender has now finished (None: unchanged)


class _Unit:
    """The statements of one unit of work (see `Store._unit`), run in aiosqlite's worker thread.

    Every aiosqlite call is a round trip between the event loop and that thread, and a round
    trip costs more than the SQL of a command. So statements are queued, not awaited one by one,
    and `flush` waits once for all of them. They run in the order queued: each is a task that
    hands its call to aiosqlite when it first runs, asyncio first runs tasks in the order they
    were created, and aiosqlite runs a connection's calls in the order they were handed over.

    BEGIN goes out with the unit's first reads (a read that ran outside a transaction would harm
    nothing), but the first write waits until BEGIN has succeeded: a write queued behind a
    failed BEGIN would commit on its own.
    """

    def __init__(
        self, db: aiosqlite.Connection, write: bool, synchronous: str | None = None
    ) -> None:
        self.db = db  # the migrations await their statements on it one by one
        # Newcomers' progress as this unit leaves it (None: not known): cached once committed.
        self.progress: dict[str, Progress | None] = {}
        # Messages this unit queued for the outbox: handed to `Store.on_queued` once committed.
        self.outbox: list[OutboxItem] = []
        self._queued: list[asyncio.Task[Any]] = []
        self._may_write = write
        self._writing = False
        self._ended = False
        if synchronous is not None:  # only outside a transaction
            self._queue(_execute(db, f"PRAGMA synchronous = {synchronous}"))
        # IMMEDIATE: a write unit holds SQLite's write lock from the start, so no other
        # connection's write can come between its reads and its writes.
        self._queue(_execute(db, "BEGIN IMMEDIATE" if write else "BEGIN"))

    def _queue(self, call: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        if self._ended:
            raise RuntimeError("this unit of work has ended")
        task = asyncio.ensure_future(call)
        self._queued.append(task)
        return task

    def call(self, call: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Queues an aiosqlite call (not yet awaited) that writes nothing, such as `backup`."""
        return self._queue(call)

    def read(self, sql: str, params: Params = ()) -> asyncio.Task[list[aiosqlite.Row]]:
        """Queues a query; the task's result is its rows."""
        return self._queue(_fetch(self.db, sql, params))

    async def fetch(self, sql: str, params: Params = ()) -> list[aiosqlite.Row]:
        """A query's rows, once it and everything queued before it have run."""
        rows = self.read(sql, params)
        await self.flush()
        return rows.result()

    async def write(self, sql: str, params: Params = ()) -> asyncio.Task[list[aiosqlite.Row]]:
        """Queues a statement that writes; the task's result is its RETURNING rows."""
        await self.begin_writing()
        return self._queue(_fetch(self.db, sql, params))

    async def write_many(self, sql: str, rows: Sequence[Params]) -> None:
        """Queues a statement that writes, to run once for each set of parameters, in order."""
        if rows:
            await self.begin_writing()
            self._queue(_execute_many(self.db, sql, rows))

    async def begin_writing(self) -> None:
        """Waits, before the unit's first write, until BEGIN IMMEDIATE has succeeded."""
        if not self._writing:
            if not self._may_write:
                raise RuntimeError("a read-only unit of work cannot write")
            await self.flush()
            self._writing = True

    async def end(self) -> None:
        """Commits, once everything queued has run without an error.

        A read-only unit sends its COMMIT along with its queries, in the same round trip: it has
        nothing to undo if one fails. A unit that writes sends COMMIT only once all its writes
        have succeeded.
        """
        if self._ended:
            return
        if self._may_write:
            await self.flush()
            await _execute(self.db, "COMMIT")
        else:
            self._queue(_execute(self.db, "COMMIT"))
            await self.flush()
        self._ended = True

    async def flush(self) -> None:
        """Waits until everything queued has run; then raises the first error, if any."""
        queued = list(self._queued)
        if queued:
            # Not gather: cancelling this wait must not cancel a call aiosqlite is running.
            await asyncio.wait(queued)
        self._queued = [task for task in self._queued if not task.done()]
        errors = [task.exception() for task in queued]
        for error in errors:
            if error is not None:
                raise error

    async def settle(self) -> None:
        """Waits until everything queued has run, errors or not: nothing may follow ROLLBACK."""
        queued, self._queued = self._queued, []
        if queued:
            await asyncio.wait(queued)
        for task in queued:
            task.exception()  # retrieved: the error that matters is already on its way


async def _fetch(db: aiosqlite.Connection, sql: str, params: Params) -> list[aiosqlite.Row]:
    try:
        return list(await db.execute_fetchall(sql, params))
    except sqlite3.Error as exc:
        noting(exc, sql)
        raise


async def _execute(db: aiosqlite.Connection, sql: str) -> None:
    try:
        await db.execute(sql)
    except sqlite3.Error as exc:
        noting(exc, sql)
        raise


async def _execute_many(db: aiosqlite.Connection, sql: str, rows: Sequence[Params]) -> None:
    try:
        await db.executemany(sql, rows)
    except sqlite3.Error as exc:
        noting(exc, sql)
        raise


# The fewest parameters a statement may have in any SQLite build (newer builds allow 32766).
_MAX_PARAMS = 999


async def _write_rows(
    unit: _Unit, sql: str, row: str, rows: Sequence[Sequence[Any]]
) -> list[asyncio.Task[list[aiosqlite.Row]]]:
    """Queues `sql` with `{rows}` spelled out as one `row` for each of `rows`, in as few
    statements as SQLite's limit on parameters allows; the tasks' results are RETURNING rows."""
    per = max(1, _MAX_PARAMS // row.count("?"))
    return [
        await unit.write(
            sql.format(rows=", ".join([row] * len(rows[i : i + per]))),
            [value for item in rows[i : i + per] for value in item],
        )
        for i in range(0, len(rows), per)
    ]


class SchemaTooNew(RuntimeError):
    """The database was written by a newer bot."""


def _open_fault(error: BaseException, path: Path) -> StorageFault:
    return fault_from(error, path) or StorageFault(IO, path, f"creating {path}", str(error))


class Store:
    """One connection, one writer: the bot process is the only one that writes the database.

    That makes a write-through cache of newcomers' progress safe: every unit of work that
    changes a cached newcomer updates (or drops) the entry as it commits (see `_unit`), so
    `load_progress` answers from memory exactly what the database would say.
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
        path: Path,
        cache_size: int = 1024,
        on_fault: Callable[[StorageFault], None] | None = None,
    ) -> None:
        self._db = db
        self._lock = asyncio.Lock()
        self.path = path
        # The storage fault the last unit of work met, until a unit that writes succeeds.
        self.fault: StorageFault | None = None
        self._on_fault = on_fault
        # Told of every message queued, right after its COMMIT: the outbox keeps its queue in
        # memory from there instead of reading the table again for each message.
        self.on_queued: Callable[[list[OutboxItem]], None] | None = None
        self._joined: dict[str, int] = {}  # room -> when the bot joined it (room_joined_at)
        # Written only in `_unit`, after COMMIT and under the lock; read on the event loop.
        self._progress: dict[str, Progress] = {}
        self._cache_size = cache_size
        self._synchronous: str | None = "FULL"  # as `open` sets it; None: not known

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        check: bool = False,
        on_fault: Callable[[StorageFault], None] | None = None,
    ) -> Store:
        """Opens (creating, migrating) the database. Whatever fails closes what was opened and
        raises: a StorageFault for the disk, the directory or the file (corrupt: with `check`,
        `PRAGMA quick_check` looks at every page first), RuntimeError for a newer schema."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # SQLite gives the -wal and -shm files the database's mode: make it owner-only first.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            os.chmod(path, 0o600)
        except OSError as exc:
            noting(exc, f"creating {path}")
            raise _open_fault(exc, path) from exc
        try:
            db = await aiosqlite.connect(path, isolation_level=None)  # stops its thread if not
        except sqlite3.Error as exc:
            noting(exc, f"opening {path}")
            raise _open_fault(exc, path) from exc
        try:
            db.row_factory = aiosqlite.Row
            await _execute(db, "PRAGMA busy_timeout = 5000")
            await _execute(db, "PRAGMA journal_mode = WAL")
            await _execute(db, "PRAGMA foreign_keys = ON")
            # FULL: a change the bot has acknowledged is on disk, whatever happens to the
            # machine (see the README's "Storage"); bookkeeping units say otherwise (`_unit`).
            await _execute(db, "PRAGMA synchronous = FULL")
            store = cls(db, path, on_fault=on_fault)
            if check:
                await store._quick_check()
            await store._migrate()
        except BaseException as exc:
            await db.close()  # else aiosqlite's thread keeps the process alive
            if isinstance(exc, StorageFault):
                raise
            fault = fault_from(exc, path)
            if fault is None:
                raise
            raise fault from exc
        return store

    async def _quick_check(self) -> None:
        rows = await self._read("PRAGMA quick_check")
        problems = [str(row[0]) for row in rows if row[0] != "ok"]
        if problems:
            error = sqlite3.DatabaseError("; ".join(problems[:3]))
            raise StorageFault(CORRUPT, self.path, "PRAGMA quick_check", str(error))

    async def close(self) -> None:
        async with self._lock:
            await self._db.close()

    @asynccontextmanager
    async def _unit(self, write: bool, durable: bool = True) -> AsyncIterator[_Unit]:
        """One unit of work in one transaction: the only way the store reaches the database.

        The lock keeps units apart on the one connection; BEGIN (IMMEDIATE for a unit that
        writes) makes all of a unit's statements see one snapshot and commit or fail together.

        A unit that writes is on disk when it ends (synchronous FULL: the commit waits for the
        disk), unless it is not `durable`: bookkeeping that the homeserver's re-delivery and its
        transaction ids make good if a power cut takes it back (what was sent, a sync token
        past no command, the bot's own follow-ups). Such a commit (synchronous NORMAL) skips
        the disk flush; the next durable commit flushes it too, and a power cut can only take
        back the newest commits, in order, so what an acknowledged change depends on stays.

        The progress cache changes here only, on the event loop, after COMMIT and under the
        lock; if the unit fails, the newcomers it was changing are dropped from the cache.
        """
        async with self._lock:
            synchronous = "FULL" if durable or not write else "NORMAL"
            switch = synchronous if write and synchronous != self._synchronous else None
            unit = _Unit(self._db, write, switch)
            if switch is not None:
                self._synchronous = None  # unknown until the unit has run
            try:
                yield unit
                await unit.end()
            except BaseException as exc:
                await unit.settle()
                for user_id in unit.progress:
                    self._progress.pop(user_id, None)
                await self._roll_back()
                fault = fault_from(exc, self.path)
                if fault is None:
                    raise
                self._faulted(fault)
                raise fault from exc
            if switch is not None:
                self._synchronous = switch
            # A damaged page stays damaged however many writes elsewhere succeed: only a
            # probe that finds every page sound clears corruption (see `probe`).
            if write and self.fault is not None and self.fault.kind != CORRUPT:
                log.warning("storage works again: %s is cleared", self.fault.reason)
                self.fault = None
            for user_id, progress in unit.progress.items():
                if progress is None:
                    self._progress.pop(user_id, None)
                else:
                    self._remember(progress)
            if unit.outbox and self.on_queued is not None:
                self.on_queued(unit.outbox)

    async def _roll_back(self) -> None:
        if not self._db.in_transaction:  # a failed statement or COMMIT may have ended it
            return
        try:
            await self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:  # the disk that failed the unit may fail this too
            log.warning("ROLLBACK failed too: %s", exc)

    def _faulted(self, fault: StorageFault) -> None:
        """One ERROR line per fault (not per retry), with the statement and the path."""
        if self.fault is None or self.fault.kind != fault.kind:
            log.error("storage fault: %s", fault)
        self.fault = fault
        # What the cache holds may be ahead of or behind the disk now: read it again.
        self._progress.clear()
        if self._on_fault is not None:
            self._on_fault(fault)

    async def probe(self) -> None:
        """A write, to learn whether a storage fault has cleared; raises it if not.

        A corrupt database does not heal by itself, and a write that misses the damaged page
        proves nothing: after corruption every page is checked first (`PRAGMA quick_check`,
        a read), and the fault stays until none is damaged (in practice: until a backup is
        restored and the bot restarted)."""
        corrupt = self.fault if self.fault is not None and self.fault.kind == CORRUPT else None
        if corrupt is not None:
            try:
                await self._quick_check()
            except StorageFault as still:
                if still is not self.fault:  # found by the check, not met by its read
                    self._faulted(still)  # the same kind: no second ERROR line
                raise
        await self._write(
            "INSERT INTO kv (key, value) VALUES ('probe', '1') "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        )
        if corrupt is not None and self.fault is corrupt:
            log.warning("storage works again: %s is cleared", corrupt.reason)
            self.fault = None

    async def _read(self, sql: str, params: Params = ()) -> list[aiosqlite.Row]:
        """A unit of work of one query: one round trip."""
        async with self._unit(write=False) as unit:
            rows = unit.read(sql, params)
        return rows.result()

    async def _write(self, sql: str, params: Params = (), durable: bool = True) -> None:
        """A unit of work of one statement."""
        async with self._unit(write=True, durable=durable) as unit:
            await unit.write(sql, params)

    async def export(self) -> dict[str, list[dict[str, Any]]]:
        """Every newcomer, progress row and activity entry, as plain rows (for the admin CLI)."""
        async with self._unit(write=False) as unit:
            tables = {
                table: unit.read(f"SELECT * FROM {table} ORDER BY {order}")
                for table, order in (
                    ("newcomers", "user_id"),
                    ("progress", "user_id, step_id"),
                    ("activity", "id"),
                )
            }
        return {table: [dict(r) for r in rows.result()] for table, rows in tables.items()}

    async def backup(self, target: Path) -> None:
        """A consistent copy through SQLite's online backup API: safe while the bot runs."""
        dest = sqlite3.connect(target)
        try:
            async with self._unit(write=False) as unit:
                unit.call(unit.db.backup(dest))
        finally:
            dest.close()
        os.chmod(target, 0o600)

    def size_bytes(self) -> int:
        """The database with its write-ahead log, on disk."""
        files = (self.path, self.path.with_name(self.path.name + "-wal"))
        return sum(f.stat().st_size for f in files if f.exists())

    async def _migrate(self) -> None:
        [row] = await self._read("PRAGMA user_version")
        version = row[0]
        if version > len(MIGRATIONS):
            raise SchemaTooNew(
                f"{self.path}: database schema version {version} is newer than this bot "
                f"understands ({len(MIGRATIONS)}); upgrade the bot or restore a backup"
            )
        for number, migration in enumerate(MIGRATIONS[version:], version + 1):
            async with self._unit(write=True) as unit:
                await unit.begin_writing()
                await migration(unit.db)
                await unit.write(f"PRAGMA user_version = {number:d}")

    # --- progress -------------------------------------------------------------------------

    async def load_progress(self, user_id: str) -> Progress:
        cached = self._progress.get(user_id)
        if cached is not None:
            return cached
        async with self._unit(write=False) as unit:
            row = unit.read("SELECT * FROM newcomers WHERE user_id = ?", (user_id,))
            states = unit.read("SELECT step_id, state FROM progress WHERE user_id = ?", (user_id,))
            last = unit.read(_LAST_UNDOABLE, (user_id, *UNDOABLE))
            await unit.end()
            progress = _progress_from(user_id, row.result(), states.result(), last.result())
            unit.progress[user_id] = progress
        return progress

    def _remember(self, progress: Progress) -> None:
        """Caches a newcomer's progress as committed; oldest out first."""
        cache = self._progress
        cache.pop(progress.user_id, None)
        cache[progress.user_id] = progress
        if len(cache) > self._cache_size:
            del cache[next(iter(cache))]

    async def history(self, user_id: str, limit: int = 20) -> list[ActivityEntry]:
        rows = await self._read(
            "SELECT id, user_id, actor, action, step_id, from_state, to_state, at "
            "FROM activity WHERE user_id = ? ORDER BY id DESC LIMIT ?",
            (user_id, limit),
        )
        return [
            ActivityEntry(
                r["id"],
                r["user_id"],
                r["actor"],
                r["action"],
                r["step_id"],
                r["from_state"],
                r["to_state"],
                datetime.fromisoformat(r["at"]),
            )
            for r in rows
        ]

    # --- commands: handled events and the outbox ------------------------------------------

    async def was_handled(self, event_id: str) -> bool:
        rows = await self._read("SELECT 1 FROM handled_events WHERE event_id = ?", (event_id,))
        return bool(rows)

    async def commit_command(
        self,
        *,
        event_id: str,
        room_id: str,
        sender: str,
        changes: Iterable[Change],
        ops: Iterable[Op] = (),
        messages: Iterable[tuple[str, Send]],
        at: datetime,
        finished: bool | None = None,
    ) -> list[OutboxItem] | None:
        """Records the event as handled, applies its changes and queues its messages, atomically.

        The first message is the reply. Returns None (and changes nothing) if the event was
        handled already. Any command from an enrolled newcomer counts as activity.
        """
        record = CommandRecord(
            event_id, room_id, sender, tuple(changes), tuple(ops), tuple(messages), at, finished
        )
        return (await self.commit_commands([record]))[0]

    async def commit_commands(
        self, records: Sequence[CommandRecord], values: Mapping[str, str] | None = None
    ) -> list[list[OutboxItem] | None]:
        """Group commit: several commands in one transaction, one disk write.

        Each record is what `commit_command` does with one command, in order; a record whose
        event was handled already changes nothing and gets None. `values` are set (as by
        `set_value`) in the same transaction: the sync token that moves past these commands.
        """
        if not records:
            if values:  # a sync past no command: re-delivered after a power cut, and handled
                await self.set_values(values, durable=False)
            return []
        async with self._unit(write=True) as unit:
            # Read with BEGIN, in one round trip: the unit holds the write lock from BEGIN on,
            # so no event can be marked handled between this read and the writes below.
            handled = await unit.fetch(
                "SELECT event_id FROM handled_events "
                "WHERE event_id IN (SELECT value FROM json_each(?))",
                (json.dumps([r.event_id for r in records]),),
            )
            seen = {row["event_id"] for row in handled}
            is_new: list[bool] = []
            for r in records:  # the first record with a new event id handles it
                is_new.append(r.event_id not in seen)
                seen.add(r.event_id)
            fresh = [r for r, n in zip(records, is_new, strict=True) if n]
            unit.progress.update(dict.fromkeys(u for r in fresh for u in _users_cached(r)))

            await unit.write_many(
                "INSERT INTO handled_events (event_id, room_id, sender, handled_at) "
                "VALUES (?, ?, ?, ?)",
                [(r.event_id, r.room_id, r.sender, ts(r.at)) for r in fresh],
            )
            runs = [(run, await _write_run(unit, run)) for run in _runs(fresh)]
            queued = await _write_messages(unit, [(m, ts(r.at)) for r in fresh for m in r.messages])
            if values:
                await _write_values(unit, values)
            await unit.flush()

            latest: dict[str, Progress | None] = {}  # after this unit; None: not known
            for run, written in runs:
                entry_ids, last_undoable = iter(written.entry_ids()), written.last_undoable()
                for r in run:
                    ids = [next(entry_ids) for _ in r.changes]
                    known = latest[r.sender] if r.sender in latest else self._progress.get(r.sender)
                    latest[r.sender] = _progress_after(known, r, ids, last_undoable)
                    latest.update(dict.fromkeys(_users_of(r.ops)))
            unit.progress.update(latest)
            items = queued.items()
            unit.outbox.extend(items.values())
        return [
            [items.pop(txn_id) for txn_id, _ in r.messages if txn_id in items] if n else None
            for r, n in zip(records, is_new, strict=True)
        ]

    async def commit_job(
        self, *, ops: Iterable[Op], messages: Iterable[tuple[str, Send]], at: datetime
    ) -> list[OutboxItem]:
        """A scheduled job's writes and messages, atomically; a message queued before is skipped."""
        when = ts(at)
        ops = list(ops)
        async with self._unit(write=True) as unit:
            unit.progress.update(dict.fromkeys(_users_of(ops)))
            await _write_ops(unit, [(op, when) for op in ops])
            queued = await _write_messages(unit, [(m, when) for m in messages])
            await unit.flush()
            unit.outbox.extend(queued.items().values())
        return unit.outbox

    async def outbox(self) -> list[OutboxItem]:
        rows = await self._read(
            "SELECT id, txn_id, room_id, to_user, content, attempts, encrypted, background, "
            "event_type, mark FROM outbox ORDER BY id"
        )
        return [
            OutboxItem(
                r["id"],
                r["txn_id"],
                r["room_id"],
                json.loads(r["content"]),
                r["attempts"],
                r["to_user"],
                bool(r["encrypted"]),
                bool(r["background"]),
                r["event_type"],
                Mark(**json.loads(r["mark"])) if r["mark"] else None,
            )
            for r in rows
        ]

    async def delivered(
        self,
        item: OutboxItem,
        event_id: str,
        follow_ups: Sequence[tuple[str, Send]],
        at: datetime,
    ) -> None:
        """`item` (a marked message) went out as `event_id`: remember what it is, and queue its
        follow-ups (the reaction shortcuts on a step) in the same transaction."""
        assert item.mark is not None and item.room_id is not None
        mark, when = item.mark, ts(at)
        async with self._unit(write=True, durable=False) as unit:
            await unit.write(
                "INSERT INTO marked_events (event_id, room_id, kind, user_id, step_id, "
                "check_index, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (event_id) DO NOTHING",
                (event_id, item.room_id, mark.kind, mark.user_id, mark.step_id, mark.check, when),
            )
            queued = await _write_messages(unit, [(m, when) for m in follow_ups])
            await unit.flush()
            unit.outbox.extend(queued.items().values())

    async def marked(self, event_id: str) -> MarkedEvent | None:
        rows = await self._read(
            "SELECT event_id, room_id, kind, user_id, step_id, check_index FROM marked_events "
            "WHERE event_id = ?",
            (event_id,),
        )
        if not rows:
            return None
        r = rows[0]
        mark = Mark(r["kind"], r["user_id"], r["step_id"], r["check_index"])
        return MarkedEvent(r["event_id"], r["room_id"], mark)

    async def open_check(self, user_id: str) -> OpenCheck | None:
        """The check `user_id` was asked and has not answered, with its poll's event id."""
        rows = await self._read(
            "SELECT o.step_id, o.check_index, o.room_id, ("
            "  SELECT m.event_id FROM marked_events m WHERE m.user_id = o.user_id"
            "  AND m.kind = 'quiz' AND m.step_id = o.step_id AND m.check_index = o.check_index"
            "  AND m.sent_at >= o.asked_at ORDER BY m.sent_at DESC LIMIT 1) AS poll "
            "FROM open_checks o WHERE o.user_id = ?",
            (user_id,),
        )
        if not rows:
            return None
        r = rows[0]
        return OpenCheck(r["step_id"], r["check_index"], r["room_id"], r["poll"])

    async def states_of(self, user_ids: Iterable[str]) -> dict[str, dict[str, State]]:
        """The step states of several newcomers at once (for the pace in team views)."""
        rows = await self._read(
            "SELECT user_id, step_id, state FROM progress "
            "WHERE user_id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(user_ids)),),
        )
        states: dict[str, dict[str, State]] = {}
        for r in rows:
            states.setdefault(r["user_id"], {})[r["step_id"]] = State(r["state"])
        return states

    async def check_answers(self, user_id: str) -> list[CheckAnswer]:
        """Every answer `user_id` gave to a knowledge check, oldest first."""
        rows = await self._read(
            "SELECT step_id, check_index, correct, at FROM check_answers WHERE user_id = ? "
            "ORDER BY id",
            (user_id,),
        )
        return [
            CheckAnswer(
                r["step_id"], r["check_index"], bool(r["correct"]), datetime.fromisoformat(r["at"])
            )
            for r in rows
        ]

    async def steps_missed_twice(self, since: datetime) -> dict[str, int]:
        """Steps a newcomer answered a check of wrong twice or more since `since`: step id ->
        how many newcomers did."""
        rows = await self._read(
            "SELECT step_id, count(*) AS people FROM ("
            "  SELECT user_id, step_id FROM check_answers WHERE correct = 0 AND at >= ?"
            "  GROUP BY user_id, step_id HAVING count(*) >= 2"
            ") GROUP BY step_id ORDER BY people DESC, step_id",
            (ts(since),),
        )
        return {r["step_id"]: r["people"] for r in rows}

    async def outbox_set_room(self, user_id: str, room_id: str) -> None:
        """`room_id` is the private room with `user_id`: remember it, and send every message
        for them there."""
        async with self._unit(write=True) as unit:
            await unit.write(
                "INSERT INTO direct_rooms (user_id, room_id) VALUES (?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET room_id = excluded.room_id",
                (user_id, room_id),
            )
            await unit.write("UPDATE outbox SET room_id = ? WHERE to_user = ?", (room_id, user_id))

    async def outbox_sent(self, item_ids: Collection[int]) -> None:
        """Takes delivered messages out, in one statement (the outbox gathers them)."""
        if item_ids:
            await self._write(
                "DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(item_ids)),),
                durable=False,
            )

    async def outbox_failed(self, item_id: int) -> None:
        await self._write(
            "UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", (item_id,), durable=False
        )

    async def prune_handled(self, before: datetime) -> int:
        """Forgets the events handled before `before`; returns how many."""
        async with self._unit(write=True, durable=False) as unit:
            await unit.write("DELETE FROM handled_events WHERE handled_at < ?", (ts(before),))
            [row] = await unit.fetch("SELECT changes()")
        return int(row[0])

    async def prune_marked(self, before: datetime) -> int:
        """Forgets what the messages sent before `before` were (reactions on them do nothing)."""
        async with self._unit(write=True, durable=False) as unit:
            await unit.write("DELETE FROM marked_events WHERE sent_at < ?", (ts(before),))
            [row] = await unit.fetch("SELECT changes()")
        return int(row[0])

    # --- events that keep failing --------------------------------------------------------

    async def record_failure(
        self,
        *,
        event_id: str,
        room_id: str,
        sender: str,
        body: str,
        error: str,
        at: datetime,
        quarantine_after: int,
    ) -> bool:
        """Counts one more failure of an event; at `quarantine_after`, the event is quarantined
        (marked handled, so it is skipped from now on). Returns whether it is now."""
        when = ts(at)
        async with self._unit(write=True) as unit:
            await unit.write(
                "INSERT INTO quarantine (event_id, room_id, sender, body, error, failures, "
                "first_failed_at, last_failed_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?) "
                "ON CONFLICT (event_id) DO UPDATE SET failures = failures + 1, "
                "error = excluded.error, last_failed_at = excluded.last_failed_at",
                (event_id, room_id, sender, body[:500], error[:2000], when, when),
            )
            [row] = await unit.fetch(
                "SELECT failures FROM quarantine WHERE event_id = ?", (event_id,)
            )
            if row[0] < quarantine_after:
                return False
            await unit.write(
                "UPDATE quarantine SET quarantined_at = ? WHERE event_id = ?", (when, event_id)
            )
            await unit.write(
                "INSERT INTO handled_events (event_id, room_id, sender, handled_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                (event_id, room_id, sender, when),
            )
        return True

    async def quarantined(self) -> list[Quarantined]:
        rows = await self._read(
            "SELECT event_id, room_id, sender, body, error, failures, first_failed_at, "
            "last_failed_at FROM quarantine WHERE quarantined_at IS NOT NULL "
            "ORDER BY quarantined_at"
        )
        return [
            Quarantined(
                r["event_id"],
                r["room_id"],
                r["sender"],
                r["body"],
                r["error"],
                r["failures"],
                datetime.fromisoformat(r["first_failed_at"]),
                datetime.fromisoformat(r["last_failed_at"]),
            )
            for r in rows
        ]

    # --- sync state and rooms ---------------------------------------------------------------

    async def get_value(self, key: str) -> str | None:
        rows = await self._read("SELECT value FROM kv WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    async def set_value(self, key: str, value: str) -> None:
        await self.set_values({key: value})

    async def set_values(self, values: Mapping[str, str], durable: bool = True) -> None:
        async with self._unit(write=True, durable=durable) as unit:
            await _write_values(unit, values)

    async def direct_room(self, user_id: str) -> str | None:
        rows = await self._read("SELECT room_id FROM direct_rooms WHERE user_id = ?", (user_id,))
        return rows[0]["room_id"] if rows else None

    async def room_joined_at(self, room_id: str) -> int | None:
        """When the bot joined `room_id` (ms, the homeserver's clock); asked for every command,
        so kept in memory once read (a room a person and the bot share: a few per person)."""
        joined = self._joined.get(room_id)
        if joined is None:
            rows = await self._read("SELECT joined_at_ms FROM rooms WHERE room_id = ?", (room_id,))
            if rows:
                joined = self._joined[room_id] = rows[0]["joined_at_ms"]
        return joined

    async def set_room_joined(
        self, room_id: str, joined_at_ms: int, inviter: str | None = None
    ) -> None:
        await self._write(
            "INSERT INTO rooms (room_id, joined_at_ms, inviter) VALUES (?, ?, ?) "
            "ON CONFLICT (room_id) DO UPDATE SET joined_at_ms = excluded.joined_at_ms",
            (room_id, joined_at_ms, inviter),
        )
        self._joined[room_id] = joined_at_ms

    async def clamp_future_times(self, now_ms: int, ms_keys: Sequence[str] = ()) -> int:
        """Join times, and the key-value entries `ms_keys` (milliseconds), later than `now_ms`
        set to `now_ms`; returns how many were. Older bots took these from their own clock,
        which may have run ahead of the homeserver's. A read finds them; only when there are
        some does one unit of work write them all."""
        in_keys = ", ".join("?" * len(ms_keys)) or "NULL"
        kv_ahead = f"FROM kv WHERE key IN ({in_keys}) AND CAST(value AS INTEGER) > ?"
        [row] = await self._read(
            "SELECT (SELECT count(*) FROM rooms WHERE joined_at_ms > ?) "
            f"+ (SELECT count(*) {kv_ahead})",
            (now_ms, *ms_keys, now_ms),
        )
        if not row[0]:
            return 0
        async with self._unit(write=True) as unit:
            rooms = await unit.write(
                "UPDATE rooms SET joined_at_ms = ? WHERE joined_at_ms > ? RETURNING room_id",
                (now_ms, now_ms),
            )
            values = await unit.write(
                f"UPDATE kv SET value = ? WHERE key IN ({in_keys}) "
                "AND CAST(value AS INTEGER) > ? RETURNING key",
                (str(now_ms), *ms_keys, now_ms),
            )
        for r in rooms.result():
            self._joined[r["room_id"]] = now_ms
        return len(rooms.result()) + len(values.result())

    async def rooms_invited_by(self, inviter: str) -> int:
        """How many rooms the bot joined on an invite from `inviter`."""
        [row] = await self._read("SELECT count(*) FROM rooms WHERE inviter = ?", (inviter,))
        return int(row[0])

    # --- mentors' views ---------------------------------------------------------------------

    async def count_newcomers(self) -> int:
        [row] = await self._read("SELECT count(*) FROM newcomers")
        return int(row[0])

    async def known_users(self) -> list[str]:
        return [r["user_id"] for r in await self._read("SELECT user_id FROM newcomers")]

    async def users_with_localpart(self, localpart: str) -> list[str]:
        """The newcomers `@<localpart>:<any server>`, the localpart compared lowercased.

        A range of the primary key, not a scan: ':' ends the localpart and ';' is the next
        character, so exactly those user ids sort from '@localpart:' up to '@localpart;'.
        Matrix user ids are lower case; a historical one with capitals is found only in full.
        """
        name = localpart.lower()
        if not name or ":" in name:
            return []
        rows = await self._read(
            "SELECT user_id FROM newcomers WHERE user_id >= ? AND user_id < ? ORDER BY user_id",
            (f"@{name}:", f"@{name};"),
        )
        return [r["user_id"] for r in rows]

    async def newcomers(
        self, step_ids: Iterable[str], user_id: str | None = None, limit: int = -1
    ) -> list[NewcomerInfo]:
        """Enrolled newcomers (or one), most idle first and finished last, at most `limit`.

        done/skipped count only `step_ids`, the steps of the roadmap in use.
        """
        one = "WHERE user_id = :user" if user_id else ""
        # Pick the page first, then count only for it: !team stays cheap with 10,000 enrolled.
        rows = await self._read(
            f"""
            WITH steps (step_id) AS (SELECT value FROM json_each(:steps)),
            page AS (
                SELECT * FROM newcomers {one}
                ORDER BY finished_at IS NOT NULL, last_activity_at, user_id LIMIT :limit)
            SELECT page.*,
              (SELECT count(*) FROM progress p WHERE p.user_id = page.user_id
                 AND p.state = 'done' AND p.step_id IN steps) AS done,
              (SELECT count(*) FROM progress p WHERE p.user_id = page.user_id
                 AND p.state = 'skipped' AND p.step_id IN steps) AS skipped,
              (SELECT count(*) FROM nudges u WHERE u.user_id = page.user_id
                 AND u.kind = 'nudge') AS nudges_total
            FROM page
            ORDER BY finished_at IS NOT NULL, last_activity_at, user_id
            """,
            {"steps": json.dumps(list(step_ids)), "user": user_id, "limit": limit},
        )
        return [
            NewcomerInfo(
                user_id=r["user_id"],
                enrolled_at=datetime.fromisoformat(r["enrolled_at"]),
                current_step=r["current_step"],
                last_activity_at=datetime.fromisoformat(r["last_activity_at"]),
                mentor=r["mentor"],
                paused_until=parse_ts(r["paused_until"]),
                timezone=r["timezone"],
                finished_at=parse_ts(r["finished_at"]),
                last_nudged_at=parse_ts(r["last_nudged_at"]),
                nudges_in_row=r["nudges_in_row"],
                nudges_total=r["nudges_total"],
                done=r["done"],
                skipped=r["skipped"],
            )
            for r in rows
        ]

    async def nudge_candidates(self, now: datetime, idle_cutoff: datetime) -> list[Candidate]:
        """Unfinished, unpaused newcomers idle and un-nudged since `idle_cutoff`: one query.

        Wall-clock idleness is necessary for working-time idleness, so the caller only has
        to refine this short list (working days, quiet hours, each newcomer's time zone).
        """
        rows = await self._read(
            """
            SELECT user_id, current_step, last_activity_at, last_nudged_at, timezone, mentor,
                   nudges_in_row,
                   EXISTS (SELECT 1 FROM nudges e WHERE e.user_id = n.user_id
                           AND e.kind = 'escalation' AND e.sent_at > n.last_activity_at)
                     AS escalated
            FROM newcomers n
            WHERE finished_at IS NULL AND last_activity_at <= ?
              AND (last_nudged_at IS NULL OR last_nudged_at <= ?)
              AND (paused_until IS NULL OR paused_until <= ?)
            ORDER BY last_activity_at
            """,
            (ts(idle_cutoff), ts(idle_cutoff), ts(now)),
        )
        return [
            Candidate(
                r["user_id"],
                r["current_step"],
                datetime.fromisoformat(r["last_activity_at"]),
                parse_ts(r["last_nudged_at"]),
                r["timezone"],
                r["mentor"],
                r["nudges_in_row"],
                bool(r["escalated"]),
            )
            for r in rows
        ]

    async def set_finished(self, finished: dict[str, bool], at: datetime) -> None:
        """After a roadmap reload: who counts as finished may have changed."""
        async with self._unit(write=True) as unit:
            await unit.write_many(
                "UPDATE newcomers SET finished_at = CASE WHEN ? THEN "
                "coalesce(finished_at, ?) ELSE NULL END WHERE user_id = ?",
                [(done, ts(at), user_id) for user_id, done in finished.items()],
            )

    async def progress_since(self, since: datetime) -> dict[str, int]:
        """Steps marked done per newcomer since `since` (for the weekly digest)."""
        rows = await self._read(
            "SELECT user_id, count(*) AS n FROM activity WHERE action = 'done' AND at >= ? "
            "AND id NOT IN (SELECT undoes FROM activity WHERE undoes IS NOT NULL) "
            "GROUP BY user_id",
            (ts(since),),
        )
        return {r["user_id"]: r["n"] for r in rows}


# --- a newcomer's progress, as read and as written ------------------------------------------

# The newest done/skip entry not undone yet (parameters: the user, then UNDOABLE's actions).
_LAST_UNDOABLE = """
    SELECT a.user_id, a.id, a.step_id, a.from_state, a.to_state, a.prev_current, a.new_current
    FROM activity a
    WHERE a.user_id = ? AND a.action IN (?, ?)
      AND NOT EXISTS (SELECT 1 FROM activity u WHERE u.undoes = a.id)
    ORDER BY a.id DESC LIMIT 1
"""


def _undoable_from(rows: Sequence[aiosqlite.Row]) -> Undoable | None:
    if not rows:
        return None
    [last] = rows
    return Undoable(
        last["id"],
        last["step_id"],
        State(last["from_state"]),
        State(last["to_state"]),
        last["prev_current"],
        last["new_current"],
    )


def _progress_from(
    user_id: str,
    newcomer: Sequence[aiosqlite.Row],
    states: Sequence[aiosqlite.Row],
    last: Sequence[aiosqlite.Row],
) -> Progress:
    if not newcomer:
        return Progress(user_id)
    [row] = newcomer
    return Progress(
        user_id=user_id,
        enrolled_at=parse_ts(row["enrolled_at"]),
        current_id=row["current_step"],
        states={r["step_id"]: State(r["state"]) for r in states},
        last_undoable=_undoable_from(last),
        last_activity_at=parse_ts(row["last_activity_at"]),
        mentor=row["mentor"],
        timezone=row["timezone"],
        finish_announced_at=parse_ts(row["finish_announced_at"]),
    )


def _progress_after(
    progress: Progress | None,
    r: CommandRecord,
    entry_ids: Sequence[int],
    last_undoable: Mapping[str, Undoable | None],
) -> Progress | None:
    """The sender's progress after command `r` (None if not known before it): what
    `load_progress` would read. `entry_ids` are its changes' activity entries; `last_undoable`
    what each newcomer who undid has left to undo."""
    if progress is None:
        return None
    at = datetime.fromisoformat(ts(r.at))
    for change, entry_id in zip(r.changes, entry_ids, strict=True):
        progress = apply_change(progress, change, at)
        if change.action in UNDOABLE:
            progress = replace(progress, last_undoable=undoable(change, entry_id))
        elif change.action == Action.UNDO:
            progress = replace(progress, last_undoable=last_undoable[r.sender])
    if progress.enrolled:
        progress = replace(progress, last_activity_at=at)
    return progress


def _users_of(ops: Iterable[Op]) -> Iterator[str]:
    """The newcomers whose cached progress these ops change (it is dropped)."""
    for op in ops:
        match op:
            case (
                SetMentor(user_id)
                | SetPause(user_id)
                | SetTimezone(user_id)
                | MarkFinishAnnounced(user_id)
            ):
                yield user_id


def _users_cached(r: CommandRecord) -> Iterator[str]:
    """The newcomers whose cached progress command `r` changes."""
    yield r.sender
    yield from _users_of(r.ops)


# --- the command path: one statement a table for many commands ------------------------------


def _runs(records: Sequence[CommandRecord]) -> Iterator[list[CommandRecord]]:
    """The records in order, cut wherever one touches a newcomer another in its run touches.

    A command writes the rows of its sender and of its ops' newcomers only, so within a run
    each newcomer's rows are written by one command: writing each table for the whole run at
    once, in order, is then the same as writing one command after another.
    """
    run: list[CommandRecord] = []
    touched: set[str] = set()
    for r in records:
        users = {r.sender, *(op.user_id for op in r.ops)}
        if touched & users:
            yield run
            run, touched = [], set()
        run.append(r)
        touched |= users
    if run:
        yield run


@dataclass(frozen=True)
class _Written:
    """What a run's writes tell the cache, once they have run."""

    entries: list[asyncio.Task[list[aiosqlite.Row]]]  # RETURNING the new activity entries' ids
    # For each newcomer who undid: the newest entry left to undo, read after the run's entries.
    # That is what it is right after the undo too: the newcomer's later changes in the same
    # command either replace it (done, skip) or are not undoable.
    undone: dict[str, asyncio.Task[list[aiosqlite.Row]]]

    def entry_ids(self) -> list[int]:
        """The new entries' ids in the order of the changes: rows are inserted in the order of
        their VALUES, and AUTOINCREMENT ids only grow."""
        return sorted(row["id"] for task in self.entries for row in task.result())

    def last_undoable(self) -> dict[str, Undoable | None]:
        return {user: _undoable_from(task.result()) for user, task in self.undone.items()}


async def _write_run(unit: _Unit, run: Sequence[CommandRecord]) -> _Written:
    """Queues the writes of a run of commands (see `_runs`): a statement a table, not a command."""
    changes = [(r, c, ts(r.at)) for r in run for c in r.changes]
    await unit.write_many(
        "INSERT OR IGNORE INTO newcomers (user_id, enrolled_at, current_step, "
        "last_activity_at) VALUES (?, ?, ?, ?)",
        [(r.sender, at, c.new_current, at) for r, c, at in changes if c.action == Action.ENROLL],
    )
    await unit.write_many(
        "INSERT INTO progress (user_id, step_id, state, changed_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (user_id, step_id) DO UPDATE SET state = excluded.state, "
        "changed_at = excluded.changed_at WHERE state != excluded.state",
        [
            (r.sender, c.step_id, c.to_state.value, at)
            for r, c, at in changes
            if c.step_id is not None and c.to_state is not None
        ],
    )
    entries = await _write_rows(
        unit,
        "INSERT INTO activity (user_id, actor, action, step_id, from_state, to_state, "
        "prev_current, new_current, undoes, event_id, at) VALUES {rows} RETURNING id",
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                r.sender,
                r.sender,
                c.action.value,
                c.step_id,
                c.from_state.value if c.from_state else None,
                c.to_state.value if c.to_state else None,
                c.prev_current,
                c.new_current,
                c.undoes,
                r.event_id,
                at,
            )
            for r, c, at in changes
        ],
    )
    undone = {
        r.sender: unit.read(_LAST_UNDOABLE, (r.sender, *UNDOABLE))
        for r, c, _ in changes
        if c.action == Action.UNDO
    }
    # Any command from an enrolled newcomer counts as activity (no row: no-op).
    await unit.write_many(
        "UPDATE newcomers SET last_activity_at = :at, nudges_in_row = 0, "
        "current_step = CASE WHEN :moved THEN :current ELSE current_step END, "
        "finished_at = CASE WHEN :finished IS NULL THEN finished_at "
        "WHEN :finished THEN coalesce(finished_at, :at) ELSE NULL END "
        "WHERE user_id = :user",
        [
            {
                "at": ts(r.at),
                "moved": bool(r.changes),
                "current": r.changes[-1].new_current if r.changes else None,
                "finished": r.finished,
                "user": r.sender,
            }
            for r in run
        ],
    )
    await _write_ops(unit, [(op, ts(r.at)) for r in run for op in r.ops])
    return _Written(entries, undone)


async def _write_ops(unit: _Unit, ops: Sequence[tuple[Op, str]]) -> None:
    """Queues the ops (each with its time), a statement for each kind of write.

    The kinds write different tables or columns, and none adds or removes a newcomer, so one
    kind after another (each in order) is the same as one op after another.
    """
    kinds: dict[str, list[Params]] = {}
    for op, when in ops:
        for sql, params in _op_writes(op, when):
            kinds.setdefault(sql, []).append(params)
    for sql, rows in kinds.items():
        await unit.write_many(sql, rows)


def _op_writes(op: Op, when: str) -> Iterator[tuple[str, Params]]:
    match op:
        case SetMentor(user_id, mentor):
            yield "UPDATE newcomers SET mentor = ? WHERE user_id = ?", (mentor, user_id)
        case SetPause(user_id, until):
            yield (
                "UPDATE newcomers SET paused_until = ? WHERE user_id = ?",
                (ts(until) if until else None, user_id),
            )
        case SetTimezone(user_id, timezone):
            yield "UPDATE newcomers SET timezone = ? WHERE user_id = ?", (timezone, user_id)
        case MarkFinishAnnounced(user_id):
            yield (
                "UPDATE newcomers SET finish_announced_at = coalesce(finish_announced_at, ?) "
                "WHERE user_id = ?",
                (when, user_id),
            )
        case AskCheck(user_id, step_id, check, room_id):
            yield (
                "INSERT INTO open_checks (user_id, step_id, check_index, room_id, asked_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET "
                "step_id = excluded.step_id, check_index = excluded.check_index, "
                "room_id = excluded.room_id, asked_at = excluded.asked_at",
                (user_id, step_id, check, room_id, when),
            )
        case AnswerCheck(user_id, step_id, check, correct):
            yield (
                "INSERT INTO check_answers (user_id, step_id, check_index, correct, at) "
                "VALUES (?, ?, ?, ?, ?)",
                (user_id, step_id, check, correct, when),
            )
            yield "DELETE FROM open_checks WHERE user_id = ?", (user_id,)
        case RecordNudge(user_id, kind, step_id, actor):
            yield (
                "INSERT INTO nudges (user_id, kind, step_id, actor, sent_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (user_id, kind, step_id, actor, when),
            )
            if kind == "nudge":
                yield (
                    "UPDATE newcomers SET last_nudged_at = ?, "
                    "nudges_in_row = nudges_in_row + 1 WHERE user_id = ?",
                    (when, user_id),
                )


@dataclass(frozen=True)
class _QueuedMessages:
    messages: list[tuple[str, Send]]
    inserted: list[asyncio.Task[list[aiosqlite.Row]]]

    def items(self) -> dict[str, OutboxItem]:
        """The messages queued just now, by transaction id, in order (not those queued before:
        the same job or command ran twice)."""
        rows = {row["txn_id"]: row for task in self.inserted for row in task.result()}
        items: dict[str, OutboxItem] = {}
        for txn_id, send in self.messages:
            row = rows.pop(txn_id, None)
            if row is not None:
                items[txn_id] = OutboxItem(
                    row["id"],
                    txn_id,
                    row["room_id"],
                    send.content,
                    0,
                    send.to_user,
                    send.encrypted,
                    send.background,
                    send.event_type,
                    send.mark,
                )
        return items


async def _write_values(unit: _Unit, values: Mapping[str, str]) -> None:
    await unit.write_many(
        "INSERT INTO kv (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        list(values.items()),
    )


async def _write_messages(
    unit: _Unit, messages: Sequence[tuple[tuple[str, Send], str]]
) -> _QueuedMessages:
    """Queues messages ((txn id, message), time) for the outbox, in one statement.

    A message for a person goes to their direct chat if it is known already."""
    inserted = await _write_rows(
        unit,
        "INSERT INTO outbox (txn_id, room_id, to_user, content, created_at, encrypted, "
        "background, event_type, mark) VALUES {rows} "
        "ON CONFLICT (txn_id) DO NOTHING RETURNING id, txn_id, room_id",
        "(?, coalesce(?, (SELECT room_id FROM direct_rooms WHERE user_id = ?)), "
        "?, ?, ?, ?, ?, ?, ?)",
        [
            (
                txn_id,
                send.room_id,
                send.to_user,
                send.to_user,
                json.dumps(send.content),
                when,
                send.encrypted,
                send.background,
                send.event_type,
                json.dumps(vars(send.mark)) if send.mark else None,
            )
            for (txn_id, send), when in messages
        ],
    )
    return _QueuedMessages([m for m, _ in messages], inserted)
