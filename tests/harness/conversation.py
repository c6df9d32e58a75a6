"""Checking a conversation with the bot: a command and its reply, which command a reply
answers, every reply until each command is answered, "exactly once", and the bot's database
read as a bystander would."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tests.harness.person import Person, ReceivedMessage

__all__ = [
    "answered",
    "ask",
    "assert_each_answered_once",
    "collect_replies",
    "read_only_db",
    "reply_to",
]


class Reply(Protocol):
    """A message as a test's client saw it: a Person's ReceivedMessage or an ElementMessage."""

    @property
    def body(self) -> str: ...

    @property
    def msgtype(self) -> str: ...

    @property
    def content(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Reply)
R_co = TypeVar("R_co", bound=Reply, covariant=True)


class Talker(Protocol[R_co]):
    """Who asks: a Person (matrix-nio) or an ElementPerson (matrix-js-sdk)."""

    @property
    def user_id(self) -> str: ...

    async def say(self, room_id: str, text: str) -> str: ...

    async def reply(self, room_id: str, timeout: float = ...) -> R_co: ...


def answered(message: Reply) -> str | None:
    """The event id a reply answers (m.relates_to.m.in_reply_to), or None."""
    relates = message.content.get("m.relates_to") or {}
    return (relates.get("m.in_reply_to") or {}).get("event_id")


async def ask(
    person: Talker[R],
    room: str,
    command: str,
    *,
    timeout: float = 30,
    threaded: bool = True,
    skipping: bool = False,
    notice: bool = False,
    check: Callable[[R], object] | None = None,
) -> R:
    """Sends a command and returns the bot's reply: the next message in the room.

    `threaded`: the reply must answer the command (m.in_reply_to); `skipping`: messages that
    answer something else are skipped until it comes (see `reply_to`). `notice`: the reply
    must be an m.notice. `check` asserts more of it (element.trustworthy, say).
    """
    event_id = await person.say(room, command)
    if skipping:
        reply = await reply_to(person, room, event_id, timeout)
    else:
        reply = await person.reply(room, timeout=timeout)
    if notice:
        assert reply.msgtype == "m.notice", f"{command!r} answered by an {reply.msgtype}"
    if check is not None:
        check(reply)
    if threaded:
        assert answered(reply) == event_id, f"{command!r} answered by {reply.body!r}, not a reply"
    return reply


async def reply_to(person: Talker[R], room: str, event_id: str, timeout: float = 30) -> R:
    """The message in `room` that answers `event_id`, skipping others (greetings, notes)."""
    deadline = time.monotonic() + timeout
    skipped: list[str] = []
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            message = await person.reply(room, timeout=remaining)
        except AssertionError:
            break
        if answered(message) == event_id:
            return message
        skipped.append(message.body[:60])
    raise AssertionError(
        f"{person.user_id}: no answer to {event_id} in {room} within {timeout:.0f}s "
        f"(other messages: {skipped})"
    )


async def collect_replies(
    person: Person, room: str, expected: list[str], *, timeout: float, quiet: float = 3.0
) -> list[ReceivedMessage]:
    """Every message in `room` until each of `expected` is answered, then `quiet` seconds more.

    Everything is returned, duplicates included, so the caller can check "exactly once".
    """
    got: list[ReceivedMessage] = []
    missing = set(expected)
    deadline = time.monotonic() + timeout
    while missing:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(
                f"{len(missing)} of {len(expected)} commands never got a reply within "
                f"{timeout}s: {sorted(missing)[:5]}…; replies so far: {len(got)}"
            )
        message = await person.reply(room, timeout=remaining)
        got.append(message)
        missing.discard(answered(message) or "")
    with contextlib.suppress(AssertionError):
        while True:
            got.append(await person.reply(room, timeout=quiet))
    return got


def assert_each_answered_once(replies: list[ReceivedMessage], sent: list[str]) -> None:
    counts = Counter(answered(r) for r in replies)
    twice = {e: n for e, n in counts.items() if n > 1}
    assert not twice, f"commands answered more than once: {twice}"
    assert set(counts) == set(sent), (
        f"unanswered: {set(sent) - set(counts)}; unexpected: {set(counts) - set(sent)}"
    )


@contextlib.contextmanager
def read_only_db(data_dir: Path) -> Iterator[sqlite3.Connection]:
    """The bot's database, opened read-only beside the bot (or after it)."""
    db = sqlite3.connect(f"file:{data_dir / 'bot.db'}?mode=ro", uri=True)
    try:
        yield db
    finally:
        db.close()
