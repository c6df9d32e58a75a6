"""The baseline: a bare matrix-nio bot that answers every m.text with an m.notice.

No database, no parsing: login, a sync loop, room_send. It joins every room it is invited to,
and works in encrypted rooms (nio's own crypto store). Its answer is the text it got; with
`--reply FILE` (JSON: {"!next": {"content": {...}, "reactions": ["✅", ...]}, ...}) a message
whose body is one of its keys is answered with that content, followed by those reactions on the
answer, one at a time from a task of their own (those of an answer that a newer one in its room
replaced before they went out are dropped, as the bot drops them). bench/latency.py gives it a
copy of what the bot sends for each command it sends both (the answer, and the shortcut
reactions a step gets), so that the two bots cost the homeserver the same to store, index for
search and deliver, and the clients the same to read: what is left is the bot's own work. Used
by bench/latency.py as a process:

    python -m bench.echo_bot --homeserver URL --user @echo:localhost --password P --store DIR
        [--reply FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    InviteMemberEvent,
    LoginResponse,
    MatrixRoom,
    RoomMessageText,
    RoomSendResponse,
)

# Printed once it syncs; bench/latency.py waits for it. Defined here, not in bench/_common.py,
# so that the baseline imports nothing but nio (_common brings the bot's config and the kit).
ECHO_READY = "echo bot ready"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--homeserver", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument(
        "--reply", type=Path, help="a JSON file: command -> the answer and its reactions"
    )
    args = parser.parse_args()
    replies: dict[str, dict[str, Any]] = json.loads(args.reply.read_text()) if args.reply else {}
    # The reactions wait their turn, one at a time, behind the answers; an answer's reactions
    # not sent yet when a newer answer went out in its room are dropped (as the bot drops
    # shortcuts that a newer step message replaced).
    to_react: asyncio.Queue[tuple[str, str, list[str]]] = asyncio.Queue()
    newest: dict[str, str] = {}  # room -> the newest answer with reactions sent there

    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False)
    client = AsyncClient(args.homeserver, args.user, store_path=args.store, config=config)
    login = await client.login(args.password, device_name="echo-bot")
    if not isinstance(login, LoginResponse):
        raise SystemExit(f"login failed: {login}")
    started_ms = int(time.time() * 1000)

    async def on_invite(room: MatrixRoom, event: InviteMemberEvent) -> None:
        if event.state_key == client.user_id and event.membership == "invite":
            await client.join(room.room_id)

    answering: set[asyncio.Task[None]] = set()

    async def on_text(room: MatrixRoom, event: RoomMessageText) -> None:
        """Answers in a task of its own: nio runs callbacks one after another, and one answer
        waiting for the homeserver must not hold up the next room's (the bot's outbox sends to
        rooms side by side too)."""
        if event.sender == client.user_id or event.server_timestamp < started_ms:
            return
        task = asyncio.create_task(answer(room, event))
        answering.add(task)
        task.add_done_callback(answering.discard)

    async def answer(room: MatrixRoom, event: RoomMessageText) -> None:
        reply = replies.get(event.body, {})
        content = {
            **reply.get("content", {"msgtype": "m.notice", "body": event.body}),
            "m.relates_to": {"m.in_reply_to": {"event_id": event.event_id}},
        }
        sent = await client.room_send(
            room.room_id, "m.room.message", content, ignore_unverified_devices=True
        )
        if reply.get("reactions") and isinstance(sent, RoomSendResponse):
            newest[room.room_id] = sent.event_id
            to_react.put_nowait((room.room_id, sent.event_id, reply["reactions"]))

    async def react() -> None:
        while True:
            room_id, event_id, reactions = await to_react.get()
            for key in reactions:
                if newest.get(room_id) != event_id:
                    break
                relates = {"rel_type": "m.annotation", "event_id": event_id, "key": key}
                await client.room_send(
                    room_id, "m.reaction", {"m.relates_to": relates}, ignore_unverified_devices=True
                )

    client.add_event_callback(on_invite, InviteMemberEvent)
    client.add_event_callback(on_text, RoomMessageText)
    if client.should_upload_keys:
        await client.keys_upload()
    print(ECHO_READY, flush=True)
    reacting = asyncio.create_task(react())
    try:
        await client.sync_forever(timeout=30_000, full_state=True)
    finally:
        reacting.cancel()
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
