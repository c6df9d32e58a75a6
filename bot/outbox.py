"""Sending: delivers what the store queued (the outbox), oldest first, with retries.

A message leaves the outbox only once the homeserver has it. Its transaction id comes from
the event or job that queued it, so a message sent twice (a crash between send and delete)
is stored once by the homeserver.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any
from urllib.parse import quote

from aiohttp import ClientError
from nio import (
    AsyncClient,
    LocalProtocolError,
    OlmUnverifiedDeviceError,
    RoomCreateResponse,
    RoomPreset,
    RoomSendResponse,
    SendRetryError,
)

from bot.e2e import DeviceTrust
from bot.identity import api
from bot.metrics import Metrics
from bot.store import OutboxItem, Store

log = logging.getLogger(__name__)

MAX_SEND_ATTEMPTS = 8  # flushes a message may fail in before it is given up on
SEND_TRIES = 3  # tries within one flush
PERMANENT_ERRORS = {"M_FORBIDDEN", "M_NOT_FOUND", "M_TOO_LARGE", "M_BAD_JSON"}
TRANSPORT_ERRORS = (ClientError, asyncio.TimeoutError, OSError, SendRetryError, LocalProtocolError)
MEGOLM = "m.megolm.v1.aes-sha2"


def encrypted_room_state() -> list[dict[str, Any]]:
    """The initial state that makes a new room encrypted, as Element creates direct chats."""
    return [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}]


class Backoff:
    """Exponential backoff with full jitter, capped."""

    def __init__(self, base: float = 1.0, cap: float = 60.0) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def next_delay(self) -> float:
        self.failures += 1
        return random.uniform(0, min(self.cap, self.base * 2 ** (self.failures - 1)))

    def reset(self) -> None:
        self.failures = 0


class Outbox:
    """Sends the store's queued messages; what fails stays queued for the next flush."""

    def __init__(
        self,
        client: AsyncClient,
        store: Store,
        metrics: Metrics,
        trust: DeviceTrust,
        *,
        encrypt_new_rooms: bool,
        stopping: asyncio.Event,
    ) -> None:
        self.client = client
        self.store = store
        self.metrics = metrics
        self.trust = trust
        self.encrypt_new_rooms = encrypt_new_rooms
        self._stopping = stopping
        self._lock = asyncio.Lock()
        self.arrived: dict[str, float] = {}  # reply txn id -> when its command arrived

    async def flush(self) -> None:
        """Sends every queued message, oldest first."""
        async with self._lock:
            await self._flush()

    async def _flush(self) -> None:
        held_back: set[str] = set()
        for item in await self.store.outbox():
            if item.room_id is None and item.to_user is not None:
                await self._open_direct_chat(item.id, item.to_user)
                continue  # the new room arrives with the next sync
            if item.room_id in held_back:
                continue  # an earlier message to this room failed: keep them in order
            if item.room_id not in self.client.rooms:
                # Just joined or created, the next sync brings it; a room the bot has left
                # never comes, so this counts as a failed attempt too.
                await self._failed(item, "the bot is not in that room (yet)")
                continue
            if await self._send(item):
                await self.store.outbox_sent(item.id)
                if item.attempts:
                    self.metrics.send_retries.inc()
                arrived = self.arrived.pop(item.txn_id, None)
                if arrived is not None:
                    self.metrics.reply_latency.observe(time.monotonic() - arrived)
                continue
            self.metrics.send_failures.inc()
            held_back.add(item.room_id or "")
            await self._failed(item, "sending failed")

    async def _failed(self, item: OutboxItem, why: str) -> None:
        """One more failed attempt; after MAX_SEND_ATTEMPTS the message is given up, loudly."""
        if item.attempts + 1 < MAX_SEND_ATTEMPTS:
            await self.store.outbox_failed(item.id)
            return
        self.metrics.send_dropped.inc()
        log.error(
            "giving up on message %s after %d attempts: %s",
            item.txn_id,
            item.attempts + 1,
            why,
            extra={"room": item.room_id},
        )
        await self.store.outbox_sent(item.id)

    async def _open_direct_chat(self, item_id: int, user_id: str) -> None:
        """Finds the direct chat with `user_id`, or makes one (encrypted, as Element would)."""
        room_id = await self.store.direct_room(user_id)
        if room_id is None or room_id not in self.client.rooms:
            try:
                resp = await self.client.room_create(
                    is_direct=True,
                    invite=[user_id],
                    preset=RoomPreset.trusted_private_chat,
                    initial_state=encrypted_room_state() if self.encrypt_new_rooms else [],
                )
            except TRANSPORT_ERRORS as exc:
                log.warning("could not open a direct chat with %s: %r", user_id, exc)
                return
            if not isinstance(resp, RoomCreateResponse):
                log.warning("could not open a direct chat with %s: %s", user_id, resp)
                return
            room_id = resp.room_id
            await self.store.set_room_joined(room_id, int(time.time() * 1000))
            log.info("opened a direct chat", extra={"room": room_id, "sender": user_id})
        await self.store.outbox_set_room(item_id, user_id, room_id)

    async def _send(self, item: OutboxItem) -> bool:
        """Sends one message, retrying transient failures with backoff; rate limits (429) are
        waited out inside nio as the server's retry_after_ms says. The same transaction id on
        every attempt lets the homeserver drop a duplicate."""
        backoff = Backoff(base=0.5, cap=4.0)
        for attempt in range(1, SEND_TRIES + 1):
            try:
                status, error = await self._deliver(item)
            except TRANSPORT_ERRORS as exc:
                status, error = None, repr(exc)
            except OlmUnverifiedDeviceError as exc:
                # A device nobody judged yet (it appeared between syncs): judge, then retry.
                await self.trust.query({exc.device.user_id})
                status, error = None, f"device {exc.device.id} of {exc.device.user_id} was new"
            if status == "ok":
                return True
            if status in PERMANENT_ERRORS:
                log.warning("sending failed for good: %s", error, extra={"room": item.room_id})
                return False
            log.warning(
                "sending failed (attempt %d of %d): %s",
                attempt,
                SEND_TRIES,
                error,
                extra={"room": item.room_id},
            )
            if attempt < SEND_TRIES and not self._stopping.is_set():
                await asyncio.sleep(backoff.next_delay())
        return False

    async def _deliver(self, item: OutboxItem) -> tuple[str | None, str]:
        """One try: ("ok", "") or (the Matrix error code, what went wrong)."""
        assert item.room_id is not None
        room = self.client.rooms[item.room_id]
        if not item.encrypted and room.encrypted:
            return await self._send_in_the_clear(item)
        if room.encrypted and (unjudged := self.trust.unjudged_users(room)):
            await self.trust.query(unjudged)
        resp = await self.client.room_send(
            item.room_id,
            "m.room.message",
            item.content,
            tx_id=item.txn_id,
            # Excluding insecure devices: every device is verified or blacklisted by now, and
            # one that is neither raises instead of silently getting the room key.
            ignore_unverified_devices=not self.trust.exclude_insecure,
        )
        if isinstance(resp, RoomSendResponse):
            return "ok", ""
        return getattr(resp, "status_code", None), f"{getattr(resp, 'message', resp)}"

    async def _send_in_the_clear(self, item: OutboxItem) -> tuple[str | None, str]:
        """nio encrypts everything in an encrypted room; this one must not be."""
        path = f"/rooms/{quote(item.room_id or '')}/send/m.room.message/{quote(item.txn_id)}"
        status, data = await api(self.client, "PUT", path, item.content)
        if status == 200:
            return "ok", ""
        return data.get("errcode"), f"{status} {data.get('error', data)}"
