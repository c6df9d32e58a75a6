"""The kit's one Matrix client: a user with an E2E device (matrix-nio) for the terminal chat, the
demo, the integration tests' people and the benchmarks. Login, the sync loop, encryption upkeep,
decryption retries, rooms and direct chats, saying things and reading the replies."""

# Explicit ``timeout=`` arguments are this client's API: each wait fails with its own message.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    EncryptionError,
    JoinedMembersResponse,
    JoinResponse,
    LoginResponse,
    MegolmEvent,
    RoomCreateResponse,
    RoomMessage,
    RoomPreset,
    RoomSendResponse,
    SyncResponse,
    WhoamiResponse,
)

from bot.cross_signing import MASTER, CrossSigningKeys, user_keys
from bot.e2e import maintain_keys
from bot.identity import (
    FatalMatrixError,
    Session,
    cross_sign,
    query_keys,
    read_session,
    write_private,
    write_session,
)
from bot.outbox import TRANSPORT_ERRORS, encrypted_room_state, private_room_state

__all__ = ["MatrixUser", "MatrixUserError", "Notice", "ReceivedMessage", "read_json"]

log = logging.getLogger(__name__)

DEVICE_NAME = "onboarding-bot dev kit"
SYNC_TIMEOUT_MS = 1500
RETRY_PAUSE_S = 0.25
# How long sending keeps re-querying a room member that has no E2E device yet (a bot that is
# still starting up) before it sends anyway.
DEVICE_WAIT_S = 15.0

T = TypeVar("T")
#: Told what a person at the keyboard should know: the connection lost or back, a message
#: sent to someone without encryption keys.
Notice = Callable[[str], None]


def read_json(path: Path) -> dict[str, Any]:
    """A small JSON object kept in a file; empty when there is none or it cannot be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class MatrixUserError(RuntimeError):
    """The homeserver refused, could not be reached, or a wait ran out; the message says which."""


@dataclass(frozen=True)
class ReceivedMessage:
    """One ``m.room.message`` another user sent to a room, as this user saw it."""

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
    #: time.perf_counter() when the message arrived (or, if late, when it could be read).
    arrived: float = field(default=0.0, compare=False)

    @classmethod
    def of(cls, room_id: str, event: RoomMessage, *, encrypted: bool) -> ReceivedMessage:
        content = dict(event.source.get("content", {}))
        return cls(
            room_id=room_id,
            sender=event.sender,
            body=str(content.get("body", "")),
            formatted_body=content.get("formatted_body"),
            msgtype=str(content.get("msgtype", "")),
            event_id=event.event_id,
            content=content,
            encrypted=encrypted,
            arrived=time.perf_counter(),
        )

    def describe(self) -> str:
        if self.decryption_failed:
            return f"{self.sender}: <undecryptable {self.event_id}>"
        lock = " [e2e]" if self.encrypted else ""
        return f"{self.sender}: {self.body!r}{lock}"


class MatrixUser:
    """A logged-in nio ``AsyncClient`` with a background sync loop.

    Every ``m.room.message`` from *other* users that arrives after login lands in a per-room
    queue, read by :meth:`reply`, :meth:`replies`, :meth:`next_message` and
    :meth:`no_more_replies`. Invitations are not accepted automatically; call :meth:`join`.
    What fails raises `failure`: MatrixUserError here, AssertionError for the tests' people.
    """

    failure: ClassVar[type[Exception]] = MatrixUserError

    def __init__(
        self,
        homeserver: str,
        user_id: str,
        store_dir: Path,
        *,
        sync_timeout_ms: int = SYNC_TIMEOUT_MS,
        max_timeouts: int | None = None,
        notice: Notice | None = None,
    ) -> None:
        self.homeserver = homeserver
        self.store_dir = store_dir
        self.sync_timeout_ms = sync_timeout_ms
        self.client = AsyncClient(
            homeserver,
            user_id,
            store_path=str(store_dir),
            config=AsyncClientConfig(
                encryption_enabled=True,
                # A device that comes back (the terminal chat) goes on from its last sync.
                store_sync_tokens=True,
                request_timeout=sync_timeout_ms / 1000 + 30,
                # None: retry for ever (a test's homeserver outage); a number: give up then.
                max_timeouts=max_timeouts,
                max_timeout_retry_wait_time=1.0,
            ),
        )
        self._notice = notice or (lambda text: log.warning("%s: %s", user_id, text))
        self._inbox: defaultdict[str, asyncio.Queue[ReceivedMessage]] = defaultdict(asyncio.Queue)
        self._seen: defaultdict[str, list[str]] = defaultdict(list)
        # Other events from others (reactions, polls), decrypted, as (type, content, sender,
        # event id), in the order they arrived.
        self._events: defaultdict[str, list[tuple[str, dict[str, Any], str, str]]] = defaultdict(
            list
        )
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
        homeserver: str,
        user_id: str,
        password: str | Callable[[], str],
        store_dir: Path,
        *,
        device_name: str = DEVICE_NAME,
        cross_signing: CrossSigningKeys | None = None,
        sync_timeout_ms: int = SYNC_TIMEOUT_MS,
        max_timeouts: int | None = None,
        notice: Notice | None = None,
    ) -> Self:
        """Logs in (or reuses the device saved in `store_dir`), uploads the device's keys,
        runs the first sync and starts syncing. `password` may be a function, asked only
        when there is no saved device. With `cross_signing`, those become the account's keys
        and sign the device, as Element does at login; without, the device is what Element
        calls insecure."""
        user = cls(
            homeserver,
            user_id,
            store_dir,
            sync_timeout_ms=sync_timeout_ms,
            max_timeouts=max_timeouts,
            notice=notice,
        )
        try:
            await user._sign_in(password, device_name)
            if cross_signing is not None:
                secret = password if isinstance(password, str) else None
                await user._call(cross_sign(user.client, cross_signing, secret))
            await user._first_sync()
        except BaseException:
            await user.client.close()
            raise
        user._sync_task = asyncio.create_task(user._sync_forever(), name=f"sync-{user_id}")
        return user

    async def _sign_in(self, password: str | Callable[[], str], device_name: str) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self._check_reachable()
        session = read_session(self.store_dir)
        if session is not None and (session.homeserver, session.user_id) == (
            self.homeserver,
            self.user_id,
        ):
            # restore_login also opens this device's crypto store.
            self.client.restore_login(session.user_id, session.device_id, session.access_token)
            if not isinstance(await self._call(self.client.whoami()), WhoamiResponse):
                session = None  # the token was revoked (or the device logged out elsewhere)
        else:
            session = None
        if session is None:
            secret = password() if callable(password) else password
            resp = await self._call(self.client.login(secret, device_name=device_name))
            if not isinstance(resp, LoginResponse):
                why = getattr(resp, "message", resp)
                raise self.failure(f"login as {self.user_id} on {self.homeserver} failed: {why}")
            # nio loads the crypto store itself on LoginResponse; be explicit in case it did not.
            if self.client.olm is None:
                self.client.load_store()
            session = Session(self.homeserver, resp.user_id, resp.device_id, resp.access_token)
            write_session(self.store_dir, session)
        if self.client.should_upload_keys:
            await self._call(self.client.keys_upload())

    async def _check_reachable(self) -> None:
        probe = f"{self.homeserver}/_matrix/client/versions"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
                http.get(probe) as resp,
            ):
                if resp.status != 200:
                    raise self.failure(
                        f"{probe} answered HTTP {resp.status}: is this a homeserver?"
                    )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self.failure(f"cannot reach the homeserver at {self.homeserver}: {exc}") from None

    async def _first_sync(self) -> None:
        # The first sync of a new device only establishes state: its timeline is history. A
        # device that comes back gets what happened while it was away, which is news.
        resumed = bool(self.client.loaded_sync_token)
        first = await self._call(self.client.sync(timeout=0, full_state=True))
        if not isinstance(first, SyncResponse):
            raise self.failure(f"the first sync of {self.user_id} failed: {first}")
        await self._after_sync(first, collect=resumed)

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
        # nio knows the user id it asked for (`user`) before it has logged in (`user_id`).
        return str(self.client.user_id or self.client.user)

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.user_id}, device={self.device_id})"

    async def _call(self, request: Awaitable[T]) -> T:
        """A request whose transport failure (connection refused, timeout), or an identity
        the homeserver will not take, is a `failure`."""
        try:
            return await request
        except TRANSPORT_ERRORS as exc:
            raise self.failure(f"lost the connection to {self.homeserver}: {exc!r}") from None
        except FatalMatrixError as exc:
            raise self.failure(str(exc)) from None

    async def cross_sign_with_saved_keys(self, keys_path: Path) -> bool:
        """Signs this device with the account's cross-signing keys kept in `keys_path` (made,
        and made the account's, on first use). False when the account has other keys already:
        they live in another client (Element), where this device must be verified."""
        saved = read_json(keys_path)
        keys = CrossSigningKeys.from_secrets(saved) if saved else None
        query = await self._call(query_keys(self.client, [self.user_id]))
        master = user_keys(query, self.user_id).master
        if master is not None and (keys is None or keys.public(MASTER) != master):
            return False
        keys = keys or CrossSigningKeys.generate()
        write_private(keys_path, json.dumps(keys.secrets()))
        await self._call(cross_sign(self.client, keys, None))
        return True

    # ------------------------------------------------------------ sync loop

    async def _sync_forever(self) -> None:
        """``AsyncClient.sync_forever``, but it survives homeserver outages and says so."""
        while True:
            try:
                response = await self.client.sync(timeout=self.sync_timeout_ms)
                if not isinstance(response, SyncResponse):
                    raise self.failure(f"sync failed: {getattr(response, 'message', response)}")
                await self._after_sync(response, collect=True)
                if self._last_sync_error is not None:
                    self._last_sync_error = None
                    self._notice("connected again")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._last_sync_error is None:
                    self._notice(f"connection to the homeserver lost, retrying: {exc}")
                self._last_sync_error = repr(exc)
                async with self._tick:
                    self._tick.notify_all()  # a waiter's message names the error
                await asyncio.sleep(RETRY_PAUSE_S)

    async def _after_sync(self, response: SyncResponse, *, collect: bool) -> None:
        if collect:
            for room_id, info in response.rooms.join.items():
                for event in info.timeline.events:
                    self._collect(room_id, event)
        async with self._e2e_lock:
            await maintain_keys(self.client)
        async with self._tick:
            self._sync_count += 1
            self._tick.notify_all()

    def _collect(self, room_id: str, event: object) -> None:
        if isinstance(event, RoomMessage):
            message = ReceivedMessage.of(
                room_id, event, encrypted=bool(getattr(event, "decrypted", False))
            )
        elif isinstance(event, MegolmEvent):
            # The room key often arrives a sync after the message: see decrypted().
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
                arrived=time.perf_counter(),
            )
            self._undecrypted[event.event_id] = event
        else:
            source = getattr(event, "source", None)
            sender = getattr(event, "sender", None)
            if isinstance(source, dict) and sender != self.user_id:
                kind = str(source.get("type", ""))
                content = dict(source.get("content", {}))
                self._events[room_id].append((kind, content, str(sender), str(event.event_id)))  # type: ignore[attr-defined]
            return
        self._seen[room_id].append(message.describe())
        if message.sender != self.user_id:
            self._inbox[room_id].put_nowait(message)

    async def _until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Re-checks `predicate` after every sync until it holds (True) or time runs out."""
        try:
            async with asyncio.timeout(timeout), self._tick:
                await self._tick.wait_for(predicate)
        except TimeoutError:
            return False
        return True

    async def _wait_until(
        self, predicate: Callable[[], bool], timeout: float, describe: Callable[[], str]
    ) -> None:
        if not await self._until(predicate, timeout):
            problem = (
                f" (last sync error: {self._last_sync_error})" if self._last_sync_error else ""
            )
            raise self.failure(f"{self.user_id}: {describe()}{problem}")

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
        *,
        private: bool = False,
    ) -> str:
        """Create a private room and return its id once this client has synced it.

        `private`: history readable only by members since their invite, as in the direct chats
        the bot opens itself, so the bot counts the room as private with this user."""
        if private:
            initial_state = private_room_state(encrypted)
        else:
            initial_state = encrypted_room_state() if encrypted else []
        response = await self._call(
            self.client.room_create(
                name=name,
                invite=list(invite),
                is_direct=direct,
                preset=RoomPreset.trusted_private_chat if direct else RoomPreset.private_chat,
                initial_state=initial_state,
            )
        )
        if not isinstance(response, RoomCreateResponse):
            raise self.failure(f"{self.user_id} could not create a room: {response}")
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

    async def open_direct_chat(
        self, other: str, *, encrypted: bool, private: bool = False, timeout: float = 30.0
    ) -> str:
        """A direct chat with `other`, returned once they have joined and (if encrypted) their
        devices are known, so the first message can reach them."""
        room_id = await self.create_room(
            invite=[other], encrypted=encrypted, direct=True, private=private
        )
        await self.wait_for_join(room_id, other, timeout=timeout)
        if encrypted:
            await self.share_keys(room_id)
        return room_id

    async def join(self, room_id: str, timeout: float = 15.0) -> None:
        """Join (or accept the invitation to) a room and wait until sync reflects it."""
        response = await self._call(self.client.join(room_id))
        if not isinstance(response, JoinResponse):
            raise self.failure(f"{self.user_id} could not join {room_id}: {response}")
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
        self,
        room_id: str,
        content: dict[str, Any],
        message_type: str = "m.room.message",
        *,
        share_keys: bool = True,
    ) -> str:
        """Send any room event (encrypting it when the room is encrypted); return its id.
        `share_keys=False` skips making sure every member's devices are known, for a caller
        that did so already (a benchmark keeps that round trip out of its timing)."""
        await self._wait_until(
            lambda: self._joined(room_id, self.user_id),
            15.0,
            lambda: f"cannot send to {room_id}: not joined ({self._room_summary(room_id)})",
        )
        if share_keys and self.client.rooms[room_id].encrypted:
            await self.share_keys(room_id)
        async with self._e2e_lock:
            response = await self._call(
                self.client.room_send(
                    room_id, message_type, content, ignore_unverified_devices=True
                )
            )
        if not isinstance(response, RoomSendResponse):
            raise self.failure(f"{self.user_id} could not send to {room_id}: {response}")
        self._seen[room_id].append(f"{self.user_id}: {content.get('body')!r} (sent)")
        return str(response.event_id)

    async def event_of(
        self,
        room_id: str,
        event_type: str,
        where: Callable[[dict[str, Any]], bool] = lambda content: True,
        timeout: float = 15.0,
    ) -> tuple[dict[str, Any], str, str]:
        """The first event of `event_type` another user sent to `room_id` whose content
        satisfies `where` (waiting up to `timeout`): its content, sender and event id."""

        def found() -> tuple[dict[str, Any], str, str] | None:
            for kind, content, sender, event_id in self._events[room_id]:
                if kind == event_type and where(content):
                    return content, sender, event_id
            return None

        await self._wait_until(
            lambda: found() is not None,
            timeout,
            lambda: f"no {event_type} in {room_id} within {timeout}s: {self._events[room_id]}",
        )
        event = found()
        assert event is not None
        return event

    def events(self, room_id: str, event_type: str) -> list[dict[str, Any]]:
        """The contents of the events of `event_type` others sent to `room_id` so far."""
        return [content for kind, content, _, _ in self._events[room_id] if kind == event_type]

    async def share_keys(self, room_id: str) -> None:
        """Make sure the room key will reach every device of every joined member.

        nio shares the room key only with members and devices it already knows; right
        after someone joins (or a bot logs in) its view can lag behind the server's.
        """
        client = self.client
        members = await self._call(client.joined_members(room_id))
        if not isinstance(members, JoinedMembersResponse):
            raise self.failure(f"joined_members({room_id}) failed: {members}")
        others = {m.user_id for m in members.members} - {self.user_id}
        deadline = time.monotonic() + DEVICE_WAIT_S
        while True:
            async with self._e2e_lock:
                if client.should_query_keys:
                    await self._call(client.keys_query())
            deviceless = {
                u for u in others if next(client.device_store.active_user_devices(u), None) is None
            }
            if not deviceless:
                return
            if time.monotonic() > deadline:
                self._notice(
                    f"{', '.join(sorted(deviceless))} has no encryption keys yet; sending anyway"
                )
                return
            # Someone has not uploaded device keys yet; ask the server again.
            assert client.olm is not None
            client.olm.users_for_key_query.update(deviceless)
            await asyncio.sleep(RETRY_PAUSE_S)

    # ------------------------------------------------------------ receiving

    async def next_message(self, room_id: str) -> ReceivedMessage:
        """The next message another user sent to ``room_id``, however long that takes, as it
        arrived: maybe still encrypted (`decryption_failed`), for :meth:`decrypted`."""
        return await self._inbox[room_id].get()

    async def decrypted(self, message: ReceivedMessage, within: float) -> ReceivedMessage:
        """The message decrypted, if its room key arrives within `within` seconds (it may
        come a sync after the message); else the message as it was."""
        event = self._undecrypted.get(message.event_id)
        if not message.decryption_failed or event is None:
            return message
        deadline = time.monotonic() + within
        while True:
            try:
                readable = self.client.decrypt_event(event)
            except EncryptionError:
                readable = None
            if isinstance(readable, RoomMessage):
                del self._undecrypted[message.event_id]
                return ReceivedMessage.of(message.room_id, readable, encrypted=True)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return message
            with contextlib.suppress(self.failure):
                await self.synced(remaining)

    async def reply(
        self, room_id: str, timeout: float = 15.0, *, allow_undecryptable: bool = False
    ) -> ReceivedMessage:
        """Return the next message another user sent to ``room_id``.

        Fails if none arrives within ``timeout`` seconds, or if it is an encrypted message
        this device cannot decrypt by then (unless ``allow_undecryptable``).
        """
        deadline = time.monotonic() + timeout
        try:
            message = await asyncio.wait_for(self.next_message(room_id), timeout)
        except TimeoutError:
            raise self.failure(
                f"{self.user_id} expected a message in {room_id} within {timeout}s, got none; "
                f"{self._room_summary(room_id)}; room so far: {self._history(room_id)}"
                + (f"; last sync error: {self._last_sync_error}" if self._last_sync_error else "")
            ) from None
        message = await self.decrypted(message, deadline - time.monotonic())
        if message.decryption_failed and not allow_undecryptable:
            event = self._undecrypted.get(message.event_id)
            raise self.failure(
                f"{self.user_id} ({self.device_id}) received an encrypted message from "
                f"{message.sender} in {room_id} it cannot decrypt (event {message.event_id},"
                f" session {getattr(event, 'session_id', '?')}): the sender never shared "
                f"the room key with this device"
            )
        return message

    async def replies(self, room_id: str, n: int, timeout: float = 15.0) -> list[ReceivedMessage]:
        """Return the next ``n`` messages from others in ``room_id`` (``timeout`` in total)."""
        deadline = time.monotonic() + timeout
        received: list[ReceivedMessage] = []
        for index in range(n):
            remaining = max(0.0, deadline - time.monotonic())
            try:
                received.append(await self.reply(room_id, remaining))
            except self.failure as exc:
                raise self.failure(
                    f"expected {n} messages, got {index}: {[m.describe() for m in received]}; {exc}"
                ) from None
        return received

    async def no_more_replies(self, room_id: str, wait: float = 2.0) -> None:
        """Fail if a further message from others arrives in ``room_id`` within ``wait`` s."""
        extra: list[ReceivedMessage] = []
        with contextlib.suppress(TimeoutError):
            extra.append(await asyncio.wait_for(self.next_message(room_id), wait))
        queue = self._inbox[room_id]
        while not queue.empty():
            extra.append(queue.get_nowait())
        if extra:
            raise self.failure(
                f"{self.user_id} expected no more messages in {room_id}, "
                f"but got {[m.describe() for m in extra]}"
            )

    def _history(self, room_id: str, last: int = 10) -> str:
        seen = self._seen.get(room_id, [])
        return repr(seen[-last:]) if seen else "<no messages>"
