"""The store: the only module that writes SQL. SQLite through aiosqlite, one transaction a method.

The database is the bot's source of truth: progress, the append-only activity log, the events
already handled, the replies not yet delivered (outbox) and the sync token all live here.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from bot.progress import Action, Change, Progress, State, Undoable

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


# Applied in order at start; the database's PRAGMA user_version is the count applied so far.
MIGRATIONS: tuple[Migration, ...] = (_v1,)


@dataclass(frozen=True)
class OutboxItem:
    id: int
    txn_id: str
    room_id: str
    content: dict[str, Any]
    attempts: int = 0


@dataclass(frozen=True)
class ActivityEntry:
    id: int
    user_id: str
    actor: str
    action: str
    step_id: str | None
    from_state: str | None
    to_state: str | None
    at: datetime


class Store:
    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self._lock = asyncio.Lock()
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = await aiosqlite.connect(path, isolation_level=None)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA foreign_keys = ON")
        # WAL + NORMAL: a committed transaction survives a crash of the bot (power loss may
        # drop the last few, which the homeserver then re-delivers from the saved sync token).
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA busy_timeout = 5000")
        store = cls(db, path)
        await store._migrate()
        os.chmod(path, 0o600)
        return store

    async def close(self) -> None:
        await self._db.close()

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
        async with self._db.execute(sql, tuple(params)) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        async with self._db.execute(sql, tuple(params)) as cur:
            return list(await cur.fetchall())

    # --- progress -------------------------------------------------------------------------

    async def load_progress(self, user_id: str) -> Progress:
        row = await self._one("SELECT * FROM newcomers WHERE user_id = ?", (user_id,))
        if row is None:
            return Progress(user_id)
        states = {
            r["step_id"]: State(r["state"])
            for r in await self._all(
                "SELECT step_id, state FROM progress WHERE user_id = ?", (user_id,)
            )
        }
        last = await self._one(
            """
            SELECT a.id, a.step_id, a.from_state, a.to_state, a.prev_current FROM activity a
            WHERE a.user_id = ? AND a.action IN (?, ?)
              AND NOT EXISTS (SELECT 1 FROM activity u WHERE u.undoes = a.id)
            ORDER BY a.id DESC LIMIT 1
            """,
            (user_id, Action.DONE.value, Action.SKIP.value),
        )
        undoable = (
            Undoable(
                last["id"],
                last["step_id"],
                State(last["from_state"]),
                State(last["to_state"]),
                last["prev_current"],
            )
            if last
            else None
        )
        return Progress(
            user_id=user_id,
            enrolled_at=parse_ts(row["enrolled_at"]),
            current_id=row["current_step"],
            states=states,
            last_undoable=undoable,
            last_activity_at=parse_ts(row["last_activity_at"]),
        )

    async def _apply(
        self, user_id: str, actor: str, change: Change, event_id: str | None, at: str
    ) -> None:
        db = self._db
        if change.action == Action.ENROLL:
            await db.execute(
                "INSERT OR IGNORE INTO newcomers (user_id, enrolled_at, current_step, "
                "last_activity_at) VALUES (?, ?, ?, ?)",
                (user_id, at, change.new_current, at),
            )
        else:
            await db.execute(
                "UPDATE newcomers SET current_step = ?, last_activity_at = ? WHERE user_id = ?",
                (change.new_current, at, user_id),
            )
        if change.step_id is not None and change.to_state is not None:
            await db.execute(
                "INSERT INTO progress (user_id, step_id, state, changed_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (user_id, step_id) DO UPDATE SET state = excluded.state, "
                "changed_at = excluded.changed_at WHERE state != excluded.state",
                (user_id, change.step_id, change.to_state.value, at),
            )
        await db.execute(
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
        reply_txn_id: str,
        reply: dict[str, Any],
        at: datetime,
    ) -> OutboxItem | None:
        """Records the event as handled, applies its changes and queues its reply, atomically.

        Returns None (and changes nothing) if the event was handled already.
        """
        when = ts(at)
        async with self._transaction() as db:
            cur = await db.execute(
                "INSERT OR IGNORE INTO handled_events (event_id, room_id, sender, handled_at) "
                "VALUES (?, ?, ?, ?)",
                (event_id, room_id, sender, when),
            )
            if cur.rowcount == 0:
                return None
            for change in changes:
                await self._apply(sender, sender, change, event_id, when)
            cur = await db.execute(
                "INSERT INTO outbox (txn_id, room_id, content, created_at) VALUES (?, ?, ?, ?)",
                (reply_txn_id, room_id, json.dumps(reply), when),
            )
            assert cur.lastrowid is not None
            return OutboxItem(cur.lastrowid, reply_txn_id, room_id, reply)

    async def queue_message(
        self, *, txn_id: str, room_id: str, content: dict[str, Any], at: datetime
    ) -> OutboxItem | None:
        """Queues a message that answers no command (a greeting); None if already queued."""
        async with self._transaction() as db:
            cur = await db.execute(
                "INSERT OR IGNORE INTO outbox (txn_id, room_id, content, created_at) "
                "VALUES (?, ?, ?, ?)",
                (txn_id, room_id, json.dumps(content), ts(at)),
            )
            if cur.rowcount == 0 or cur.lastrowid is None:
                return None
            return OutboxItem(cur.lastrowid, txn_id, room_id, content)

    async def outbox(self) -> list[OutboxItem]:
        rows = await self._all(
            "SELECT id, txn_id, room_id, content, attempts FROM outbox ORDER BY id"
        )
        return [
            OutboxItem(r["id"], r["txn_id"], r["room_id"], json.loads(r["content"]), r["attempts"])
            for r in rows
        ]

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

    async def room_joined_at(self, room_id: str) -> int | None:
        row = await self._one("SELECT joined_at_ms FROM rooms WHERE room_id = ?", (room_id,))
        return row["joined_at_ms"] if row else None

    async def set_room_joined(self, room_id: str, joined_at_ms: int) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO rooms (room_id, joined_at_ms) VALUES (?, ?) "
                "ON CONFLICT (room_id) DO UPDATE SET joined_at_ms = excluded.joined_at_ms",
                (room_id, joined_at_ms),
            )

    async def forget_room(self, room_id: str) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM rooms WHERE room_id = ?", (room_id,))
