"""Smoke tests proving the harness (real Synapse + nio people) works without any bot."""

from __future__ import annotations

import aiohttp
import pytest

from tests.harness import MakePerson, Person, Synapse

pytestmark = pytest.mark.integration


async def _open_room(alice: Person, bob: Person, *, encrypted: bool) -> str:
    room_id = await alice.create_room(
        name="smoke", invite=[bob.user_id], encrypted=encrypted, direct=encrypted
    )
    assert await bob.wait_for_invite(inviter=alice.user_id) == room_id
    await bob.join(room_id)
    await alice.wait_for_join(room_id, bob.user_id)
    return room_id


async def _exchange(alice: Person, bob: Person, room_id: str, *, encrypted: bool) -> None:
    event_id = await alice.say(room_id, "hello")
    got = await bob.reply(room_id)
    assert (got.sender, got.body, got.msgtype) == (alice.user_id, "hello", "m.text")
    assert got.event_id == event_id
    assert got.encrypted is encrypted

    await bob.say(room_id, "hi alice")
    back = await alice.reply(room_id)
    assert (back.sender, back.body, back.encrypted) == (bob.user_id, "hi alice", encrypted)

    await alice.no_more_replies(room_id, wait=0.5)
    await bob.no_more_replies(room_id, wait=0.5)


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain"])
async def test_two_people_exchange_messages(make_person: MakePerson, encrypted: bool) -> None:
    alice = await make_person("alice")
    bob = await make_person("bob")
    room_id = await _open_room(alice, bob, encrypted=encrypted)
    await _exchange(alice, bob, room_id, encrypted=encrypted)


async def test_people_survive_a_synapse_restart_on_the_same_port(
    synapse: Synapse, make_person: MakePerson
) -> None:
    alice = await make_person("alice")
    bob = await make_person("bob")
    rooms = {
        encrypted: await _open_room(alice, bob, encrypted=encrypted) for encrypted in (True, False)
    }
    url = synapse.url
    try:
        await synapse.stop()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as http:
                await http.get(f"{url}/_matrix/client/versions")
    finally:
        await synapse.start()
    assert synapse.url == url

    for encrypted, room_id in rooms.items():
        await _exchange(alice, bob, room_id, encrypted=encrypted)
