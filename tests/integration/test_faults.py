"""Faults the bot must survive, against a real Synapse with the bot as its own process:
SIGKILL at random points, a homeserver outage, tight rate limits, a revoked access token,
users from servers not allowed, a flood of commands, and messages it cannot decrypt."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from urllib.parse import quote

import pytest

from bot import progress as rules
from bot.dev.process import NotReady
from bot.ops import Send
from bot.progress import Change, Progress, State, Undoable, UndoRefused
from bot.roadmap import Roadmap, load_roadmap
from bot.store import Store
from tests.harness import MakePerson, MakeSynapse, Person, Synapse
from tests.harness.attacker import api, fake_megolm, send_raw
from tests.harness.bot import REPO, BotProcess, new_bot, open_chat, running
from tests.harness.conversation import (
    answered,
    ask,
    assert_each_answered_once,
    collect_replies,
    read_only_db,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


# ------------------------------------------------ the pure rules, replayed for SIGKILL storms


#: An activity row as the test compares it: action, step, from, to, previous and new current.
Row = tuple[str, str | None, str | None, str | None, str | None, str | None]


@dataclass(frozen=True)
class Expected:
    """What one command should have done: its reply, and its activity rows."""

    reply: str  # a piece of the reply's body
    rows: tuple[Row, ...]
    undoes: str | None = None  # event id of the command an undo reverts


def replay(
    roadmap: Roadmap, commands: list[tuple[str, str]]
) -> tuple[Progress, dict[str, Expected]]:
    """Runs (event id, "!done"/"!undo") through bot.progress on an enrolled newcomer, as the
    store would: the undoable entry is the newest done not undone yet."""
    progress = Progress("@model:test")
    enroll = rules.enroll(roadmap, progress)
    assert enroll is not None
    progress = rules.apply(progress, enroll)
    log: list[tuple[str, Change]] = []  # (event id, change); the index is the entry id
    undone: set[int] = set()
    expected: dict[str, Expected] = {}

    def row(change: Change) -> Row:
        return (
            change.action.value,
            change.step_id,
            change.from_state.value if change.from_state else None,
            change.to_state.value if change.to_state else None,
            change.prev_current,
            change.new_current,
        )

    for event_id, command in commands:
        undoable = [
            Undoable(
                i,
                str(c.step_id),
                State(c.from_state),
                State(c.to_state),
                c.prev_current,
                c.new_current,
            )
            for i, (_, c) in enumerate(log)
            if c.action in rules.UNDOABLE and i not in undone
        ]
        progress = replace(progress, last_undoable=undoable[-1] if undoable else None)
        if command == "!done":
            step = rules.current_step(roadmap, progress)
            assert step is not None, "the model finished the roadmap: pick another seed"
            change = rules.finish(roadmap, progress, step, State.DONE)
            assert change is not None
            expected[event_id] = Expected(f"✓ Done: {step.number} {step.title}.", (row(change),))
        else:
            outcome = rules.undo(progress)
            if isinstance(outcome, UndoRefused):
                expected[event_id] = Expected(outcome.reason, ())
                continue
            change = outcome
            assert change.undoes is not None
            undone.add(change.undoes)
            step = roadmap.get(change.step_id)
            assert step is not None
            expected[event_id] = Expected(
                f"↶ Undone: {step.number} {step.title} is {change.to_state} again.",
                (row(change),),
                undoes=log[change.undoes][0],
            )
        log.append((event_id, change))
        progress = rules.apply(progress, change)
    return progress, expected


async def start_or_die(bot: BotProcess, kill_after: float | None) -> bool:
    """Starts the bot; with `kill_after`, SIGKILLs it that many seconds into the start unless it
    is ready by then. True if it is running and ready."""
    task = asyncio.create_task(bot.start(timeout=60))
    if kill_after is not None:
        await asyncio.wait({task}, timeout=kill_after)
        if not task.done():
            bot.kill()
            try:
                await task
            except NotReady as exc:
                assert "before logging" in str(exc), exc  # it died by our hand, nothing else
                return False
    await task
    return True


async def sigkill_storm(
    person: Person,
    bot: BotProcess,
    *,
    seed: int,
    encrypted: bool,
    n_commands: int,
    min_kills: int,
) -> None:
    rng = random.Random(seed)
    commands = ["!done" if rng.random() < 0.65 else "!undo" for _ in range(n_commands)]
    # Spread the commands over the whole storm: a kill every ~1.5 s, a command every ~0.6 s.
    pauses = [rng.uniform(0.0, 1.2 * min_kills / n_commands * 1.5) for _ in commands]
    roadmap = load_roadmap(REPO / "roadmap.yaml")

    await bot.start()
    room = await open_chat(person, bot.user_id, encrypted=encrypted)
    start_event = await person.say(room, "!start")
    assert "step 1 of" in (await person.reply(room, timeout=30)).body

    sent: list[str] = []
    just_sent = asyncio.Event()

    async def newcomer() -> None:
        for command, pause in zip(commands, pauses, strict=True):
            sent.append(await person.say(room, command))
            just_sent.set()
            await asyncio.sleep(pause)

    kills = 0
    hits: Counter[str] = Counter()  # what each kill interrupted, for the failure message
    sender = asyncio.create_task(newcomer())
    try:
        while kills < min_kills or not sender.done():
            if rng.random() < 0.5:
                await asyncio.sleep(rng.uniform(0.0, 1.2))  # whatever the bot is doing
            else:  # while it handles a command that just arrived
                just_sent.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(just_sent.wait(), 3)
                await asyncio.sleep(rng.uniform(0.0, 0.1))
            bot.kill()
            kills += 1
            with read_only_db(bot.data_dir) as db:
                queued = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
                handled = db.execute("SELECT count(*) FROM handled_events").fetchone()[0]
            hits["replies queued, unsent"] += queued > 0
            hits["commands not yet handled"] += handled < len(sent) + 1
            hits["work in progress"] += queued > 0 or handled < len(sent) + 1
            await asyncio.sleep(rng.uniform(0.0, 0.5))  # commands arrive while it is down
            # One start in four is itself killed part-way (login, first sync, backlog).
            kill_after = rng.uniform(0.2, 2.0) if rng.random() < 0.25 else None
            while not await start_or_die(bot, kill_after):
                kills += 1
                hits["start"] += 1
                kill_after = None
        await sender
    finally:
        sender.cancel()
    assert kills >= min_kills and bot.proc is not None and bot.proc.poll() is None
    # Kills that hit an idle bot prove little: at least one must have interrupted real work.
    assert hits["work in progress"] > 0, f"{kills} kills, none mid-work: {dict(hits)}"

    replies = await collect_replies(person, room, sent, timeout=90)
    assert_each_answered_once(replies, sent)

    final, expected = replay(roadmap, list(zip(sent, commands, strict=True)))
    by_event = {answered(r): r for r in replies}
    wrong = [
        (i, commands[i], expected[e].reply, by_event[e].body.splitlines()[0])
        for i, e in enumerate(sent)
        if expected[e].reply not in by_event[e].body
    ]
    assert not wrong, f"replies that differ from the rules replayed in order: {wrong[:5]}"

    with read_only_db(bot.data_dir) as db:
        rows = db.execute(
            "SELECT a.event_id, a.action, a.step_id, a.from_state, a.to_state, a.prev_current,"
            " a.new_current, u.event_id FROM activity a LEFT JOIN activity u ON u.id = a.undoes"
            " WHERE a.user_id = ? ORDER BY a.id",
            (person.user_id,),
        ).fetchall()
        states = dict(
            db.execute(
                "SELECT step_id, state FROM progress WHERE user_id = ?", (person.user_id,)
            ).fetchall()
        )
        (current,) = db.execute(
            "SELECT current_step FROM newcomers WHERE user_id = ?", (person.user_id,)
        ).fetchone()
        handled = {
            e
            for (e,) in db.execute(
                "SELECT event_id FROM handled_events WHERE sender = ?", (person.user_id,)
            )
        }
    # The activity log: one enroll for !start, then exactly the model's rows, in order, each
    # keyed by its command's event id; an undo points at the command it reverts.
    assert rows[0][:2] == (start_event, "enroll")
    want = [
        (e, *row, expected[e].undoes if row[0] == "undo" else None)
        for e in sent
        for row in expected[e].rows
    ]
    assert rows[1:] == want
    assert states == {k: v.value for k, v in final.states.items()}
    assert current == final.current_id
    assert handled == {start_event, *sent}
    done, _, total = rules.totals(roadmap, final)
    progress_reply = await person.say(room, "!progress")
    reply = await person.reply(room, timeout=30)
    assert answered(reply) == progress_reply
    assert f"{done} done, 0 skipped, of {total} steps" in reply.body


# ----------------------------------------------------------------------------------- tests


async def test_sigkill_storm_loses_and_repeats_nothing(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bot = await new_bot(synapse, tmp_path_factory.mktemp("storm-bot"), "storm-bot")
    try:
        await sigkill_storm(
            await make_person("stormy"),
            bot,
            seed=20240611,
            encrypted=False,
            n_commands=60,
            min_kills=20,
        )
    finally:
        bot.kill()


async def test_sigkill_storm_in_an_encrypted_chat(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bot = await new_bot(synapse, tmp_path_factory.mktemp("storm-bot-e2e"), "storm-bot-e2e")
    try:
        await sigkill_storm(
            await make_person("stormy-e2e"),
            bot,
            seed=7,
            encrypted=True,
            n_commands=24,
            min_kills=8,
        )
    finally:
        bot.kill()


async def test_homeserver_outage_is_waited_out(
    make_synapse: MakeSynapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    synapse = await make_synapse()
    bot = await new_bot(synapse, tmp_path_factory.mktemp("outage-bot"), "outage-bot")
    async with running(bot):
        ivy = await make_person("ivy", server=synapse)
        room = await open_chat(ivy, bot.user_id)
        sent = [await ivy.say(room, "!start"), await ivy.say(room, "!done")]
        await synapse.stop()
        await asyncio.sleep(10)
        await synapse.start()
        sent += [await ivy.say(room, "!done"), await ivy.say(room, "!progress")]

        replies = await collect_replies(ivy, room, sent, timeout=90)
        assert_each_answered_once(replies, sent)
        assert [answered(r) for r in replies] == sent, "replies in the order of the commands"
        assert "2 done, 0 skipped" in replies[-1].body
        assert bot.proc is not None and bot.proc.poll() is None, "the bot exited"
        assert "retrying in" in bot.log_text()


async def test_tight_rate_limit_delays_but_answers_everything_in_order(
    make_synapse: MakeSynapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    synapse = await make_synapse(rc_message={"per_second": 0.5, "burst_count": 5})
    bot = await new_bot(synapse, tmp_path_factory.mktemp("limited-bot"), "limited-bot")
    async with running(bot):
        people = [await make_person(name, server=synapse) for name in ("kai", "lea", "max", "noa")]
        rooms = [await open_chat(p, bot.user_id) for p in people]
        per_person = (12, 13, 12, 13)  # 50 commands
        script = ["!start"] + ["!done", "!progress", "!next", "!undo"] * 4

        async def talk(person: Person, room: str, n: int) -> list[str]:
            return [await person.say(room, command) for command in script[:n]]

        sent = await asyncio.gather(
            *(talk(p, r, n) for p, r, n in zip(people, rooms, per_person, strict=True))
        )
        assert sum(len(s) for s in sent) == 50
        for person, room, commands in zip(people, rooms, sent, strict=True):
            replies = await collect_replies(person, room, commands, timeout=150, quiet=1)
            assert_each_answered_once(replies, commands)
            assert [answered(r) for r in replies] == commands, f"{person.user_id}: out of order"
        # Hit by the bot's own sends (its outbox waits a 429 out) or by one of nio's requests.
        log = bot.log_text()
        assert "(429)" in log or "Got 429 response" in log, "the limit was never hit"


async def test_revoked_token_stops_the_bot_with_a_clear_message(
    synapse: Synapse, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bot = await new_bot(synapse, tmp_path_factory.mktemp("revoked-bot"), "revoked-bot")
    async with running(bot):
        session = bot.session()
        status, body = await api(
            "POST", f"{synapse.url}/_matrix/client/v3/logout", session.access_token
        )
        assert status == 200, body
        assert bot.proc is not None
        deadline = time.monotonic() + 60
        while bot.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert bot.proc.poll() not in (None, 0), "the bot kept running or exited 0"
        log = bot.log_text()
        assert log.count("no longer accepts the bot's access token") == 1
        assert "session.json" in log and "log in anew" in log
        assert log.count("retrying in") <= 1, "the bot looped on the refused token"


async def test_users_of_servers_not_allowed_are_ignored_even_in_a_shared_room(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bot = await new_bot(
        synapse,
        tmp_path_factory.mktemp("picky-bot"),
        "picky-bot",
        bot={"allowed_servers": ["example.org"]},
    )
    async with running(bot):
        root = await make_person("root-admin", admin=True)
        room = await root.create_room()
        status, body = await api(
            "POST",
            f"{synapse.url}/_synapse/admin/v1/join/{quote(room)}",
            str(root.client.access_token),
            {"user_id": bot.user_id},
        )
        assert status == 200, body
        await root.wait_for_join(room, bot.user_id, timeout=30)
        command = await root.say(room, "!start")
        # An invite sent after the command: once the bot has turned it down, it has seen the
        # command too (sync delivers events in order).
        await root.create_room(invite=[bot.user_id])
        await bot.wait_for_log("declining an invite", timeout=30)
        await root.no_more_replies(room, wait=3)
        with read_only_db(bot.data_dir) as db:
            assert db.execute("SELECT count(*) FROM newcomers").fetchone() == (0,)
            assert db.execute(
                "SELECT count(*) FROM handled_events WHERE event_id = ?", (command,)
            ).fetchone() == (0,)


async def test_flood_gets_one_slow_down_then_silence(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bot = await new_bot(
        synapse,
        tmp_path_factory.mktemp("flood-bot"),
        "flood-bot",
        bot={"flood_limit": 3, "flood_window": "30s"},
    )
    async with running(bot):
        fay = await make_person("fay-flood")
        room = await open_chat(fay, bot.user_id)
        sent = [await fay.say(room, command) for command in ["!start", "!next"] + ["!progress"] * 4]
        replies = await fay.replies(room, 4, timeout=30)
        assert [answered(r) for r in replies] == sent[:4]
        assert not any("Slow down" in r.body for r in replies[:3])
        assert "step 1 of" in replies[0].body and "step 1 of" in replies[1].body
        assert "Slow down, please: at most 3 commands in 30 seconds" in replies[3].body
        await fay.no_more_replies(room, wait=4)


async def test_undecryptable_messages_get_one_note_per_sender_an_hour(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bot = await new_bot(synapse, tmp_path_factory.mktemp("locked-bot"), "locked-bot")
    async with running(bot):
        gus = await make_person("gus-locked")
        room = await open_chat(gus, bot.user_id, encrypted=True)
        session_id = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        first = await send_raw(gus, room, fake_megolm(gus, session_id))
        note = await gus.reply(room, timeout=30)
        assert answered(note) == first and note.msgtype == "m.notice" and note.encrypted
        assert "couldn't decrypt your message" in note.body
        await send_raw(gus, room, fake_megolm(gus, session_id))
        # Another session too: one note an hour per sender is enough (a flood of fake
        # encrypted events must not make the bot talk; see test_security.py).
        other = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        await send_raw(gus, room, fake_megolm(gus, other))
        await gus.no_more_replies(room, wait=4)
        # And the bot still reads what it can decrypt.
        assert "step 1 of" in (await ask(gus, room, "!start")).body


async def test_a_message_refused_for_good_holds_back_nothing_behind_it(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Bug (issue 10): a send failing with a permanent error (here M_TOO_LARGE) was counted as
    # one more attempt and retried over up to 8 flushes, holding back the room meanwhile.
    bot = await new_bot(synapse, tmp_path_factory.mktemp("too-large-bot"), "too-large-bot")
    ana = await make_person("ana")
    async with running(bot):
        room = await open_chat(ana, bot.user_id)
        await ask(ana, room, "!start")
        assert await bot.stop() == 0
    # While the bot is down, a message the homeserver will never take (over 64 KiB) is queued
    # ahead of an ordinary one for the same room.
    store = await Store.open(bot.data_dir / "bot.db")
    try:
        await store.commit_job(
            ops=(),
            messages=[
                ("too-large", Send("x", {"msgtype": "m.notice", "body": "x" * 70_000}, room)),
                ("after-it", Send("y", {"msgtype": "m.notice", "body": "the one after"}, room)),
            ],
            at=datetime.now(UTC),
        )
    finally:
        await store.close()

    async with running(bot):
        after = await ana.reply(room, timeout=20)
        assert after.body == "the one after"
        await ana.no_more_replies(room, wait=2)
        assert bot.log_text().count("sending failed for good") == 1
        assert "M_TOO_LARGE" in bot.log_text()
    store = await Store.open(bot.data_dir / "bot.db")
    try:
        assert await store.outbox() == []
    finally:
        await store.close()
