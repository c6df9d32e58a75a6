"""The SQLite store: schema version, pragmas, file permissions, migrations on reopen, group
commits against one-by-one commits, atomicity, and finding people by localpart."""

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
from bot.ops import MarkFinishAnnounced, Op, RecordNudge, Send, SetMentor, SetTimezone
from bot.progress import Change, Progress, State
from bot.roadmap import Roadmap
from bot.store import MIGRATIONS, CommandRecord, OutboxItem, Store


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


async def synchronous_now(store: Store) -> int:
    """The store connection's synchronous setting (1 NORMAL, 2 FULL): per connection, and
    what the last unit of work that wrote committed with."""
    async with store._db.execute("PRAGMA synchronous") as cur:
        return int((await cur.fetchone())[0])


async def test_what_acknowledges_a_change_waits_for_the_disk_bookkeeping_does_not(
    store: Store,
) -> None:
    at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    send = Send("a reply", {"body": "hi"}, room_id="!r:x.org")
    assert await synchronous_now(store) == 2  # FULL from the start
    [queued] = await store.commit_commands(
        [CommandRecord("$1", "!r:x.org", "@a:x.org", (), (), (("txn-1", send),), at)],
        {"sync_token": "s1"},
    )
    assert queued is not None and await synchronous_now(store) == 2
    await store.outbox_sent([queued[0].id])  # sent: a repeat is deduplicated by its txn id
    assert await synchronous_now(store) == 1
    await store.commit_commands([], {"sync_token": "s2"})  # a sync past no command
    assert await synchronous_now(store) == 1
    await store.set_room_joined("!r:x.org", 1)  # not bookkeeping: FULL again
    assert await synchronous_now(store) == 2
    assert await store.get_value("sync_token") == "s2" and await store.outbox() == []


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


# --- group commits, atomicity ---------------------------------------------------------------

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ANA, BEN, MENTOR = "@ana:example.org", "@ben:example.org", "@mentor:example.org"


def record(
    n: int, sender: str, changes: list[Change | None], ops: tuple[Op, ...] = (), to: str = ""
) -> CommandRecord:
    reply = Send("reply", {"body": f"reply {n}"}, room_id="!r:example.org")
    messages: list[tuple[str, Send]] = [(f"t{n}", reply)]
    if to:
        messages.append((f"t{n}-dm", Send("dm", {"body": f"dm {n}"}, to_user=to)))
    return CommandRecord(
        f"${n}",
        "!r:example.org",
        sender,
        tuple(c for c in changes if c is not None),
        ops,
        tuple(messages),
        START + timedelta(minutes=n),
    )


async def same_everywhere(stores: list[Store], users: list[str]) -> None:
    """The stores hold the same rows, and each one's cache says what a fresh connection reads."""
    first = stores[0]
    for other in stores[1:]:
        assert await other.export() == await first.export()
        assert await other.outbox() == await first.outbox()
    for store in stores:
        fresh = await Store.open(store.path)
        try:
            for user in users:
                assert await store.load_progress(user) == await fresh.load_progress(user), user
        finally:
            await fresh.close()


async def test_a_group_that_names_a_newcomer_twice_is_the_same_as_one_by_one(
    tmp_path: Path, roadmap: Roadmap
) -> None:
    """The dispatcher never groups two commands of one sender; the store must not rely on it."""
    one, many = await Store.open(tmp_path / "one.db"), await Store.open(tmp_path / "many.db")
    try:
        prelude = [
            record(0, ANA, [rules.enroll(roadmap, Progress(ANA))]),
            record(1, BEN, [rules.enroll(roadmap, Progress(BEN))]),
        ]
        for r in prelude:
            await one.commit_commands([r])
        await many.commit_commands(prelude)
        for store in (one, many):  # cached from here on
            await store.load_progress(ANA)
            await store.load_progress(BEN)

        # Each record is made from what the one-by-one store has committed so far.
        records: list[CommandRecord] = []
        expected: list[list[OutboxItem] | None] = []

        async def then(r: CommandRecord) -> None:
            records.append(r)
            [result] = await one.commit_commands([r])
            expected.append(result)

        async def done(n: int, user: str, step: int) -> CommandRecord:
            progress = await one.load_progress(user)
            change = rules.finish(roadmap, progress, roadmap.steps[step], State.DONE)
            return record(n, user, [change])

        async def undo(n: int, user: str) -> CommandRecord:
            change = rules.undo(await one.load_progress(user))
            assert isinstance(change, Change)
            return record(n, user, [change])

        await then(await done(2, ANA, 0))
        await then(record(3, MENTOR, [], (SetMentor(ANA, MENTOR),), to=ANA))
        await then(await done(4, ANA, 1))
        await then(records[0])  # a replay inside the group changes nothing
        await then(record(5, BEN, [], (SetTimezone(BEN, "Europe/Berlin"),)))
        await then(await undo(6, ANA))
        await then(await done(7, BEN, 0))
        nudge = RecordNudge(BEN, "nudge", roadmap.steps[1].id, MENTOR)
        await then(record(8, MENTOR, [], (nudge,), to=BEN))
        await then(await undo(9, BEN))
        assert expected[3] is None

        assert await many.commit_commands(records) == expected
        await same_everywhere([one, many], [ANA, BEN, MENTOR])
        assert (await many.load_progress(ANA)).mentor == MENTOR
        [dm] = [i for i in await many.outbox() if i.to_user == BEN]
        assert dm.content == {"body": "dm 8"}
    finally:
        await one.close()
        await many.close()


async def test_a_command_that_fails_undoes_its_whole_group(store: Store, roadmap: Roadmap) -> None:
    await store.commit_commands([record(0, ANA, [rules.enroll(roadmap, Progress(ANA))])])
    cached = await store.load_progress(ANA)
    rows, outbox = await store.export(), await store.outbox()
    good = record(1, ANA, [rules.finish(roadmap, cached, roadmap.steps[0], State.DONE)])
    # Ben never enrolled: his progress row breaks a foreign key, after Ana's writes went out.
    bad = record(2, BEN, [rules.finish(roadmap, Progress(BEN), roadmap.steps[0], State.DONE)])

    with pytest.raises(sqlite3.IntegrityError):
        await store.commit_commands([good, bad])

    assert await store.export() == rows
    assert await store.outbox() == outbox
    assert not await store.was_handled(good.event_id)
    await same_everywhere([store], [ANA, BEN])
    assert await store.load_progress(ANA) == cached
    assert await store.commit_commands([good]) != [None]  # and it can go in on its own
    assert (await store.load_progress(ANA)).state(roadmap.steps[0].id) == State.DONE


def refuse_begin(action: int, arg1: str | None, *_: str | None) -> int:
    """An authorizer under which BEGIN fails, as it does when another writer holds the lock
    past busy_timeout (and any other statement still runs)."""
    if action == sqlite3.SQLITE_TRANSACTION and arg1 == "BEGIN":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


async def test_nothing_is_written_when_begin_fails(store: Store, roadmap: Roadmap) -> None:
    """A write sent behind a BEGIN that failed would commit on its own: none may be sent."""
    enroll = record(0, ANA, [rules.enroll(roadmap, Progress(ANA))])
    nudge = Send("nudge", {"body": "still there?"}, to_user=ANA)
    await store._db.set_authorizer(refuse_begin)  # noqa: SLF001
    try:
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            await store.commit_commands([enroll])  # reads first, with its BEGIN
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            await store.set_value("sync_token", "s1")  # writes first
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            await store.commit_job(ops=[], messages=[("job-1", nudge)], at=START)
    finally:
        await store._db.set_authorizer(None)  # noqa: SLF001

    assert await store.get_value("sync_token") is None
    assert not await store.was_handled(enroll.event_id)
    assert await store.export() == {"newcomers": [], "progress": [], "activity": []}
    assert await store.outbox() == []
    assert await store.commit_commands([enroll]) != [None]
    assert (await store.load_progress(ANA)).enrolled


# --- people by localpart --------------------------------------------------------------------


async def enroll_all(store: Store, roadmap: Roadmap, users: list[str]) -> None:
    await store.commit_commands(
        [record(n, u, [rules.enroll(roadmap, Progress(u))]) for n, u in enumerate(users)]
    )


async def test_users_with_localpart_are_found_on_every_server_and_no_one_else(
    store: Store, roadmap: Roadmap
) -> None:
    await enroll_all(
        store,
        roadmap,
        ["@nina:a.org", "@nina:b.org", "@ninab:a.org", "@nin:a.org", "@nina.x:a.org", "@x:nina"],
    )
    assert await store.users_with_localpart("nina") == ["@nina:a.org", "@nina:b.org"]
    assert await store.users_with_localpart("NiNa") == ["@nina:a.org", "@nina:b.org"]
    assert await store.users_with_localpart("nin") == ["@nin:a.org"]
    assert await store.users_with_localpart("nina.x") == ["@nina.x:a.org"]
    assert await store.users_with_localpart("ni") == []
    assert await store.users_with_localpart("") == []
    assert await store.users_with_localpart("nina:a.org") == []
    assert await store.users_with_localpart("mentor") == []  # not a newcomer


async def test_users_with_localpart_read_a_range_of_the_key_not_the_table(
    store: Store, roadmap: Roadmap
) -> None:
    await enroll_all(store, roadmap, [f"@n{i}:example.org" for i in range(20)])
    statements: list[str] = []
    await store._db.set_trace_callback(statements.append)  # noqa: SLF001
    try:
        assert await store.users_with_localpart("n7") == ["@n7:example.org"]
    finally:
        await store._db.set_trace_callback(None)  # noqa: SLF001
    [sql] = [s for s in statements if "FROM newcomers" in s]

    with sqlite3.connect(store.path) as db:
        plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql)]

    assert any(
        step.startswith("SEARCH newcomers") and "(user_id>? AND user_id<?)" in step for step in plan
    ), plan
    assert not any(step.startswith("SCAN") for step in plan), plan


async def test_nudges_and_digests_wait_behind_replies_also_after_a_restart(
    tmp_path: Path,
) -> None:
    # Found in issue 10's rebuild: the outbox's background flag was never written, so after a
    # restart a queued digest no longer waited behind the replies people were waiting for.
    path = tmp_path / "bot.db"
    store = await Store.open(path)
    at = datetime(2026, 3, 2, 9, tzinfo=UTC)
    queued = await store.commit_job(
        ops=(),
        messages=[
            ("d", Send("digest", {"body": "digest"}, room_id="!team:x.org")),
            ("g", Send("greeting", {"body": "hello"}, room_id="!team:x.org")),
        ],
        at=at,
    )
    assert [i.background for i in queued] == [True, False]
    await store.close()

    store = await Store.open(path)
    try:
        assert [(i.txn_id, i.background) for i in await store.outbox()] == [
            ("d", True),
            ("g", False),
        ]
    finally:
        await store.close()
