"""The bot as Element users meet it: matrix-js-sdk with its Rust crypto, in Element's 2026
default (only cross-signed devices) and the older mode, on a real Synapse."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from nio import AsyncClient

from bot import cross_signing as xs
from bot.dev.process import NotReady
from bot.identity import Session, query_keys, read_session
from tests.harness import MakePerson, Synapse, conversation
from tests.harness.bot import BotProcess, new_bot
from tests.harness.element import (
    NO_SHIELD,
    ElementPerson,
    Isolation,
    MakeElementPerson,
    trustworthy,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def bot(
    synapse: Synapse, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BotProcess]:
    process = await new_bot(synapse, tmp_path_factory.mktemp("bot"), "element-bot")
    await process.start()
    yield process
    process.kill()


async def open_dm(user: ElementPerson, bot_user_id: str) -> tuple[str, str]:
    """Element's "Start chat" with the bot: an encrypted DM; returns it and the greeting."""
    room = await user.create_dm(bot_user_id)
    await user.wait_for_join(room, bot_user_id, timeout=30)
    greeting = await user.reply(room, timeout=30)
    return room, greeting.body


# A command's one reply must be encrypted and carry no warning shield.
ask = partial(conversation.ask, threaded=False, check=trustworthy)


@pytest.mark.parametrize("isolation", ["only_signed", "all"])
async def test_an_element_user_talks_to_the_bot_without_warnings(
    bot: BotProcess, make_element: MakeElementPerson, isolation: Isolation
) -> None:
    newcomer = await make_element(f"el-newcomer-{isolation.replace('_', '-')}", isolation=isolation)
    room, greeting = await open_dm(newcomer, bot.user_id)
    assert "onboarding mentor" in greeting
    assert "step 1 of 52" in (await ask(newcomer, room, "!start")).body
    assert "Done: 1.1 Bash/Terminal" in (await ask(newcomer, room, "!done")).body
    # The bot sees the newcomer's device as cross-signed, and Element the bot's.
    seen = await newcomer.user_devices(bot.user_id)
    session = read_session(bot.data_dir)
    assert session is not None
    bot_device = {d["device_id"]: d for d in seen["devices"]}[session.device_id]
    assert seen["has_cross_signing"] and bot_device["signed_by_owner"] is True
    assert not seen["needs_user_approval"]


async def test_a_cross_signed_nio_device_is_read_by_element_without_warnings(
    make_person: MakePerson, make_element: MakeElementPerson
) -> None:
    """The cross-signing the bot uses, checked on its own against Element's stack."""
    nio = await make_person("el-signed-nio")
    strict = await make_element("el-strict-reader")
    room = await nio.create_room(invite=[strict.user_id], encrypted=True, direct=True)
    assert await strict.wait_for_invite(inviter=nio.user_id) == room
    await strict.join(room)
    await nio.wait_for_join(room, strict.user_id)
    sent = await nio.say(room, "hello from a cross-signed nio device")
    seen = await strict.reply(room)
    assert (seen.event_id, seen.decryption_failure, seen.shield) == (sent, None, NO_SHIELD)


async def bot_keys(bot: BotProcess) -> tuple[dict[str, Any], Session]:
    """The bot account's keys as the homeserver has them, read with the bot's own token."""
    session = read_session(bot.data_dir)
    assert session is not None
    reader = AsyncClient(session.homeserver, session.user_id)
    reader.access_token = session.access_token
    try:
        return await query_keys(reader, [session.user_id]), session
    finally:
        await reader.close()


async def bot_identity(bot: BotProcess) -> tuple[str, str]:
    """The bot account's master key and current device, which must be cross-signed."""
    query, session = await bot_keys(bot)
    master = xs.user_keys(query, session.user_id).master
    assert master is not None
    assert xs.device_is_cross_signed(query, session.user_id, session.device_id)
    return master, session.device_id


async def test_element_users_keep_trusting_the_bot_across_restart_loss_and_reset(
    synapse: Synapse, make_element: MakeElementPerson, tmp_path: Path
) -> None:
    bot = await new_bot(synapse, tmp_path / "bot", "element-life-bot")
    await bot.start()
    try:
        ana = await make_element("el-ana")
        room, _ = await open_dm(ana, bot.user_id)
        assert "step 1 of 52" in (await ask(ana, room, "!start")).body
        master, device = await bot_identity(bot)

        # Restart: same device, same master key; the conversation goes on.
        await bot.stop()
        await bot.start()
        assert await bot_identity(bot) == (master, device)
        assert "step 2 of 52" in (await ask(ana, room, "!done")).body

        # data_dir lost, the recovery key given: same identity, a new device Element trusts.
        recovery_key = (bot.data_dir / "recovery-key.txt").read_text().strip()
        await bot.stop()
        shutil.rmtree(bot.data_dir)
        bot.env["ONBOARDING_BOT_RECOVERY_KEY"] = recovery_key
        await bot.start()
        master_now, new_device = await bot_identity(bot)
        assert master_now == master and new_device != device
        ben = await make_element("el-ben")
        room_b, _ = await open_dm(ben, bot.user_id)
        assert "step 1 of 52" in (await ask(ben, room_b, "!start")).body
        # Ana's Element pinned the bot's identity: unchanged, so no "identity reset" warning.
        assert not (await ana.user_devices(bot.user_id))["needs_user_approval"]
        # Her old chat goes on with the new device (progress went with data_dir's database).
        assert "Done: 1.1 Bash/Terminal" in (await ask(ana, room, "!done")).body

        # Lost without the recovery key: a clear refusal; reset-identity makes a new one.
        await bot.stop()
        shutil.rmtree(bot.data_dir)
        del bot.env["ONBOARDING_BOT_RECOVERY_KEY"]
        with pytest.raises(NotReady):
            await bot.start()
        assert "no recovery key is configured" in bot.log_text()
        assert bot.reset_identity("--yes").returncode == 0
        await bot.start()
        master_new, _ = await bot_identity(bot)
        assert master_new != master
        cai = await make_element("el-cai")
        room_c, _ = await open_dm(cai, bot.user_id)
        assert "step 1 of 52" in (await ask(cai, room_c, "!start")).body
        # Ana's Element now says the bot's identity was reset, as it must.
        assert (await ana.user_devices(bot.user_id))["needs_user_approval"]
    finally:
        await bot.stop()


async def test_an_admin_opens_the_bots_account_in_element_with_the_recovery_key(
    synapse: Synapse, make_element: MakeElementPerson, tmp_path: Path
) -> None:
    bot = await new_bot(synapse, tmp_path / "bot", "element-admin-bot")
    await bot.start()
    try:
        master, _ = await bot_identity(bot)
        recovery_key = (bot.data_dir / "recovery-key.txt").read_text().strip()
    finally:
        await bot.stop()
    admin = await make_element("element-admin-bot", cross_sign=False)
    status = await admin.verify_with_recovery_key(recovery_key)
    assert status["ready"], status
    assert status["private_keys_in_secret_storage"]
    # Element signed its session with the bot's own master key: nothing was replaced.
    query, session = await bot_keys(bot)
    assert xs.user_keys(query, session.user_id).master == master
    assert xs.device_is_cross_signed(query, session.user_id, admin.device_id)


@pytest.mark.parametrize("exclude", [True, False])
async def test_an_insecure_element_device_is_refused_only_while_excluded(
    synapse: Synapse, make_element: MakeElementPerson, tmp_path: Path, exclude: bool
) -> None:
    flag = str(exclude).lower()
    bot = await new_bot(
        synapse,
        tmp_path / "bot",
        f"element-exclude-{flag}-bot",
        matrix={"exclude_insecure_devices": exclude},
    )
    await bot.start()
    try:
        # An Element session its owner never verified, in the older mode so it would read
        # whatever the bot sent it.
        user = await make_element(f"el-unverified-{flag}", cross_sign=False, isolation="all")
        room = await user.create_dm(bot.user_id)
        await user.wait_for_join(room, bot.user_id, timeout=30)
        greeting = await user.reply(room, timeout=30, allow_undecryptable=True)
        await user.say(room, "!start")
        reply = await user.reply(room, timeout=30, allow_undecryptable=True)
        if exclude:
            # No room key for that device (the greeting stays unreadable), no command run;
            # one notice in the clear says what to do.
            assert greeting.decryption_failure is not None and greeting.body == ""
            assert not reply.encrypted and "isn't verified" in reply.body
            assert user.device_id in reply.body
            await user.say(room, "!next")
            await user.no_more_replies(room, wait=3)
        else:
            assert greeting.decryption_failure is None and "onboarding mentor" in greeting.body
            assert reply.encrypted and "step 1 of 52" in reply.body
    finally:
        await bot.stop()
