"""A newcomer's journey through the roadmap: a real Synapse, the bot as its own process."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from functools import partial

import aiohttp
import pytest
import pytest_asyncio

from tests.harness import MakePerson, Person, Synapse, conversation
from tests.harness.bot import BotProcess

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def bot(
    synapse: Synapse, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BotProcess]:
    user_id = await synapse.register("mentor-bot", "bot-password")
    process = BotProcess(
        tmp_path_factory.mktemp("bot"),
        homeserver=synapse.url,
        user_id=user_id,
        password="bot-password",
    )
    await process.start()
    yield process
    process.kill()


async def open_chat(person: Person, bot: BotProcess, *, encrypted: bool) -> str:
    """The newcomer invites the bot, as from Element; returns the room once greeted."""
    room = await person.create_room(invite=[bot.user_id], encrypted=encrypted, direct=encrypted)
    await person.wait_for_join(room, bot.user_id, timeout=30)
    greeting = await person.reply(room, timeout=30)
    assert "onboarding mentor" in greeting.body
    assert greeting.msgtype == "m.notice"
    assert greeting.encrypted is encrypted
    return room


# Every answer here is a notice, threaded to the command it answers.
ask = partial(conversation.ask, notice=True)


async def bot_devices(bot: BotProcess) -> list[str]:
    """The bot account's devices, as the homeserver lists them."""
    session = bot.session()
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{session.homeserver}/_matrix/client/v3/devices",
            headers={"Authorization": f"Bearer {session.access_token}"},
        ) as resp,
    ):
        return sorted(d["device_id"] for d in (await resp.json())["devices"])


async def test_full_journey_in_a_group_room(bot: BotProcess, make_person: MakePerson) -> None:
    nina = await make_person("nina")
    room = await open_chat(nina, bot, encrypted=False)

    assert "step 1 of 52" in (await ask(nina, room, "!start")).body
    body = (await ask(nina, room, "!next")).body
    assert "1.1 Bash/Terminal" in body and "SSH" in body and "goodreads.com" in body

    body = (await ask(nina, room, "!done")).body
    assert "Done: 1.1 Bash/Terminal" in body and "step 2 of 52" in body

    assert "step 3 of 52" in (await ask(nina, room, "!skip")).body
    body = (await ask(nina, room, "!undo")).body
    assert "Undone: 1.2" in body and "step 2 of 52" in body

    body = (await ask(nina, room, "!goto docker")).body
    assert "11.1 Docker" in body
    assert "Working on 11.1 Docker" in (await ask(nina, room, "!doing")).body
    body = (await ask(nina, room, "!done 2.8")).body
    assert "Done: 2.8 Python Web Frameworks" in body and "11.1 Docker" in body

    body = (await ask(nina, room, "!progress")).body
    assert "2 done, 0 skipped, of 52 steps" in body

    body = (await ask(nina, room, "!roadmap")).body
    assert "✓ 1.1 Bash/Terminal" in body and "◐ 11.1 Docker" in body

    body = (await ask(nina, room, "!resources web server")).body
    assert "docs.nginx.com" in body

    assert "could be more than one step" in (await ask(nina, room, "!goto web")).body
    assert "Did you mean" in (await ask(nina, room, "!dnoe")).body
    assert "!progress" in (await ask(nina, room, "!help")).body

    # Chat that is not a command, and notices from other bots, get no answer.
    await nina.say(room, "thanks, that was helpful")
    await nina.send(room, {"msgtype": "m.notice", "body": "!next"})
    await nina.no_more_replies(room, wait=3)


async def test_encrypted_direct_chat(bot: BotProcess, make_person: MakePerson) -> None:
    omar = await make_person("omar")
    room = await open_chat(omar, bot, encrypted=True)

    await omar.say(room, "!next")  # enrolls implicitly
    reply = await omar.reply(room, timeout=30)
    assert reply.encrypted and "step 1 of 52" in reply.body
    assert '<a href="https://www.goodreads.com/' in (reply.formatted_body or "")
    assert "<ul>" in (reply.formatted_body or "")

    await omar.say(room, "!done")
    reply = await omar.reply(room, timeout=30)
    assert reply.encrypted and "step 2 of 52" in reply.body


async def test_user_text_is_escaped_in_html(bot: BotProcess, make_person: MakePerson) -> None:
    pia = await make_person("pia")
    room = await open_chat(pia, bot, encrypted=False)
    await pia.say(room, "!goto <img src=x onerror=alert(1)>")
    reply = await pia.reply(room, timeout=30)
    html = reply.formatted_body or ""
    assert "<img" not in html and "&lt;img src=x" in html


async def test_restart_keeps_progress_and_answers_what_came_meanwhile_once(
    bot: BotProcess, make_person: MakePerson
) -> None:
    rosa = await make_person("rosa")
    room = await open_chat(rosa, bot, encrypted=True)
    assert "step 1 of 52" in (await ask(rosa, room, "!start")).body
    assert "step 2 of 52" in (await ask(rosa, room, "!done")).body

    device_before = bot.session().device_id
    devices_before = await bot_devices(bot)
    assert device_before in devices_before
    assert await bot.stop() == 0
    sent_while_down = [await rosa.say(room, "!done"), await rosa.say(room, "!progress")]
    await bot.start()

    replies = await rosa.replies(room, 2, timeout=60)
    assert [
        r.content["m.relates_to"]["m.in_reply_to"]["event_id"] for r in replies
    ] == sent_while_down
    assert "step 3 of 52" in replies[0].body
    assert "2 done, 0 skipped, of 52 steps" in replies[1].body
    await rosa.no_more_replies(room, wait=3)

    # The same device is reused across restarts: one device for the bot, ever.
    session_file = bot.data_dir / "session.json"
    assert bot.session().device_id == device_before
    assert oct(session_file.stat().st_mode)[-3:] == "600"
    assert await bot_devices(bot) == devices_before

    # Progress is in the database, not only in memory.
    db = sqlite3.connect(bot.data_dir / "bot.db")
    states = dict(
        db.execute("SELECT step_id, state FROM progress WHERE user_id = ?", (rosa.user_id,))
    )
    assert states == {"bash-terminal": "done", "basic-internet": "done"}


async def test_messages_sent_before_the_bot_joined_are_not_answered(
    bot: BotProcess, make_person: MakePerson
) -> None:
    sam = await make_person("sam")
    room = await sam.create_room(encrypted=False)
    await sam.say(room, "!start")
    await sam.client.room_invite(room, bot.user_id)
    await sam.wait_for_join(room, bot.user_id, timeout=30)
    greeting = await sam.reply(room, timeout=30)
    assert "onboarding mentor" in greeting.body
    await sam.no_more_replies(room, wait=3)


async def test_invites_from_servers_not_allowed_are_declined(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    user_id = await synapse.register("strict-bot", "strict-password")
    strict = BotProcess(
        tmp_path_factory.mktemp("strict-bot"),
        homeserver=synapse.url,
        user_id=user_id,
        password="strict-password",
        extra={"bot": {"allowed_servers": ["example.org"]}},
    )
    await strict.start()
    try:
        tom = await make_person("tom")
        room = await tom.create_room(invite=[user_id])
        await strict.wait_for_log("declining an invite", timeout=30)
        deadline = asyncio.get_running_loop().time() + 30
        members = tom.client.rooms[room]
        while user_id in members.invited_users and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        assert user_id not in members.invited_users and user_id not in members.users
        await tom.no_more_replies(room, wait=2)
    finally:
        strict.kill()
