"""The Matrix edge: login with a saved session, the sync loop, invites, and sending the outbox.

It turns room events into `Incoming` messages for the dispatcher and delivers what the store
queued. The saved sync token and the handled-event ids in the store make a restart neither
replay nor miss a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import ClientError
from nio import (
    AsyncClient,
    AsyncClientConfig,
    InviteMemberEvent,
    LocalProtocolError,
    LoginResponse,
    MatrixRoom,
    MegolmEvent,
    RoomCreateResponse,
    RoomMessageText,
    RoomPreset,
    RoomResolveAliasResponse,
    RoomSendResponse,
    SendRetryError,
    SyncError,
    SyncResponse,
    WhoamiResponse,
)

from bot.config import Config
from bot.dispatch import Dispatcher, Incoming, reply_content
from bot.e2e import maintain_keys
from bot.metrics import Metrics
from bot.ops import Send
from bot.render import Code, Message
from bot.store import OutboxItem, Store
from bot.timeutil import parse_duration

log = logging.getLogger(__name__)

SYNC_TOKEN_KEY = "sync_token"
FIRST_START_KEY = "first_start_ms"
SYNC_TIMEOUT_MS = 30_000
# Enough timeline per room that commands sent while the bot was down are all in the first sync.
SYNC_FILTER: dict[str, Any] = {
    "room": {"timeline": {"limit": 200}, "state": {"lazy_load_members": False}},
    "presence": {"not_types": ["*"]},
}
MAX_SEND_ATTEMPTS = 8  # flushes a message may fail in before it is given up on
SEND_TRIES = 3  # tries within one flush
PERMANENT_ERRORS = {"M_FORBIDDEN", "M_NOT_FOUND", "M_TOO_LARGE", "M_BAD_JSON"}
HEALTHY_SYNC_AGE = 90.0  # seconds; a long-poll sync returns at least every 30 s
TRANSPORT_ERRORS = (ClientError, asyncio.TimeoutError, OSError, SendRetryError, LocalProtocolError)


class FatalMatrixError(RuntimeError):
    """The bot cannot go on (bad credentials, revoked token); the message says what to do."""


@dataclass(frozen=True)
class Session:
    homeserver: str
    user_id: str
    device_id: str
    access_token: str


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


class Backoff:
    """Exponential backoff with full jitter, capped."""

    def __init__(self, base: float = 1.0, cap: float = 60.0) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def next_delay(self) -> float:
        self.failures += 1
        return random.uniform(0, min(self.cap, self.base * 2 ** (self.failures - 1)))

    def reset(self) -> None:
        self.failures = 0


class MatrixBot:
    def __init__(
        self, config: Config, store: Store, dispatcher: Dispatcher, metrics: Metrics
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.store = store
        self.dispatcher = dispatcher
        data_dir = config.storage.data_dir
        self.session_path = data_dir / "session.json"
        self.crypto_dir = data_dir / "crypto"
        self.client = AsyncClient(
            config.matrix.homeserver,
            config.matrix.user_id,
            store_path=str(self.crypto_dir),
            config=AsyncClientConfig(
                encryption_enabled=config.matrix.encryption,
                store_sync_tokens=False,  # the bot's own database keeps the token
                max_limit_exceeded=None,  # wait out every 429 as the server asks
                max_timeouts=2,  # then our own backoff takes over
                request_timeout=45,
            ),
        )
        self.max_event_age_ms = int(parse_duration(config.bot.max_event_age).total_seconds() * 1000)
        self.last_sync_ok: float | None = None
        self.sync_failing = False
        self._arrived: dict[str, float] = {}  # reply txn id -> when its command arrived
        self._inbox: list[tuple[Incoming, float]] = []  # this sync's commands, as they arrived
        self._first_start_ms = 0
        self._stopping = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._direct: dict[str, str] = {}
        self.team_room_id: str | None = None
        self.synced = asyncio.Event()
        self.client.add_event_callback(self._on_invite, InviteMemberEvent)
        self.client.add_event_callback(self._on_message, RoomMessageText)
        self.client.add_event_callback(self._on_undecryptable, MegolmEvent)
        self._told_undecryptable: set[tuple[str, str]] = set()

    # --- login ----------------------------------------------------------------------------

    def _load_session(self) -> Session | None:
        try:
            data = json.loads(self.session_path.read_text(encoding="utf-8"))
            session = Session(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring unreadable saved session %s: %s", self.session_path, exc)
            return None
        if (session.homeserver, session.user_id) != (
            self.config.matrix.homeserver,
            self.config.matrix.user_id,
        ):
            log.warning("saved session is for another account or homeserver; logging in again")
            return None
        return session

    def _save_session(self, session: Session) -> None:
        _write_private(self.session_path, json.dumps(session.__dict__, indent=2))

    async def login(self) -> None:
        """Reuses the saved device when there is one: a new device per start breaks E2EE."""
        data_dir = self.config.storage.data_dir
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(data_dir, 0o700)
        self.crypto_dir.mkdir(exist_ok=True, mode=0o700)
        m = self.config.matrix
        session = self._load_session()
        if session is None and m.access_token:
            self.client.access_token = m.access_token
            who = await self.client.whoami()
            if not isinstance(who, WhoamiResponse) or not who.device_id:
                raise FatalMatrixError(
                    f"the configured access_token was refused by {m.homeserver}: {who}"
                )
            session = Session(m.homeserver, who.user_id, who.device_id, m.access_token)
            self._save_session(session)
        elif session is None:
            resp = await self.client.login(m.password, device_name=m.device_name)
            if not isinstance(resp, LoginResponse):
                why = getattr(resp, "message", resp)
                raise FatalMatrixError(f"login as {m.user_id} on {m.homeserver} failed: {why}")
            session = Session(m.homeserver, resp.user_id, resp.device_id, resp.access_token)
            self._save_session(session)
            log.info("logged in as %s, new device %s", resp.user_id, resp.device_id)
        self.client.restore_login(session.user_id, session.device_id, session.access_token)
        log.info("using device %s of %s", session.device_id, session.user_id)
        if self.client.should_upload_keys:
            await self.client.keys_upload()

    # --- the sync loop --------------------------------------------------------------------

    def stop(self) -> None:
        """Takes no more commands. A sync in flight is abandoned; its events come again
        with the saved token at the next start, and those already handled are skipped."""
        self._stopping.set()

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
            first = str(int(time.time() * 1000))
            await self.store.set_value(FIRST_START_KEY, first)
        self._first_start_ms = int(first)
        token = await self.store.get_value(SYNC_TOKEN_KEY)
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
                        f" Delete {self.session_path} and start again to log in anew."
                    )
                await self._pause(backoff, f"sync error: {resp.status_code} {resp.message}")
                continue
            assert isinstance(resp, SyncResponse)
            backoff.reset()
            if full_state:
                log.info("first sync done; ready for commands")
                self.synced.set()
            full_state = False
            await self._handle_inbox()  # committed before the token moves past them
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
        try:
            await maintain_keys(self.client)
        except TRANSPORT_ERRORS as exc:
            log.warning("key maintenance failed, will retry after the next sync: %r", exc)
        await self.flush_outbox()

    # --- events ---------------------------------------------------------------------------

    def _allowed(self, user_id: str) -> bool:
        return user_id.partition(":")[2] in self.config.allowed_servers

    async def _on_invite(self, room: MatrixRoom, event: InviteMemberEvent) -> None:
        if event.state_key != self.client.user_id or event.membership != "invite":
            return
        if not self._allowed(event.sender):
            log.warning(
                "rejecting an invite: the inviter's server is not in bot.allowed_servers",
                extra={"room": room.room_id, "sender": event.sender},
            )
            await self.client.room_leave(room.room_id)
            return
        joined_ms = int(time.time() * 1000)
        resp = await self.client.join(room.room_id)
        if getattr(resp, "room_id", None) != room.room_id:
            log.warning("could not join %s: %s", room.room_id, resp)
            return
        await self.store.set_room_joined(room.room_id, joined_ms)
        log.info("joined on invite", extra={"room": room.room_id, "sender": event.sender})
        if self.config.bot.greeting:
            await self._greet(room.room_id, joined_ms)

    async def _greet(self, room_id: str, joined_ms: int) -> None:
        p = self.config.bot.command_prefix
        reply = (
            Message()
            .line(
                "Hello! I'm your onboarding mentor. I walk you through the team's roadmap one "
                "step at a time and keep track of your progress."
            )
            .line("Say ", Code(f"{p}start"), " to begin, or ", Code(f"{p}help"), " for commands.")
            .reply()
        )
        txn = "greet-" + hashlib.sha256(f"{room_id}/{joined_ms}".encode()).hexdigest()[:32]
        await self.store.commit_job(
            ops=(),
            messages=[(txn, Send("greeting", reply.content(), room_id=room_id))],
            at=datetime.now(UTC),
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
        now_ms = int(time.time() * 1000)
        if (
            event.server_timestamp < joined
            or now_ms - event.server_timestamp > self.max_event_age_ms
        ):
            log.debug("ignoring old event %s in %s", event.event_id, room.room_id)
            return
        is_direct = room.member_count == 2
        if is_direct and self._direct.get(sender) != room.room_id:
            await self.store.set_direct_room(sender, room.room_id)
            self._direct[sender] = room.room_id
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

    async def _handle_inbox(self) -> None:
        """The commands of one sync, handled together (the dispatcher commits them in groups)."""
        inbox, self._inbox = self._inbox, []
        if not inbox:
            return
        results = await self.dispatcher.handle_all([msg for msg, _ in inbox])
        for (msg, arrived), items in zip(inbox, results, strict=True):
            if items:
                self._arrived[items[0].txn_id] = arrived
                log.info(
                    "command handled, reply queued",
                    extra={"room": msg.room_id, "sender": msg.sender},
                )

    async def _on_undecryptable(self, room: MatrixRoom, event: MegolmEvent) -> None:
        """A message the bot has no key for: ask the sender's devices for the key, and say
        once per sender and session what to do."""
        sender = event.sender
        if sender == self.client.user_id or not self._allowed(sender):
            return
        joined = await self.store.room_joined_at(room.room_id) or self._first_start_ms
        if event.server_timestamp < joined:
            return
        log.warning("could not decrypt a message", extra={"room": room.room_id, "sender": sender})
        with contextlib.suppress(*TRANSPORT_ERRORS, LocalProtocolError):
            await self.client.request_room_key(event)
        key = (sender, event.session_id)
        if key in self._told_undecryptable:
            return
        self._told_undecryptable.add(key)
        note = (
            Message()
            .line(
                "🔒 I couldn't decrypt your message: my device never received its key. "
                "I've asked your devices for it. Please send the command again; if it keeps "
                "happening, make sure your client shares keys with unverified devices, or "
                "start a new direct chat with me."
            )
            .reply()
        )
        txn = (
            "undecryptable-"
            + hashlib.sha256(f"{sender}/{event.session_id}".encode()).hexdigest()[:32]
        )
        content = reply_content(note, event.event_id)
        await self.store.commit_job(
            ops=(),
            messages=[(txn, Send("undecryptable", content, room_id=room.room_id))],
            at=datetime.now(UTC),
        )

    # --- sending --------------------------------------------------------------------------

    async def flush_outbox(self) -> None:
        """Sends every queued message, oldest first; what fails stays queued for next time."""
        async with self._flush_lock:
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
                arrived = self._arrived.pop(item.txn_id, None)
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
            initial_state = []
            if self.config.matrix.encryption:
                initial_state.append(
                    {
                        "type": "m.room.encryption",
                        "state_key": "",
                        "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                    }
                )
            try:
                resp = await self.client.room_create(
                    is_direct=True,
                    invite=[user_id],
                    preset=RoomPreset.trusted_private_chat,
                    initial_state=initial_state,
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
        self._direct[user_id] = room_id
        await self.store.outbox_set_room(item_id, user_id, room_id)

    # --- the team room ----------------------------------------------------------------------

    async def join_team_room(self) -> None:
        """Resolves and joins rooms.team, where mentors are found by power level."""
        team = self.config.rooms.team
        if team is None:
            return
        room_id = team
        if team.startswith("#"):
            resp = await self.client.room_resolve_alias(team)
            if not isinstance(resp, RoomResolveAliasResponse):
                log.error("rooms.team: cannot resolve %s: %s", team, resp)
                return
            room_id = resp.room_id
        self.team_room_id = room_id
        if room_id not in self.client.rooms:
            resp = await self.client.join(room_id)
            if getattr(resp, "room_id", None) != room_id:
                log.error("rooms.team: cannot join %s (invite the bot first): %s", team, resp)
                return
            await self.store.set_room_joined(room_id, int(time.time() * 1000))

    def power_level(self, user_id: str) -> int:
        room = self.client.rooms.get(self.team_room_id or "")
        return room.power_levels.get_user_level(user_id) if room else 0

    async def _send(self, item: OutboxItem) -> bool:
        """Sends one message, retrying transient failures with backoff; rate limits (429) are
        waited out inside nio as the server's retry_after_ms says. The same transaction id on
        every attempt lets the homeserver drop a duplicate."""
        backoff = Backoff(base=0.5, cap=4.0)
        for attempt in range(1, SEND_TRIES + 1):
            try:
                resp = await self.client.room_send(
                    item.room_id,
                    "m.room.message",
                    item.content,
                    tx_id=item.txn_id,
                    ignore_unverified_devices=True,
                )
            except TRANSPORT_ERRORS as exc:
                why = repr(exc)
            else:
                if isinstance(resp, RoomSendResponse):
                    return True
                why = f"{getattr(resp, 'status_code', '')} {getattr(resp, 'message', resp)}"
                if getattr(resp, "status_code", None) in PERMANENT_ERRORS:
                    log.warning("sending failed for good: %s", why, extra={"room": item.room_id})
                    return False
            log.warning(
                "sending failed (attempt %d of %d): %s",
                attempt,
                SEND_TRIES,
                why,
                extra={"room": item.room_id},
            )
            if attempt < SEND_TRIES and not self._stopping.is_set():
                await asyncio.sleep(backoff.next_delay())
        return False

    async def close(self) -> None:
        await self.client.close()
