"""What an attacker, or any curious account on the same homeserver, can do beyond chatting:
raw client and admin API calls, rooms with chosen state, reading a room's history from
outside, and hearing everything the bot says to someone, in whichever room it says it."""

# Explicit ``within=`` arguments are this harness's API, as in person.py.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

import aiohttp
from nio import RoomCreateResponse, RoomPreset, RoomVisibility

from tests.harness.person import Person, ReceivedMessage

__all__ = [
    "api",
    "bot_events",
    "create_room",
    "exempt_from_rate_limits",
    "fake_megolm",
    "hear",
    "membership",
    "room_events",
    "send_raw",
    "text_of",
]


async def api(
    method: str, url: str, token: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """One HTTP call with a bearer token: (status, JSON body)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.request(
            method,
            url,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


def _base(person: Person) -> str:
    return str(person.client.homeserver)


def _token(person: Person) -> str:
    return str(person.client.access_token)


async def create_room(
    person: Person,
    *,
    invite: Iterable[str] = (),
    public: bool = False,
    history_visibility: str | None = None,
    alias: str | None = None,
    room_version: str | None = None,
    name: str | None = None,
) -> str:
    """A room with the state an attacker chooses; returns its id once the creator synced it."""
    state = []
    if history_visibility is not None:
        state.append(
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": history_visibility},
            }
        )
    response = await person.client.room_create(
        visibility=RoomVisibility.public if public else RoomVisibility.private,
        alias=alias,
        name=name,
        room_version=room_version,
        preset=RoomPreset.public_chat if public else RoomPreset.private_chat,
        invite=list(invite),
        initial_state=state,
    )
    if not isinstance(response, RoomCreateResponse):
        raise AssertionError(f"{person.user_id} could not create a room: {response}")
    room_id = str(response.room_id)
    await person.wait_for_join(room_id, person.user_id)
    return room_id


async def room_events(reader: Person, room_id: str, limit: int = 500) -> list[dict[str, Any]]:
    """The room's timeline as `reader` may read it through /messages, oldest first (a
    world-readable room's even without joining)."""
    status, body = await api(
        "GET",
        f"{_base(reader)}/_matrix/client/v3/rooms/{quote(room_id)}/messages?dir=b&limit={limit}",
        _token(reader),
    )
    assert status == 200, f"{reader.user_id} cannot read {room_id}'s history: {status} {body}"
    return list(reversed(body["chunk"]))


async def bot_events(reader: Person, room_id: str, bot_id: str) -> list[dict[str, Any]]:
    """The messages `bot_id` sent to the room (m.room.message or encrypted), oldest first."""
    return [
        e
        for e in await room_events(reader, room_id)
        if e.get("sender") == bot_id and e.get("type") in ("m.room.message", "m.room.encrypted")
    ]


def text_of(event: dict[str, Any]) -> str:
    """Everything readable in an event's content (body, formatted body, any other field)."""
    return json.dumps(event.get("content", {}), ensure_ascii=False)


async def membership(reader: Person, room_id: str, user_id: str) -> str | None:
    """`user_id`'s membership in the room as `reader` sees it (None: never a member)."""
    status, body = await api(
        "GET",
        f"{_base(reader)}/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.member/"
        f"{quote(user_id)}",
        _token(reader),
    )
    if status == 404:
        return None
    assert status == 200, f"membership of {user_id} in {room_id}: {status} {body}"
    return str(body["membership"])


async def exempt_from_rate_limits(admin: Person, user_id: str, *, exempt: bool = True) -> None:
    """Synapse's admin API: no message rate limit for `user_id` (as ops would for the bot), or
    with `exempt=False` the server's limit again."""
    url = f"{_base(admin)}/_synapse/admin/v1/users/{quote(user_id)}/override_ratelimit"
    if exempt:
        body = {"messages_per_second": 0, "burst_count": 0}
        status, answer = await api("POST", url, _token(admin), body)
    else:
        status, answer = await api("DELETE", url, _token(admin))
    assert status == 200, f"override_ratelimit for {user_id}: {status} {answer}"


async def hear(
    person: Person,
    sender: str,
    *,
    within: float,
    until: Callable[[list[ReceivedMessage]], bool] | None = None,
) -> list[ReceivedMessage]:
    """Every message `sender` sends `person`, in any room they share, within `within` seconds
    (or until `until(heard)` holds). Invitations from `sender` are accepted on the way, as a
    person whose client shows them would. What others say in those rooms is dropped."""
    heard: list[ReceivedMessage] = []
    waiting: dict[str, asyncio.Task[ReceivedMessage]] = {}
    deadline = time.monotonic() + within
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            for room_id, room in list(person.client.invited_rooms.items()):
                if room.inviter == sender and room_id not in person.client.rooms:
                    await person.join(room_id)
            for room_id in list(person.client.rooms):
                if room_id not in waiting:
                    waiting[room_id] = asyncio.create_task(
                        person.reply(room_id, timeout=remaining, allow_undecryptable=True)
                    )
            if waiting:
                await asyncio.wait(
                    waiting.values(),
                    timeout=min(0.5, remaining),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            else:
                await asyncio.sleep(min(0.5, remaining))
            for room_id, task in list(waiting.items()):
                if not task.done():
                    continue
                del waiting[room_id]
                with contextlib.suppress(AssertionError):  # nothing more in that room
                    message = task.result()
                    if message.sender == sender:
                        heard.append(message)
            if until is not None and until(heard):
                break
    finally:
        for task in waiting.values():
            task.cancel()
        await asyncio.gather(*waiting.values(), return_exceptions=True)
    return heard


def fake_megolm(person: Person, session_id: str | None = None) -> dict[str, Any]:
    """An m.room.encrypted content for a megolm session the person never shared with anyone."""
    assert person.client.olm is not None
    return {
        "algorithm": "m.megolm.v1.aes-sha2",
        "sender_key": person.client.olm.account.identity_keys["curve25519"],
        "device_id": person.device_id,
        "session_id": session_id or base64.b64encode(secrets.token_bytes(32)).decode().rstrip("="),
        "ciphertext": base64.b64encode(secrets.token_bytes(96)).decode().rstrip("="),
    }


async def send_raw(person: Person, room_id: str, content: dict[str, Any]) -> str:
    """PUTs an m.room.encrypted event as is, past nio's own encryption."""
    status, body = await api(
        "PUT",
        f"{_base(person)}/_matrix/client/v3/rooms/{quote(room_id)}"
        f"/send/m.room.encrypted/{secrets.token_hex(8)}",
        _token(person),
        content,
    )
    assert status == 200, body
    return str(body["event_id"])
