"""From an incoming message to a queued reply: parse, authorise, run the command, commit.

Knows nothing of Matrix transport: the adapter hands it plain `Incoming` messages and sends
the `OutboxItem` it returns. Everything a command changes and its reply are committed together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from bot import progress as rules
from bot.commands.registry import (
    MAX_COMMAND_LENGTH,
    CommandSet,
    Ctx,
    Outcome,
    Role,
    invoke,
    parse,
    unknown_command_reply,
)
from bot.render import Code, Reply, text
from bot.roadmap import Roadmap
from bot.store import OutboxItem, Store


@dataclass(frozen=True)
class Incoming:
    event_id: str
    room_id: str
    sender: str
    body: str


@dataclass(frozen=True)
class People:
    mentors: frozenset[str] = frozenset()
    admins: frozenset[str] = frozenset()

    def role_of(self, user_id: str) -> Role:
        if user_id in self.admins:
            return Role.ADMIN
        if user_id in self.mentors:
            return Role.MENTOR
        return Role.NEWCOMER


def reply_txn_id(event_id: str) -> str:
    """The same command always yields the same transaction id, so a re-send is deduplicated."""
    return "reply-" + hashlib.sha256(event_id.encode()).hexdigest()[:32]


def reply_content(reply: Reply, in_reply_to: str | None) -> dict[str, Any]:
    content: dict[str, Any] = reply.content()
    # Replies name nobody in m.mentions, so they do not notify anyone again.
    content["m.mentions"] = {}
    if in_reply_to:
        content["m.relates_to"] = {"m.in_reply_to": {"event_id": in_reply_to}}
    return content


class Dispatcher:
    def __init__(
        self,
        *,
        roadmap: Roadmap,
        commands: CommandSet,
        store: Store,
        people: People,
        prefix: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.roadmap = roadmap
        self.commands = commands
        self.store = store
        self.people = people
        self.prefix = prefix
        self.clock = clock

    def is_command(self, body: str) -> bool:
        return parse(body[: MAX_COMMAND_LENGTH + 1], self.prefix) is not None

    async def handle(self, msg: Incoming) -> OutboxItem | None:
        """Runs one command; None when the text is no command or was handled before."""
        parsed = parse(msg.body, self.prefix)
        if parsed is None:
            return None
        if await self.store.was_handled(msg.event_id):
            return None
        now = self.clock()
        outcome = await self._run(msg, parsed.name, parsed.args, now)
        return await self.store.commit_command(
            event_id=msg.event_id,
            room_id=msg.room_id,
            sender=msg.sender,
            changes=outcome.changes,
            reply_txn_id=reply_txn_id(msg.event_id),
            reply=reply_content(outcome.reply, msg.event_id),
            at=now,
        )

    async def _run(self, msg: Incoming, name: str, args: str, now: datetime) -> Outcome:
        if len(msg.body) > MAX_COMMAND_LENGTH:
            return Outcome(
                text(
                    f"That message is too long for a command (over {MAX_COMMAND_LENGTH} "
                    "characters); I have ignored it."
                )
            )
        role = self.people.role_of(msg.sender)
        cmd = self.commands.get(name)
        if cmd is None:
            return Outcome(unknown_command_reply(self.commands, name, role, self.prefix))
        if cmd.role > role:
            return Outcome(
                text(
                    f"Sorry, {self.prefix}{cmd.name} is for {cmd.role.name.lower()}s only. Say ",
                    Code(f"{self.prefix}help"),
                    " for the commands you can use.",
                )
            )
        progress = await self.store.load_progress(msg.sender)
        enrolled: tuple[rules.Change, ...] = ()
        if cmd.enrolls:
            change = rules.enroll(self.roadmap, progress)
            if change is not None:
                enrolled = (change,)
                progress = rules.apply(progress, change, now)
        ctx = Ctx(
            roadmap=self.roadmap,
            prefix=self.prefix,
            sender=msg.sender,
            room_id=msg.room_id,
            now=now,
            role=role,
            progress=progress,
            commands=self.commands,
        )
        outcome = await invoke(cmd, ctx, args)
        return replace(outcome, changes=enrolled + outcome.changes)
