"""Checking a conversation with the bot: which command a reply answers, every reply until each
command is answered, "exactly once", and the bot's database read as a bystander would."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from tests.harness.person import Person, ReceivedMessage

__all__ = ["answered", "ask", "assert_each_answered_once", "collect_replies", "read_only_db"]


def answered(message: ReceivedMessage) -> str | None:
    """The event id a reply answers (m.relates_to.m.in_reply_to), or None."""
    relates = message.content.get("m.relates_to") or {}
    return (relates.get("m.in_reply_to") or {}).get("event_id")


async def ask(person: Person, room: str, command: str) -> ReceivedMessage:
    """Sends a command and returns its one reply, checking it answers that command."""
    event_id = await person.say(room, command)
    reply = await person.reply(room, timeout=30)
    assert answered(reply) == event_id
    return reply


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
