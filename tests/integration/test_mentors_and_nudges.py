"""Mentors watching newcomers, and nudges fired through the real scheduler, on a real Synapse.

The nudge job's crontab never fires by itself here (1 January, midnight); the tests fire it
through the scheduler with SIGUSR1, as ops can, so timing stays under the test's control.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import pytest_asyncio

from tests.harness import MakePerson, Person, Synapse, conversation
from tests.harness.bot import REPO, BotProcess

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

IDLE_AFTER = 10.0  # seconds of (all-week) working time before a nudge


@dataclass
class Team:
    bot: BotProcess
    maya: Person  # mentor by config
    maya_dm: str
    pete: Person  # mentor by power level 50 in the team room
    pete_dm: str
    team_room: str
    ada: Person  # admin
    roadmap: Path  # the bot's own copy, which the admin edits


async def direct_chat(person: Person, bot: BotProcess) -> str:
    room = await person.create_room(invite=[bot.user_id], encrypted=True, direct=True)
    await person.wait_for_join(room, bot.user_id, timeout=30)
    await person.reply(room, timeout=30)  # the greeting
    return room


async def private_chat(person: Person, bot: BotProcess) -> str:
    """The private chat the bot opens itself for mentor answers: a chat the person made (its
    history readable by later members) does not qualify, so the first private answer comes
    with a pointer there and an invite to the bot's own."""
    own = await direct_chat(person, bot)
    await person.say(own, "!team")
    assert "sent you the answer in our direct chat" in (await person.reply(own, timeout=30)).body
    room = await invited_by_bot(person, bot)
    await person.reply(room, timeout=30)  # the !team answer
    return room


async def invited_by_bot(person: Person, bot: BotProcess) -> str:
    """Joins the private chat the bot opened to tell the person something; returns it."""
    room = await person.wait_for_invite(bot.user_id, timeout=30)
    await person.join(room)
    return room


# The next message after each command, whatever it answers.
ask = partial(conversation.ask, threaded=False)


async def reply_about(person: Person, room: str, text: str, timeout: float = 30) -> str:
    """The next message in `room` that contains `text`, skipping others."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        message = await person.reply(room, timeout=max(0.1, deadline - time.monotonic()))
        if text in message.body:
            return message.body
        seen.append(message.body)
    raise AssertionError(f"no message with {text!r} in {room}; saw {seen}")


def fire(bot: BotProcess, sig: signal.Signals = signal.SIGUSR1) -> None:
    assert bot.proc is not None
    os.kill(bot.proc.pid, sig)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def team(
    synapse: Synapse, make_person_module: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Team]:
    bot_id = await synapse.register("coach-bot", "coach-password")
    maya = await make_person_module("maya")
    pete = await make_person_module("pete")
    ada = await make_person_module("ada")
    team_room = await maya.create_room(
        name="Backend team", invite=[bot_id, pete.user_id, ada.user_id]
    )
    await pete.join(team_room)
    await ada.join(team_room)
    levels = await maya.client.room_get_state_event(team_room, "m.room.power_levels")
    content = dict(levels.content)  # type: ignore[union-attr]
    # Power makes mentors only while a configured admin is in the room with power 100.
    content["users"] = {**content.get("users", {}), pete.user_id: 50, ada.user_id: 100}
    await maya.client.room_put_state(team_room, "m.room.power_levels", content)
    workdir = tmp_path_factory.mktemp("coach-bot")
    roadmap = workdir / "roadmap.yaml"
    shutil.copy(REPO / "roadmap.yaml", roadmap)
    bot = BotProcess(
        workdir,
        homeserver=synapse.url,
        user_id=bot_id,
        password="coach-password",
        mentors=[maya.user_id],
        admins=[ada.user_id],
        extra={
            "roadmap": str(roadmap),
            "rooms": {"team": team_room},
            "nudges": {
                "schedule": "0 0 1 1 *",
                "timezone": "UTC",
                "idle_after": f"{IDLE_AFTER:.0f}s",
                "target": "dm",
                "escalate_after": 2,
                "working_days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                "quiet_hours": None,
            },
            "digest": {"schedule": "0 0 1 1 *", "timezone": "UTC"},
        },
    )
    await bot.start()
    await maya.wait_for_join(team_room, bot_id, timeout=30)
    await maya.reply(team_room, timeout=30)  # greeting
    maya_dm = await private_chat(maya, bot)
    pete_dm = await private_chat(pete, bot)
    yield Team(bot, maya, maya_dm, pete, pete_dm, team_room, ada, roadmap)
    bot.kill()


async def test_newcomers_are_refused_mentor_commands_without_learning_anything(
    team: Team, make_person: MakePerson
) -> None:
    nora = await make_person("nora")
    room = await direct_chat(nora, team.bot)
    body = (await ask(nora, room, f"!status {team.maya.user_id}")).body
    assert "for mentors only" in body and team.maya.user_id not in body
    assert "for admins only" in (await ask(nora, room, "!reload")).body
    assert "!status" not in (await ask(nora, room, "!help")).body


async def test_mentor_sees_status_history_and_team_and_assigns(
    team: Team, make_person: MakePerson
) -> None:
    nick = await make_person("nick")
    room = await direct_chat(nick, team.bot)
    await ask(nick, room, "!start")
    await ask(nick, room, "!done")

    maya, dm = team.maya, team.maya_dm
    body = (await ask(maya, dm, "!status @nick:localhost")).body
    assert "Needs attention" in body and "no mentor" in body
    assert "1 done, 0 skipped, of 52 steps" in body and "1.2 Basic Internet" in body

    assert "is now the mentor of @nick:localhost" in (await ask(maya, dm, "!assign nick")).body
    # Told privately: nick's own chat lets later members read its history.
    told = await nick.reply(await invited_by_bot(nick, team.bot), timeout=30)
    assert "@maya:localhost is your mentor" in told.body
    assert "Your mentor is @maya:localhost" in (await ask(nick, room, "!mentor")).body

    history = (await ask(maya, dm, "!history @nick:localhost")).body
    assert history.index("marked done 1.1 Bash/Terminal") < history.index("enrolled")

    await maya.say(dm, "!team")
    table = await maya.reply(dm, timeout=30)
    assert "<table>" in (table.formatted_body or "") and "@nick:localhost" in table.body

    # A mentor by power level in the team room may use mentor commands too.
    assert "@nick:localhost" in (await ask(team.pete, team.pete_dm, "!team")).body


async def test_mentor_answers_asked_in_a_shared_room_go_to_the_direct_chat(team: Team) -> None:
    maya = team.maya
    await maya.say(team.team_room, "!team")
    note = await maya.reply(team.team_room, timeout=30)
    assert "sent you the answer in our direct chat" in note.body
    private = await maya.reply(team.maya_dm, timeout=30)
    assert "<table>" in (private.formatted_body or "")


async def test_nudges_reach_idle_newcomers_once_and_escalate(
    team: Team, make_person: MakePerson
) -> None:
    nell = await make_person("nell")
    paul = await make_person("paul")
    olga = await make_person("olga")  # nobody's newcomer: every mentor hears of her
    nell_dm = await direct_chat(nell, team.bot)
    paul_dm = await direct_chat(paul, team.bot)
    olga_dm = await direct_chat(olga, team.bot)
    await ask(nell, nell_dm, "!start")
    await ask(olga, olga_dm, "!start")
    # Bug (issue 10): the mentor by power level was missing from this list.
    mentors = (await ask(olga, olga_dm, "!mentor")).body
    assert "@maya:localhost" in mentors and "@pete:localhost" in mentors
    assert "is now the mentor of" in (await ask(team.maya, team.maya_dm, "!assign nell")).body
    # Nell's own chat lets later members read its history: what the bot tells her alone
    # (her mentor, her nudges) goes to a private chat it opens for her.
    nell_private = await invited_by_bot(nell, team.bot)
    await nell.reply(nell_private, timeout=30)  # "maya is your mentor"
    await ask(paul, paul_dm, "!start")
    assert "paused" in (await ask(paul, paul_dm, "!pause")).body
    idle_since = time.monotonic()

    await asyncio.sleep(max(0.0, idle_since + IDLE_AFTER + 0.5 - time.monotonic()))
    fire(team.bot)
    nudge = await nell.reply(nell_private, timeout=30)
    assert nudge.msgtype == "m.text"
    assert "1.1 Bash/Terminal" in nudge.body and "goodreads.com" in nudge.body
    assert nudge.content["m.mentions"] == {"user_ids": [nell.user_id]}
    nudged_at = time.monotonic()

    # Fired again at once, and across a restart: nobody is nudged twice within idle_after.
    fire(team.bot)
    await nell.no_more_replies(nell_private, wait=1.0)
    assert await team.bot.stop() == 0
    await team.bot.start()
    fire(team.bot)
    assert time.monotonic() - nudged_at < IDLE_AFTER, "the restart took too long for this check"
    await nell.no_more_replies(nell_private, wait=1.0)
    await nell.no_more_replies(nell_dm, wait=0.1)
    await paul.no_more_replies(paul_dm, wait=0.1)

    # Still idle after another idle_after: the second nudge in a row reaches the mentor too.
    await asyncio.sleep(max(0.0, nudged_at + IDLE_AFTER + 0.5 - time.monotonic()))
    fire(team.bot)
    second = await nell.reply(nell_private, timeout=30)
    assert second.content["m.mentions"] == {"user_ids": [nell.user_id]}
    # Other newcomers of this module are idle too; find the mentor's note about nell.
    escalation = await reply_about(team.maya, team.maya_dm, "@nell:localhost has been idle")
    assert "2 nudges" in escalation
    # Bug (issue 10): a mentor by power level was never told of a stuck newcomer.
    for mentor, dm in ((team.maya, team.maya_dm), (team.pete, team.pete_dm)):
        assert "2 nudges" in await reply_about(mentor, dm, "@olga:localhost has been idle")
    await paul.no_more_replies(paul_dm, wait=0.5)
    assert not paul.client.invited_rooms, "paused, paul was nudged in a chat of his own"

    # The mentor's view shows the unanswered nudges; activity clears them.
    await team.maya.say(team.maya_dm, "!status @nell:localhost")
    status = await reply_about(team.maya, team.maya_dm, "Newcomer @nell:localhost")
    assert "2 unanswered nudges" in status
    await ask(nell, nell_dm, "!next")
    await team.maya.say(team.maya_dm, "!status nell")
    status = await reply_about(team.maya, team.maya_dm, "Newcomer @nell:localhost")
    assert "unanswered nudge" not in status.split("\n")[0]


async def test_a_nudge_opens_a_direct_chat_when_there_is_none(
    team: Team, make_person: MakePerson
) -> None:
    quinn = await make_person("quinn")
    room = await quinn.create_room(invite=[team.bot.user_id, team.maya.user_id])
    await quinn.wait_for_join(room, team.bot.user_id, timeout=30)
    await quinn.reply(room, timeout=30)  # greeting
    await ask(quinn, room, "!start")
    await asyncio.sleep(IDLE_AFTER + 0.5)
    fire(team.bot)
    invited = await quinn.wait_for_invite(team.bot.user_id, timeout=30)
    await quinn.join(invited)
    nudge = await quinn.reply(invited, timeout=30)
    assert nudge.encrypted and "1.1 Bash/Terminal" in nudge.body


async def test_the_digest_goes_to_the_team_room(team: Team) -> None:
    fire(team.bot, signal.SIGUSR2)
    digest = await team.maya.reply(team.team_room, timeout=30)
    assert "Weekly onboarding digest" in digest.body


async def test_admin_reloads_the_roadmap_and_everyone_keeps_their_progress(
    team: Team, make_person: MakePerson
) -> None:
    rita = await make_person("rita")
    rita_dm = await direct_chat(rita, team.bot)
    await ask(rita, rita_dm, "!start")
    assert "Done: 1.1 Bash/Terminal" in (await ask(rita, rita_dm, "!done")).body
    ada_dm = await direct_chat(team.ada, team.bot)
    original = team.roadmap.read_text()
    try:
        team.roadmap.write_text(original.replace("title: Bash/Terminal", "title: The Shell"))
        team.roadmap.write_text(team.roadmap.read_text().replace("id: tcp\n", "id: tcp-ip\n"))
        body = (await ask(team.ada, ada_dm, "!reload")).body
        assert "Reloaded" in body
        assert "Added (1)" in body and "Removed (1)" in body and "[tcp]" in body
        assert "Bash/Terminal → The Shell" in body
        assert "1 done, 0 skipped, of 52 steps" in (await ask(rita, rita_dm, "!progress")).body
        assert "✓ 1.1 The Shell" in (await ask(rita, rita_dm, "!roadmap")).body

        team.roadmap.write_text("sections: [oops")
        body = (await ask(team.ada, ada_dm, "!reload")).body
        assert "refused" in body and "not valid YAML" in body
        assert "1.2 Basic Internet" in (await ask(rita, rita_dm, "!next")).body
        await team.maya.say(team.maya_dm, "!reload")
        await reply_about(team.maya, team.maya_dm, "for admins only")
    finally:
        team.roadmap.write_text(original)
        await ask(team.ada, ada_dm, "!reload")
