"""`onboarding-bot chat`: talk to the bot from a terminal, as any Matrix user, in an encrypted DM.

Each user gets a folder `<data_dir>/chat/<localpart>/` with its session, crypto keys and the
direct room's id, so later runs reuse the same device and room (a new device per run would
leave the bot's earlier messages unreadable).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    EncryptionError,
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

from bot.config import MXID, ConfigError, load_config
from bot.cross_signing import MASTER, CrossSigningKeys, user_keys
from bot.e2e import maintain_keys
from bot.identity import FatalMatrixError, cross_sign, query_keys, write_private
from bot.outbox import TRANSPORT_ERRORS, private_room_state

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
DEVICE_NAME = "onboarding-bot chat"
PROMPT = "you> "
BOT_PREFIX = "bot> "
SYNC_TIMEOUT_MS = 10_000
BOT_JOIN_TIMEOUT_S = 60.0
# How long to wait for the bot's device keys, and for a room key that arrives late.
DEVICE_WAIT_S = 15.0
UNDECRYPTABLE_AFTER_S = 15.0


class ChatError(RuntimeError):
    """The chat cannot start or go on; the message is one line a person can act on."""


@dataclass(frozen=True)
class ChatSession:
    homeserver: str
    user_id: str
    device_id: str
    access_token: str


def quiet_library_logs() -> None:
    """nio and its crypto store log retries and undecryptable events; the chat says it itself."""
    for noisy in ("nio", "peewee", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def render(body: str) -> str:
    """The bot's plain body, prefixed, continuation lines indented under the first."""
    lines = body.splitlines() or [""]
    indent = " " * len(BOT_PREFIX)
    return "\n".join([BOT_PREFIX + lines[0], *(indent + line for line in lines[1:])])


def _strip_reply_fallback(content: dict[str, Any]) -> str:
    body = str(content.get("body", ""))
    if "m.in_reply_to" in content.get("m.relates_to", {}) and body.startswith("> "):
        # Clients that quote the message replied to put it first, then a blank line.
        _, sep, rest = body.partition("\n\n")
        return rest if sep else body
    return body


class Terminal:
    """Writes bot messages and the prompt so they never run into each other."""

    def __init__(self, out: TextIO, *, echo: bool) -> None:
        self.out = out
        self.tty = out.isatty()
        # Input from a pipe is not echoed by a terminal: write it, so the transcript reads well.
        self.echo = echo
        self.prompt_shown = False
        self.spoke = asyncio.Event()
        # Set when the reader of our output went away (`... | head`): the chat ends quietly.
        self.gone = asyncio.Event()
        # What the bot says before the banner (its greeting, on joining) waits for the banner.
        self._held: list[str] | None = []

    def _write(self, text: str) -> None:
        if self.gone.is_set():
            return
        try:
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError:
            self.gone.set()
            with contextlib.suppress(OSError, ValueError):
                # Or Python complains once more when it flushes stdout at exit.
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())

    def banner(self, text: str) -> None:
        self.line(text)
        held, self._held = self._held or [], None
        for body in held:
            self.bot(body)

    def line(self, text: str) -> None:
        self._clear_prompt()
        self._write(text + "\n")

    def prompt(self) -> None:
        if not self.prompt_shown:
            self._write(PROMPT)
            self.prompt_shown = True

    def bot(self, body: str) -> None:
        if self._held is not None:
            self._held.append(body)
            return
        again = self.prompt_shown
        self.line(render(body))
        self.spoke.set()
        if again:
            self.prompt()

    def typed(self, line: str | None) -> None:
        """The person pressed Enter (or Ctrl-D: None): the prompt's line is finished."""
        if self.prompt_shown and (line is None or self.echo):
            self._write(("" if line is None else line) + "\n")
        self.prompt_shown = False

    async def settle(self, first: float = 3.0, quiet: float = 0.3) -> None:
        """Waits a moment for the answer to what was just sent, so the prompt comes after it."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a Ctrl-C cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(first):
                await self.spoke.wait()
            while True:
                self.spoke.clear()
                async with asyncio.timeout(quiet):
                    await self.spoke.wait()

    def _clear_prompt(self) -> None:
        if self.prompt_shown:
            self._write("\r\033[K" if self.tty else "\n")
            self.prompt_shown = False


def _start_line_reader(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Lines from stdin (a terminal or a pipe) into a queue; None at end of input.

    A daemon thread with os.read: it holds no Python-level lock, so it never blocks the
    interpreter from exiting while it waits for input.
    """
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def put(item: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def read() -> None:
        pending = b""
        try:
            while True:
                chunk = os.read(0, 4096)
                if not chunk:
                    break
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    put(line.decode("utf-8", errors="replace").rstrip("\r"))
        except OSError:
            pass
        if pending:
            put(pending.decode("utf-8", errors="replace"))
        put(None)

    threading.Thread(target=read, name="stdin-reader", daemon=True).start()
    return queue


class ChatClient:
    """One user's E2E client: login, the direct room with the bot, the sync loop, sending."""

    def __init__(
        self,
        homeserver: str,
        user_id: str,
        bot_id: str,
        state_dir: Path,
        terminal: Terminal,
    ) -> None:
        self.homeserver = homeserver
        self.user_id = user_id
        self.bot_id = bot_id
        self.state_dir = state_dir
        self.terminal = terminal
        self.session_path = state_dir / "session.json"
        self.room_path = state_dir / "room.json"
        self.client = AsyncClient(
            homeserver,
            user_id,
            store_path=str(state_dir),
            config=AsyncClientConfig(
                encryption_enabled=True,
                store_sync_tokens=True,
                max_timeouts=2,  # then the chat says the homeserver is gone
                max_timeout_retry_wait_time=2.0,
                request_timeout=SYNC_TIMEOUT_MS / 1000 + 15,
            ),
        )
        self.room_id: str | None = None
        self.new_room = False  # created (or invited to) in this run: the bot will greet
        self._e2e_lock = asyncio.Lock()
        self._synced = asyncio.Condition()
        self._undecrypted: dict[str, tuple[MegolmEvent, float]] = {}
        self._sync_task: asyncio.Task[None] | None = None
        self._connection_lost = False

    # --- login ----------------------------------------------------------------------------

    async def login(self, ask_password: Callable[[], str]) -> None:
        """Reuses the saved device; logs in with the password only when there is none."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self._check_reachable()
        session = self._saved_session()
        if session is not None:
            # restore_login also opens this device's crypto store.
            self.client.restore_login(session.user_id, session.device_id, session.access_token)
            who = await self._call(self.client.whoami())
            if not isinstance(who, WhoamiResponse):
                session = None  # the token was revoked (or the device logged out elsewhere)
        if session is None:
            password = ask_password()
            resp = await self._call(self.client.login(password, device_name=DEVICE_NAME))
            if not isinstance(resp, LoginResponse):
                why = getattr(resp, "message", resp)
                raise ChatError(f"login as {self.user_id} on {self.homeserver} failed: {why}")
            if self.client.olm is None:
                self.client.load_store()
            session = ChatSession(self.homeserver, resp.user_id, resp.device_id, resp.access_token)
            write_private(self.session_path, json.dumps(session.__dict__, indent=2))
        if self.client.should_upload_keys:
            await self._call(self.client.keys_upload())
        try:
            await self._call(self._cross_sign())
        except FatalMatrixError as exc:
            raise ChatError(str(exc)) from None

    async def _cross_sign(self) -> None:
        """The bot answers only cross-signed devices (as Element does): an account with no
        cross-signing yet gets keys of its own here; one whose keys live in Element needs
        this session verified there."""
        keys_path = self.state_dir / "cross-signing.json"
        saved = _read_json(keys_path)
        keys = CrossSigningKeys.from_secrets(saved) if saved else None
        query = await query_keys(self.client, [self.user_id])
        master = user_keys(query, self.user_id).master
        if master is None or (keys is not None and keys.public(MASTER) == master):
            keys = keys or CrossSigningKeys.generate()
            write_private(keys_path, json.dumps(keys.secrets()))
            await cross_sign(self.client, keys, None)
            return
        self.terminal.line(
            f"⚠ This terminal session ({self.client.device_id}) is not verified: your account's "
            "cross-signing keys live in another client. Verify this session there (Element: "
            "Settings → Sessions), or the bot will not take your commands."
        )

    def _saved_session(self) -> ChatSession | None:
        data = _read_json(self.session_path)
        try:
            session = ChatSession(**data)
        except TypeError:
            return None
        if (session.homeserver, session.user_id) != (self.homeserver, self.user_id):
            return None
        return session

    async def _check_reachable(self) -> None:
        probe = f"{self.homeserver}/_matrix/client/versions"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
                http.get(probe) as resp,
            ):
                if resp.status != 200:
                    raise ChatError(f"{probe} answered HTTP {resp.status}: is this a homeserver?")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ChatError(f"cannot reach the homeserver at {self.homeserver}: {exc}") from None

    async def _call(self, request: Any) -> Any:
        try:
            return await request
        except TRANSPORT_ERRORS as exc:
            raise ChatError(f"lost the connection to {self.homeserver}: {exc!r}") from None

    # --- the direct room ------------------------------------------------------------------

    async def open_direct_room(self) -> None:
        """Finds the encrypted DM with the bot (saved, synced, or an invite) or creates one."""
        resumed = bool(self.client.loaded_sync_token)
        first = await self._call(self.client.sync(timeout=0, full_state=True))
        if not isinstance(first, SyncResponse):
            raise ChatError(f"the first sync with {self.homeserver} failed: {first}")
        await self._call(self._maintain_e2e())
        self.room_id = self._find_room()
        if self.room_id is None:
            self.room_id = await self._accept_invite_from_bot() or await self._create_room()
            self.new_room = True
            write_private(self.room_path, json.dumps({"bot": self.bot_id, "room_id": self.room_id}))
        # What the bot said while this client was away is new to the person; older history
        # (a first login) is not.
        if resumed:
            self._show(first)
        self._sync_task = asyncio.create_task(self._sync_forever(), name="chat-sync")
        await self._wait_for(
            self._bot_joined,
            BOT_JOIN_TIMEOUT_S,
            f"{self.bot_id} has not joined the direct chat within {BOT_JOIN_TIMEOUT_S:.0f}s; "
            "is the bot running and allowed to talk to your server?",
        )

    def _usable(self, room_id: str) -> bool:
        room = self.client.rooms.get(room_id)
        return (
            room is not None
            and room.encrypted
            and self.bot_id in room.users
            and set(room.users) <= {self.user_id, self.bot_id}
        )

    def _find_room(self) -> str | None:
        saved = _read_json(self.room_path)
        if saved.get("bot") == self.bot_id and self._usable(str(saved.get("room_id"))):
            return str(saved["room_id"])
        for room_id in self.client.rooms:
            if self._usable(room_id):
                return str(room_id)
        return None

    async def _accept_invite_from_bot(self) -> str | None:
        for room_id, room in self.client.invited_rooms.items():
            if room.inviter == self.bot_id and room.encrypted:
                resp = await self._call(self.client.join(room_id))
                if isinstance(resp, JoinResponse):
                    await self._sync_once()
                    return str(room_id)
        return None

    async def _create_room(self) -> str:
        resp = await self._call(
            self.client.room_create(
                is_direct=True,
                invite=[self.bot_id],
                preset=RoomPreset.trusted_private_chat,
                # History from the invite on: a room the bot counts as private, so nudges and
                # private answers come here rather than to a chat of their own.
                initial_state=private_room_state(encrypted=True),
            )
        )
        if not isinstance(resp, RoomCreateResponse):
            why = getattr(resp, "message", resp)
            raise ChatError(f"could not create a direct chat with {self.bot_id}: {why}")
        room_id = str(resp.room_id)
        while room_id not in self.client.rooms:
            await self._sync_once()
        return room_id

    def _bot_joined(self) -> bool:
        room = self.client.rooms.get(self.room_id or "")
        return (
            room is not None and self.bot_id in room.users and self.bot_id not in room.invited_users
        )

    # --- syncing --------------------------------------------------------------------------

    async def _sync_once(self) -> None:
        resp = await self._call(self.client.sync(timeout=0))
        if isinstance(resp, SyncResponse):
            await self._call(self._maintain_e2e())

    async def _sync_forever(self) -> None:
        while True:
            try:
                resp = await self.client.sync(timeout=SYNC_TIMEOUT_MS)
                if not isinstance(resp, SyncResponse):
                    raise ChatError(f"sync failed: {getattr(resp, 'message', resp)}")
                self._show(resp)
                await self._maintain_e2e()
                self._retry_undecrypted()
                if self._connection_lost:
                    self._connection_lost = False
                    self.terminal.line("(connected again)")
            except (*TRANSPORT_ERRORS, ChatError) as exc:
                if not self._connection_lost:
                    self._connection_lost = True
                    self.terminal.line(f"(connection to the homeserver lost, retrying: {exc})")
                await asyncio.sleep(2)
            async with self._synced:
                self._synced.notify_all()

    async def _maintain_e2e(self) -> None:
        """The key housekeeping nio's sync_forever does between syncs."""
        c = self.client
        async with self._e2e_lock:
            await maintain_keys(c)

    async def _wait_for(self, predicate: Callable[[], bool], seconds: float, why: str) -> None:
        """Re-checks `predicate` after every sync until it holds; ChatError(why) after `seconds`."""
        try:
            async with asyncio.timeout(seconds), self._synced:
                await self._synced.wait_for(predicate)
        except TimeoutError:
            raise ChatError(why) from None

    # --- showing what the bot says --------------------------------------------------------

    def _show(self, resp: SyncResponse) -> None:
        info = resp.rooms.join.get(self.room_id or "")
        if info is None:
            return
        for event in info.timeline.events:
            if getattr(event, "sender", None) != self.bot_id:
                continue
            if isinstance(event, RoomMessage):
                self.terminal.bot(_strip_reply_fallback(event.source.get("content", {})))
            elif isinstance(event, MegolmEvent):
                # The room key often arrives a sync after the message.
                self._undecrypted[event.event_id] = (event, time.monotonic())

    def _retry_undecrypted(self) -> None:
        for event_id, (event, since) in list(self._undecrypted.items()):
            try:
                decrypted = self.client.decrypt_event(event)
            except EncryptionError:
                decrypted = None
            if isinstance(decrypted, RoomMessage):
                del self._undecrypted[event_id]
                self.terminal.bot(_strip_reply_fallback(decrypted.source.get("content", {})))
            elif time.monotonic() - since > UNDECRYPTABLE_AFTER_S:
                del self._undecrypted[event_id]
                self.terminal.bot("[an encrypted message this device has no key for]")

    # --- sending --------------------------------------------------------------------------

    async def say(self, text: str) -> None:
        assert self.room_id is not None
        await self._know_bot_devices()
        try:
            async with self._e2e_lock:
                resp = await self.client.room_send(
                    self.room_id,
                    "m.room.message",
                    {"msgtype": "m.text", "body": text},
                    ignore_unverified_devices=True,
                )
        except TRANSPORT_ERRORS as exc:
            self.terminal.line(f"(not sent: {exc!r})")
            return
        if not isinstance(resp, RoomSendResponse):
            self.terminal.line(f"(not sent: {getattr(resp, 'message', resp)})")

    async def _know_bot_devices(self) -> None:
        """nio shares the room key only with devices it knows; the bot's may be brand new."""
        c = self.client
        deadline = time.monotonic() + DEVICE_WAIT_S
        while next(c.device_store.active_user_devices(self.bot_id), None) is None:
            if time.monotonic() > deadline:
                self.terminal.line(f"({self.bot_id} has no encryption keys yet; sending anyway)")
                return
            assert c.olm is not None
            c.olm.users_for_key_query.add(self.bot_id)
            async with self._e2e_lock:
                with contextlib.suppress(*TRANSPORT_ERRORS):
                    await c.keys_query()
            await asyncio.sleep(0.25)

    async def close(self) -> None:
        """Stops syncing; the device is kept (logging out would lose its keys)."""
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
        await self.client.close()


def _password_prompt(user_id: str, password: str | None) -> Callable[[], str]:
    def ask() -> str:
        if password:
            return password
        if not sys.stdin.isatty():
            raise ChatError(
                f"no password for {user_id}: pass --password or set ONBOARDING_BOT_CHAT_PASSWORD"
            )
        return getpass.getpass(f"Password for {user_id}: ")

    return ask


async def _next_line(lines: asyncio.Queue[str | None], gone: asyncio.Event) -> str | None:
    """The next line typed, or None at end of input or when nobody reads our output."""
    get = asyncio.ensure_future(lines.get())
    stop = asyncio.ensure_future(gone.wait())
    done, pending = await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return get.result() if get in done else None


async def run_chat(
    homeserver: str,
    bot_id: str,
    user_id: str,
    password: str | None,
    state_dir: Path,
    *,
    prefix: str = "!",
    out: TextIO | None = None,
) -> None:
    """Chats until end of input. Raises ChatError when it cannot log in or reach the server."""
    terminal = Terminal(out or sys.stdout, echo=not sys.stdin.isatty())
    chat = ChatClient(homeserver, user_id, bot_id, state_dir, terminal)
    try:
        await chat.login(_password_prompt(user_id, password))
        lines = _start_line_reader(asyncio.get_running_loop())
        await chat.open_direct_room()
        terminal.banner(
            f"Chatting with {bot_id} as {user_id}. Type {prefix}help. Ctrl-D or Ctrl-C to quit."
        )
        if chat.new_room:
            await terminal.settle()  # the bot greets a room it has just joined
        while True:
            terminal.prompt()
            line = await _next_line(lines, terminal.gone)
            terminal.typed(line)
            if line is None:
                break
            text = line.strip()
            if text:
                terminal.spoke.clear()
                await chat.say(text)
                if text.startswith(prefix):
                    await terminal.settle()
    finally:
        await chat.close()


def state_dir_for(data_dir: Path, user_id: str) -> Path:
    return data_dir / "chat" / user_id[1:].split(":", 1)[0]


def main(config_path: Path, user_id: str, password: str | None) -> int:
    """`onboarding-bot chat`: exit 0 on Ctrl-D or Ctrl-C, 1 when the chat fails, 2 on bad config."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if not MXID.match(user_id):
        print(f"--as {user_id!r} is not a Matrix user id like @name:example.org", file=sys.stderr)
        return EXIT_CONFIG
    quiet_library_logs()
    try:
        asyncio.run(
            run_chat(
                config.matrix.homeserver,
                config.matrix.user_id,
                user_id,
                password,
                state_dir_for(config.storage.data_dir, user_id),
                prefix=config.bot.command_prefix,
            )
        )
    except KeyboardInterrupt:
        print(file=sys.stdout, flush=True)
    except ChatError as exc:
        print(f"chat: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
