"""The SQLite store: schema version, pragmas, file permissions and migrations on reopen."""

from __future__ import annotations

import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from bot import progress as rules
from bot import store as store_module
from bot.ops import MarkFinishAnnounced
from bot.progress import Progress
from bot.roadmap import Roadmap
from bot.store import MIGRATIONS, Store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def read_pragma(path: Path, name: str) -> object:
    with sqlite3.connect(path) as db:
        return db.execute(f"PRAGMA {name}").fetchone()[0]


async def test_schema_version_is_the_number_of_migrations(store: Store) -> None:
    assert len(MIGRATIONS) >= 1
    assert read_pragma(store.path, "user_version") == len(MIGRATIONS)


async def test_database_is_in_wal_mode(store: Store) -> None:
    # journal_mode=WAL is stored in the file, so a second connection sees it.
    assert read_pragma(store.path, "journal_mode") == "wal"


async def test_foreign_keys_are_enforced_on_the_stores_connection(store: Store) -> None:
    # foreign_keys is a per-connection setting: only the store's own connection can tell.
    async with store._db.execute("PRAGMA foreign_keys") as cur:
        assert (await cur.fetchone())[0] == 1


async def test_database_file_is_owner_only(store: Store) -> None:
    assert mode(store.path) == 0o600
    assert mode(store.path.parent) == 0o700


async def test_wal_files_are_owner_only_too(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    store = await Store.open(data / "bot.db")
    try:
        await store.set_value("sync_token", "s1")
        wal_files = [data / "bot.db-wal", data / "bot.db-shm"]
        assert all(p.exists() for p in wal_files)
        assert {p.name: mode(p) for p in wal_files} == {p.name: 0o600 for p in wal_files}
    finally:
        await store.close()


async def test_reopening_does_not_rerun_migrations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[int] = []

    def counted(number: int, migration: store_module.Migration) -> store_module.Migration:
        async def run(db: aiosqlite.Connection) -> None:
            ran.append(number)
            await migration(db)

        return run

    monkeypatch.setattr(
        store_module, "MIGRATIONS", tuple(counted(n, m) for n, m in enumerate(MIGRATIONS, 1))
    )
    path = tmp_path / "bot.db"
    first = await Store.open(path)
    await first.set_value("sync_token", "s1")
    await first.close()
    assert ran == list(range(1, len(MIGRATIONS) + 1))

    second = await Store.open(path)
    try:
        assert ran == list(range(1, len(MIGRATIONS) + 1))
        assert await second.get_value("sync_token") == "s1"
        assert read_pragma(path, "user_version") == len(MIGRATIONS)
    finally:
        await second.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(RuntimeError, match="newer than this bot understands") as exc:
        await Store.open(path)
    assert str(path) in str(exc.value)


async def test_a_finish_is_marked_announced_once_in_cache_and_database(
    tmp_path: Path, roadmap: Roadmap
) -> None:
    user, start = "@newbie:example.org", datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    store = await Store.open(tmp_path / "bot.db")
    enroll = rules.enroll(roadmap, Progress(user))
    assert enroll is not None

    async def command(n: int, **kw: Any) -> None:
        at = start + timedelta(minutes=n)
        await store.commit_command(
            event_id=f"${n}", room_id="!r:x.org", sender=user, messages=[], at=at, **kw
        )

    await command(0, changes=[enroll])
    assert (await store.load_progress(user)).finish_announced_at is None  # now cached
    await command(1, changes=[], ops=[MarkFinishAnnounced(user)])
    assert (await store.load_progress(user)).finish_announced_at == start + timedelta(minutes=1)
    await command(2, changes=[], ops=[MarkFinishAnnounced(user)])  # the first time stays
    cached = await store.load_progress(user)
    assert cached.finish_announced_at == start + timedelta(minutes=1)
    await store.close()

    reopened = await Store.open(tmp_path / "bot.db")
    try:
        assert await reopened.load_progress(user) == cached
    finally:
        await reopened.close()
