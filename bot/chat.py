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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from bot.config import MXID, ConfigError, load_config
from bot.dev.client import MatrixUser, read_json
from bot.identity import write_private

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
DEVICE_NAME = "onboarding-bot chat"
PROMPT = "you> "
BOT_PREFIX = "bot> "
SYNC_TIMEOUT_MS = 10_000
BOT_JOIN_TIMEOUT_S = 60.0
# How long a message of the bot's may wait for its room key, which often comes a sync later.
UNDECRYPTABLE_AFTER_S = 15.0


class ChatError(RuntimeError):
    """The chat cannot start or go on; the message is one line a person can act on."""


def quiet_library_logs() -> None:
    """nio and its crypto store log retries and undecryptable events; the chat says it itself."""
    for noisy in ("nio", "peewee", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


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


class ChatUser(MatrixUser):
    """The person at the terminal: whatever fails is a ChatError, one line they can act on."""

    failure = ChatError


class Chat:
    """The terminal's conversation with the bot in their direct chat: the bot's messages shown
    as they arrive, the person's lines sent."""

    def __init__(
        self, user: ChatUser, bot_id: str, room_id: str, terminal: Terminal, *, new_room: bool
    ) -> None:
        self.user = user
        self.bot_id = bot_id
        self.room_id = room_id
        self.terminal = terminal
        self.new_room = new_room  # created (or invited to) in this run: the bot will greet
        # What the bot said while this client was away is news to the person; older history
        # (a first login) is not: the client queues only the former.
        self._shown = asyncio.create_task(self._show_bot(), name="chat-show")

    @classmethod
    async def open(
        cls,
        homeserver: str,
        user_id: str,
        bot_id: str,
        state_dir: Path,
        terminal: Terminal,
        ask_password: Callable[[], str],
    ) -> Chat:
        """Logs in (reusing the saved device), opens the direct chat with the bot and waits
        for the bot to be in it."""
        user = await ChatUser.login(
            homeserver,
            user_id,
            ask_password,
            state_dir,
            device_name=DEVICE_NAME,
            sync_timeout_ms=SYNC_TIMEOUT_MS,
            max_timeouts=2,  # then the chat says the homeserver is gone
            notice=lambda text: terminal.line(f"({text})"),
        )
        try:
            await _verify(user, terminal)
            room = DirectRoom(user, bot_id)
            room_id, new_room = await room.find_or_create()
        except BaseException:
            await user.close()
            raise
        chat = cls(user, bot_id, room_id, terminal, new_room=new_room)
        try:
            await user.wait_for_join(room_id, bot_id, BOT_JOIN_TIMEOUT_S)
        except ChatError:
            await chat.close()
            raise ChatError(
                f"{bot_id} has not joined the direct chat within {BOT_JOIN_TIMEOUT_S:.0f}s; "
                "is the bot running and allowed to talk to your server?"
            ) from None
        except BaseException:
            await chat.close()
            raise
        return chat

    async def _show_bot(self) -> None:
        while True:
            message = await self.user.next_message(self.room_id)
            if message.sender != self.bot_id:
                continue
            message = await self.user.decrypted(message, UNDECRYPTABLE_AFTER_S)
            if message.decryption_failed:
                self.terminal.bot("[an encrypted message this device has no key for]")
            else:
                self.terminal.bot(_strip_reply_fallback(message.content))

    async def say(self, text: str) -> None:
        try:
            await self.user.say(self.room_id, text)
        except ChatError as exc:
            self.terminal.line(f"(not sent: {exc})")

    async def close(self) -> None:
        """Stops syncing; the device is kept (logging out would lose its keys)."""
        self._shown.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._shown
        await self.user.close()


async def _verify(user: ChatUser, terminal: Terminal) -> None:
    """The bot answers only cross-signed devices (as Element does): an account with no
    cross-signing yet gets keys of its own here; one whose keys live in Element needs this
    session verified there."""
    if not await user.cross_sign_with_saved_keys(user.store_dir / "cross-signing.json"):
        terminal.line(
            f"⚠ This terminal session ({user.device_id}) is not verified: your account's "
            "cross-signing keys live in another client. Verify this session there (Element: "
            "Settings → Sessions), or the bot will not take your commands."
        )


class DirectRoom:
    """The person's encrypted DM with the bot, kept across runs in `room.json`."""

    def __init__(self, user: ChatUser, bot_id: str) -> None:
        self.user = user
        self.bot_id = bot_id
        self.path = user.store_dir / "room.json"

    async def find_or_create(self) -> tuple[str, bool]:
        """The room (saved, synced, or an invite from the bot) or a new one; and whether it
        is new to this run."""
        found = self._find()
        if found is not None:
            return found, False
        room_id = await self._accept_invite() or await self.user.create_room(
            invite=[self.bot_id],
            encrypted=True,
            direct=True,
            # History from the invite on: a room the bot counts as private, so nudges and
            # private answers come here rather than to a chat of their own.
            private=True,
        )
        write_private(self.path, json.dumps({"bot": self.bot_id, "room_id": room_id}))
        return room_id, True

    def _usable(self, room_id: str) -> bool:
        room = self.user.client.rooms.get(room_id)
        return (
            room is not None
            and room.encrypted
            and self.bot_id in room.users
            and set(room.users) <= {self.user.user_id, self.bot_id}
        )

    def _find(self) -> str | None:
        saved = read_json(self.path)
        if saved.get("bot") == self.bot_id and self._usable(str(saved.get("room_id"))):
            return str(saved["room_id"])
        for room_id in self.user.client.rooms:
            if self._usable(room_id):
                return str(room_id)
        return None

    async def _accept_invite(self) -> str | None:
        for room_id, room in self.user.client.invited_rooms.items():
            if room.inviter == self.bot_id and room.encrypted:
                await self.user.join(room_id)
                return str(room_id)
        return None


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
    chat = await Chat.open(
        homeserver, user_id, bot_id, state_dir, terminal, _password_prompt(user_id, password)
    )
    try:
        lines = _start_line_reader(asyncio.get_running_loop())
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
