"""The Matrix edge: the sync loop, invites, and turning room events into `Incoming` messages
for the dispatcher. Logging in and the bot's identity are `identity.py`'s; delivering what the
store queued is `outbox.py`'s. The saved sync token and the handled-event ids in the store make
a restart neither replay nor miss a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from typing import Any

from nio import (
    InviteMemberEvent,
    LocalProtocolError,
    MatrixRoom,
    MegolmEvent,
    RoomMessageText,
    SyncError,
    SyncResponse,
)

from bot import texts
from bot.clock import ServerClock, join_time_ms
from bot.commands.registry import Role
from bot.config import Config
from bot.dispatch import Dispatcher, Incoming, reply_content
from bot.e2e import DeviceTrust, maintain_keys
from bot.identity import FatalMatrixError, Identity, bot_client
from bot.logs import READY
from bot.metrics import Metrics
from bot.ops import Send
from bot.outbox import TRANSPORT_ERRORS, Backoff, Outbox, is_private_with
from bot.recent import Recent
from bot.store import Store
from bot.team import Team
from bot.team_room import TeamRoom

__all__ = ["FatalMatrixError", "MatrixBot"]

log = logging.getLogger(__name__)

SYNC_TOKEN_KEY = "sync_token"
FIRST_START_KEY = "first_start_ms"
SYNC_TIMEOUT_MS = 30_000
# Enough timeline per room that commands sent while the bot was down are all in the first sync.
SYNC_FILTER: dict[str, Any] = {
    "room": {"timeline": {"limit": 200}, "state": {"lazy_load_members": False}},
    "presence": {"not_types": ["*"]},
}
HEALTHY_SYNC_AGE = 90.0  # seconds; a long-poll sync returns at least every 30 s


class MatrixBot:
    def __init__(
        self,
        config: Config,
        store: Store,
        dispatcher: Dispatcher,
        team: Team,
        metrics: Metrics,
        clock: ServerClock,
    ) -> None:
        self.config = config
        self.team = team
        self.clock = clock
        self.metrics = metrics
        self.store = store
        self.dispatcher = dispatcher
        self.client = bot_client(config)
        self.identity = Identity(self.client, config.matrix, config.storage.data_dir)
        self.trust = DeviceTrust(
            self.client, exclude_insecure=config.matrix.exclude_insecure_devices
        )
        self._stopping = asyncio.Event()
        self._e2e_lock = asyncio.Lock()
        self.outbox = Outbox(
            self.client,
            store,
            metrics,
            self.trust,
            encrypt_new_rooms=config.matrix.encryption,
            stopping=self._stopping,
            e2e_lock=self._e2e_lock,
            clock=clock,
        )
        self.team_room = TeamRoom(
            self.client, store, config.rooms.team, frozenset(config.people.admins)
        )
        self.max_event_age_ms = int(config.bot.max_event_age.total_seconds() * 1000)
        self.last_sync_ok: float | None = None
        self.sync_failing = False
        self._inbox: list[tuple[Incoming, float]] = []  # this sync's commands, as they arrived
        self._first_start_ms = 0
        self.synced = asyncio.Event()
        self.client.add_event_callback(self._on_invite, InviteMemberEvent)
        self.client.add_event_callback(self._on_message, RoomMessageText)
        self.client.add_event_callback(self._on_undecryptable, MegolmEvent)
        # Invites are answered by a task of their own: a flood of them never holds up syncs.
        self._invites: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._told_undecryptable = Recent(ttl_s=3600)  # senders told in the last hour
        self._asked_for_keys = Recent(ttl_s=3600)  # Megolm sessions asked for
        self._told_insecure = Recent(ttl_s=7 * 86400)  # devices told they are not verified

    async def login(self) -> None:
        """Logs in (reusing the saved device) and makes sure the device is cross-signed."""
        await self.identity.login()
        await self._check_clock()
        if self.config.matrix.encryption:
            await self.identity.ensure()

    async def _check_clock(self) -> None:
        try:
            await self.clock.check(self.client)
        except TRANSPORT_ERRORS as exc:
            log.warning("could not compare the clock with the homeserver's: %r", exc)
            return
        self.metrics.clock_offset.set(self.clock.offset.total_seconds())
        self.metrics.clock_skewed.set(1 if self.clock.skewed else 0)

    # --- the sync loop --------------------------------------------------------------------

    def stop(self) -> None:
        """Takes no more commands. A sync in flight is abandoned; its events come again
        with the saved token at the next start, and those already handled are skipped."""
        self._stopping.set()
        self.outbox.wake()

    def healthy(self) -> tuple[bool, str]:
        if self.client.access_token is None or self.last_sync_ok is None:
            return False, "not logged in and synced yet"
        if self.sync_failing:
            return False, "the last sync failed: the homeserver is unreachable or erroring"
        age = time.monotonic() - self.last_sync_ok
        if age > HEALTHY_SYNC_AGE:
            return False, f"no successful sync for {age:.0f}s"
        return True, "ok"

    async def run(self) -> None:
        first = await self.store.get_value(FIRST_START_KEY)
        if first is None:
            first = str(self.clock.now_ms())
            await self.store.set_value(FIRST_START_KEY, first)
        self._first_start_ms = int(first)
        token = await self.store.get_value(SYNC_TOKEN_KEY)
        workers = [
            asyncio.create_task(self._send_when_synced(), name="outbox"),
            asyncio.create_task(self._answer_invites(), name="invites"),
        ]
        try:
            await self._sync_loop(token)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _send_when_synced(self) -> None:
        """Sending starts with the first sync: before it the bot knows none of its rooms."""
        await self.synced.wait()
        await self.outbox.run()

    async def _sync_loop(self, token: str | None) -> None:
        backoff = Backoff()
        full_state = True  # the first sync of every start rebuilds room state in memory
        while not self._stopping.is_set():
            self._inbox.clear()  # left by a failed sync: its events come again
            try:
                resp = await self.client.sync(
                    timeout=SYNC_TIMEOUT_MS,
                    sync_filter=SYNC_FILTER,
                    since=token,
                    full_state=full_state,
                )
            except TRANSPORT_ERRORS as exc:
                self._sync_failed()
                await self._pause(backoff, f"sync failed: {exc!r}")
                continue
            if isinstance(resp, SyncError):
                self._sync_failed()
                if resp.status_code == "M_UNKNOWN_TOKEN":
                    raise FatalMatrixError(
                        f"the homeserver no longer accepts the bot's access token ({resp.message})."
                        f" Delete {self.identity.session_path} and start again to log in anew."
                    )
                await self._pause(backoff, f"sync error: {resp.status_code} {resp.message}")
                continue
            assert isinstance(resp, SyncResponse)
            backoff.reset()
            if full_state:
                # Before the commands that waited for the bot: a mentor's needs the room.
                await self.join_team_room()
                log.info(READY)
                self.synced.set()
            elif self.team_room.changed_in(resp):
                self._mentors_by_power()
            full_state = False
            await self._handle_inbox()  # committed before the token moves past them
            self.outbox.wake()
            token = resp.next_batch
            await self.store.set_value(SYNC_TOKEN_KEY, token)
            self.last_sync_ok = time.monotonic()
            self.sync_failing = False
            self.metrics.last_sync.set(time.time())
            await self._after_sync()

    def _sync_failed(self) -> None:
        self.sync_failing = True
        self.metrics.sync_failures.inc()

    async def _pause(self, backoff: Backoff, why: str) -> None:
        delay = backoff.next_delay()
        log.warning("%s; retrying in %.1fs", why, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def _after_sync(self) -> None:
        if self.clock.due():
            await self._check_clock()
        try:
            async with self._e2e_lock:
                await maintain_keys(self.client, self.trust)
        except (*TRANSPORT_ERRORS, FatalMatrixError) as exc:
            log.warning("key maintenance failed, will retry after the next sync: %r", exc)
        self.outbox.wake()  # rooms and devices this sync brought may unblock messages

    async def flush_outbox(self) -> None:
        """Sends what can be sent now (at stop: what is not held back by a rate limit)."""
        await self.outbox.flush()

    async def queued(self) -> None:
        """A job queued messages: the outbox task sends them."""
        self.outbox.wake()

    # --- events ---------------------------------------------------------------------------

    def _allowed(self, user_id: str) -> bool:
        return user_id.partition(":")[2] in self.config.allowed_servers

    async def _on_invite(self, room: MatrixRoom, event: InviteMemberEvent) -> None:
        if event.state_key == self.client.user_id and event.membership == "invite":
            self._invites.put_nowait((room.room_id, event.sender))

    async def _answer_invites(self) -> None:
        while True:
            room_id, inviter = await self._invites.get()
            try:
                await self._answer_invite(room_id, inviter)
            except TRANSPORT_ERRORS as exc:
                log.warning("could not answer an invite: %r", exc, extra={"room": room_id})
            except Exception:
                # A bug must not end the answering of invites for good: logged, and on.
                log.exception("answering an invite failed", extra={"room": room_id})

    async def _answer_invite(self, room_id: str, inviter: str) -> None:
        """Joins, unless the inviter's server is not allowed or a cap is reached (then the
        invite is declined, with a log line); greets a room the first time only."""
        log.debug("answering an invite", extra={"room": room_id, "sender": inviter})
        if room_id in self.client.rooms:
            log.debug("joined already", extra={"room": room_id})
            return  # joined already (an invite seen twice)
        why = await self._decline_reason(inviter)
        if why is not None:
            log.warning("declining an invite: %s", why, extra={"room": room_id, "sender": inviter})
            await self.client.room_leave(room_id)
            return
        known = await self.store.room_joined_at(room_id) is not None
        resp = await self.client.join(room_id)
        if getattr(resp, "room_id", None) != room_id:
            log.warning("could not join %s: %s", room_id, resp)
            return
        joined_ms = await join_time_ms(self.client, room_id) or self.clock.now_ms()
        await self.store.set_room_joined(room_id, joined_ms, inviter)
        log.info("joined on invite", extra={"room": room_id, "sender": inviter})
        if self.config.bot.greeting and not known:
            await self._greet(room_id)

    async def _decline_reason(self, inviter: str) -> str | None:
        bot = self.config.bot
        if not self._allowed(inviter):
            return "the inviter's server is not in bot.allowed_servers"
        if len(self.client.rooms) >= bot.max_rooms:
            return f"the bot is in bot.max_rooms ({bot.max_rooms}) rooms already"
        if self.team.state.role_of(inviter) >= Role.MENTOR:
            return None
        if await self.store.rooms_invited_by(inviter) >= bot.max_rooms_per_inviter:
            return f"the inviter has bot.max_rooms_per_inviter ({bot.max_rooms_per_inviter}) rooms"
        return None

    async def _greet(self, room_id: str) -> None:
        reply = texts.greeting(self.config.bot.command_prefix)
        txn = "greet-" + hashlib.sha256(room_id.encode()).hexdigest()[:32]
        await self.store.commit_job(
            ops=(),
            messages=[(txn, Send("greeting", reply.content(), room_id=room_id))],
            at=self.clock.now(),
        )

    async def _on_message(self, room: MatrixRoom, event: RoomMessageText) -> None:
        arrived = time.monotonic()
        sender = event.sender
        if sender == self.client.user_id or not self._allowed(sender):
            return
        content = event.source.get("content", {})
        if content.get("m.relates_to", {}).get("rel_type") == "m.replace":
            return  # an edit of an earlier message is not a new command
        if not self.dispatcher.is_command(event.body):
            return
        joined = await self.store.room_joined_at(room.room_id) or self._first_start_ms
        now_ms = self.clock.now_ms()
        if (
            event.server_timestamp < joined
            or now_ms - event.server_timestamp > self.max_event_age_ms
        ):
            log.debug("ignoring old event %s in %s", event.event_id, room.room_id)
            return
        if event.decrypted and not await self._from_secure_device(room, event):
            return
        is_direct = is_private_with(room, str(self.client.user_id), sender)
        self._inbox.append(
            (
                Incoming(
                    event.event_id,
                    room.room_id,
                    sender,
                    event.body,
                    formatted_body=content.get("formatted_body"),
                    is_direct=is_direct,
                    ts_ms=event.server_timestamp,
                ),
                arrived,
            )
        )

    async def _from_secure_device(self, room: MatrixRoom, event: RoomMessageText) -> bool:
        """Excluding insecure devices, a command from a device its owner has not cross-signed
        is not run (Element would not have shared the room key either). The sender is told
        once per device, in the clear: that device can read nothing else from the bot."""
        trust = self.trust
        if event.verified or not trust.exclude_insecure:
            return True
        device = trust.sender_device(event.sender, event.sender_key)
        if device is None or not trust.judged(device):  # new since the last key query
            await trust.query({event.sender})
            device = trust.sender_device(event.sender, event.sender_key)
        if device is not None and trust.is_secure(device):
            return True
        which = device.id if device is not None else str(event.sender_key)
        log.warning(
            "not running a command from an insecure device",
            extra={"room": room.room_id, "sender": event.sender, "device": which},
        )
        if not self._told_insecure.first((event.sender, which)):
            return False
        note = texts.insecure_session(which)
        txn = "insecure-" + hashlib.sha256(f"{event.sender}/{which}".encode()).hexdigest()[:32]
        await self.store.commit_job(
            ops=(),
            messages=[
                (
                    txn,
                    Send(
                        "insecure-device",
                        reply_content(note, event.event_id),
                        room_id=room.room_id,
                        encrypted=False,
                    ),
                )
            ],
            at=self.clock.now(),
        )
        return False

    async def _handle_inbox(self) -> None:
        """The commands of one sync, handled together (the dispatcher commits them in groups)."""
        inbox, self._inbox = self._inbox, []
        if not inbox:
            return
        results = await self.dispatcher.handle_all([msg for msg, _ in inbox])
        for (msg, arrived), items in zip(inbox, results, strict=True):
            if items:
                self.outbox.arrived[items[0].txn_id] = arrived
                log.info(
                    "command handled, reply queued",
                    extra={"room": msg.room_id, "sender": msg.sender},
                )

    async def _on_undecryptable(self, room: MatrixRoom, event: MegolmEvent) -> None:
        """A message the bot has no key for: ask the sender's devices for the key, and say
        what to do, at most once per sender an hour. It counts against the sender's flood
        gate like a command: fake encrypted events are no way around it."""
        sender = event.sender
        if sender == self.client.user_id or not self._allowed(sender):
            return
        joined = await self.store.room_joined_at(room.room_id) or self._first_start_ms
        if event.server_timestamp < joined:
            return
        if self.dispatcher.flood.check(sender, event.server_timestamp) != "ok":
            return
        log.warning("could not decrypt a message", extra={"room": room.room_id, "sender": sender})
        if self._asked_for_keys.first((sender, event.session_id)):
            with contextlib.suppress(*TRANSPORT_ERRORS, LocalProtocolError):
                await self.client.request_room_key(event)
        if not self._told_undecryptable.first(sender):
            return
        note = texts.UNDECRYPTABLE
        txn = (
            "undecryptable-"
            + hashlib.sha256(f"{sender}/{event.event_id}".encode()).hexdigest()[:32]
        )
        content = reply_content(note, event.event_id)
        await self.store.commit_job(
            ops=(),
            messages=[(txn, Send("undecryptable", content, room_id=room.room_id))],
            at=self.clock.now(),
        )

    # --- the team room ----------------------------------------------------------------------

    async def join_team_room(self) -> None:
        """Joins rooms.team (pinned; see team_room.py), where mentors are found by power."""
        await self.team_room.join()
        self.team.swap(team_room=self.team_room.room_id)
        self._mentors_by_power()

    def _mentors_by_power(self) -> None:
        mentors = self.team_room.mentors()
        if mentors != self.team.state.mentors_by_power:
            self.team.swap(mentors_by_power=mentors)

    async def close(self) -> None:
        await self.client.close()
