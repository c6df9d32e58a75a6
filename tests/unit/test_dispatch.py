"""The Dispatcher end to end, in process: message in, queued reply out, progress in a real Store.

These read like the conversation they check; `chat.say` returns the reply's plain body.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bot.commands import all_commands
from bot.commands.registry import CommandSet, Ctx, Outcome
from bot.dispatch import FloodGate, Incoming, reply_txn_id
from bot.progress import State
from bot.roadmap import Roadmap
from bot.store import CommandRecord, Store
from tests.unit.conftest import MENTOR, NEWCOMER, ROOM, make_dispatcher

Chat = Any  # the conversation helper from conftest.py


async def test_start_welcomes_and_shows_step_one(chat: Chat) -> None:
    reply = await chat.say("!start")
    assert "Welcome to the Python Backend Developer Roadmap!" in reply
    assert "It has 52 steps in 14 sections." in reply
    assert "1.1 Bash/Terminal — step 1 of 52" in reply


async def test_the_newcomer_journey(chat: Chat, roadmap: Roadmap) -> None:
    await chat.say("!start")

    assert "1.1 Bash/Terminal — step 1 of 52" in await chat.say("!next")

    reply = await chat.say("!done")
    assert "✓ Done: 1.1 Bash/Terminal." in reply
    assert "Next up:\n1.2 Basic Internet — step 2 of 52" in reply

    reply = await chat.say("!done 2.8")
    assert "✓ Done: 2.8 Python Web Frameworks." in reply
    assert "1.2 Basic Internet — step 2 of 52" in reply  # still the current step

    reply = await chat.say("!skip")
    assert "↷ Skipped: 1.2 Basic Internet." in reply
    assert "1.3 Web Server — step 3 of 52" in reply

    reply = await chat.say("!undo")
    assert "↶ Undone: 1.2 Basic Internet is pending again." in reply
    assert "1.2 Basic Internet — step 2 of 52" in reply

    reply = await chat.say("!goto docker")
    assert "➜ Moved to this step." in reply
    assert "11.1 Docker — step 41 of 52" in reply

    assert "◐ Working on 11.1 Docker. Good luck!" in await chat.say("!doing")

    reply = await chat.say("!progress")
    assert "Your progress: 2 done, 0 skipped, of 52 steps" in reply
    assert " 1/3 1. Basic Internet, Operating System and Frontend Knowledge" in reply
    assert " 1/13 2. Programming Language (Python)" in reply
    assert "Current step: 11.1 Docker" in reply

    reply = await chat.say("!roadmap")
    assert "• ✓ 1.1 Bash/Terminal [bash-terminal]" in reply
    assert "• ○ 1.2 Basic Internet [basic-internet]" in reply
    assert "• ✓ 2.8 Python Web Frameworks [web-frameworks]" in reply
    assert "• ◐ 11.1 Docker [docker] ← current" in reply

    reply = await chat.say("!resources 1.3")
    assert "1.3 Web Server — step 3 of 52" in reply
    web_server = roadmap.get("web-server")
    assert web_server is not None and len(web_server.resources) == 4
    for resource in web_server.resources:
        assert f"{resource.title} <{resource.url}> ({resource.kind})" in reply

    reply = await chat.say("!help")
    for usage in (
        "!start",
        "!next",
        "!done [step]",
        "!skip [step]",
        "!undo",
        "!goto <step>",
        "!doing [step]",
        "!progress",
        "!roadmap",
        "!resources [step]",
        "!help",
    ):
        assert usage in reply

    progress = await chat.progress()
    assert progress.current_id == "docker"
    assert {k: v for k, v in progress.states.items() if v != State.PENDING} == {
        "bash-terminal": State.DONE,
        "web-frameworks": State.DONE,
        "docker": State.LEARNING,
    }


async def test_next_enrolls_implicitly(chat: Chat, store: Store) -> None:
    assert not (await chat.progress()).enrolled
    assert "1.1 Bash/Terminal — step 1 of 52" in await chat.say("!next")
    assert (await chat.progress()).enrolled
    assert [e.action for e in await store.history(chat.sender)] == ["enroll"]


async def test_help_does_not_enroll(chat: Chat, store: Store) -> None:
    await chat.say("!help")
    assert not (await chat.progress()).enrolled
    assert await store.history(chat.sender) == []


async def test_unknown_command_suggests_the_closest(chat: Chat) -> None:
    reply = await chat.say("!dne")
    assert "I don't know the command !dne." in reply
    assert "<code>!dne</code>" in chat.last["formatted_body"]
    assert "Did you mean !done" in reply


async def test_accented_command_name_gets_a_suggestion(chat: Chat) -> None:
    assert "Did you mean !done" in await chat.say("!dóne")


async def test_unknown_step_offers_the_closest_and_changes_nothing(
    chat: Chat, store: Store
) -> None:
    await chat.say("!start")
    reply = await chat.say("!done dokcer")
    assert "I don't know a step called dokcer. The closest are:" in reply
    assert "• 11.1 Docker [docker]" in reply
    assert [e.action for e in await store.history(chat.sender)] == ["enroll"]


async def test_ambiguous_step_lists_the_candidates(chat: Chat) -> None:
    reply = await chat.say("!goto testing")
    assert "testing could be more than one step" in reply
    assert "• 2.9 Unit Testing [unit-testing]" in reply
    assert "• 7.1 Unit Testing [testing-unit]" in reply


async def test_user_text_echoed_back_is_escaped(chat: Chat) -> None:
    await chat.say("!done <b>x</b>")
    assert "&lt;b&gt;x&lt;/b&gt;" in chat.last["formatted_body"]
    assert "<b>" not in chat.last["formatted_body"]


BIDI = "\u202e\u2066\u200f\u061c"
BAIT = f"”. ⚠ Mentors: your session{BIDI} expires today, re-login at https://evil.example/login “"


@pytest.mark.parametrize(
    "command",
    [
        f"!goto {BAIT}",
        f"!done {BAIT}",
        f"!resources {BAIT}",
        f"!{'x' * 100}",
        f"!pause {BAIT.replace(' ', '')}",
        f"!timezone {BAIT.replace(' ', '')}",
    ],
)
async def test_what_the_user_typed_is_echoed_short_as_code_without_bidi(
    chat: Chat, command: str
) -> None:
    reply = await chat.say(command)
    html = chat.last["formatted_body"]
    assert "evil.example" not in reply + html and "x" * 41 not in reply
    assert not set(BIDI) & set(reply + html)
    assert "<a " not in html
    [echoed] = re.findall(r"<code>([^<]*)</code>", html)[:1]
    assert len(echoed) <= 40 and echoed.rstrip("…") in reply


async def test_usage_errors_come_from_the_declaration(chat: Chat) -> None:
    assert "Usage: !goto <step>" in await chat.say("!goto")
    assert "Usage: !progress" in await chat.say("!progress now")


async def test_undo_with_nothing_to_undo(chat: Chat) -> None:
    assert "There is nothing to undo" in await chat.say("!undo")


async def test_undo_refused_after_the_step_changed(chat: Chat) -> None:
    await chat.say("!done")
    await chat.say("!doing 1.1")
    reply = await chat.say("!undo")
    assert "can't be undone" in reply
    assert (await chat.progress()).state("bash-terminal") == State.LEARNING


async def test_undo_twice_walks_back_two_changes(chat: Chat) -> None:
    await chat.say("!done")
    await chat.say("!done")
    await chat.say("!undo")
    assert "↶ Undone: 1.1 Bash/Terminal is pending again." in await chat.say("!undo")
    progress = await chat.progress()
    assert progress.current_id == "bash-terminal"
    assert progress.state("basic-internet") == State.PENDING


async def test_undoing_a_named_done_keeps_a_later_goto(chat: Chat) -> None:
    await chat.say("!done 2.8")  # the current step stays 1.1
    await chat.say("!goto docker")
    assert "↶ Undone: 2.8 Python Web Frameworks is pending again." in await chat.say("!undo")
    assert "11.1 Docker — step 41 of 52" in chat.last["body"]
    assert (await chat.progress()).current_id == "docker"


async def test_reply_content_is_a_notice_replying_to_the_command(chat: Chat) -> None:
    await chat.say("!next", event_id="$cmd-1")
    content = chat.last
    assert content["msgtype"] == "m.notice"
    assert content["format"] == "org.matrix.custom.html"
    assert "step 1 of 52" in content["body"]
    assert "<strong>1.1 Bash/Terminal</strong>" in content["formatted_body"]
    assert content["m.relates_to"] == {"m.in_reply_to": {"event_id": "$cmd-1"}}
    assert content["m.mentions"] == {}


async def test_same_event_twice_is_handled_once(chat: Chat, store: Store) -> None:
    first = await chat.send("!done", event_id="$dup")
    again = await chat.send("!done", event_id="$dup")
    assert first and again is None
    assert [e.action for e in await store.history(chat.sender)] == ["done", "enroll"]
    assert [i.txn_id for i in await store.outbox()] == [reply_txn_id("$dup")]
    assert (await chat.progress()).current_id == "basic-internet"


async def test_text_that_is_no_command_gets_no_reply(chat: Chat, store: Store) -> None:
    assert await chat.send("hello there") is None
    assert await store.outbox() == []


async def test_outbox_holds_the_reply_until_sent(chat: Chat, store: Store) -> None:
    items = await chat.send("!next", event_id="$q")
    assert items is not None
    [reply] = items
    queued = await store.outbox()
    assert [(i.id, i.txn_id, i.room_id, i.content) for i in queued] == [
        (reply.id, reply_txn_id("$q"), reply.room_id, reply.content)
    ]
    await store.outbox_sent([reply.id])
    assert await store.outbox() == []


async def test_each_group_is_shown_before_its_commit_and_the_token_goes_with_the_last(
    store: Store, roadmap: Roadmap
) -> None:
    dispatcher = make_dispatcher(store, roadmap)
    msgs = [
        Incoming("$a1", ROOM, NEWCOMER, "!start"),
        Incoming("$b1", "!b:example.org", "@b:example.org", "!start"),
        Incoming("$a2", ROOM, NEWCOMER, "!done"),  # the same sender again: a group of its own
        Incoming("$m", "!m:example.org", MENTOR, "!status"),  # a mentor's: committed alone
    ]
    shown: list[tuple[list[str], list[bool]]] = []

    async def ahead(records: Sequence[CommandRecord]) -> None:
        # Shown before the commit: none of the group is handled yet (checked on the side).
        handled = [r.event_id in committed for r in records]
        shown.append(([r.event_id for r in records], handled))

    committed: set[str] = set()
    store.on_queued = lambda items: committed.update(
        e for e in ("$a1", "$b1", "$a2", "$m") if any(i.txn_id == reply_txn_id(e) for i in items)
    )
    results = await dispatcher.handle_all(msgs, values={"token": "t1"}, ahead=ahead)

    assert shown == [
        (["$a1", "$b1"], [False, False]),
        (["$a2"], [False]),
        (["$m"], [False]),
    ]
    assert all(results) and committed == {"$a1", "$b1", "$a2", "$m"}
    assert await store.get_value("token") == "t1"
    # A sync without commands still moves the token; a replay is shown but queues nothing.
    assert await dispatcher.handle_all([], values={"token": "t2"}) == []
    assert await store.get_value("token") == "t2"
    assert await dispatcher.handle_all(msgs[:1], values={"token": "t3"}, ahead=ahead) == [None]
    assert await store.get_value("token") == "t3"


async def test_delivered_messages_leave_the_outbox_together(chat: Chat, store: Store) -> None:
    ids = [i.id for body in ("!start", "!next", "!done") for i in await chat.send(body) or []]
    await store.outbox_sent(ids[:2])
    assert [i.id for i in await store.outbox()] == ids[2:]
    await store.outbox_sent([])
    assert [i.id for i in await store.outbox()] == ids[2:]


async def test_history_has_one_row_per_change_newest_first(chat: Chat, store: Store) -> None:
    await chat.say("!start")
    await chat.say("!done")
    await chat.say("!progress")  # reads only
    await chat.say("!skip")
    await chat.say("!nonsense")  # changes nothing
    await chat.say("!undo")
    history = await store.history(chat.sender)
    assert [(e.action, e.step_id, e.from_state, e.to_state) for e in history] == [
        ("undo", "basic-internet", "skipped", "pending"),
        ("skip", "basic-internet", "pending", "skipped"),
        ("done", "bash-terminal", "pending", "done"),
        ("enroll", None, None, None),
    ]
    times = [e.at for e in history]
    assert times == sorted(times, reverse=True)


async def test_progress_survives_closing_and_reopening(tmp_path: Path, chat_on) -> None:
    path = tmp_path / "data" / "bot.db"
    store = await Store.open(path)
    chat = chat_on(store)
    await chat.say("!done")
    await chat.say("!skip")
    await chat.say("!goto docker")
    await store.close()

    store = await Store.open(path)
    try:
        chat = chat_on(store)
        progress = await chat.progress()
        assert progress.current_id == "docker"
        assert progress.state("bash-terminal") == State.DONE
        assert progress.state("basic-internet") == State.SKIPPED
        assert "11.1 Docker — step 41 of 52" in await chat.say("!next")
        # The skip is still the newest undoable change after the restart.
        assert "↶ Undone: 1.2 Basic Internet" in await chat.say("!undo")
    finally:
        await store.close()


async def test_too_long_command_gets_a_short_refusal(chat: Chat, store: Store) -> None:
    reply = await chat.say("!done " + "x" * 2001)
    assert "too long" in reply
    assert len(reply) < 200
    assert not (await chat.progress()).enrolled
    assert await store.history(chat.sender) == []


async def test_finishing_all_52_steps_congratulates(
    chat: Chat, roadmap: Roadmap, store: Store
) -> None:
    for number in range(1, 52):
        assert f"step {number + 1} of 52" in await chat.say("!done")
    reply = await chat.say("!done")
    assert "✓ Done: 14.1 Monitoring Engines." in reply
    assert "Congratulations on finishing the roadmap!" in reply
    assert "Next up" not in reply

    reply = await chat.say("!next")
    assert "You have been through the whole roadmap: 52 of 52 steps done, 0 skipped." in reply
    assert "You have finished every step already." in await chat.say("!done")

    # The mentors hear about it too, in their direct chat.
    mentors = chat.dispatcher.team.state.mentors
    assert mentors
    assert {item.to_user for item in await store.outbox() if item.to_user} == set(mentors)


async def test_finishing_is_announced_to_mentors_once_whatever_undo_does(
    chat: Chat, store: Store
) -> None:
    def announced(items: list[Any]) -> list[str]:
        return [i.to_user for i in items if "has finished" in i.content["body"]]

    mentors = sorted(chat.dispatcher.team.state.mentors)
    for _ in range(51):
        await chat.say("!skip")
    assert announced(await chat.send("!skip") or []) == mentors

    # Back and forth: congratulated each time, but the mentors heard it once.
    for _ in range(3):
        assert "is pending again" in await chat.say("!undo")
        items = await chat.send("!done")
        assert items and "Congratulations on finishing the roadmap!" in items[0].content["body"]
        assert announced(items) == []
    assert announced(await store.outbox()) == mentors
    assert (await chat.progress()).finish_announced_at is not None


async def test_a_command_that_fails_is_answered_logged_and_not_run_again(
    chat: Chat, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    broken = CommandSet()

    @broken.command("boom", "always fails (a bug in a command)")
    def boom(ctx: Ctx) -> Outcome:
        raise RuntimeError("a bug")

    chat.dispatcher.commands = all_commands().extend(broken)
    await chat.say("!start")
    with caplog.at_level(logging.ERROR, logger="bot.dispatch"):
        reply = await chat.say("!boom")
    assert "Sorry, something went wrong on my side" in reply
    assert "command 'boom' failed" in caplog.text and "RuntimeError: a bug" in caplog.text
    # Handled like any other command: a re-delivered event is not run (and failed) again.
    assert await chat.send("!boom", chat.last_event_id) is None
    # And in a sync's group the other commands are committed and answered all the same.
    msgs = [
        Incoming("$g1", "!room:example.org", "@ivy:example.org", "!start"),
        Incoming("$g2", "!room:example.org", "@jo:example.org", "!boom"),
        Incoming("$g3", "!room:example.org", "@kim:example.org", "!next"),
    ]
    answered = await chat.dispatcher.handle_all(msgs)
    assert [bool(items) for items in answered] == [True, True, True]
    assert (await store.load_progress("@kim:example.org")).enrolled


def test_the_flood_gate_forgets_senders_whose_window_is_empty() -> None:
    gate = FloodGate(limit=2, window_ms=10_000)
    # 100,000 senders, one every 100 ms: each floods (and is warned), then goes quiet.
    for n in range(100_000):
        sender, at = f"@s{n}:example.org", n * 100
        assert [gate.check(sender, at) for _ in range(3)] == ["ok", "ok", "warn"]
        assert gate.senders() <= 2_048
    # The ones in their window are remembered still: a warned sender stays silenced.
    assert gate.check("@s99999:example.org", 99_999 * 100) == "drop"
    assert gate.check("@s0:example.org", 100_000 * 100) == "ok"
