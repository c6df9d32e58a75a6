"""The Element-like client (matrix-js-sdk + Rust crypto) sees what Element sees, no bot involved.

These pin down what the bot has to live with. In Element's 2026 default,
``OnlySignedDevicesIsolationMode``, a message from a device its owner has not cross-signed is
not shown at all (``UNSIGNED_SENDER_DEVICE``), and such a device is refused the room key for
Element's own messages. The older ``all`` mode shows the message under a red shield.
matrix-nio cannot cross-sign, so a plain nio device is exactly such an unsigned device.
"""

from __future__ import annotations

import pytest

from tests.harness import MakePerson, Person
from tests.harness.element import (
    NO_SHIELD,
    ElementPerson,
    MakeElementPerson,
    Shield,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

UNSIGNED_DEVICE_SHIELD = Shield("RED", "UNSIGNED_DEVICE")


async def _join_all(room_id: str, creator: ElementPerson | Person, *guests: ElementPerson) -> None:
    for guest in guests:
        assert await guest.wait_for_invite(inviter=creator.user_id) == room_id
        await guest.join(room_id)
        await creator.wait_for_join(room_id, guest.user_id)


async def _device_of(viewer: ElementPerson, user_id: str, device_id: str) -> dict[str, object]:
    seen = await viewer.user_devices(user_id)
    devices = {d["device_id"]: d for d in seen["devices"]}
    assert device_id in devices, f"{viewer} does not know {user_id}'s {device_id}: {seen}"
    return dict(devices[device_id])


async def test_cross_signed_devices_read_each_other_without_warnings(
    make_element: MakeElementPerson,
) -> None:
    alice = await make_element("el-alice")
    bob = await make_element("el-bob")
    room_id = await alice.create_dm(bob.user_id)
    await _join_all(room_id, alice, bob)
    assert (await _device_of(bob, alice.user_id, alice.device_id))["signed_by_owner"] is True

    sent = await alice.say(room_id, "hello bob")
    got = await bob.reply(room_id)
    assert (got.event_id, got.sender, got.body, got.msgtype) == (
        sent,
        alice.user_id,
        "hello bob",
        "m.text",
    )
    assert (got.encrypted, got.decryption_failure, got.shield) == (True, None, NO_SHIELD)

    await bob.say(room_id, "hi alice")
    back = await alice.reply(room_id)
    assert (back.sender, back.body) == (bob.user_id, "hi alice")
    assert (back.encrypted, back.decryption_failure, back.shield) == (True, None, NO_SHIELD)

    await alice.no_more_replies(room_id, wait=0.5)
    await bob.no_more_replies(room_id, wait=0.5)


@pytest.mark.parametrize(
    "has_identity",
    [True, False],
    ids=["second-device-of-cross-signed-user", "user-without-cross-signing"],
)
async def test_unsigned_device_is_hidden_in_only_signed_mode_and_red_in_all_mode(
    make_element: MakeElementPerson, has_identity: bool
) -> None:
    suffix = "id" if has_identity else "noid"
    if has_identity:
        # The account's first device creates its cross-signing identity; the second is unsigned.
        await make_element(f"el-carol-{suffix}")
    carol = await make_element(
        f"el-carol-{suffix}", cross_sign=False, isolation="all", device_name="unsigned"
    )
    strict = await make_element(f"el-dave-{suffix}")
    lax = await make_element(f"el-erin-{suffix}", isolation="all")
    room_id = await carol.create_room(invite=[strict.user_id, lax.user_id])
    await _join_all(room_id, carol, strict, lax)
    carol_device = await _device_of(strict, carol.user_id, carol.device_id)
    assert carol_device["signed_by_owner"] is False

    sent = await carol.say(room_id, "from an unsigned device")
    hidden = await strict.reply(room_id, allow_undecryptable=True)
    assert (hidden.event_id, hidden.decryption_failure, hidden.body, hidden.shield) == (
        sent,
        "UNSIGNED_SENDER_DEVICE",
        "",
        None,
    )
    shown = await lax.reply(room_id)
    assert (shown.event_id, shown.body, shown.decryption_failure) == (
        sent,
        "from an unsigned device",
        None,
    )
    assert shown.shield == UNSIGNED_DEVICE_SHIELD
    # ...and reply() refuses it unless told to allow it.
    await carol.say(room_id, "again")
    with pytest.raises(AssertionError, match="UNSIGNED_SENDER_DEVICE"):
        await strict.reply(room_id)

    # The other way round: OnlySigned Element withholds its room key from the unsigned device.
    await strict.say(room_id, "from only-signed element")
    await lax.say(room_id, "from all-devices element")
    replies = [await carol.reply(room_id, allow_undecryptable=True) for _ in range(2)]
    by_sender = {m.sender: m for m in replies}
    assert by_sender[strict.user_id].decryption_failure == (
        "MEGOLM_KEY_WITHHELD_FOR_UNVERIFIED_DEVICE"
    )
    readable = by_sender[lax.user_id]
    assert (readable.body, readable.decryption_failure, readable.shield) == (
        "from all-devices element",
        None,
        NO_SHIELD,
    )


async def test_nio_device_is_unsigned_for_element(
    make_element: MakeElementPerson, make_person: MakePerson
) -> None:
    nio = await make_person("el-frank-nio", cross_signed=False)
    strict = await make_element("el-gina")
    lax = await make_element("el-hank", isolation="all")
    room_id = await nio.create_room(invite=[strict.user_id, lax.user_id], encrypted=True)
    await _join_all(room_id, nio, strict, lax)
    nio_device = await _device_of(strict, nio.user_id, nio.device_id)
    assert nio_device["signed_by_owner"] is False

    sent = await nio.say(room_id, "hello from nio")
    hidden = await strict.reply(room_id, allow_undecryptable=True)
    assert (hidden.event_id, hidden.decryption_failure, hidden.shield) == (
        sent,
        "UNSIGNED_SENDER_DEVICE",
        None,
    )
    shown = await lax.reply(room_id)
    assert (shown.event_id, shown.body, shown.shield) == (
        sent,
        "hello from nio",
        UNSIGNED_DEVICE_SHIELD,
    )

    # OnlySigned Element never gives the nio device its room key; all-devices Element does.
    # The second message arriving decrypted shows the first one's key is not merely late.
    await strict.say(room_id, "from only-signed element")
    await lax.say(room_id, "from all-devices element")
    refused = await nio.reply(room_id, timeout=5, allow_undecryptable=True)
    assert (refused.sender, refused.decryption_failed) == (strict.user_id, True)
    readable = await nio.reply(room_id)
    assert (readable.sender, readable.body, readable.encrypted) == (
        lax.user_id,
        "from all-devices element",
        True,
    )
