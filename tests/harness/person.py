"""A real matrix-nio client (with E2E encryption) that plays a human user in integration tests."""

# Explicit ``timeout=`` arguments are this harness's API: each wait fails with its own message.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    EncryptionError,
    JoinedMembersResponse,
    JoinResponse,
    LoginResponse,
    MatrixRoom,
    MegolmEvent,
    RoomCreateResponse,
    RoomMessage,
    RoomPreset,
    RoomSendResponse,
    SyncResponse,
)

from bot.cross_signing import CrossSigningKeys
from bot.e2e import maintain_keys
from bot.identity import cross_sign
from bot.outbox import encrypted_room_state

__all__ = ["MakePerson", "Person", "ReceivedMessage"]

log = logging.getLogger(__name__)

_SYNC_TIMEOUT_MS = 1500
_RETRY_PAUSE_S = 0.25
# How long say() keeps re-querying a room member that has no E2E device yet (e.g. a bot that
# is still starting up) before it sends anyway.
_DEVICE_WAIT_S = 10.0


@dataclass(frozen=True)
class ReceivedMessage:
    """One ``m.room.message`` another user sent to a room, as a Person saw it."""

    room_id: str
    sender: str
    body: str
    formatted_body: str | None
    msgtype: str
    event_id: str
    content: dict[str, Any] = field(hash=False)
    encrypted: bool
    #: True when the event was encrypted and this client never obtained the room key.
    decryption_failed: bool = False


def _describe(message: ReceivedMessage) -> str:
    if message.decryption_failed:
        return f"{message.sender}: <undecryptable {message.event_id}>"
    lock = " [e2e]" if message.encrypted else ""
    return f"{message.sender}: {message.body!r}{lock}"


class Person:
    """A logged-in matrix-nio ``AsyncClient`` with a background sync loop.

    Every ``m.room.message`` from *other* users that arrives after login lands in a per-room
    queue, consumed by :meth:`reply`, :meth:`replies` and :meth:`no_more_replies`.
    Invitations are not accepted automatically; call :meth:`join`.
    """

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self._inbox: defaultdict[str, asyncio.Queue[ReceivedMessage]] = defaultdict(asyncio.Queue)
        self._seen: defaultdict[str, list[str]] = defaultdict(list)
        self._undecrypted: dict[str, MegolmEvent] = {}
        self._tick = asyncio.Condition()
        self._sync_count = 0
        self._last_sync_error: str | None = None
        self._e2e_lock = asyncio.Lock()
        self._sync_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    @classmethod
    async def login(
        cls,
        synapse_url: str,
        user_id: str,
        password: str,
        store_dir: Path,
        *,
        device_name: str = "integration-test",
        cross_signing: CrossSigningKeys | None = None,
    ) -> Person:
        """Log in with a fresh E2E device, upload its keys and run the first sync. With
        `cross_signing`, those become the account's keys and sign the device, as Element
        does at login; without, the device is what Element calls insecure."""
        store_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - instant, local
        config = AsyncClientConfig(
            encryption_enabled=True,
            store_sync_tokens=True,
            request_timeout=30,
            # Retry quickly once Synapse comes back after a simulated outage.
            max_timeout_retry_wait_time=1.0,
        )
        client = AsyncClient(synapse_url, user_id, store_path=str(store_dir), config=config)
        response = await client.login(password, device_name=device_name)
        if not isinstance(response, LoginResponse):
            await client.close()
            raise AssertionError(f"login of {user_id} failed: {response}")
        # nio loads the crypto store itself on LoginResponse; be explicit in case it did not.
        if client.olm is None:
            client.load_store()
        person = cls(client)
        if client.should_upload_keys:
            await client.keys_upload()
        if cross_signing is not None:
            await cross_sign(client, cross_signing, password)
        first = await client.sync(timeout=0, full_state=True)
        if not isinstance(first, SyncResponse):
            await client.close()
            raise AssertionError(f"first sync of {user_id} failed: {first}")
        # The first sync only establishes state; its timeline is history, not replies.
        await person._after_sync(first, collect=False)
        person._sync_task = asyncio.create_task(person._sync_forever(), name=f"sync-{user_id}")
        return person

    async def close(self) -> None:
        """Stop the sync loop and close the HTTP session (the device is kept)."""
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
            self._sync_task = None
        await self.client.close()

    @property
    def user_id(self) -> str:
        return str(self.client.user_id)

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    def __repr__(self) -> str:
        return f"Person({self.user_id}, device={self.device_id})"

    # ------------------------------------------------------------ sync loop

    async def _sync_forever(self) -> None:
        """Mirror ``AsyncClient.sync_forever`` but survive homeserver outages."""
        while True:
            try:
                response = await self.client.sync(timeout=_SYNC_TIMEOUT_MS)
                if not isinstance(response, SyncResponse):
                    raise RuntimeError(f"sync failed: {response}")
                await self._after_sync(response, collect=True)
                self._last_sync_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._last_sync_error = repr(exc)
                log.warning("%s: sync loop error, retrying: %r", self.user_id, exc)
                await asyncio.sleep(_RETRY_PAUSE_S)

    async def _after_sync(self, response: SyncResponse, *, collect: bool) -> None:
        if collect:
            for room_id, info in response.rooms.join.items():
                for event in info.timeline.events:
                    self._collect(room_id, event)
        await self._maintain_e2e()
        async with self._tick:
            self._sync_count += 1
            self._tick.notify_all()

    async def _maintain_e2e(self) -> None:
        """The housekeeping ``sync_forever`` does between syncs."""
        client = self.client
        async with self._e2e_lock:
            await maintain_keys(client)

    def _collect(self, room_id: str, event: object) -> None:
        if isinstance(event, RoomMessage):
            content = dict(event.source.get("content", {}))
            message = ReceivedMessage(
                room_id=room_id,
                sender=event.sender,
                body=str(content.get("body", "")),
                formatted_body=content.get("formatted_body"),
                msgtype=str(content.get("msgtype", "")),
                event_id=event.event_id,
                content=content,
                encrypted=bool(getattr(event, "decrypted", False)),
            )
        elif isinstance(event, MegolmEvent):
            message = ReceivedMessage(
                room_id=room_id,
                sender=event.sender,
                body="",
                formatted_body=None,
                msgtype="",
                event_id=event.event_id,
                content={},
                encrypted=True,
                decryption_failed=True,
            )
            self._undecrypted[event.event_id] = event
        else:
            return
        self._seen[room_id].append(_describe(message))
        if message.sender != self.user_id:
            self._inbox[room_id].put_nowait(message)

    async def _wait_until(
        self, predicate: Callable[[], bool], timeout: float, describe: Callable[[], str]
    ) -> None:
        """Re-check ``predicate`` after every completed sync until it holds."""

        async def waiter() -> None:
            async with self._tick:
                await self._tick.wait_for(predicate)

        try:
            await asyncio.wait_for(waiter(), timeout)
        except TimeoutError:
            problem = (
                f" (last sync error: {self._last_sync_error})" if self._last_sync_error else ""
            )
            raise AssertionError(f"{self.user_id}: {describe()}{problem}") from None

    async def synced(self, timeout: float = 15.0) -> None:
        """Wait for one complete sync that started after this call."""
        target = self._sync_count + 2
        await self._wait_until(
            lambda: self._sync_count >= target, timeout, lambda: f"no sync within {timeout}s"
        )

    # ---------------------------------------------------------------- rooms

    def _joined(self, room_id: str, user_id: str) -> bool:
        room = self.client.rooms.get(room_id)
        return room is not None and user_id in room.users and user_id not in room.invited_users

    def _room_summary(self, room_id: str) -> str:
        room = self.client.rooms.get(room_id)
        if room is None:
            return f"{self.user_id} is not in {room_id}"
        joined = sorted(u for u in room.users if u not in room.invited_users)
        return f"joined={joined} invited={sorted(room.invited_users)}"

    async def create_room(
        self,
        name: str | None = None,
        invite: Iterable[str] = (),
        encrypted: bool = False,
        direct: bool = False,
        timeout: float = 15.0,
    ) -> str:
        """Create a private room and return its id once this client has synced it."""
        initial_state = encrypted_room_state() if encrypted else []
        response = await self.client.room_create(
            name=name,
            invite=list(invite),
            is_direct=direct,
            preset=RoomPreset.trusted_private_chat if direct else RoomPreset.private_chat,
            initial_state=initial_state,
        )
        if not isinstance(response, RoomCreateResponse):
            raise AssertionError(f"{self.user_id} could not create a room: {response}")
        room_id = str(response.room_id)
        await self._wait_until(
            lambda: (
                self._joined(room_id, self.user_id)
                and (not encrypted or self.client.rooms[room_id].encrypted)
            ),
            timeout,
            lambda: f"created {room_id} but never saw it in sync",
        )
        return room_id

    async def join(self, room_id: str, timeout: float = 15.0) -> None:
        """Join (or accept the invitation to) a room and wait until sync reflects it."""
        response = await self.client.join(room_id)
        if not isinstance(response, JoinResponse):
            raise AssertionError(f"{self.user_id} could not join {room_id}: {response}")
        await self._wait_until(
            lambda: self._joined(room_id, self.user_id),
            timeout,
            lambda: f"joined {room_id} but sync never showed it",
        )

    async def wait_for_join(self, room_id: str, user_id: str, timeout: float = 15.0) -> None:
        """Wait until ``user_id`` is a joined member of ``room_id`` (as this client syncs it)."""
        await self._wait_until(
            lambda: self._joined(room_id, user_id),
            timeout,
            lambda: (
                f"{user_id} did not join {room_id} within {timeout}s; "
                f"room: {self._room_summary(room_id)}"
            ),
        )

    async def wait_for_invite(self, inviter: str | None = None, timeout: float = 15.0) -> str:
        """Wait for a pending invitation (optionally from ``inviter``) and return its room id."""

        def pending() -> str | None:
            for room_id, room in self.client.invited_rooms.items():
                if room_id in self.client.rooms:
                    continue
                if inviter is None or room.inviter == inviter:
                    return str(room_id)
            return None

        await self._wait_until(
            lambda: pending() is not None,
            timeout,
            lambda: f"no invitation{f' from {inviter}' if inviter else ''} within {timeout}s",
        )
        found = pending()
        assert found is not None
        return found

    # -------------------------------------------------------------- sending

    async def say(self, room_id: str, text: str) -> str:
        """Send an ``m.text`` message and return its event id."""
        return await self.send(room_id, {"msgtype": "m.text", "body": text})

    async def send(
        self, room_id: str, content: dict[str, Any], message_type: str = "m.room.message"
    ) -> str:
        """Send any room event (encrypting it when the room is encrypted); return its id."""
        await self._wait_until(
            lambda: self._joined(room_id, self.user_id),
            15.0,
            lambda: f"cannot send to {room_id}: not joined ({self._room_summary(room_id)})",
        )
        room = self.client.rooms[room_id]
        if room.encrypted:
            await self._prepare_encryption(room)
        async with self._e2e_lock:
            response = await self.client.room_send(
                room_id, message_type, content, ignore_unverified_devices=True
            )
        if not isinstance(response, RoomSendResponse):
            raise AssertionError(f"{self.user_id} could not send to {room_id}: {response}")
        self._seen[room_id].append(f"{self.user_id}: {content.get('body')!r} (sent)")
        return str(response.event_id)

    async def _prepare_encryption(self, room: MatrixRoom) -> None:
        """Make sure the megolm session will reach every device of every joined member.

        nio shares the room key only with members and devices it already knows; right
        after someone joins (or a bot logs in) its view can lag behind the server's.
        """
        client = self.client
        members = await client.joined_members(room.room_id)
        if not isinstance(members, JoinedMembersResponse):
            raise AssertionError(f"joined_members({room.room_id}) failed: {members}")
        others = {m.user_id for m in members.members} - {self.user_id}
        deadline = time.monotonic() + _DEVICE_WAIT_S
        while True:
            async with self._e2e_lock:
                if client.should_query_keys:
                    await client.keys_query()
            deviceless = {
                u for u in others if next(client.device_store.active_user_devices(u), None) is None
            }
            if not deviceless:
                return
            if time.monotonic() > deadline:
                log.warning("%s: sending without keys for %s", self.user_id, sorted(deviceless))
                return
            # Someone has not uploaded device keys yet; ask the server again.
            assert client.olm is not None
            client.olm.users_for_key_query.update(deviceless)
            await asyncio.sleep(_RETRY_PAUSE_S)

    # ------------------------------------------------------------ receiving

    async def reply(
        self, room_id: str, timeout: float = 15.0, *, allow_undecryptable: bool = False
    ) -> ReceivedMessage:
        """Return the next message another user sent to ``room_id``.

        Raises ``AssertionError`` if none arrives within ``timeout`` seconds, or if it is
        an encrypted message this device cannot decrypt (unless ``allow_undecryptable``).
        """
        deadline = time.monotonic() + timeout
        try:
            message = await asyncio.wait_for(self._inbox[room_id].get(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.user_id} expected a message in {room_id} within {timeout}s, got none; "
                f"{self._room_summary(room_id)}; room so far: {self._history(room_id)}"
                + (f"; last sync error: {self._last_sync_error}" if self._last_sync_error else "")
            ) from None
        if message.decryption_failed:
            message = await self._retry_decrypt(message, deadline)
            if message.decryption_failed and not allow_undecryptable:
                event = self._undecrypted.get(message.event_id)
                raise AssertionError(
                    f"{self.user_id} ({self.device_id}) received an encrypted message from "
                    f"{message.sender} in {room_id} it cannot decrypt (event {message.event_id},"
                    f" session {getattr(event, 'session_id', '?')}): the sender never shared "
                    f"the room key with this device"
                )
        return message

    async def _retry_decrypt(self, message: ReceivedMessage, deadline: float) -> ReceivedMessage:
        """The room key may arrive a sync after the message; keep trying until ``deadline``."""
        event = self._undecrypted[message.event_id]
        while True:
            try:
                decrypted = self.client.decrypt_event(event)
            except EncryptionError:
                decrypted = None
            if isinstance(decrypted, RoomMessage):
                content = dict(decrypted.source.get("content", {}))
                del self._undecrypted[message.event_id]
                return ReceivedMessage(
                    room_id=message.room_id,
                    sender=message.sender,
                    body=str(content.get("body", "")),
                    formatted_body=content.get("formatted_body"),
                    msgtype=str(content.get("msgtype", "")),
                    event_id=message.event_id,
                    content=content,
                    encrypted=True,
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return message
            with contextlib.suppress(AssertionError):
                await self.synced(timeout=remaining)

    async def replies(self, room_id: str, n: int, timeout: float = 15.0) -> list[ReceivedMessage]:
        """Return the next ``n`` messages from others in ``room_id`` (``timeout`` in total)."""
        deadline = time.monotonic() + timeout
        received: list[ReceivedMessage] = []
        for index in range(n):
            remaining = max(0.0, deadline - time.monotonic())
            try:
                received.append(await self.reply(room_id, remaining))
            except AssertionError as exc:
                raise AssertionError(
                    f"expected {n} messages, got {index}: {[_describe(m) for m in received]}; {exc}"
                ) from None
        return received

    async def no_more_replies(self, room_id: str, wait: float = 2.0) -> None:
        """Assert that no further message from others arrives in ``room_id`` within ``wait`` s."""
        extra: list[ReceivedMessage] = []
        with contextlib.suppress(TimeoutError):
            extra.append(await asyncio.wait_for(self._inbox[room_id].get(), wait))
        queue = self._inbox[room_id]
        while not queue.empty():
            extra.append(queue.get_nowait())
        if extra:
            raise AssertionError(
                f"{self.user_id} expected no more messages in {room_id}, "
                f"but got {[_describe(m) for m in extra]}"
            )

    def _history(self, room_id: str, last: int = 10) -> str:
        seen = self._seen.get(room_id, [])
        return repr(seen[-last:]) if seen else "<no messages>"


#: Type of the ``make_person`` fixture: ``await make_person("alice", admin=False, server=None)``.
MakePerson = Callable[..., Awaitable[Person]]
