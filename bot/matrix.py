"""The Matrix edge: the sync loop, invites, and turning room events into `Incoming` messages
for the dispatcher. Logging in and the bot's identity are `identity.py`'s; delivering what the
store queued is `outbox.py`'s. The saved sync token and the handled-event ids in the store make
a restart neither replay nor miss a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from nio import (
    Event,
    InviteMemberEvent,
    LocalProtocolError,
    MatrixRoom,
    MegolmEvent,
    ReactionEvent,
    RoomMessageText,
    SyncError,
    SyncResponse,
    UnknownEvent,
)

from bot import texts
from bot.clock import ServerClock, join_time_ms
from bot.commands.registry import Role
from bot.config import Config
from bot.dispatch import Dispatcher, Incoming, Unsaved, reply_content, reply_txn_id
from bot.e2e import DeviceTrust, maintain_keys
from bot.faults import StorageFault, key_store_fault
from bot.identity import FatalMatrixError, Identity, bot_client
from bot.logs import READY
from bot.metrics import Metrics
from bot.ops import Send
from bot.outbox import TRANSPORT_ERRORS, Backoff, Outbox, is_private_with
from bot.polls import POLL_RESPONSE, poll_vote
from bot.recent import Recent
from bot.shortcuts import command_for
from bot.store import OutboxItem, Store
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
STORAGE_RETRY_CAP_S = 30.0  # the longest wait between two tries of a database that failed
QUARANTINE_AFTER = 5  # failures of one event (not the disk's) before it is skipped for good


class Retry(Exception):
    """This sync's events come again with the next one, after a pause (the reason)."""


EventCallback = Callable[[MatrixRoom, Any], Awaitable[None]]


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
            reaction_shortcuts=config.bot.reaction_shortcuts,
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
        # Events skipped for good (read at start, then added to): see `_guarded`.
        self._quarantined: set[str] = set()
        self._failed_in_sync: list[str] = []  # events whose callback failed in this sync
        self._times_clamped = False  # stored times ahead of the homeserver's brought back
        for callback, kind in (
            (self._on_invite, InviteMemberEvent),
            (self._on_message, RoomMessageText),
            (self._on_reaction, ReactionEvent),
            (self._on_poll_response, UnknownEvent),
            (self._on_undecryptable, MegolmEvent),
        ):
            self.client.add_event_callback(self._guarded(callback), kind)
        # Invites are answered by a task of their own: a flood of them never holds up syncs.
        self._invites: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._told_undecryptable = Recent(ttl_s=3600)  # senders told in the last hour
        self._asked_for_keys = Recent(ttl_s=3600)  # Megolm sessions asked for
        self._told_insecure = Recent(ttl_s=7 * 86400)  # devices told they are not verified
        self._told_unsaved: set[str] = set()  # rooms told, during this storage fault
        # Tries of a failing storage wait longer and longer until a sync goes through.
        self._storage_backoff = Backoff(base=0.5, cap=STORAGE_RETRY_CAP_S)
        # nio's key store failed in the last sync (the bot's own store keeps its own fault).
        self.key_store_fault: StorageFault | None = None
        # While storage fails the bot syncs only to tell senders that their commands wait:
        # invites and undecryptable messages come again with the sync from the saved token.
        self._waiting_out = False

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
        if self.clock.measured and not self._times_clamped:
            await self._clamp_future_times()

    async def _clamp_future_times(self) -> None:
        """Join times an older bot took from its own clock, and its first start, may lie ahead
        of the homeserver's time (a clock that ran ahead): every command in such a room would
        be ignored until then. Once the server's time is known they are brought back to it."""
        now_ms = self.clock.now_ms()
        clamped = await self.store.clamp_future_times(now_ms, ms_keys=(FIRST_START_KEY,))
        self._times_clamped = True
        self._first_start_ms = min(self._first_start_ms, now_ms)
        if clamped:
            log.warning(
                "%d stored time(s) (rooms joined, the first start) were ahead of the "
                "homeserver's clock, written while this machine's ran ahead: set to its time",
                clamped,
            )

    # --- the sync loop --------------------------------------------------------------------

    def stop(self) -> None:
        """Takes no more commands. A sync in flight is abandoned; its events come again
        with the saved token at the next start, and those already handled are skipped."""
        self._stopping.set()
        self.outbox.wake()

    def healthy(self) -> tuple[bool, str]:
        if (fault := self.store.fault or self.key_store_fault) is not None:
            return False, fault.reason
        if self.client.access_token is None or self.last_sync_ok is None:
            return False, "not logged in and synced yet"
        if self.sync_failing:
            return False, "the last sync failed: the homeserver is unreachable or erroring"
        age = time.monotonic() - self.last_sync_ok
        if age > HEALTHY_SYNC_AGE:
            return False, f"no successful sync for {age:.0f}s"
        return True, "ok"

    async def run(self) -> None:
        await self._remember_quarantined()
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

    async def _remember_quarantined(self) -> None:
        """The events quarantined by earlier runs: skipped if a sync brings them again."""
        self._quarantined.update(q.event_id for q in await self.store.quarantined())

    async def _send_when_synced(self) -> None:
        """Sending starts with the first sync: before it the bot knows none of its rooms."""
        await self.synced.wait()
        await self.outbox.run()

    async def _sync_loop(self, token: str | None) -> None:
        backoff = Backoff()
        full_state = True  # the first sync of every start rebuilds room state in memory
        # Replies may go out while their commands are committed once the syncs bring only new
        # events: not in the first sync of a start, nor in one after a sync that failed, which
        # may bring again what a crash or a fault left uncommitted (re-sent under the same
        # transaction id, the homeserver would keep the first all the same).
        settled = False
        while not self._stopping.is_set():
            self._inbox.clear()  # left by a failed sync: its events come again
            try:
                token = await self._one_sync(token, backoff, full_state, send_ahead=settled)
                full_state, settled = False, True
            except (StorageFault, Unsaved) as exc:
                settled = False
                # Nothing of this sync was committed past what the store has: wait until it
                # works again, then sync again from the last token it saved.
                await self._wait_out_storage(exc)
                token = await self._saved_token(token)
            except Retry as exc:
                settled = False
                await self._pause(backoff, str(exc))

    async def _one_sync(
        self, token: str | None, backoff: Backoff, full_state: bool, *, send_ahead: bool
    ) -> str:
        """One sync and its commands; returns the token to sync from next."""
        self._failed_in_sync.clear()
        try:
            resp = await self._sync(token, SYNC_TIMEOUT_MS, full_state=full_state)
        except TRANSPORT_ERRORS as exc:
            self._sync_failed()
            raise Retry(f"sync failed: {exc!r}") from exc
        except StorageFault:
            raise  # the bot's own store, read or written by an event callback
        except Exception as exc:
            # nio's key store shares the disk: a write of its that fails in the middle of the
            # sync is a storage fault like the bot's own, waited out, not a reason to exit.
            fault = self._key_store_failed(exc)
            if fault is None:
                raise
            raise fault from exc
        if isinstance(resp, SyncError):
            self._sync_failed()
            if resp.status_code == "M_UNKNOWN_TOKEN":
                raise FatalMatrixError(
                    f"the homeserver no longer accepts the bot's access token ({resp.message})."
                    f" Delete {self.identity.session_path} and start again to log in anew."
                )
            raise Retry(f"sync error: {resp.status_code} {resp.message}")
        assert isinstance(resp, SyncResponse)
        if self._failed_in_sync:
            # As a command that fails: the sync comes again, until the event is quarantined.
            failed = ", ".join(self._failed_in_sync)
            raise Retry(f"event {failed} failed; it comes again with the next sync")
        backoff.reset()
        # The homeserver answered: healthy from here (before READY, which /healthz must agree
        # with); the storage of what it brought is judged by the store's own fault.
        self.last_sync_ok = time.monotonic()
        self.sync_failing = False
        if full_state:
            # Before the commands that waited for the bot: a mentor's needs the room.
            await self.join_team_room()
            log.info(READY)
            self.synced.set()
        elif self.team_room.changed_in(resp):
            self._mentors_by_power()
        # Committed with the token that moves past them.
        await self._handle_inbox(str(resp.next_batch), send_ahead=send_ahead)
        self._storage_backoff.reset()
        if self.key_store_fault is not None:
            log.warning("nio's key store works again: %s is cleared", self.key_store_fault.reason)
            self.key_store_fault = None
        self.metrics.last_sync.set(time.time())
        await self._after_sync()
        return str(resp.next_batch)

    async def _sync(self, since: str | None, timeout_ms: int, *, full_state: bool = False) -> Any:
        """nio's sync, from where the bot says. nio skips a response whose next_batch is the
        one it received last (its guard against handling one response twice), but the bot
        syncs again from an older token on purpose, after its commands could not be saved, and
        the homeserver (which caches a sync's response) then answers with that very
        next_batch: the commands that waited would be skipped for good. So nio is told it has
        received none: the bot keeps the token, and never hands nio one response twice."""
        self.client.next_batch = ""
        return await self.client.sync(
            timeout=timeout_ms, sync_filter=SYNC_FILTER, since=since, full_state=full_state
        )

    def _key_store_failed(self, error: Exception) -> StorageFault | None:
        """The storage fault an error out of nio's sync stands for (None: not one), logged once
        per fault and counted."""
        store = self.client.store
        if store is None:
            return None
        fault = key_store_fault(error, Path(store.database_path))
        if fault is None:
            return None
        if self.key_store_fault is None or self.key_store_fault.kind != fault.kind:
            log.error("storage fault: %s", fault)
        self.key_store_fault = fault
        self.metrics.storage_errors.labels(fault.kind).inc()
        return fault

    async def _saved_token(self, fallback: str | None) -> str | None:
        saved = await self.store.get_value(SYNC_TOKEN_KEY)
        return saved if saved is not None else fallback

    async def _wait_out_storage(self, exc: StorageFault | Unsaved) -> None:
        """Takes no commands until a write works again (retried with capped backoff); meanwhile
        /healthz says why, and whoever sends a command is told once per room, if sending works.
        To see those commands the bot goes on syncing between tries, saving nothing: they come
        again, from the saved token, once storage works."""
        fault = exc.fault if isinstance(exc, Unsaved) else exc
        if isinstance(exc, Unsaved):
            await self._tell_unsaved(exc.waiting, exc.answered)
        # Listening goes on from the failed sync's end; not after nio's store failed in that
        # sync, though: its to-device messages (room keys) would be acknowledged, unsaved.
        since = None if fault is self.key_store_fault else self.client.next_batch or None
        self._waiting_out = True
        try:
            while not self._stopping.is_set():
                since = await self._listen(since, self._storage_backoff.next_delay())
                try:
                    await self.store.probe()
                except StorageFault as still:
                    fault = still
                    continue
                log.warning("storage works again after: %s; answering what waited", fault.reason)
                self._told_unsaved.clear()
                return
        finally:
            self._waiting_out = False
            self._inbox.clear()

    async def _listen(self, since: str | None, seconds: float) -> str | None:
        """Syncs for `seconds` only to tell the senders of new commands that they wait; returns
        the token to listen from next. Nothing is handled or saved (see `_waiting_out`)."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            resp: object = None
            if since is not None:
                try:
                    resp = await self._sync(since, int(left * 1000))
                except Exception as exc:  # the homeserver, or nio's store on the failing disk
                    log.debug("listening while storage fails: %r", exc)
            if isinstance(resp, SyncResponse):
                since = resp.next_batch
                inbox, self._inbox = self._inbox, []
                await self._tell_unsaved([msg for msg, _ in inbox])
            else:  # no sync to listen to: just wait
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=left)
        return since

    async def _tell_unsaved(self, waiting: list[Incoming], answered: Collection[str] = ()) -> None:
        for msg in waiting:
            if msg.room_id in self._told_unsaved:
                continue
            self._told_unsaved.add(msg.room_id)
            txn = "unsaved-" + hashlib.sha256(msg.event_id.encode()).hexdigest()[:32]
            note = texts.UNSAVED_ANSWERED if msg.event_id in answered else texts.UNSAVED
            content = reply_content(note, msg.event_id)
            await self.outbox.send_now(msg.room_id, content, txn)

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
        except Exception:  # nio's own key store (a full disk, say): not a reason to stop
            log.exception("key maintenance failed, will retry after the next sync")
        self.outbox.wake()  # rooms and devices this sync brought may unblock messages

    async def flush_outbox(self) -> None:
        """Sends what can be sent now (at stop: what is not held back by a rate limit)."""
        await self.outbox.flush()

    # --- events ---------------------------------------------------------------------------

    def _allowed(self, user_id: str) -> bool:
        return user_id.partition(":")[2] in self.config.allowed_servers

    def _guarded(self, callback: EventCallback) -> EventCallback:
        """`callback`, as nio calls it inside a sync. An error escaping it would end the sync
        (and the bot), and the same event would end it again after every restart: instead it
        is logged with the event's id and counted against the event like a command's error
        (the sync comes again), and after QUARANTINE_AFTER the event is skipped for good. A
        storage fault is not the event's: it goes on up, to be waited out."""

        async def guarded(room: MatrixRoom, event: Any) -> None:
            event_id = getattr(event, "event_id", None)
            if event_id in self._quarantined:
                return
            try:
                await callback(room, event)
            except StorageFault:
                raise
            except Exception as exc:
                await self._event_failed(room, event, exc)

        return guarded

    async def _event_failed(self, room: MatrixRoom, event: Any, exc: Exception) -> None:
        event_id = getattr(event, "event_id", None)
        sender = str(getattr(event, "sender", ""))
        log.exception(
            "event %s (%s) failed",
            event_id or "without an id",
            type(event).__name__,
            extra={"room": room.room_id, "sender": sender},
        )
        if not isinstance(event_id, str) or self._waiting_out:
            return  # nothing to count it by, or nothing can be saved now: it was logged
        failed = Incoming(event_id, room.room_id, sender, _summary(event))
        if not await self._count_failure(failed, exc):
            self._failed_in_sync.append(event_id)  # the sync comes again (`_one_sync`)

    async def _count_failure(self, msg: Incoming, exc: Exception) -> bool:
        """One more failure of an event, not the disk's; True once it is quarantined (not
        yet, it is to come again with the next sync)."""
        quarantined = await self.store.record_failure(
            event_id=msg.event_id,
            room_id=msg.room_id,
            sender=msg.sender,
            body=msg.body,
            error=f"{type(exc).__name__}: {exc}",
            at=self.clock.now(),
            quarantine_after=QUARANTINE_AFTER,
        )
        if not quarantined:
            return False
        self._quarantined.add(msg.event_id)
        self.metrics.quarantined.inc()
        log.error(
            "event %s failed %d times: quarantined (onboarding-bot status --quarantine)",
            msg.event_id,
            QUARANTINE_AFTER,
            extra={"room": msg.room_id, "sender": msg.sender},
        )
        return True

    async def _on_invite(self, room: MatrixRoom, event: InviteMemberEvent) -> None:
        if self._waiting_out:
            return
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
        # nio checks the body's type, not the rest of the content: anyone can send anything.
        content = _mapping(event.source.get("content"))
        if _mapping(content.get("m.relates_to")).get("rel_type") == "m.replace":
            return  # an edit of an earlier message is not a new command
        if not isinstance(event.body, str) or not self.dispatcher.is_command(event.body):
            return
        formatted = content.get("formatted_body")
        if await self._admissible(room, event):
            self._take(
                room,
                event,
                event.body,
                arrived,
                formatted=formatted if isinstance(formatted, str) else None,
            )

    async def _on_reaction(self, room: MatrixRoom, event: ReactionEvent) -> None:
        """A reaction shortcut (✅ ⏭️ 📚) on a message that showed a step to its sender runs as
        that command on that step; any other reaction does nothing."""
        arrived = time.monotonic()
        if not isinstance(event.key, str) or not isinstance(event.reacts_to, str):
            return
        name = command_for(event.key) if self.config.bot.reaction_shortcuts else None
        if name is None or event.sender == self.client.user_id or not self._allowed(event.sender):
            return
        step = await self._marked_for(event.reacts_to, "step", event.sender)
        if step is not None and await self._admissible(room, event):
            body = f"{self.config.bot.command_prefix}{name} {step}"
            self._take(room, event, body, arrived, reply_to=event.reacts_to)

    async def _on_poll_response(self, room: MatrixRoom, event: UnknownEvent) -> None:
        """A newcomer's vote in the poll of the knowledge check they were asked runs as
        `!answer N`; votes in other polls, and changed votes after the answer, do nothing."""
        arrived = time.monotonic()
        if event.type not in POLL_RESPONSE or event.sender == self.client.user_id:
            return
        try:
            answer, poll_id = poll_vote(_mapping(event.source.get("content")))
        except ValueError:  # an answer id of digits int() does not read ("²"): no vote
            return
        if answer is None or poll_id is None or not self._allowed(event.sender):
            return
        if await self._marked_for(poll_id, "quiz", event.sender) is None:
            return
        asked = await self.store.open_check(event.sender)
        if asked is None or asked.poll_event_id != poll_id:
            return  # answered already: a changed vote is not a second answer
        if await self._admissible(room, event):
            body = f"{self.config.bot.command_prefix}answer {answer}"
            self._take(room, event, body, arrived, reply_to=poll_id)

    async def _marked_for(self, event_id: str, kind: str, user_id: str) -> str | None:
        """The step number a message of the bot's of this kind shows `user_id`, if it does."""
        marked = await self.store.marked(event_id)
        if marked is None or marked.mark.kind != kind or marked.mark.user_id != user_id:
            return None
        step = self.team.state.roadmap.get(marked.mark.step_id)
        return step.number if step is not None else None

    async def _admissible(self, room: MatrixRoom, event: Event) -> bool:
        """Newer than the bot's join and not too old, and from a secure device if encrypted."""
        joined = await self.store.room_joined_at(room.room_id) or self._first_start_ms
        now_ms = self.clock.now_ms()
        if (
            event.server_timestamp < joined
            or now_ms - event.server_timestamp > self.max_event_age_ms
        ):
            log.debug("ignoring old event %s in %s", event.event_id, room.room_id)
            return False
        return not event.decrypted or await self._from_secure_device(room, event)

    def _take(
        self,
        room: MatrixRoom,
        event: Event,
        body: str,
        arrived: float,
        *,
        formatted: str | None = None,
        reply_to: str | None = None,
    ) -> None:
        """Into this sync's inbox, as a command."""
        is_direct = is_private_with(room, str(self.client.user_id), event.sender)
        incoming = Incoming(
            event.event_id,
            room.room_id,
            event.sender,
            body,
            formatted_body=formatted,
            is_direct=is_direct,
            ts_ms=event.server_timestamp,
            reply_to=reply_to,
        )
        self._inbox.append((incoming, arrived))

    async def _from_secure_device(self, room: MatrixRoom, event: Event) -> bool:
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

    async def _handle_inbox(self, token: str, *, send_ahead: bool) -> None:
        """The commands of one sync, handled together (the dispatcher commits them in groups,
        the last group with the sync token)."""
        inbox, self._inbox = self._inbox, []
        inbox = [(msg, arrived) for msg, arrived in inbox if msg.event_id not in self._quarantined]
        for msg, arrived in inbox:
            self.outbox.arrived[reply_txn_id(msg.event_id)] = arrived
        try:
            results = await self.dispatcher.handle_all(
                [msg for msg, _ in inbox],
                values={SYNC_TOKEN_KEY: token},
                ahead=self.outbox.send_ahead if send_ahead else None,
            )
        except Unsaved as unsaved:
            replies = {reply_txn_id(msg.event_id): msg.event_id for msg in unsaved.waiting}
            unsaved.answered = await self.outbox.delivered_ahead(replies)
            raise
        except StorageFault:
            raise
        except Exception:
            # Not the disk: some event breaks the bot. Find it by going one by one, and after
            # QUARANTINE_AFTER failures skip it for good instead of failing for everyone.
            log.exception("handling a sync's commands failed; trying them one by one")
            results = [await self._handle_one(msg) for msg, _ in inbox]
            await self.store.set_value(SYNC_TOKEN_KEY, token)
        finally:
            self.outbox.ahead_done()
        for (msg, _), items in zip(inbox, results, strict=True):
            if not items:
                self.outbox.arrived.pop(reply_txn_id(msg.event_id), None)
            else:
                log.info(
                    "command handled, reply queued",
                    extra={"room": msg.room_id, "sender": msg.sender},
                )

    async def _handle_one(self, msg: Incoming) -> list[OutboxItem] | None:
        try:
            return (await self.dispatcher.handle_all([msg]))[0]
        except (StorageFault, Unsaved):
            raise
        except Exception as exc:
            log.exception("event %s failed", msg.event_id, extra={"room": msg.room_id})
            if not await self._count_failure(msg, exc):
                raise Retry(
                    f"event {msg.event_id} failed; it comes again with the next sync"
                ) from exc
            return None

    async def _on_undecryptable(self, room: MatrixRoom, event: MegolmEvent) -> None:
        """A message the bot has no key for: ask the sender's devices for the key, and say
        what to do, at most once per sender an hour. It counts against the sender's flood
        gate like a command: fake encrypted events are no way around it."""
        sender = event.sender
        if self._waiting_out or sender == self.client.user_id or not self._allowed(sender):
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


def _mapping(value: object) -> Mapping[str, Any]:
    """A JSON object out of an event's content, or an empty one in place of anything else."""
    return value if isinstance(value, Mapping) else {}


def _summary(event: Any) -> str:
    """What an event said, for the quarantine: a message's text, else its content."""
    body = getattr(event, "body", None)
    if isinstance(body, str):
        return body
    source = getattr(event, "source", None)
    content = source.get("content") if isinstance(source, Mapping) else None
    return json.dumps(content, ensure_ascii=False, default=str)[:500]
