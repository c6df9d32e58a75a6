"""Property tests over arbitrary text: nothing a user types makes the bot raise, and every
command gets exactly one reply while anything else is deliberately ignored."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.app import build_dispatcher
from bot.commands import all_commands
from bot.commands.registry import parse
from bot.dispatch import Dispatcher, FloodGate, Incoming
from bot.roadmap import find_step, load_roadmap
from bot.store import OutboxItem, Store
from bot.team import Team, TeamState
from tests.unit.common import POLICY

ROADMAP = load_roadmap(Path(__file__).resolve().parents[2] / "roadmap.yaml")
MENTOR = "@mentor:example.org"
ADMIN = "@admin:example.org"
NOW = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)

command_names = st.sampled_from(
    sorted({name for c in all_commands() for name in (c.name, *c.aliases)}) + ["dnoe", "x"]
)
words = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40
) | st.sampled_from(["2.8", "docker", "@nina:example.org", "nina", "5d", "Europe/Berlin", "web"])
commandish = st.builds(
    lambda prefix, name, args: f"{prefix}{name} {' '.join(args)}",
    st.sampled_from(["!", "! ", "", "!!"]),
    command_names,
    st.lists(words, max_size=3),
)
bodies = st.one_of(st.text(max_size=200), commandish)
html = st.one_of(
    st.none(),
    st.text(max_size=100),
    st.builds(lambda u: f'<a href="https://matrix.to/#/{u}">{u}</a>', st.text(max_size=30)),
)
senders = st.sampled_from(["@nina:example.org", "@omar:example.org", MENTOR, ADMIN])


def dispatcher_on(store: Store, clock: Callable[[], datetime]) -> Dispatcher:
    state = TeamState(
        ROADMAP, POLICY, admins=frozenset({ADMIN}), configured_mentors=frozenset({MENTOR})
    )
    return build_dispatcher(
        store,
        Team(state),
        server_name="example.org",
        clock=clock,
        flood=FloodGate(limit=10**9),
    )


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[asyncio.AbstractEventLoop, Dispatcher]]:
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(Store.open(tmp_path_factory.mktemp("prop") / "bot.db"))
    dispatcher = dispatcher_on(store, lambda: NOW)
    yield loop, dispatcher
    loop.run_until_complete(store.close())
    loop.close()


_ids = itertools.count()


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies, formatted=html, sender=senders, direct=st.booleans())
def test_every_command_gets_exactly_one_reply_and_nothing_else_any(
    world: tuple[asyncio.AbstractEventLoop, Dispatcher],
    body: str,
    formatted: str | None,
    sender: str,
    direct: bool,
) -> None:
    loop, dispatcher = world
    event_id = f"$prop{next(_ids)}"
    msg = Incoming(event_id, "!room:example.org", sender, body, formatted, is_direct=direct)
    items = loop.run_until_complete(dispatcher.handle(msg))
    if parse(body, "!") is None:
        assert items is None, "plain chat must be ignored"
        return
    assert items, f"no reply to {body!r}"
    in_room = [i for i in items if i.room_id == "!room:example.org"]
    replies = [i for i in in_room if i.content.get("m.relates_to")]
    assert len(replies) == 1, f"{len(replies)} replies to {body!r}"
    assert replies[0].content["m.relates_to"]["m.in_reply_to"]["event_id"] == event_id
    assert replies[0].content["msgtype"] == "m.notice"
    # Handled once: the same event again changes nothing and queues nothing.
    assert loop.run_until_complete(dispatcher.handle(msg)) is None


@settings(max_examples=500, deadline=None)
@given(query=st.text(max_size=80))
def test_step_lookup_never_raises_and_answers_consistently(query: str) -> None:
    found = find_step(ROADMAP, query)
    if found.step is not None:
        assert found.candidates == () and not found.ambiguous
    else:
        assert all(s in ROADMAP.steps for s in found.candidates)
        assert len(found.candidates) <= 5


@settings(max_examples=500, deadline=None)
@given(body=st.text(max_size=300), prefix=st.sampled_from(["!", "?", "!!", "~"]))
def test_parse_never_raises_and_names_are_clean(body: str, prefix: str) -> None:
    parsed = parse(body, prefix)
    if parsed is not None:
        assert parsed.name and parsed.name == parsed.name.lower()
        assert not any(c.isspace() for c in parsed.name)
        assert parsed.args == " ".join(parsed.args.split())


# The store answers load_progress from a write-through cache: after any sequence of commands,
# what it answers must be exactly what a fresh connection reads from the file.
journey = st.sampled_from(
    [
        "!start",
        "!done",
        "!done",
        "!skip",
        "!undo",
        "!undo",
        "!next",
        "!doing",
        "!done 1.1",
        "!skip 2.8",
        "!goto 3.1",
        "!goto 1.1",
        "!doing 2.1",
        "!undo",
        "!tz Europe/Berlin",
        "!timezone UTC",
        "!pause 2d",
        "!resume",
        "!help",
    ]
)
mentor_says = st.sampled_from(
    [
        "!assign @nina:example.org @mentor:example.org",
        "!assign @omar:example.org @mentor:example.org",
        "!nudge @nina:example.org",
        "!status @omar:example.org",
        "!reload",
    ]
)
steps_of = st.lists(
    st.tuples(st.sampled_from(["@nina:example.org", "@omar:example.org"]), journey)
    | st.tuples(st.sampled_from([MENTOR, ADMIN]), mentor_says),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=steps_of)
def test_cached_progress_is_what_the_database_holds(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, str]]
) -> None:
    async def run() -> None:
        path = tmp_path_factory.mktemp("cache") / "bot.db"
        store = await Store.open(path)
        fresh = await Store.open(path)  # a second connection, nothing cached
        try:
            dispatcher = dispatcher_on(store, lambda: NOW + timedelta(seconds=next(_ids)))
            users = ["@nina:example.org", "@omar:example.org"]
            for sender, body in steps:
                items = await dispatcher.handle(
                    Incoming(f"$c{next(_ids)}", "!room:example.org", sender, body)
                )
                assert items, f"no reply to {body!r}"
                for user in users:
                    cached = await store.load_progress(user)
                    on_disk = await fresh.load_progress(user)
                    fresh._progress.clear()  # noqa: SLF001 - read the file every time
                    assert cached == on_disk, f"after {sender}: {body!r}"
        finally:
            await fresh.close()
            await store.close()

    asyncio.run(run())


# Group commit: handing the dispatcher a whole sync's commands at once must answer and store
# exactly what handing them over one by one does (replays and repeated senders included).
sync_of = st.lists(
    st.tuples(
        st.sampled_from(["@nina:example.org", "@omar:example.org", "@ivy:example.org"]), journey
    )
    | st.tuples(st.sampled_from([MENTOR, ADMIN]), mentor_says)
    | st.just(("replay", "")),
    min_size=1,
    max_size=20,
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(syncs=st.lists(sync_of, min_size=1, max_size=3))
def test_a_sync_handled_at_once_is_the_same_as_one_by_one(
    tmp_path_factory: pytest.TempPathFactory, syncs: list[list[tuple[str, str]]]
) -> None:
    async def run() -> None:
        folder = tmp_path_factory.mktemp("group")
        one, many = await Store.open(folder / "one.db"), await Store.open(folder / "many.db")
        try:
            ticks_one, ticks_many = itertools.count(), itertools.count()
            by_one = dispatcher_on(one, lambda: NOW + timedelta(seconds=next(ticks_one)))
            at_once = dispatcher_on(many, lambda: NOW + timedelta(seconds=next(ticks_many)))
            sent: list[Incoming] = []
            for n, sync in enumerate(syncs):
                msgs = []
                for k, (sender, body) in enumerate(sync):
                    if sender == "replay":  # an event of an earlier sync (or this one) again
                        if sent or msgs:
                            msgs.append((sent + msgs)[k % len(sent + msgs)])
                        continue
                    msgs.append(Incoming(f"$s{n}-{k}", "!room:example.org", sender, body))
                expected = [await by_one.handle(m) for m in msgs]
                got = await at_once.handle_all(msgs)
                assert [_bodies(i) for i in got] == [_bodies(i) for i in expected], sync
                sent += msgs
            assert await many.export() == await one.export()
            assert [i.content for i in await many.outbox()] == [
                i.content for i in await one.outbox()
            ]
        finally:
            await one.close()
            await many.close()

    asyncio.run(run())


def _bodies(items: list[OutboxItem] | None) -> list[str] | None:
    return None if items is None else [(i.txn_id, i.content["body"]) for i in items]
