"""From an incoming message to queued replies: parse, authorise, run the command, commit.

Knows nothing of Matrix transport: the adapter hands it plain `Incoming` messages and sends
what the store queued. Everything a command changes and its messages are committed together.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from bot import progress as rules
from bot import texts
from bot.commands.registry import (
    MAX_COMMAND_LENGTH,
    Command,
    CommandSet,
    Ctx,
    Outcome,
    Role,
    invoke,
    parse,
    unknown_command_reply,
)
from bot.faults import StorageFault
from bot.markup import Reply
from bot.metrics import Metrics
from bot.ops import Mark, Send
from bot.roadmap import Roadmap
from bot.store import CommandRecord, OutboxItem, Store
from bot.team import Team

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Incoming:
    event_id: str
    room_id: str
    sender: str
    body: str
    formatted_body: str | None = None
    is_direct: bool = False  # only the sender and the bot are in the room
    ts_ms: int | None = None  # when the homeserver received it (origin_server_ts)
    # What the reply answers, when not this event: a reaction shortcut's or poll response's
    # reply answers the message reacted to (a reaction cannot be replied to).
    reply_to: str | None = None

    @property
    def answers(self) -> str:
        return self.reply_to or self.event_id


class FloodGate:
    """Per sender, `limit` commands per `window_ms`; then one "slow down" and silence.

    Judged by the homeserver's timestamps, so commands queued while the bot was down and
    delivered at once are not mistaken for a flood.
    """

    SWEEP_AT = 1024  # senders remembered before the first sweep for quiet ones

    def __init__(self, limit: int = 10, window_ms: int = 10_000) -> None:
        self.limit, self.window_ms = limit, window_ms
        self._seen: dict[str, deque[int]] = {}
        self._warned: set[str] = set()
        self._sweep_at = self.SWEEP_AT

    def senders(self) -> int:
        """How many senders are remembered (bounded: quiet ones are forgotten)."""
        return len(self._seen)

    def _window(self, sender: str, ts_ms: int) -> deque[int]:
        if len(self._seen) >= self._sweep_at:
            self._sweep(ts_ms)
        seen = self._seen.setdefault(sender, deque())
        while seen and seen[0] <= ts_ms - self.window_ms:
            seen.popleft()
        return seen

    def _sweep(self, ts_ms: int) -> None:
        """Forgets senders with nothing left in their window: to them, `check` would say 'ok'
        anyway. Runs when the count doubles since the last sweep, so it costs O(1) a message."""
        cutoff = ts_ms - self.window_ms
        for sender in [s for s, seen in self._seen.items() if not seen or seen[-1] <= cutoff]:
            del self._seen[sender]
            self._warned.discard(sender)
        self._sweep_at = max(self.SWEEP_AT, 2 * len(self._seen))

    def would_pass(self, sender: str, ts_ms: int) -> bool:
        """Whether `check` would say 'ok', without counting the message."""
        return len(self._window(sender, ts_ms)) < self.limit

    def check(self, sender: str, ts_ms: int) -> str:
        """'ok', 'warn' (the first one over the limit) or 'drop'."""
        seen = self._window(sender, ts_ms)
        if len(seen) < self.limit:
            seen.append(ts_ms)
            self._warned.discard(sender)
            return "ok"
        if sender in self._warned:
            return "drop"
        self._warned.add(sender)
        return "warn"

    def forget(self, sender: str, ts_ms: int) -> None:
        """Takes back a `check` of a message that turned out to be handled before."""
        seen = self._seen.get(sender)
        if seen is not None and ts_ms in seen:
            seen.remove(ts_ms)


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


class Unsaved(Exception):
    """Storage failed while commands were handled: `waiting` are those not committed;
    `answered`, the event ids among them whose replies reached the homeserver all the same
    (sent ahead of the commit: they stand, as the commands run again from the same state)."""

    def __init__(self, fault: StorageFault, waiting: list[Incoming]) -> None:
        super().__init__(str(fault))
        self.fault, self.waiting = fault, waiting
        self.answered: set[str] = set()


@dataclass(frozen=True)
class _Prepared:
    """A command run but not yet committed."""

    msg: Incoming
    sent_ms: int
    label: str  # the command's name for metrics, or "unknown"
    outcome: Outcome
    record: CommandRecord


class Dispatcher:
    def __init__(
        self,
        *,
        team: Team,
        commands: CommandSet,
        store: Store,
        server_name: str,
        load_roadmap: Callable[[], Roadmap],
        prefix: str,
        mentor_commands_in_rooms: bool = False,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: Metrics | None = None,
        flood: FloodGate | None = None,
    ) -> None:
        self.metrics = metrics
        self.flood = flood or FloodGate()
        self.team = team
        self.commands = commands
        self.store = store  # handlers read it only through the `Reader` in their Ctx
        self.server_name = server_name
        self.load_roadmap = load_roadmap
        self.prefix = prefix
        self.mentor_commands_in_rooms = mentor_commands_in_rooms
        self.clock = clock

    def is_command(self, body: str) -> bool:
        return parse(body[: MAX_COMMAND_LENGTH + 1], self.prefix) is not None

    async def handle(self, msg: Incoming) -> list[OutboxItem] | None:
        """Runs one command; None when the text is no command or was handled before."""
        return (await self.handle_all([msg]))[0]

    async def handle_all(
        self,
        msgs: Sequence[Incoming],
        *,
        values: Mapping[str, str] | None = None,
        ahead: Callable[[Sequence[CommandRecord]], Awaitable[None]] | None = None,
    ) -> list[list[OutboxItem] | None]:
        """Runs the commands among `msgs` in order; for each, the messages it queued (the
        reply first) or None (no command, handled before, or dropped by flood control).
        `values` are stored with the last commit (the sync token); `ahead` is shown each group
        just before its commit, and the commit waits for it (the outbox sends the replies).

        Group commit: consecutive commands go to the database in one transaction, as long as
        none depends on another's result. So a sender's second command waits for the first to
        be committed, and mentor and admin commands (which read what others did) are committed
        on their own. Nothing a command does takes effect before its commit, and a replayed
        event (one a restart re-delivers) is found out there: it changes nothing.
        """
        results: list[list[OutboxItem] | None] = [None] * len(msgs)
        batch: list[tuple[int, _Prepared]] = []
        senders: set[str] = set()  # of the commands in `batch`
        at = 0  # the commands from here on are not committed yet
        try:
            for at, msg in enumerate(msgs):
                parsed = parse(msg.body, self.prefix)
                if parsed is None:
                    continue
                cmd = self.commands.get(parsed.name)
                alone = cmd is not None and cmd.role > Role.NEWCOMER
                if batch and (alone or msg.sender in senders):
                    await self._commit(batch, results, ahead)
                    batch, senders = [], set()
                prepared = await self._prepare(msg, cmd, parsed.name, parsed.args)
                if prepared is not None:
                    batch.append((at, prepared))
                    senders.add(msg.sender)
                    if alone:
                        await self._commit(batch, results, ahead)
                        batch, senders = [], set()
            at = len(msgs)
            await self._commit(batch, results, ahead, values)
        except StorageFault as fault:
            # Nothing of theirs was committed: they run again, from the start, once storage
            # works; the flood gate must not count them twice.
            for _, p in batch:
                self.flood.forget(p.msg.sender, p.sent_ms)
            waiting = {p.msg.event_id: p.msg for _, p in batch}
            for msg in msgs[at:]:
                if self.is_command(msg.body):
                    waiting.setdefault(msg.event_id, msg)
            raise Unsaved(fault, list(waiting.values())) from fault
        return results

    async def _prepare(
        self, msg: Incoming, cmd: Command | None, name: str, args: str
    ) -> _Prepared | None:
        """Runs a command on committed state; what it would write. None: dropped (flood)."""
        now = self.clock()
        sent_ms = msg.ts_ms or int(now.timestamp() * 1000)
        if not self.flood.would_pass(msg.sender, sent_ms) and await self.store.was_handled(
            msg.event_id
        ):
            return None  # a replay after a restart is no flood
        verdict = self.flood.check(msg.sender, sent_ms)
        label = cmd.name if cmd is not None else "unknown"
        if verdict == "drop":
            if self.metrics is not None:
                self.metrics.commands.labels(label, "flood").inc()
            return None
        if verdict == "warn":
            slow = texts.slow_down(self.flood.limit, self.flood.window_ms // 1000)
            outcome, finished = Outcome(slow, outcome="flood"), None
        else:
            try:
                outcome, finished = await self._run(msg, cmd, name, args, now)
            except StorageFault:
                raise  # not the command's fault: it stays unhandled, and runs once storage works
            except Exception:
                # A bug, not bad input. Answered and committed like any command, so neither a
                # restart nor the rest of its sync's group runs into it again.
                log.exception(
                    "command %r failed", name, extra={"room": msg.room_id, "sender": msg.sender}
                )
                outcome, finished = Outcome(texts.OOPS, outcome="error"), None
        reply = reply_content(outcome.reply, msg.answers)
        txn = reply_txn_id(msg.event_id)
        # What is private is the answer of a command that ran: a refusal or a usage error says
        # nothing about anyone.
        private = (
            cmd is not None
            and cmd.private
            and outcome.outcome == "ok"
            and not self.mentor_commands_in_rooms
        )
        # A private answer names its reader: the outbox checks again, when it sends, that only
        # they can read the room, and goes to a private room of its own if not.
        # A reply that shows a step is marked: the reactions on it act on that step.
        shows = Mark("step", msg.sender, outcome.shows) if outcome.shows else None
        first: list[tuple[str, Send]] = [
            (
                txn,
                Send(
                    "reply",
                    reply,
                    room_id=msg.room_id,
                    to_user=msg.sender if private else None,
                    mark=shows,
                ),
            )
        ]
        if private and not msg.is_direct:
            # Others read this room: the answer goes to the mentor's direct chat instead.
            note = texts.ANSWERED_IN_DIRECT_CHAT
            first = [
                (txn, Send("reply", reply_content(note, msg.answers), room_id=msg.room_id)),
                (
                    f"{txn}-private",
                    Send("private", reply_content(outcome.reply, None), to_user=msg.sender),
                ),
            ]
        more = [(f"{txn}-{send.key}", send) for send in outcome.messages]
        record = CommandRecord(
            event_id=msg.event_id,
            room_id=msg.room_id,
            sender=msg.sender,
            changes=outcome.changes,
            ops=tuple(outcome.ops),
            messages=(*first, *more),
            at=now,
            finished=finished,
        )
        return _Prepared(msg, sent_ms, label, outcome, record)

    async def _commit(
        self,
        batch: list[tuple[int, _Prepared]],
        results: list[list[OutboxItem] | None],
        ahead: Callable[[Sequence[CommandRecord]], Awaitable[None]] | None,
        values: Mapping[str, str] | None = None,
    ) -> None:
        records = [p.record for _, p in batch]
        if records and ahead is not None:
            await ahead(records)
        committed = await self.store.commit_commands(records, values)
        if records and self.metrics is not None:
            self.metrics.commands_per_commit.observe(len(batch))
        for (i, p), items in zip(batch, committed, strict=True):
            if items is None:  # handled before: a replay, which must not count as a command
                self.flood.forget(p.msg.sender, p.sent_ms)
                continue
            results[i] = items
            if self.metrics is not None:
                self.metrics.commands.labels(p.label, p.outcome.outcome).inc()
            if p.outcome.new_roadmap is not None:
                await self._swap_roadmap(p.outcome.new_roadmap, p.record.at)

    async def _swap_roadmap(self, roadmap: Roadmap, now: datetime) -> None:
        self.team.swap(roadmap=roadmap)
        finished = {}
        for user_id in await self.store.known_users():
            progress = await self.store.load_progress(user_id)
            finished[user_id] = rules.is_finished(roadmap, progress)
        await self.store.set_finished(finished, now)

    async def _run(
        self, msg: Incoming, cmd: Command | None, name: str, args: str, now: datetime
    ) -> tuple[Outcome, bool | None]:
        if len(msg.body) > MAX_COMMAND_LENGTH:
            return Outcome(texts.too_long(MAX_COMMAND_LENGTH), outcome="too_long"), None
        team = self.team.state
        role = team.role_of(msg.sender)
        if cmd is None:
            reply = unknown_command_reply(self.commands, name, role, self.prefix)
            return Outcome(reply, outcome="unknown"), None
        if cmd.role > role:
            refusal = texts.role_refused(cmd.name, cmd.role.name.lower(), self.prefix)
            return Outcome(refusal, outcome="refused"), None
        progress = await self.store.load_progress(msg.sender)
        enrolled: tuple[rules.Change, ...] = ()
        if cmd.enrolls:
            change = rules.enroll(team.roadmap, progress)
            if change is not None:
                enrolled = (change,)
                progress = rules.apply(progress, change, now)
        ctx = Ctx(
            team=team,
            reader=self.store,
            prefix=self.prefix,
            sender=msg.sender,
            room_id=msg.room_id,
            now=now,
            role=role,
            progress=progress,
            commands=self.commands,
            server_name=self.server_name,
            load_roadmap=self.load_roadmap,
            formatted_body=msg.formatted_body,
        )
        outcome = await invoke(cmd, ctx, args)
        finished = None
        if outcome.changes and progress.enrolled:
            after = progress
            for change in outcome.changes:
                after = rules.apply(after, change, now)
            finished = rules.is_finished(team.roadmap, after)
        return replace(outcome, changes=enrolled + outcome.changes), finished
