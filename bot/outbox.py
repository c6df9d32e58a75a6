"""Sending: delivers what the store queued (the outbox) in a task of its own, fairly.

Each room has its own queue, served round-robin, one message per turn, replies people are
waiting for before nudges and digests. A failure delays only its room; a rate limit (429),
which the homeserver keeps per account, pauses sending (never receiving) until it ends, and
the room it hit keeps its turn.
A private message (one addressed to a person) goes only to a room verified, at send time, to
hold just the bot and that person, with history later joiners cannot read; else the bot opens
such a direct chat itself. A message leaves the outbox only once the homeserver has it; its
transaction id comes from the event or job that queued it, so a repeat is stored once.

The queue is kept in memory: read from the store once, then handed each message the store
commits (`Store.on_queued`); delivered messages are taken out of the table in one statement per
flush. A reply even goes out before its command is committed (`send_ahead`): should the commit
never happen (a crash, a storage fault), the command runs again from the same state later, and
the homeserver answers its reply's repeated transaction id with the first event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from aiohttp import ClientError
from nio import (
    AsyncClient,
    LocalProtocolError,
    MatrixRoom,
    OlmUnverifiedDeviceError,
    RoomCreateResponse,
    RoomPreset,
    SendRetryError,
)

from bot.clock import ServerClock, join_time_ms
from bot.e2e import DeviceTrust
from bot.faults import StorageFault
from bot.identity import api
from bot.metrics import Metrics
from bot.shortcuts import shortcut_reactions, shortcut_target
from bot.store import CommandRecord, OutboxItem, Store

log = logging.getLogger(__name__)

MAX_SEND_ATTEMPTS = 8  # failed tries before a message is given up on
PERMANENT_ERRORS = {"M_FORBIDDEN", "M_NOT_FOUND", "M_TOO_LARGE", "M_BAD_JSON"}
RATE_LIMITED = "M_LIMIT_EXCEEDED"
TRANSPORT_ERRORS = (ClientError, asyncio.TimeoutError, OSError, SendRetryError, LocalProtocolError)
MEGOLM = "m.megolm.v1.aes-sha2"
# History a later member can read: never for a private message.
READABLE_LATER = frozenset({"shared", "world_readable"})
RETRY_CAP_S = 60.0
SENT_BATCH = 64  # delivered messages taken out of the table together, at most
AHEAD_WAIT_S = 2.0  # the longest a commit waits for the replies sent ahead of it
# Replies delivered ahead of a commit that failed, remembered until that commit comes: a
# storage fault that lasts days leaves a few per waiting command.
REMEMBER_DELIVERED = 4096


def encrypted_room_state() -> list[dict[str, Any]]:
    """The initial state that makes a new room encrypted, as Element creates direct chats."""
    return [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}]


def private_room_state(encrypted: bool) -> list[dict[str, Any]]:
    """A direct chat the bot opens: history only for its members since their invite."""
    visibility = {
        "type": "m.room.history_visibility",
        "state_key": "",
        "content": {"history_visibility": "invited"},
    }
    return [visibility, *(encrypted_room_state() if encrypted else [])]


def is_private_with(room: MatrixRoom | None, bot_id: str, user_id: str) -> bool:
    """Whether only the bot and `user_id` are in `room` (joined or invited) and nobody who
    joins later can read what is said there: never judged from a member count alone."""
    return (
        room is not None
        and set(room.users) == {bot_id, user_id}
        and room.history_visibility not in READABLE_LATER
    )


class Backoff:
    """Exponential backoff with full jitter, capped."""

    # Doublings past this reach any cap already; more would overflow a float (after about
    # 1025 failures: a storage fault left alone for a night).
    MAX_DOUBLINGS = 60

    def __init__(self, base: float = 1.0, cap: float = 60.0) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def next_delay(self) -> float:
        self.failures += 1
        doublings = min(self.failures - 1, self.MAX_DOUBLINGS)
        return random.uniform(0, min(self.cap, self.base * 2.0**doublings))

    def reset(self) -> None:
        self.failures = 0


@dataclass(frozen=True)
class _Result:
    """One try at sending: ok, or the Matrix error code and what went wrong."""

    ok: bool
    errcode: str | None = None
    why: str = ""
    retry_after_s: float | None = None
    event_id: str | None = None  # the homeserver's id for what was sent


_Sent = tuple[_Result, float]  # a try at sending, and when it ended (time.monotonic())


async def _known(event_id: str) -> _Sent:
    """A send the homeserver has already (as `event_id`), as a finished try."""
    return _Result(True, event_id=event_id), time.monotonic()


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Marks a task's exception as seen: whoever awaits the task still gets it."""
    if not task.cancelled():
        task.exception()


class Outbox:
    """Sends the store's queued messages from its own task; what fails stays queued."""

    def __init__(
        self,
        client: AsyncClient,
        store: Store,
        metrics: Metrics,
        trust: DeviceTrust,
        *,
        encrypt_new_rooms: bool,
        reaction_shortcuts: bool = True,
        stopping: asyncio.Event,
        e2e_lock: asyncio.Lock,
        clock: ServerClock,
    ) -> None:
        self.clock = clock
        self.client = client
        self.store = store
        self.metrics = metrics
        self.trust = trust
        self.encrypt_new_rooms = encrypt_new_rooms
        self.reaction_shortcuts = reaction_shortcuts
        self._stopping = stopping
        self._e2e_lock = e2e_lock  # key sharing and the sync's key upkeep take turns
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.arrived: dict[str, float] = {}  # reply txn id -> when its command arrived
        self._rotation: dict[str, None] = {}  # rooms in the order of their next turn
        self._not_before: dict[str, float] = {}  # room -> when it may try again (failures)
        # The homeserver limits the account, not a room: after a 429 nobody sends until then.
        self._paused_until = 0.0
        self._opening: dict[str, str] = {}  # user -> the direct chat being opened for them
        self._warned_rate_limited = False
        # What the store holds to send, by id in the order queued (None: to be read).
        self._queue: dict[int, OutboxItem] | None = None
        self._arrivals: list[OutboxItem] = []  # committed since the last look at the queue
        self._sent: list[int] = []  # delivered, still in the table
        # Replies sent while their commands are being committed, by transaction id: started,
        # and claimed once their command's commit handed them over.
        self._ahead: dict[str, asyncio.Task[_Sent]] = {}
        self._claimed: dict[str, asyncio.Task[_Sent]] = {}
        # Room -> the newest message that showed a step there (its shortcuts are the ones sent).
        self._newest_step: dict[str, str] = {}
        # Replies the homeserver has although their commit failed (transaction id -> event
        # id): when the command is committed at last, perhaps after the homeserver forgot the
        # transaction id, its reply is taken as delivered instead of being posted again.
        self._delivered: dict[str, str] = {}
        store.on_queued = self.take

    # --- the task -------------------------------------------------------------------------

    def wake(self) -> None:
        """Something changed that may let a message go (a sync brought rooms): try now."""
        self._wake.set()

    def take(self, items: list[OutboxItem]) -> None:
        """The store committed these messages: send them now."""
        self._arrivals.extend(items)
        for item in items:
            if (sending := self._ahead.pop(item.txn_id, None)) is not None:
                self._claimed[item.txn_id] = sending
            elif (event_id := self._delivered.pop(item.txn_id, None)) is not None:
                self.arrived.pop(item.txn_id, None)  # its latency was not this run's
                delivered = asyncio.create_task(_known(event_id), name=item.room_id or "")
                self._claimed[item.txn_id] = delivered
        self._wake.set()

    async def send_ahead(self, records: Sequence[CommandRecord]) -> None:
        """Sends the replies of commands about to be committed, to rooms with nothing else to
        send first, and waits until the homeserver has them (at most AHEAD_WAIT_S): the reply
        does not wait for the disk, and the commit that follows does not slow its PUT down
        (run alongside, on the homeserver's machine, it did: 2.5 ms of 26). The reply leaves
        the queue once its commit has handed it over."""
        if self._queue is None or self.store.fault is not None:
            return
        if self._paused_until > time.monotonic():
            return
        started: list[asyncio.Task[_Sent]] = []
        # Follow-ups (reaction shortcuts, nudges) go after replies anyway: no reason to wait.
        busy = {i.room_id for i in (*self._queue.values(), *self._arrivals) if not i.background}
        busy.update(t.get_name() for t in (*self._ahead.values(), *self._claimed.values()))
        me = str(self.client.user_id)
        for record in records:
            txn_id, send = record.messages[0]
            room_id = send.room_id
            if room_id is None or room_id in busy or room_id not in self.client.rooms:
                continue
            if txn_id in self._delivered:
                continue  # the homeserver has it: its commit is all that is missing
            if send.to_user and not is_private_with(self.client.rooms[room_id], me, send.to_user):
                continue
            item = OutboxItem(
                0,
                txn_id,
                room_id,
                send.content,
                to_user=send.to_user,
                encrypted=send.encrypted,
                event_type=send.event_type,
                mark=send.mark,
            )
            sending = asyncio.create_task(self._deliver_timed(item), name=room_id)
            sending.add_done_callback(_retrieve)  # its failure is read when claimed, or dropped
            self._ahead[txn_id] = sending
            started.append(sending)
            busy.add(room_id)
        if started:
            await asyncio.wait(started, timeout=AHEAD_WAIT_S)

    async def delivered_ahead(self, replies: dict[str, str]) -> set[str]:
        """Of `replies` (transaction id -> what it answers) sent ahead of a commit that then
        failed, what they answer if the homeserver has them. Those are remembered: the
        command's commit, when it comes, does not post its reply a second time."""
        answered = set()
        for txn_id, event_id in replies.items():
            sending = self._ahead.get(txn_id)
            if sending is None:
                continue
            with contextlib.suppress(Exception):
                result, _ = await sending
                if result.ok and result.event_id is not None:
                    self._remember_delivered(txn_id, result.event_id)
                if result.ok:
                    answered.add(event_id)
        return answered

    def _remember_delivered(self, txn_id: str, event_id: str) -> None:
        self._delivered.pop(txn_id, None)
        self._delivered[txn_id] = event_id  # the newest last
        while len(self._delivered) > REMEMBER_DELIVERED:
            del self._delivered[next(iter(self._delivered))]

    def ahead_done(self) -> None:
        """The commits are over: a reply sent ahead that no commit claimed (its command was a
        replay, or its commit failed) is left to the homeserver's deduplication."""
        self._ahead.clear()

    async def run(self) -> None:
        """Sends whenever woken, and when a rate limit or a retry delay runs out."""
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                delay = await self.flush()
            except TRANSPORT_ERRORS as exc:
                log.warning("sending paused: %r", exc)
                delay = 5.0
            except StorageFault:
                # Logged by the store; a message sent but not yet deleted goes again with its
                # transaction id, which the homeserver deduplicates.
                delay = 5.0
            except Exception:
                # A bug must not end sending for good: it is logged, and sending goes on.
                log.exception("sending failed unexpectedly; trying again in 5 s")
                delay = 5.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def flush(self) -> float | None:
        """Sends what can be sent now, a message per room per turn. Returns the seconds until
        a delayed room may send again, or None when nothing is waiting for time to pass."""
        async with self._lock:
            try:
                return await self._send_waiting()
            finally:
                await self._take_out_sent()

    async def _send_waiting(self) -> float | None:
        while True:
            heads = await self._heads(await self._waiting())
            if not heads:
                return None
            now = time.monotonic()
            if self._paused_until > now:
                return self._paused_until - now
            ready = [r for r in self._turns(heads) if self._not_before.get(r, 0.0) <= now]
            if not ready:
                return max(0.05, min(self._not_before[r] for r in heads) - now)
            for room_id in ready:
                await self._send_one(heads[room_id])
                if self._paused_until > time.monotonic():
                    break  # rate-limited: this room keeps its turn for when it ends
            if len(self._sent) >= SENT_BATCH:
                await self._take_out_sent()

    async def _waiting(self) -> list[OutboxItem]:
        """The queue, in the order queued."""
        if self._queue is None:
            sent = set(self._sent)
            self._queue = {i.id: i for i in await self.store.outbox() if i.id not in sent}
        for item in self._arrivals:
            self._queue.setdefault(item.id, item)
        self._arrivals.clear()
        return list(self._queue.values())

    async def _take_out_sent(self) -> None:
        """Deletes what was delivered; on a storage fault they stay listed for the next try (a
        restart in between sends them again, under their transaction ids)."""
        if self._sent:
            await self.store.outbox_sent(self._sent)
            self._sent = []

    def _turns(self, heads: dict[str, OutboxItem]) -> list[str]:
        """Rooms in round-robin order, those with a reply waiting before the others."""
        for room_id in heads:
            self._rotation.setdefault(room_id, None)
        for room_id in [r for r in self._rotation if r not in heads]:
            del self._rotation[room_id]
            self._not_before.pop(room_id, None)
        return sorted(self._rotation, key=lambda r: heads[r].background)  # stable

    async def _heads(self, items: Iterable[OutboxItem]) -> dict[str, OutboxItem]:
        """Each room's next message: its oldest reply, else its oldest follow-up."""
        heads: dict[str, OutboxItem] = {}
        for item in items:
            room_id = await self._room_for(item)
            if room_id is None:
                continue
            if item.room_id != room_id:
                item = replace(item, room_id=room_id)
            head = heads.get(room_id)
            if head is None or (head.background and not item.background):
                heads[room_id] = item
        return heads

    # --- where a message goes -------------------------------------------------------------

    async def _room_for(self, item: OutboxItem) -> str | None:
        """The room to send `item` to now, or None while it must wait."""
        if item.to_user is None:
            return item.room_id
        me = str(self.client.user_id)
        if item.room_id and is_private_with(self.client.rooms.get(item.room_id), me, item.to_user):
            return item.room_id  # the common case: no database read on the way to the send
        known = await self.store.direct_room(item.to_user)
        if known and is_private_with(self.client.rooms.get(known), me, item.to_user):
            await self._set_room(item.to_user, known)
            return known
        opening = self._opening.get(item.to_user)
        if opening is not None and opening not in self.client.rooms:
            return None  # the new direct chat arrives with a sync
        if item.attempts + 1 >= MAX_SEND_ATTEMPTS:
            await self._failed(item, "no private room with that person could be made")
            return None
        await self._count_try(item)  # each new room costs the message a try
        await self._open_direct_chat(item.to_user)
        return None

    async def _open_direct_chat(self, user_id: str) -> None:
        """Opens a direct chat only the bot and `user_id` can read (invite-only, history from
        the invite on, encrypted when the bot encrypts) and records it in m.direct."""
        try:
            resp = await self.client.room_create(
                is_direct=True,
                invite=[user_id],
                preset=RoomPreset.trusted_private_chat,
                initial_state=private_room_state(self.encrypt_new_rooms),
            )
        except TRANSPORT_ERRORS as exc:
            log.warning("could not open a direct chat with %s: %r", user_id, exc)
            return
        if not isinstance(resp, RoomCreateResponse):
            log.warning("could not open a direct chat with %s: %s", user_id, resp)
            return
        room_id = str(resp.room_id)
        self._opening[user_id] = room_id
        joined_ms = await join_time_ms(self.client, room_id) or self.clock.now_ms()
        await self.store.set_room_joined(room_id, joined_ms)
        await self._set_room(user_id, room_id)
        log.info("opened a direct chat", extra={"room": room_id, "sender": user_id})
        await self._record_direct(user_id, room_id)

    async def _set_room(self, user_id: str, room_id: str) -> None:
        """Every message for `user_id` goes to `room_id` from now on."""
        await self.store.outbox_set_room(user_id, room_id)
        for item in (self._queue or {}).values():
            if item.to_user == user_id:
                self._queue[item.id] = replace(item, room_id=room_id)  # type: ignore[index]

    async def _record_direct(self, user_id: str, room_id: str) -> None:
        """Adds the room to the bot's m.direct account data, as clients do for a DM."""
        path = f"/user/{quote(str(self.client.user_id))}/account_data/m.direct"
        try:
            status, direct = await api(self.client, "GET", path)
            if status not in (200, 404):
                raise ClientError(f"HTTP {status}")
            rooms = [r for r in direct.get(user_id, []) if r != room_id]
            direct[user_id] = [*rooms, room_id]
            status, _ = await api(self.client, "PUT", path, direct)
            if status != 200:
                raise ClientError(f"HTTP {status}")
        except TRANSPORT_ERRORS as exc:
            log.warning("could not record the direct chat in m.direct: %r", exc)

    # --- sending one ----------------------------------------------------------------------

    async def _send_one(self, item: OutboxItem) -> None:
        assert item.room_id is not None
        target = shortcut_target(item.event_type, item.content, item.txn_id)
        if target is not None and self._newest_step.get(item.room_id, target) != target:
            # A newer message in the room shows a step and gets shortcuts of its own: this
            # one's, not sent yet because replies kept coming first, would only load a busy
            # homeserver (a reaction on this message still works, typed by hand).
            self._taken_out(item)
            return
        sending = self._claimed.pop(item.txn_id, None)
        if sending is None and item.room_id not in self.client.rooms:
            # Just joined, the next sync brings it; a room the bot has left never comes.
            await self._retry_later(item, _Result(False, why="the bot is not in that room (yet)"))
            return
        try:
            result, delivered_at = await (sending or self._deliver_timed(item))
        except TRANSPORT_ERRORS as exc:
            result, delivered_at = _Result(False, why=repr(exc)), time.monotonic()
        except OlmUnverifiedDeviceError as exc:
            # A device nobody judged yet (it appeared between syncs): judge it, try again.
            await self.trust.query({exc.device.user_id})
            self._not_before[item.room_id] = time.monotonic() + 1.0
            return
        if result.ok:
            if item.mark is not None and result.event_id is not None:
                await self._remember(item, result.event_id)
            self._taken_out(item)
            self._rotation.pop(item.room_id, None)  # to the back of the line
            self._not_before.pop(item.room_id, None)
            if item.attempts:
                self.metrics.send_retries.inc()
            arrived = self.arrived.pop(item.txn_id, None)
            if arrived is not None:
                self.metrics.reply_latency.observe(delivered_at - arrived)
            return
        if result.errcode == RATE_LIMITED:
            self._rate_limited(result.retry_after_s or 5.0)
            return
        self.metrics.send_failures.inc()
        if result.errcode in PERMANENT_ERRORS:
            log.warning("sending failed for good: %s", result.why, extra={"room": item.room_id})
            await self._failed(item, result.why, attempts=MAX_SEND_ATTEMPTS)
            return
        await self._retry_later(item, result)

    def _rate_limited(self, retry_after_s: float) -> None:
        """Every try during a rate limit counts against it (Synapse): wait it out, all rooms."""
        self._paused_until = time.monotonic() + retry_after_s
        if not self._warned_rate_limited:
            self._warned_rate_limited = True
            log.warning(
                "the homeserver rate-limits the bot's account (429): replies slow down when "
                "many people talk to it. Exempt the bot (Synapse: the admin API's "
                "override_ratelimit for its user; see the README)"
            )

    async def _retry_later(self, item: OutboxItem, result: _Result) -> None:
        assert item.room_id is not None
        log.warning(
            "sending failed (attempt %d of %d): %s",
            item.attempts + 1,
            MAX_SEND_ATTEMPTS,
            result.why,
            extra={"room": item.room_id},
        )
        delay = random.uniform(0.5, 1.0) * min(RETRY_CAP_S, 2.0 ** (item.attempts + 1))
        self._not_before[item.room_id] = time.monotonic() + delay
        await self._failed(item, result.why)

    async def _failed(self, item: OutboxItem, why: str, attempts: int | None = None) -> None:
        """One more failed attempt; after MAX_SEND_ATTEMPTS the message is given up, loudly."""
        if (attempts or item.attempts + 1) < MAX_SEND_ATTEMPTS:
            await self._count_try(item)
            return
        self.metrics.send_dropped.inc()
        self.arrived.pop(item.txn_id, None)
        log.error(
            "giving up on message %s after %d attempts: %s",
            item.txn_id,
            item.attempts + 1,
            why,
            extra={"room": item.room_id},
        )
        self._taken_out(item)

    async def _remember(self, item: OutboxItem, event_id: str) -> None:
        """A marked message went out: what it is is kept by its event id, and a step shown
        gets its reaction shortcuts (sent after it, behind the replies people wait for)."""
        assert item.mark is not None and item.room_id is not None
        follow_ups = []
        if item.mark.kind == "step":
            self._newest_step[item.room_id] = event_id
            if self.reaction_shortcuts:
                follow_ups = shortcut_reactions(item.room_id, event_id)
        await self.store.delivered(item, event_id, follow_ups, at=self.clock.now())

    def _taken_out(self, item: OutboxItem) -> None:
        """Delivered or given up: out of the queue now, out of the table with the next batch."""
        if self._queue is not None:
            self._queue.pop(item.id, None)
        self._sent.append(item.id)

    async def _count_try(self, item: OutboxItem) -> None:
        await self.store.outbox_failed(item.id)
        if self._queue is not None and item.id in self._queue:
            self._queue[item.id] = replace(self._queue[item.id], attempts=item.attempts + 1)

    async def send_now(self, room_id: str, content: dict[str, Any], txn_id: str) -> None:
        """Sends a notice past the store (which may be what is failing); a failure is logged,
        not retried: the notice is a courtesy, the answer itself comes later."""
        if room_id not in self.client.rooms:
            return
        try:
            result = await self._deliver(OutboxItem(0, txn_id, room_id, content))
        except Exception as exc:  # the key store may share the failing disk
            result = _Result(False, why=repr(exc))
        if not result.ok:
            log.warning("could not send a notice: %s", result.why, extra={"room": room_id})

    async def _deliver_timed(self, item: OutboxItem) -> _Sent:
        result = await self._deliver(item)
        return result, time.monotonic()

    async def _deliver(self, item: OutboxItem) -> _Result:
        """One PUT of the message, encrypted when its room is (and the message may be). The
        homeserver's 429 comes back at once, so that it delays this room only."""
        assert item.room_id is not None
        room = self.client.rooms[item.room_id]
        event_type, content = item.event_type, item.content
        if room.encrypted and item.encrypted:
            async with self._e2e_lock:
                event_type, content = await self._encrypt(room, event_type, content)
        path = f"/rooms/{quote(item.room_id)}/send/{quote(event_type)}/{quote(item.txn_id)}"
        status, data = await api(self.client, "PUT", path, content)
        if status == 200:
            event_id = data.get("event_id")
            return _Result(True, event_id=event_id if isinstance(event_id, str) else None)
        retry_ms = data.get("retry_after_ms")
        return _Result(
            False,
            errcode=RATE_LIMITED if status == 429 else data.get("errcode"),
            why=f"{status} {data.get('errcode', '')} {data.get('error', data)}",
            retry_after_s=retry_ms / 1000 if isinstance(retry_ms, int | float) else None,
        )

    async def _encrypt(
        self, room: MatrixRoom, event_type: str, content: dict[str, Any]
    ) -> tuple[str, Any]:
        """What nio's room_send does before its PUT: the room key shared with every device
        that may have it (judged first when excluding insecure devices), then Megolm."""
        client = self.client
        assert client.olm is not None
        if not room.members_synced:
            await client.joined_members(room.room_id)
        # Members whose devices are not known yet (the sync that brought them was just now).
        if client.should_query_keys:
            await self.trust.query(client.users_for_key_query)
        if unjudged := self.trust.unjudged_users(room):
            await self.trust.query(unjudged)
        if client.olm.should_share_group_session(room.room_id):
            await client.share_group_session(
                room.room_id,
                # Excluding insecure devices every device is verified or blacklisted by now,
                # and one that is neither raises instead of silently getting the room key.
                ignore_unverified_devices=not self.trust.exclude_insecure,
            )
        return client.encrypt(room.room_id, event_type, content)
