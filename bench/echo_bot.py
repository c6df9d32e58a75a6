"""The baseline: a bare matrix-nio bot that answers every m.text with an m.notice of the same text.

No database, no parsing: login, a sync loop, room_send. It joins every room it is invited to,
and works in encrypted rooms (nio's own crypto store). Used by bench/latency.py as a process:

    python -m bench.echo_bot --homeserver URL --user @echo:localhost --password P --store DIR
"""

from __future__ import annotations

import argparse
import asyncio
import time

from nio import (
    AsyncClient,
    AsyncClientConfig,
    InviteMemberEvent,
    LoginResponse,
    MatrixRoom,
    RoomMessageText,
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
    args = parser.parse_args()

    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False)
    client = AsyncClient(args.homeserver, args.user, store_path=args.store, config=config)
    login = await client.login(args.password, device_name="echo-bot")
    if not isinstance(login, LoginResponse):
        raise SystemExit(f"login failed: {login}")
    started_ms = int(time.time() * 1000)

    async def on_invite(room: MatrixRoom, event: InviteMemberEvent) -> None:
        if event.state_key == client.user_id and event.membership == "invite":
            await client.join(room.room_id)

    async def on_text(room: MatrixRoom, event: RoomMessageText) -> None:
        if event.sender == client.user_id or event.server_timestamp < started_ms:
            return
        content = {
            "msgtype": "m.notice",
            "body": event.body,
            "m.relates_to": {"m.in_reply_to": {"event_id": event.event_id}},
        }
        await client.room_send(
            room.room_id, "m.room.message", content, ignore_unverified_devices=True
        )

    client.add_event_callback(on_invite, InviteMemberEvent)
    client.add_event_callback(on_text, RoomMessageText)
    if client.should_upload_keys:
        await client.keys_upload()
    print(ECHO_READY, flush=True)
    try:
        await client.sync_forever(timeout=30_000, full_state=True)
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
