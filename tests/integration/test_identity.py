"""The bot's cross-signed, recoverable identity and its exclusion of insecure devices, on a
real Synapse with matrix-nio people (the Element-stack client has tests of its own)."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from bot import cross_signing as xs
from bot.dev.process import NotReady
from bot.identity import query_keys, read_session
from tests.harness import MakePerson, Person, Synapse
from tests.harness.bot import BotProcess, new_bot, open_chat

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def identity_of(person: Person, bot: BotProcess) -> tuple[str | None, str, bool]:
    """The bot account's master key, its current device, and whether that device is
    cross-signed, as another user's client sees them on the homeserver."""
    session = read_session(bot.data_dir)
    assert session is not None
    query = await query_keys(person.client, [bot.user_id])
    master = xs.user_keys(query, bot.user_id).master
    return (
        master,
        session.device_id,
        xs.device_is_cross_signed(query, bot.user_id, session.device_id),
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_identity_is_created_kept_restored_and_replaced(
    synapse: Synapse, make_person: MakePerson, tmp_path: Path
) -> None:
    bot = await new_bot(synapse, tmp_path / "bot", "identity-bot")
    kim = await make_person("kim")

    # First start: cross-signing keys made and uploaded, the device signed, the recovery key
    # written for ops to move away, and logged without the key itself.
    await bot.start()
    master, device, signed = await identity_of(kim, bot)
    assert master is not None and signed
    key_file = bot.data_dir / "recovery-key.txt"
    recovery_key = key_file.read_text().strip()
    assert recovery_key.startswith("Es") and mode(key_file) == 0o600
    assert mode(bot.data_dir / "cross-signing.json") == 0o600
    log = bot.log_text()
    assert log.count("generated the bot's recovery key") == 1
    assert recovery_key not in log and recovery_key.replace(" ", "") not in log
    room = await open_chat(kim, bot.user_id, encrypted=True)
    await kim.say(room, "!start")
    assert "step 1 of" in (await kim.reply(room, timeout=30)).body

    # A restart: the same device and master key, nothing created or signed again.
    await bot.stop()
    await bot.start()
    assert await identity_of(kim, bot) == (master, device, True)
    since_restart = bot.log_text()[len(log) :]
    assert "signed this device" not in since_restart
    assert "created the account's cross-signing identity" not in since_restart

    # data_dir lost, the recovery key given: same master key, the new device signed.
    await bot.stop()
    shutil.rmtree(bot.data_dir)
    bot.env["ONBOARDING_BOT_RECOVERY_KEY"] = recovery_key
    await bot.start()
    master_after, new_device, signed = await identity_of(kim, bot)
    assert (master_after, signed) == (master, True) and new_device != device
    assert "restored the account's cross-signing keys from Secret Storage" in bot.log_text()
    lea = await make_person("lea")
    room = await open_chat(lea, bot.user_id, encrypted=True)
    await lea.say(room, "!start")
    assert "step 1 of" in (await lea.reply(room, timeout=30)).body

    # data_dir lost and no recovery key: a clear refusal, no traceback, nothing changed.
    await bot.stop()
    shutil.rmtree(bot.data_dir)
    del bot.env["ONBOARDING_BOT_RECOVERY_KEY"]
    with pytest.raises(NotReady):  # the bot exited before it was ready
        await bot.start(timeout=60)
    assert bot.proc is not None and bot.proc.wait(10) not in (0, None)
    refusal = bot.log_text()
    assert "already has a cross-signing identity" in refusal
    assert "reset-identity" in refusal and "Traceback" not in refusal
    master_now, _, _ = await identity_of(kim, bot)
    assert master_now == master

    # Replaced on purpose: without --yes it asks (and no answer changes nothing) ...
    asked = bot.reset_identity()
    assert asked.returncode != 0 and "Type 'reset'" in asked.stdout
    assert (await identity_of(kim, bot))[0] == master
    # ... with --yes a new identity, and the bot works with it.
    done = bot.reset_identity("--yes")
    assert done.returncode == 0, done.stderr
    assert "recovery-key.txt" in done.stdout
    await bot.start()
    master_new, _, signed = await identity_of(kim, bot)
    assert master_new not in (None, master) and signed
    mia = await make_person("mia")
    room = await open_chat(mia, bot.user_id, encrypted=True)
    await mia.say(room, "!start")
    assert "step 1 of" in (await mia.reply(room, timeout=30)).body
    await bot.stop()


@pytest.mark.parametrize("exclude", [True, False])
async def test_an_insecure_device_is_refused_only_while_excluded(
    synapse: Synapse, make_person: MakePerson, tmp_path: Path, exclude: bool
) -> None:
    bot = await new_bot(
        synapse,
        tmp_path / "bot",
        f"exclude-{str(exclude).lower()}-bot",
        matrix={"exclude_insecure_devices": exclude},
    )
    await bot.start()
    try:
        name = f"insecure-{str(exclude).lower()}"
        newcomer = await make_person(name, cross_signed=False)
        room = await newcomer.create_room(invite=[bot.user_id], encrypted=True, direct=True)
        await newcomer.wait_for_join(room, bot.user_id, timeout=30)
        greeting = await newcomer.reply(room, timeout=30, allow_undecryptable=True)
        # Excluded, the device never gets the room key: the greeting stays unreadable to it.
        assert greeting.decryption_failed is exclude
        await newcomer.say(room, "!start")
        reply = await newcomer.reply(room, timeout=30)
        if exclude:
            assert "isn't verified" in reply.body and newcomer.device_id in reply.body
            assert not reply.encrypted  # the one message that device can read
            await newcomer.say(room, "!next")
            await newcomer.no_more_replies(room, wait=3)  # one notice per device
            assert "not running a command from an insecure device" in bot.log_text()
        else:
            assert reply.encrypted and "step 1 of" in reply.body
    finally:
        await bot.stop()
