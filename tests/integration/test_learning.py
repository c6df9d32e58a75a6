"""Learning beyond a checklist, on a real Synapse with the bot as its own process and matrix-nio
clients: reaction shortcuts on the messages that show a step, knowledge checks asked as polls
(answered by a vote or by !answer, across a restart), and checks required before !done."""

from __future__ import annotations

from typing import Any

import pytest

from bot.polls import POLL_END, POLL_START, TEXT
from bot.roadmap import Check, load_roadmap
from tests.harness import MakePerson, Person, Synapse
from tests.harness.bot import REPO, new_bot, open_chat, running
from tests.harness.conversation import answered, ask, read_only_db

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SHORTCUT_KEYS = {"✅", "⏭️", "📚"}
ROADMAP = load_roadmap(REPO / "roadmap.yaml")
BASH = ROADMAP.get("bash-terminal")


def check(index: int) -> Check:
    assert BASH is not None and len(BASH.checks) > index, "roadmap.yaml: 1.1 needs its checks"
    return BASH.checks[index]


async def shortcuts_on(person: Person, room: str, event_id: str) -> set[str]:
    """The keys the bot put under `event_id` (all three, waited for)."""

    def on(content: dict[str, Any]) -> bool:
        return (content.get("m.relates_to") or {}).get("event_id") == event_id

    for key in SHORTCUT_KEYS:
        await person.event_of(
            room, "m.reaction", lambda c, k=key: on(c) and c["m.relates_to"]["key"] == k
        )
    return {c["m.relates_to"]["key"] for c in person.events(room, "m.reaction") if on(c)}


async def react(person: Person, room: str, event_id: str, key: str) -> str:
    relates = {"rel_type": "m.annotation", "event_id": event_id, "key": key}
    return await person.send(room, {"m.relates_to": relates}, "m.reaction")


async def vote(person: Person, room: str, poll_id: str, answer: int) -> str:
    """A vote as Element sends it (the unstable names it sends, see bot/polls.py)."""
    content = {
        "org.matrix.msc3381.poll.response": {"answers": [str(answer)]},
        "m.relates_to": {"rel_type": "m.reference", "event_id": poll_id},
    }
    return await person.send(room, content, "org.matrix.msc3381.poll.response")


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "e2e"])
async def test_a_reaction_on_a_step_message_acts_on_that_step_once(
    synapse: Synapse,
    make_person: MakePerson,
    tmp_path_factory: pytest.TempPathFactory,
    encrypted: bool,
) -> None:
    kind = "e2e" if encrypted else "plain"
    bot = await new_bot(synapse, tmp_path_factory.mktemp(f"react-{kind}"), f"react-bot-{kind}")
    async with running(bot):
        nell = await make_person(f"nell-react-{kind}")
        room = await open_chat(nell, bot.user_id, encrypted=encrypted)
        start = await ask(nell, room, "!start")  # shows 1.1
        assert await shortcuts_on(nell, room, start.event_id) == SHORTCUT_KEYS
        moved = await ask(nell, room, "!goto 1.3")  # 1.3 is current now; the start shows 1.1

        await react(nell, room, start.event_id, "✅")
        done = await nell.reply(room, timeout=30)
        assert answered(done) == start.event_id
        assert "Done: 1.1 Bash/Terminal" in done.body, done.body
        # Without the variation selector, as some keyboards send it.
        await react(nell, room, moved.event_id, "⏭")
        skipped = await nell.reply(room, timeout=30)
        assert answered(skipped) == moved.event_id and "Skipped: 1.3 Web Server" in skipped.body

        # Other keys, and reactions on messages that show no step, do nothing.
        helped = await ask(nell, room, "!help")
        await react(nell, room, helped.event_id, "✅")
        await react(nell, room, start.event_id, "👍")
        await nell.no_more_replies(room, wait=2)

        # Across a restart the bot still knows which message showed which step.
        assert await bot.stop() == 0
        await bot.start()
        await react(nell, room, start.event_id, "📚")
        resources = await nell.reply(room, timeout=30)
        assert answered(resources) == start.event_id and "goodreads.com" in resources.body
        assert "1 done, 1 skipped" in (await ask(nell, room, "!progress")).body
        await nell.no_more_replies(room, wait=1)


async def test_only_the_newcomer_a_step_was_shown_to_can_act_on_it(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bot = await new_bot(synapse, tmp_path_factory.mktemp("react-shared"), "react-bot-shared")
    async with running(bot):
        nina, olga = await make_person("nina-shared"), await make_person("olga-shared")
        room = await nina.create_room(invite=[bot.user_id, olga.user_id])
        await olga.join(room)
        await nina.wait_for_join(room, bot.user_id, timeout=30)
        assert "onboarding mentor" in (await nina.reply(room, timeout=30)).body
        start = await ask(nina, room, "!start")
        await shortcuts_on(olga, room, start.event_id)

        await react(olga, room, start.event_id, "✅")
        await nina.no_more_replies(room, wait=2)
        await react(nina, room, start.event_id, "✅")
        assert "Done: 1.1" in (await nina.reply(room, timeout=30)).body
        with read_only_db(bot.data_dir) as db:
            people = dict(db.execute("SELECT user_id, current_step FROM newcomers").fetchall())
        assert people.keys() == {nina.user_id}, "olga's tap enrolled her or acted for her"


async def test_a_check_asked_as_a_poll_is_answered_by_vote_and_by_answer_across_a_restart(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    first, second = check(0), check(1)
    bot = await new_bot(synapse, tmp_path_factory.mktemp("quiz"), "quiz-bot")
    async with running(bot):
        ada = await make_person("ada-quiz")
        room = await open_chat(ada, bot.user_id, encrypted=True)
        await ask(ada, room, "!start")

        asked = await ask(ada, room, "!quiz 1.1")
        assert first.question in asked.body and "!answer N" in asked.body
        assert all(option in asked.body for option in first.options)
        poll, sender, poll_id = await ada.event_of(room, POLL_START)
        assert sender == bot.user_id
        assert poll[POLL_START]["question"][TEXT] == first.question
        assert [a[TEXT] for a in poll[POLL_START]["answers"]] == list(first.options)
        assert poll[POLL_START]["max_selections"] == 1 and first.question in poll[TEXT]

        assert await bot.stop() == 0  # a restart between the question and the answer
        await bot.start()
        await vote(ada, room, poll_id, first.answer + 1)
        graded = await ada.reply(room, timeout=30)
        assert answered(graded) == poll_id
        assert graded.body.startswith("✅ Right.") and first.explain in graded.body
        await ada.event_of(room, POLL_END, lambda c: c["m.relates_to"]["event_id"] == poll_id)
        await vote(ada, room, poll_id, (first.answer + 1) % len(first.options) + 1)
        await ada.no_more_replies(room, wait=2)  # a changed vote is no second answer

        asked = await ask(ada, room, "!quiz")  # the first is right: the next check of 1.1
        assert second.question in asked.body
        wrong = (second.answer + 1) % len(second.options) + 1
        graded = await ask(ada, room, f"!answer {wrong}")
        assert (
            graded.body.startswith("❌ Not quite") and second.options[second.answer] in graded.body
        )
        assert "no question waiting" in (await ask(ada, room, "!answer 1")).body


async def test_required_checks_are_asked_before_a_step_is_done(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bot = await new_bot(
        synapse, tmp_path_factory.mktemp("required"), "required-bot", checks={"required": True}
    )
    async with running(bot):
        bea = await make_person("bea-required")
        room = await open_chat(bea, bot.user_id)
        start = await ask(bea, room, "!start")
        await shortcuts_on(bea, room, start.event_id)

        await react(bea, room, start.event_id, "✅")  # a tap asks the checks too
        first_asked = await bea.reply(room, timeout=30)
        assert "Before 1.1 Bash/Terminal is done" in first_asked.body
        assert check(0).question in first_asked.body
        assert BASH is not None
        last = len(BASH.checks) - 1
        for i in range(last):
            graded = await ask(bea, room, f"!answer {check(i).answer + 1}")
            assert graded.body.startswith("✅ Right.") and check(i + 1).question in graded.body
            assert "0 done" in (await ask(bea, room, "!progress")).body  # not before all
        graded = await ask(bea, room, f"!answer {check(last).answer + 1}")
        assert "✅ Right." in graded.body and "Done: 1.1 Bash/Terminal" in graded.body
        assert "1 done, 0 skipped" in (await ask(bea, room, "!progress")).body
