"""Reaction shortcuts and knowledge checks, in process: the pure parts (keys, polls) and the
dispatcher and store around them (marks, open checks, answers, required checks)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from bot.app import build_dispatcher, nudge_policy
from bot.config import Config
from bot.dispatch import Dispatcher, Incoming
from bot.ops import Mark
from bot.polls import POLL_END, POLL_START, TEXT, poll_start, poll_vote
from bot.reports import render_digest, render_status, render_team, right_first_time
from bot.roadmap import Check, Roadmap
from bot.shortcuts import SHORTCUTS, command_for, shortcut_reactions
from bot.store import OutboxItem, Store
from bot.team import Team, TeamState
from tests.unit.conftest import NEWCOMER, ROOM

CHECKS = (
    Check("Which command copies a file over SSH?", ("cp", "scp", "mv"), 1, "scp: secure copy."),
    Check("Which port does SSH use?", ("22", "80"), 0, "22 is SSH's port."),
)
AT = datetime(2026, 3, 2, 9, tzinfo=UTC)


def with_checks(roadmap: Roadmap) -> Roadmap:
    first = roadmap.sections[0]
    steps = (replace(first.steps[0], checks=CHECKS), *first.steps[1:])
    return replace(roadmap, sections=(replace(first, steps=steps), *roadmap.sections[1:]))


def dispatcher(store: Store, roadmap: Roadmap, *, required: bool = False) -> Dispatcher:
    config = Config.model_validate(
        {"matrix": {"homeserver": "https://h.org", "user_id": "@b:example.org", "password": "x"}}
    )
    state = TeamState(with_checks(roadmap), nudge_policy(config), checks_required=required)
    return build_dispatcher(store, Team(state), server_name="example.org", clock=lambda: AT)


class Say:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher, self.n = dispatcher, 0

    async def __call__(self, body: str) -> list[OutboxItem]:
        self.n += 1
        msg = Incoming(f"$e{self.n}", ROOM, NEWCOMER, body, is_direct=True)
        [items] = await self.dispatcher.handle_all([msg])
        assert items, f"no reply to {body!r}"
        return items


def test_shortcut_keys_match_with_or_without_the_variation_selector() -> None:
    assert command_for("✅") == "done" and command_for("✅\ufe0f") == "done"
    assert command_for("⏭️") == "skip" and command_for("⏭") == "skip"
    assert command_for("📚") == "resources"
    assert command_for("👍") is None and command_for("") is None


def test_the_bots_own_reactions_repeat_their_transaction_ids_and_wait_behind_replies() -> None:
    sends = shortcut_reactions("!r:x.org", "$m")
    assert [t for t, _ in sends] == [t for t, _ in shortcut_reactions("!r:x.org", "$m")]
    others = {t for t, _ in shortcut_reactions("!r:x.org", "$o")}
    assert len({t for t, _ in sends}) == 3 and not others & {t for t, _ in sends}
    assert [s.content["m.relates_to"]["key"] for _, s in sends] == list(SHORTCUTS)
    assert all(s.event_type == "m.reaction" and s.background for _, s in sends)


def test_polls_are_what_element_sends_and_votes_are_read_under_both_names() -> None:
    content = poll_start("Q?", ["a", "b"], "Q?\n1. a\n2. b")
    assert content[POLL_START]["answers"] == [{"id": "1", TEXT: "a"}, {"id": "2", TEXT: "b"}]
    assert content[POLL_START]["kind"] == "org.matrix.msc3381.poll.disclosed"
    assert content["body"] == content[TEXT] == "Q?\n1. a\n2. b"
    relates = {"rel_type": "m.reference", "event_id": "$poll"}
    unstable = {"org.matrix.msc3381.poll.response": {"answers": ["2"]}, "m.relates_to": relates}
    stable = {"m.poll.response": {"answers": ["1"]}, "m.relates_to": relates}
    assert poll_vote(unstable) == (2, "$poll") and poll_vote(stable) == (1, "$poll")
    assert poll_vote({"m.poll.response": {"answers": ["x"]}}) == (None, None)
    assert poll_vote({"m.poll.response": {"answers": ["²"]}}) == (None, None)  # a digit, no number
    assert poll_vote({}) == (None, None)


async def test_a_reply_that_shows_a_step_is_marked_for_its_reader(
    store: Store, roadmap: Roadmap
) -> None:
    say = Say(dispatcher(store, roadmap))
    [reply] = await say("!start")
    assert reply.mark == Mark("step", NEWCOMER, "bash-terminal")
    [reply] = await say("!goto 1.3")
    assert reply.mark == Mark("step", NEWCOMER, "web-server")
    [reply] = await say("!help")
    assert reply.mark is None
    [stored] = [i for i in await store.outbox() if i.txn_id == reply.txn_id]
    assert stored.mark is None and stored.event_type == "m.room.message"


async def test_a_check_is_asked_answered_once_and_kept(store: Store, roadmap: Roadmap) -> None:
    say = Say(dispatcher(store, roadmap))
    await say("!start")
    reply, poll = await say("!quiz")
    assert "Which command copies a file over SSH?" in reply.content["body"]
    assert poll.event_type == POLL_START and poll.mark == Mark("quiz", NEWCOMER, "bash-terminal", 0)
    asked = await store.open_check(NEWCOMER)
    assert asked is not None and (asked.step_id, asked.check, asked.poll_event_id) == (
        "bash-terminal",
        0,
        None,
    )
    await store.delivered(poll, "$poll", [], at=AT)  # the poll went out
    assert (await store.open_check(NEWCOMER)).poll_event_id == "$poll"  # type: ignore[union-attr]
    marked = await store.marked("$poll")
    assert marked is not None and marked.mark == poll.mark

    [bad] = await say("!answer 4")
    assert "from 1 to 3" in bad.content["body"] and await store.open_check(NEWCOMER)
    [superscript] = await say("!answer ²")  # a digit to str.isdigit, no number to int()
    assert "Sorry" not in superscript.content["body"] and await store.open_check(NEWCOMER)
    graded, ended = await say("!answer 2")
    assert graded.content["body"].startswith("✅ Right. scp: secure copy.")
    assert ended.event_type == POLL_END and ended.content["m.relates_to"]["event_id"] == "$poll"
    assert await store.open_check(NEWCOMER) is None
    [none] = await say("!answer 2")
    assert "no question waiting" in none.content["body"]

    reply, _ = await say("!quiz")  # the first is right: the second comes next
    assert "Which port does SSH use?" in reply.content["body"]
    [graded] = await say("!answer 2")  # wrong; no poll was sent, so none to end
    assert graded.content["body"].startswith("❌ Not quite: the answer is 22. 22 is SSH's port.")
    answers = await store.check_answers(NEWCOMER)
    assert [(a.step_id, a.check, a.correct) for a in answers] == [
        ("bash-terminal", 0, True),
        ("bash-terminal", 1, False),
    ]


async def test_required_checks_come_before_done(store: Store, roadmap: Roadmap) -> None:
    say = Say(dispatcher(store, roadmap, required=True))
    await say("!start")
    reply, poll = await say("!done")
    assert "Before 1.1 Bash/Terminal is done" in reply.content["body"] and poll.mark
    assert (await store.load_progress(NEWCOMER)).state("bash-terminal") == "pending"
    reply, _poll = await say("!answer 2")
    assert "Which port does SSH use?" in reply.content["body"]
    [reply] = await say("!answer 1")
    assert "✓ Done: 1.1 Bash/Terminal" in reply.content["body"]
    assert reply.mark == Mark("step", NEWCOMER, "basic-internet")
    assert (await store.load_progress(NEWCOMER)).state("bash-terminal") == "done"
    [reply] = await say("!done 1.1")  # done already: no checks asked again
    assert "already marked done" in reply.content["body"]


async def test_delivering_a_step_message_queues_its_shortcuts(
    store: Store, roadmap: Roadmap
) -> None:
    handed: list[list[OutboxItem]] = []
    say = Say(dispatcher(store, roadmap))
    [reply] = await say("!start")
    store.on_queued = handed.append
    await store.delivered(reply, "$shown", shortcut_reactions(ROOM, "$shown"), at=AT)
    assert [i.event_type for i in handed[0]] == ["m.reaction"] * 3
    assert all(i.background for i in handed[0])
    marked = await store.marked("$shown")
    assert marked is not None and marked.mark == Mark("step", NEWCOMER, "bash-terminal")
    assert await store.marked("$other") is None
    missed = await store.steps_missed_twice(AT)
    assert missed == {}


async def test_mentors_see_checks_right_first_time_and_topics_missed_twice(
    store: Store, roadmap: Roadmap
) -> None:
    say = Say(dispatcher(store, roadmap))
    await say("!start")
    for answer in ("1", "2"):  # check 1: wrong, then right
        await say("!quiz")
        await say(f"!answer {answer}")
    await say("!quiz")  # check 2: right at once
    await say("!answer 1")
    answers = await store.check_answers(NEWCOMER)
    assert right_first_time(answers) == (1, 2)

    [info] = await store.newcomers([s.id for s in roadmap], NEWCOMER)
    progress = await store.load_progress(NEWCOMER)
    policy = dispatcher(store, roadmap).team.state.policy
    status = render_status(roadmap, info, progress, policy, AT, answers=answers).body
    assert "Knowledge checks: 1/2 right first time" in status

    assert await store.steps_missed_twice(AT) == {}  # wrong once only
    await say("!quiz 1.1")  # both right: asked again in turn, check 2 now
    await say("!answer 2")  # wrong: a second wrong answer on this step
    assert await store.steps_missed_twice(AT) == {"bash-terminal": 1}
    digest = render_digest(roadmap, [], {}, policy, AT, AT, missed_twice={"bash-terminal": 1}).body
    assert "Topics the team could explain better" in digest
    assert "1.1 Bash/Terminal: answered wrong twice by 1 newcomer" in digest


async def test_team_views_flag_a_newcomer_behind_pace(store: Store, roadmap: Roadmap) -> None:
    say = Say(dispatcher(store, roadmap))
    await say("!start")  # enrolled at AT; nothing done for five weeks
    policy = dispatcher(store, roadmap).team.state.policy
    later = AT + timedelta(weeks=5)
    infos = await store.newcomers([s.id for s in roadmap])
    states = await store.states_of([NEWCOMER])
    flagged = render_team(roadmap, infos, policy, later, states=states).body
    assert "behind pace" in flagged
    assert "behind pace" not in render_team(roadmap, infos, policy, later).body
    digest = render_digest(roadmap, infos, {}, policy, later, later, states=states).body
    assert "behind pace" in digest
