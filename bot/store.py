"""The store: the only module that writes SQL. SQLite through aiosqlite, one transaction a method.

The database is the bot's source of truth: progress, the append-only activity log, the events
already handled, the replies not yet delivered (outbox) and the sync token all live here.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

from bot.nudges import Candidate
from bot.ops import MarkFinishAnnounced, Op, RecordNudge, Send, SetMentor, SetPause, SetTimezone
from bot.progress import (
    UNDOABLE,
    Action,
    ActivityEntry,
    Change,
    NewcomerInfo,
    Progress,
    State,
    Undoable,
    undoable,
)
from bot.progress import apply as apply_change

T = TypeVar("T")
Migration = Callable[[aiosqlite.Connection], Awaitable[None]]


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
MIGRATIONS: tuple[Migration, ...] = (_v1, _v2, _v3)


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


class Store:
    """One connection, one writer: the bot process is the only one that writes the database.

    That makes a write-through cache of newcomers' progress safe: every write that touches a
    cached newcomer updates (or drops) the entry in the same worker-thread step that commits,
    so `load_progress` answers from memory exactly what the database would say.
    """

    def __init__(self, db: aiosqlite.Connection, path: Path, cache_size: int = 1024) -> None:
        self._db = db
        self._lock = asyncio.Lock()
        self.path = path
        # Written only in aiosqlite's worker thread (in commit order), read on the event loop.
        self._progress: dict[str, Progress] = {}
        self._cache_size = cache_size

    @classmethod
    async def open(cls, path: Path) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # SQLite gives the -wal and -shm files the database file's mode: make it owner-only first.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(path, 0o600)
        db = await aiosqlite.connect(path, isolation_level=None)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA foreign_keys = ON")
        # WAL + NORMAL: a committed transaction survives a crash of the bot (power loss may
        # drop the last few, which the homeserver then re-delivers from the saved sync token).
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA busy_timeout = 5000")
        store = cls(db, path)
        try:
            await store._migrate()
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        await self._db.close()

    async def export(self) -> dict[str, list[dict[str, Any]]]:
        """Every newcomer, progress row and activity entry, as plain rows (for the admin CLI)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for table, order in (
            ("newcomers", "user_id"),
            ("progress", "user_id, step_id"),
            ("activity", "id"),
        ):
            rows = await self._all(f"SELECT * FROM {table} ORDER BY {order}")
            out[table] = [dict(r) for r in rows]
        return out

    async def backup(self, target: Path) -> None:
        """A consistent copy through SQLite's online backup API: safe while the bot runs."""
        dest = sqlite3.connect(target)
        try:
            await self._db.backup(dest)
        finally:
            dest.close()
        os.chmod(target, 0o600)

    def size_bytes(self) -> int:
        """The database with its write-ahead log, on disk."""
        files = (self.path, self.path.with_name(self.path.name + "-wal"))
        return sum(f.stat().st_size for f in files if f.exists())

    async def _migrate(self) -> None:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = row[0] if row else 0
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"{self.path}: database schema version {version} is newer than this bot "
                f"understands ({len(MIGRATIONS)}); upgrade the bot or restore a backup"
            )
        for number, migration in enumerate(MIGRATIONS[version:], version + 1):
            async with self._transaction():
                await migration(self._db)
                await self._db.execute(f"PRAGMA user_version = {number:d}")

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    async def _one(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Row | None:
        rows = await self._db.execute_fetchall(sql, tuple(params))
        return next(iter(rows), None)

    async def _all(
        self, sql: str, params: Iterable[Any] | dict[str, Any] = ()
    ) -> list[aiosqlite.Row]:
        args = params if isinstance(params, dict) else tuple(params)
        return list(await self._db.execute_fetchall(sql, args))

    async def _in_thread(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Runs `work` on the raw connection in aiosqlite's worker thread, in one hop.

        The command path (read a newcomer, commit a command) is a handful of statements; one
        hop each would cost more than the SQL itself. aiosqlite has no public call for this:
        `_execute` and `_conn` have been stable across the versions pyproject allows.
        """
        async with self._lock:
            return cast(T, await self._db._execute(work, self._db._conn))

    # --- progress -------------------------------------------------------------------------

    async def load_progress(self, user_id: str) -> Progress:
        cached = self._progress.get(user_id)
        if cached is not None:
            return cached
        return await self._in_thread(lambda conn: self._remember(_load_progress(conn, user_id)))

    def _remember(self, progress: Progress) -> Progress:
        """Caches a newcomer's progress as committed (worker thread only); oldest out first."""
        cache = self._progress
        cache.pop(progress.user_id, None)
        cache[progress.user_id] = progress
        if len(cache) > self._cache_size:
            del cache[next(iter(cache))]
        return progress

    def _forget(self, user_ids: Iterable[str]) -> None:
        for user_id in user_ids:
            self._progress.pop(user_id, None)

    async def history(self, user_id: str, limit: int = 20) -> list[ActivityEntry]:
        rows = await self._all(
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
        row = await self._one("SELECT 1 FROM handled_events WHERE event_id = ?", (event_id,))
        return row is not None

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
        self, records: Sequence[CommandRecord]
    ) -> list[list[OutboxItem] | None]:
        """Group commit: several commands in one transaction, one round trip, one disk write.

        Each record is what `commit_command` does with one command, in order; a record whose
        event was handled already changes nothing and gets None.
        """

        def work(conn: sqlite3.Connection) -> list[list[OutboxItem] | None]:
            results: list[list[OutboxItem] | None] = []
            latest: dict[str, Progress | None] = {}  # after this commit; None: not known
            with _transaction(conn):
                for r in records:
                    known = latest[r.sender] if r.sender in latest else self._progress.get(r.sender)
                    items, after = _write_command(conn, r, known)
                    results.append(items)
                    if items is not None:
                        latest[r.sender] = after
                        latest.update(dict.fromkeys(_users_of(r.ops)))
            for user_id, progress in latest.items():
                if progress is None:
                    self._progress.pop(user_id, None)
                else:
                    self._remember(progress)
            return results

        return await self._in_thread(work)

    async def commit_job(
        self, *, ops: Iterable[Op], messages: Iterable[tuple[str, Send]], at: datetime
    ) -> list[OutboxItem]:
        """A scheduled job's writes and messages, atomically; a message queued before is skipped."""
        when = ts(at)
        ops, messages = list(ops), list(messages)

        def work(conn: sqlite3.Connection) -> list[OutboxItem]:
            with _transaction(conn):
                items = _apply_ops_and_queue(conn, ops, messages, when)
            self._forget(_users_of(ops))
            return items

        return await self._in_thread(work)

    async def outbox(self) -> list[OutboxItem]:
        rows = await self._all(
            "SELECT id, txn_id, room_id, to_user, content, attempts, encrypted, background "
            "FROM outbox ORDER BY id"
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
            )
            for r in rows
        ]

    async def outbox_set_room(self, user_id: str, room_id: str) -> None:
        """`room_id` is the private room with `user_id`: remember it, and send every message
        for them there."""
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO direct_rooms (user_id, room_id) VALUES (?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET room_id = excluded.room_id",
                (user_id, room_id),
            )
            await db.execute("UPDATE outbox SET room_id = ? WHERE to_user = ?", (room_id, user_id))

    async def outbox_sent(self, item_id: int) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))

    async def outbox_failed(self, item_id: int) -> None:
        async with self._transaction() as db:
            await db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", (item_id,))

    async def prune_handled(self, before: datetime) -> int:
        async with self._transaction() as db:
            cur = await db.execute("DELETE FROM handled_events WHERE handled_at < ?", (ts(before),))
            return cur.rowcount

    # --- sync state and rooms ---------------------------------------------------------------

    async def get_value(self, key: str) -> str | None:
        row = await self._one("SELECT value FROM kv WHERE key = ?", (key,))
        return row["value"] if row else None

    async def set_value(self, key: str, value: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    async def direct_room(self, user_id: str) -> str | None:
        row = await self._one("SELECT room_id FROM direct_rooms WHERE user_id = ?", (user_id,))
        return row["room_id"] if row else None

    # --- mentors' views ---------------------------------------------------------------------

    async def count_newcomers(self) -> int:
        row = await self._one("SELECT count(*) FROM newcomers")
        return int(row[0]) if row else 0

    async def known_users(self) -> list[str]:
        return [r["user_id"] for r in await self._all("SELECT user_id FROM newcomers")]

    async def newcomers(
        self, step_ids: Iterable[str], user_id: str | None = None, limit: int = -1
    ) -> list[NewcomerInfo]:
        """Enrolled newcomers (or one), most idle first and finished last, at most `limit`.

        done/skipped count only `step_ids`, the steps of the roadmap in use.
        """
        one = "WHERE user_id = :user" if user_id else ""
        # Pick the page first, then count only for it: !team stays cheap with 10,000 enrolled.
        rows = await self._all(
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
        rows = await self._all(
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
        async with self._transaction() as db:
            for user_id, done in finished.items():
                await db.execute(
                    "UPDATE newcomers SET finished_at = CASE WHEN ? THEN "
                    "coalesce(finished_at, ?) ELSE NULL END WHERE user_id = ?",
                    (done, ts(at), user_id),
                )

    async def progress_since(self, since: datetime) -> dict[str, int]:
        """Steps marked done per newcomer since `since` (for the weekly digest)."""
        rows = await self._all(
            "SELECT user_id, count(*) AS n FROM activity WHERE action = 'done' AND at >= ? "
            "AND id NOT IN (SELECT undoes FROM activity WHERE undoes IS NOT NULL) "
            "GROUP BY user_id",
            (ts(since),),
        )
        return {r["user_id"]: r["n"] for r in rows}

    async def room_joined_at(self, room_id: str) -> int | None:
        row = await self._one("SELECT joined_at_ms FROM rooms WHERE room_id = ?", (room_id,))
        return row["joined_at_ms"] if row else None

    async def set_room_joined(
        self, room_id: str, joined_at_ms: int, inviter: str | None = None
    ) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO rooms (room_id, joined_at_ms, inviter) VALUES (?, ?, ?) "
                "ON CONFLICT (room_id) DO UPDATE SET joined_at_ms = excluded.joined_at_ms",
                (room_id, joined_at_ms, inviter),
            )

    async def rooms_invited_by(self, inviter: str) -> int:
        """How many rooms the bot joined on an invite from `inviter`."""
        row = await self._one("SELECT count(*) AS n FROM rooms WHERE inviter = ?", (inviter,))
        return int(row["n"]) if row else 0

    async def forget_room(self, room_id: str) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM rooms WHERE room_id = ?", (room_id,))


# --- the command path, run in the worker thread in one hop (see Store._in_thread) ----------


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _load_progress(conn: sqlite3.Connection, user_id: str) -> Progress:
    row = conn.execute("SELECT * FROM newcomers WHERE user_id = ?", (user_id,)).fetchone()
    if row is None:
        return Progress(user_id)
    states = {
        r["step_id"]: State(r["state"])
        for r in conn.execute("SELECT step_id, state FROM progress WHERE user_id = ?", (user_id,))
    }
    return Progress(
        user_id=user_id,
        enrolled_at=parse_ts(row["enrolled_at"]),
        current_id=row["current_step"],
        states=states,
        last_undoable=_last_undoable(conn, user_id),
        last_activity_at=parse_ts(row["last_activity_at"]),
        mentor=row["mentor"],
        timezone=row["timezone"],
        finish_announced_at=parse_ts(row["finish_announced_at"]),
    )


def _write_command(
    conn: sqlite3.Connection, r: CommandRecord, progress: Progress | None
) -> tuple[list[OutboxItem] | None, Progress | None]:
    """One command's writes inside the caller's transaction: its queued messages (None if the
    event was handled before) and the sender's progress after it (None if not known)."""
    when = ts(r.at)
    cur = conn.execute(
        "INSERT OR IGNORE INTO handled_events (event_id, room_id, sender, handled_at) "
        "VALUES (?, ?, ?, ?)",
        (r.event_id, r.room_id, r.sender, when),
    )
    if cur.rowcount == 0:
        return None, None
    for change in r.changes:
        entry_id = _apply(conn, r.sender, r.sender, change, r.event_id, when)
        if progress is not None:
            progress = _progress_after(conn, progress, change, entry_id, when)
    # Any command from an enrolled newcomer counts as activity (no row: no-op).
    conn.execute(
        "UPDATE newcomers SET last_activity_at = :at, nudges_in_row = 0, "
        "current_step = CASE WHEN :moved THEN :current ELSE current_step END, "
        "finished_at = CASE WHEN :finished IS NULL THEN finished_at "
        "WHEN :finished THEN coalesce(finished_at, :at) ELSE NULL END "
        "WHERE user_id = :user",
        {
            "at": when,
            "moved": bool(r.changes),
            "current": r.changes[-1].new_current if r.changes else None,
            "finished": r.finished,
            "user": r.sender,
        },
    )
    if progress is not None and progress.enrolled:
        progress = replace(progress, last_activity_at=parse_ts(when))
    return _apply_ops_and_queue(conn, list(r.ops), list(r.messages), when), progress


def _last_undoable(conn: sqlite3.Connection, user_id: str) -> Undoable | None:
    last = conn.execute(
        """
        SELECT a.id, a.step_id, a.from_state, a.to_state, a.prev_current, a.new_current
        FROM activity a
        WHERE a.user_id = ? AND a.action IN (?, ?)
          AND NOT EXISTS (SELECT 1 FROM activity u WHERE u.undoes = a.id)
        ORDER BY a.id DESC LIMIT 1
        """,
        (user_id, Action.DONE.value, Action.SKIP.value),
    ).fetchone()
    if last is None:
        return None
    return Undoable(
        last["id"],
        last["step_id"],
        State(last["from_state"]),
        State(last["to_state"]),
        last["prev_current"],
        last["new_current"],
    )


def _progress_after(
    conn: sqlite3.Connection, progress: Progress, change: Change, entry_id: int, at: str
) -> Progress:
    """The cached snapshot after `change` (entry `entry_id`): what `_load_progress` would read."""
    after = apply_change(progress, change, parse_ts(at))
    if change.action in UNDOABLE:
        return replace(after, last_undoable=undoable(change, entry_id))
    if change.action == Action.UNDO:
        return replace(after, last_undoable=_last_undoable(conn, progress.user_id))
    return after


def _users_of(ops: Iterable[Op]) -> Iterator[str]:
    """The newcomers whose rows these ops write (their cached progress is dropped)."""
    for op in ops:
        match op:
            case (
                SetMentor(user_id)
                | SetPause(user_id)
                | SetTimezone(user_id)
                | MarkFinishAnnounced(user_id)
            ):
                yield user_id


def _apply(
    conn: sqlite3.Connection,
    user_id: str,
    actor: str,
    change: Change,
    event_id: str | None,
    at: str,
) -> int:
    """Writes one change (the caller moves the newcomer's pointer); returns its activity id."""
    if change.action == Action.ENROLL:
        conn.execute(
            "INSERT OR IGNORE INTO newcomers (user_id, enrolled_at, current_step, "
            "last_activity_at) VALUES (?, ?, ?, ?)",
            (user_id, at, change.new_current, at),
        )
    if change.step_id is not None and change.to_state is not None:
        conn.execute(
            "INSERT INTO progress (user_id, step_id, state, changed_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (user_id, step_id) DO UPDATE SET state = excluded.state, "
            "changed_at = excluded.changed_at WHERE state != excluded.state",
            (user_id, change.step_id, change.to_state.value, at),
        )
    cur = conn.execute(
        "INSERT INTO activity (user_id, actor, action, step_id, from_state, to_state, "
        "prev_current, new_current, undoes, event_id, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            user_id,
            actor,
            change.action.value,
            change.step_id,
            change.from_state.value if change.from_state else None,
            change.to_state.value if change.to_state else None,
            change.prev_current,
            change.new_current,
            change.undoes,
            event_id,
            at,
        ),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def _apply_ops_and_queue(
    conn: sqlite3.Connection, ops: list[Op], messages: list[tuple[str, Send]], when: str
) -> list[OutboxItem]:
    for op in ops:
        _apply_op(conn, op, when)
    queued = [_queue(conn, txn_id, send, when) for txn_id, send in messages]
    return [item for item in queued if item is not None]


def _queue(conn: sqlite3.Connection, txn_id: str, send: Send, when: str) -> OutboxItem | None:
    room_id = send.room_id
    if room_id is None and send.to_user is not None:
        row = conn.execute(
            "SELECT room_id FROM direct_rooms WHERE user_id = ?", (send.to_user,)
        ).fetchone()
        room_id = row["room_id"] if row else None
    cur = conn.execute(
        "INSERT INTO outbox (txn_id, room_id, to_user, content, created_at, encrypted) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (txn_id) DO NOTHING",
        (txn_id, room_id, send.to_user, json.dumps(send.content), when, send.encrypted),
    )
    if not cur.rowcount or cur.lastrowid is None:
        return None  # queued before: the same job or command ran twice
    return OutboxItem(cur.lastrowid, txn_id, room_id, send.content, 0, send.to_user, send.encrypted)


def _apply_op(conn: sqlite3.Connection, op: Op, when: str) -> None:
    match op:
        case SetMentor(user_id, mentor):
            conn.execute("UPDATE newcomers SET mentor = ? WHERE user_id = ?", (mentor, user_id))
        case SetPause(user_id, until):
            conn.execute(
                "UPDATE newcomers SET paused_until = ? WHERE user_id = ?",
                (ts(until) if until else None, user_id),
            )
        case SetTimezone(user_id, timezone):
            conn.execute("UPDATE newcomers SET timezone = ? WHERE user_id = ?", (timezone, user_id))
        case MarkFinishAnnounced(user_id):
            conn.execute(
                "UPDATE newcomers SET finish_announced_at = coalesce(finish_announced_at, ?) "
                "WHERE user_id = ?",
                (when, user_id),
            )
        case RecordNudge(user_id, kind, step_id, actor):
            conn.execute(
                "INSERT INTO nudges (user_id, kind, step_id, actor, sent_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (user_id, kind, step_id, actor, when),
            )
            if kind == "nudge":
                conn.execute(
                    "UPDATE newcomers SET last_nudged_at = ?, "
                    "nudges_in_row = nudges_in_row + 1 WHERE user_id = ?",
                    (when, user_id),
                )
