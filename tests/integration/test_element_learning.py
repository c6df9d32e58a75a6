"""Reaction shortcuts and knowledge-check polls as Element users meet them: matrix-js-sdk with
its Rust crypto in Element's 2026 default (only cross-signed devices), in an encrypted direct
chat with the bot, on a real Synapse."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from functools import partial

import pytest
import pytest_asyncio

from bot.polls import DISCLOSED, POLL_START, TEXT
from bot.roadmap import Check, Step, load_roadmap
from tests.harness import Synapse, conversation
from tests.harness.bot import REPO, BotProcess, new_bot
from tests.harness.conversation import answered
from tests.harness.element import NO_SHIELD, ElementPerson, MakeElementPerson, trustworthy

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

#: The bot's reaction shortcuts, as it sends them (⏭️ with U+FE0F).
SHORTCUT_KEYS = ["✅", "⏭\ufe0f", "📚"]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def bot(
    synapse: Synapse, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BotProcess]:
    process = await new_bot(synapse, tmp_path_factory.mktemp("bot"), "element-learning-bot")
    await process.start()
    yield process
    process.kill()


def bash_terminal() -> Step:
    """Step 1.1 of the roadmap the bot runs, read when the test runs (its checks are data)."""
    step = load_roadmap(REPO / "roadmap.yaml").get("bash-terminal")
    assert step is not None, "roadmap.yaml has no step bash-terminal"
    assert step.checks, "roadmap.yaml: step bash-terminal (1.1) has no knowledge checks yet"
    return step


def asked_check(checks: Sequence[Check], text: str) -> Check:
    """The check whose question `text` shows (the longest match, should one contain another)."""
    shown = [check for check in checks if check.question in text]
    assert shown, f"none of 1.1's checks is asked in {text!r}"
    return max(shown, key=lambda check: len(check.question))


async def open_dm(user: ElementPerson, bot_user_id: str) -> str:
    """Element's "Start chat" with the bot: an encrypted DM, once the bot has greeted in it."""
    room = await user.create_dm(bot_user_id)
    await user.wait_for_join(room, bot_user_id, timeout=30)
    assert "onboarding mentor" in trustworthy(await user.reply(room, timeout=30)).body
    return room


# A command and its one reply: a trustworthy reply to that command.
ask = partial(conversation.ask, check=trustworthy)


async def shortcuts_on(user: ElementPerson, room: str, event_id: str, bot_user_id: str) -> None:
    """The bot's three reaction keys under `event_id`, and no others."""
    keys = await user.reactions_on(room, event_id, bot_user_id, at_least=3, timeout=30)
    assert sorted(keys) == sorted(SHORTCUT_KEYS), keys


async def test_an_element_user_taps_a_shortcut_under_an_earlier_step(
    bot: BotProcess, make_element: MakeElementPerson
) -> None:
    ana = await make_element("el-learn-ana")
    room = await open_dm(ana, bot.user_id)
    start = await ask(ana, room, "!start")  # shows 1.1
    assert "step 1 of" in start.body, start.body
    await shortcuts_on(ana, room, start.event_id, bot.user_id)
    moved = await ask(ana, room, "!goto 1.3")  # 1.3 is current now; the start still shows 1.1
    await shortcuts_on(ana, room, moved.event_id, bot.user_id)

    # A tap on ✅ under the !start reply: Element sends the m.reaction in the clear.
    await ana.send_reaction(room, start.event_id, "✅")
    done = trustworthy(await ana.reply(room, timeout=30))
    assert answered(done) == start.event_id, done.content
    assert done.msgtype == "m.notice"
    assert "Done: 1.1 Bash/Terminal" in done.body, done.body
    assert "1 done, 0 skipped" in (await ask(ana, room, "!progress")).body
    await ana.no_more_replies(room, wait=1)

    # In a room Ana shares with Bea and the bot, Bea's ✅ under a step shown to Ana does nothing.
    bea = await make_element("el-learn-bea")
    group = await ana.create_room(invite=[bot.user_id, bea.user_id])
    assert await bea.wait_for_invite(inviter=ana.user_id) == group
    await bea.join(group)
    await ana.wait_for_join(group, bea.user_id)
    await ana.wait_for_join(group, bot.user_id, timeout=30)
    assert "onboarding mentor" in trustworthy(await ana.reply(group, timeout=30)).body
    shown = await ask(ana, group, "!goto 1.2")
    assert "1.2" in shown.body, shown.body
    await shortcuts_on(ana, group, shown.event_id, bot.user_id)
    await bea.send_reaction(group, shown.event_id, "✅")
    await ana.no_more_replies(group, wait=3)
    assert "1 done, 0 skipped" in (await ask(ana, room, "!progress")).body


async def test_an_element_user_answers_a_knowledge_check_in_its_poll(
    bot: BotProcess, make_element: MakeElementPerson
) -> None:
    step = bash_terminal()
    cy = await make_element("el-learn-cy")
    room = await open_dm(cy, bot.user_id)
    await ask(cy, room, "!start")

    asked = await ask(cy, room, "!quiz 1.1")
    check = asked_check(step.checks, asked.body)
    assert check == step.checks[0], "a newcomer's first check is the step's first"
    assert "Tap your answer in the poll, or say !answer N." in asked.body, asked.body
    assert all(option in asked.body for option in check.options), asked.body

    # The poll, exactly as Element sends one, and one Element's poll tile renders.
    poll = await cy.next_poll(room)
    assert (poll.sender, poll.type) == (bot.user_id, POLL_START)
    assert poll.encrypted and poll.shield == NO_SHIELD, poll
    assert poll.renders and poll.poll_model, poll
    assert set(poll.content) == {POLL_START, TEXT, "body"}, poll.content
    assert poll.content[TEXT] == poll.content["body"] and check.question in poll.content["body"]
    start = poll.content[POLL_START]
    assert start["question"] == {TEXT: check.question}
    assert (start["kind"], start["max_selections"]) == (DISCLOSED, 1)
    expected = [{"id": str(i), TEXT: option} for i, option in enumerate(check.options, 1)]
    assert start["answers"] == expected
    assert poll.question == check.question
    assert poll.answers == tuple(
        {"id": str(i), "text": option} for i, option in enumerate(check.options, 1)
    )
    assert (poll.kind, poll.max_selections) == (DISCLOSED, 1)

    # A tap on the right answer in the poll: the one showing the right option.
    right = check.options[check.answer]
    (answer_id,) = [answer["id"] for answer in poll.answers if answer["text"] == right]
    await cy.send_poll_response(room, poll.event_id, answer_id)
    graded = trustworthy(await cy.reply(room, timeout=30))
    assert answered(graded) == poll.event_id, graded.content
    assert graded.body.startswith("✅ Right."), graded.body
    assert check.explain in graded.body, graded.body
    assert await cy.poll_ended(room, poll.event_id, timeout=30), "the poll was not ended"
    await cy.no_more_replies(room, wait=1)

    # Asked again, answered wrong in the text.
    asked = await ask(cy, room, "!quiz 1.1")
    again = asked_check(step.checks, asked.body)
    poll = await cy.next_poll(room)
    assert poll.question == again.question and poll.renders
    wrong = (again.answer + 1) % len(again.options) + 1
    graded = await ask(cy, room, f"!answer {wrong}")
    assert graded.body.startswith("❌ Not quite"), graded.body
    assert again.options[again.answer] in graded.body, graded.body
    assert await cy.poll_ended(room, poll.event_id, timeout=30), "the poll was not ended"
