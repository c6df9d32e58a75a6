"""Reply latency over a real homeserver: the bot against a bare matrix-nio echo bot.

One Synapse on loopback; the real bot as its own process; bench/echo_bot.py as another; people
as the dev kit's Matrix clients (matrix-nio, E2E-capable, cross-signed as Element's users are),
each with a direct chat of their own with each bot, unencrypted or encrypted. Latency is command
sent -> reply received (the person's sync delivers it). The echo bot is the floor any
matrix-nio bot on this machine pays for the same traffic: it sends a copy of what the bot sends
for the command (the bot's answer, taken before the rounds, and the three shortcut reactions on
it, one after the other), since that traffic costs the homeserver and the client what it costs:
a step's text against a word echoed back is about 4 ms more on Synapse alone (unencrypted, it is
indexed for search). The ratios are then the bot's own work. Three patterns, each in both kinds
of room, the two bots measured in the same run so that drift hits both alike, and a fourth of
the bot alone:

- back to back: one person sends the next command as soon as the reply is in, to each bot in
  turn (ABBA order);
- paced: one person a room kind sends one command a second to each bot, as a newcomer types;
  both room kinds at once, the bots taking turns a quarter second apart (the bot's unencrypted
  room, the echo bot's, the bot's encrypted room, the echo bot's): every command finds its bot
  idle in its long-poll sync, half a second after its last command, and the other bot's traffic
  before it done;
- 20 paced: 20 people each send `!progress` every 3 seconds, staggered evenly, each to the two
  bots in turn and neighbours out of step, so that in any second about 7 commands reach the
  homeserver, half for each bot, interleaved (a stall of the machine hits both alike);
  `!progress` renders the most and shows no step (no reactions follow). Why not one a second
  each: this Synapse (SQLite, one database connection) carries about 12 of these round trips
  a second on this machine when it is quiet, whichever bot answers, and fewer when it is not
  (`--crowd-period 1` shows it: both bots' medians near a second, the homeserver's queue, not
  theirs); at 10 a second a slow hour already queued both;
- paced reaction (the bot only: the echo bot does not answer reactions): each room kind's person
  sends `!next` to the bot once a second and, half a second later, reacts ✅ on its reply; the
  bot answers that as `!done <the step shown>`, in reply to the message reacted to. Each
  reaction is timed until that reply arrives and set against the command's round trip (issue
  13: a reaction is answered as fast as the command it stands for). The two room kinds go at
  once, a quarter second apart; each ✅ walks a step, 27 of the roadmap's 52.

Run: .venv/bin/python -m bench.latency [--n 25] [--paced-rounds 60] [--reaction-rounds 20]
[--crowd 20] [--quick]
No assertions: machines are shared and noisy. Targets (issues 11, 13): ratio of medians <= 1.05
and ratio of p95s <= 1.10 in every pattern (bot against echo bot; reaction against command).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench._common import (
    READY_POLL_S,
    REPO,
    Summary,
    bench_bot,
    percentile,
    ratio_interval,
    run_alone,
    synapse_at,
)
from bench.echo_bot import ECHO_READY
from bot.cross_signing import CrossSigningKeys
from bot.dev.client import MatrixUser, MatrixUserError, ReceivedMessage
from bot.dev.process import spawn, stop_process, wait_for_log
from bot.dev.synapse import DevSynapse
from bot.shortcuts import SHORTCUTS

TARGET_MEDIAN = 1.05
TARGET_P95 = 1.10
COMMAND = "!next"
# The crowd's command: a read-only one that renders the most (section bars and a forecast) and
# shows no step, so no shortcut reactions follow: a round trip is two events for the homeserver
# to store, not five as with `!next` and its three reactions, and the crowd stays well inside
# what this Synapse carries (its queue is not what the row is for).
CROWD_COMMAND = "!progress"
REACTION = "✅"  # the shortcut for `!done <the step the message shows>`
REPLY_TIMEOUT_S = 20.0
PACED_TIMEOUT_S = 10.0  # a lost reply must not stall a paced stream for long
PACED_WARMUP = 2  # a paced stream's first commands: not counted (room keys, caches)
KINDS = ("unencrypted", "encrypted")


Reply = tuple[float, ReceivedMessage]  # seconds from send to reply, and the reply


async def exchange(
    user: MatrixUser,
    room_id: str,
    content: dict[str, Any],
    expect: str,
    within: float = REPLY_TIMEOUT_S,
    *,
    event_type: str = "m.room.message",
    answers: str | None = None,
) -> Reply:
    """Sends an event; seconds until the reply from `expect` to it arrives, and that reply. The
    reply answers the event sent, or `answers` (a reaction's reply answers the message reacted
    to); other messages, such as a late reply to an earlier command, are passed over."""
    began = time.perf_counter()
    # The room was opened with open_direct_chat, which made sure of the members' devices.
    event_id = await user.send(room_id, content, event_type, share_keys=False)
    answered = answers or event_id
    deadline = began + within
    while True:
        message = await user.reply(room_id, max(0.0, deadline - time.perf_counter()))
        to = message.content.get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id")
        if message.sender == expect and to == answered:
            return message.arrived - began, message


async def round_trip(
    user: MatrixUser, room_id: str, text: str, expect: str, within: float = REPLY_TIMEOUT_S
) -> float:
    """Sends the command `text`; seconds until the reply from `expect` to it arrives."""
    content = {"msgtype": "m.text", "body": text}
    return (await exchange(user, room_id, content, expect, within))[0]


@dataclass(frozen=True)
class Chat:
    """A person's direct chat with one of the two bots."""

    user: MatrixUser
    room_id: str
    kind: str  # "unencrypted" or "encrypted"
    bot: str  # "bot" or "echo"
    bot_id: str


@dataclass
class Samples:
    """Milliseconds, and round trips that failed (no reply in time) or were skipped (their
    time passed while the person waited for a late reply), per (room kind, bot), or per (room
    kind, role) in the reaction pattern ("command" or "reaction", both to the bot)."""

    ms: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    failed: Counter[tuple[str, str]] = field(default_factory=Counter)
    skipped: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, chat: Chat, ms: float, role: str | None = None) -> None:
        self.ms.setdefault((chat.kind, role or chat.bot), []).append(ms)

    def fail(self, chat: Chat, role: str | None = None) -> None:
        self.failed[(chat.kind, role or chat.bot)] += 1

    def skip(self, chat: Chat, role: str | None = None) -> None:
        self.skipped[(chat.kind, role or chat.bot)] += 1

    def update(self, other: Samples) -> None:
        self.ms.update(other.ms)
        self.failed.update(other.failed)
        self.skipped.update(other.skipped)

    def of(self, kind: str, bot: str) -> Summary:
        return Summary.of(self.ms.get((kind, bot), []))

    def pair(self, kind: str, a: str, b: str) -> tuple[list[float], list[float]]:
        """The samples of `a` and of `b` (bots, or roles) in one room kind."""
        return self.ms.get((kind, a), []), self.ms.get((kind, b), [])

    def lost(self, kind: str, roles: Sequence[str] = ("bot", "echo")) -> str:
        """'failed / skipped' for both bots (or both roles)."""
        keys = [(kind, role) for role in roles]
        return f"{sum(self.failed[k] for k in keys)} / {sum(self.skipped[k] for k in keys)}"


async def back_to_back(chats: Sequence[Chat], n: int, warmup: int) -> Samples:
    """One person, each bot in turn (ABBA), each command as soon as the last reply is in; the
    first `warmup` rounds are not counted."""
    out = Samples()
    for i in range(warmup + n):
        for chat in chats if i % 2 == 0 else reversed(chats):
            try:
                seconds = await round_trip(chat.user, chat.room_id, COMMAND, chat.bot_id)
            except MatrixUserError:
                out.fail(chat)
                continue
            if i >= warmup:
                out.add(chat, seconds * 1000)
    return out


async def paced(
    streams: Sequence[tuple[Chat, float]],
    period: float,
    rounds: int,
    warmup: int,
    *,
    alternate: bool = False,
    command: str = COMMAND,
) -> Samples:
    """Every (chat, offset) sends `command` every `period` seconds, `offset` into the period,
    all on one timetable: a command goes out on time whether or not the others are answered.
    A person waits for their reply before the next command; one that comes more than a period
    late costs that person the commands whose time has passed (counted as skipped), so a
    homeserver that falls behind cannot stretch the run. With `alternate`, the streams come in
    pairs, one person's chat with one bot and then with the other, and each period one of a
    pair sends, the two taking turns, neighbouring pairs out of step: half the people talk to
    each bot in any period, interleaved, so a stall of the machine hits both alike; else every
    stream sends every period. A stream's first `warmup` commands are not counted."""
    out = Samples()
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2

    async def stream(n: int, chat: Chat, offset: float) -> None:
        sent = 0
        for k in range(rounds):
            if alternate and (n // 2 + k) % 2 != n % 2:
                continue
            at = start + k * period + offset
            if loop.time() > at + period:
                out.skip(chat)
                continue
            await asyncio.sleep(max(0.0, at - loop.time()))
            sent += 1
            try:
                seconds = await round_trip(
                    chat.user, chat.room_id, command, chat.bot_id, PACED_TIMEOUT_S
                )
            except MatrixUserError:
                out.fail(chat)
                continue
            if sent > warmup:
                out.add(chat, seconds * 1000)

    await asyncio.gather(*(stream(n, chat, offset) for n, (chat, offset) in enumerate(streams)))
    return out


async def paced_reaction(
    streams: Sequence[tuple[Chat, float]], period: float, rounds: int, warmup: int
) -> Samples:
    """Every (chat, offset), a chat with the bot, sends `!next` every `period` seconds, `offset`
    into the period (its reply timed as "command"), and half a period later reacts ✅ on that
    reply: the bot runs `!done <the step it showed>` and answers the message reacted to (timed
    as "reaction"). All on one timetable, as in `paced`: a person waits for each reply; a
    command whose time passed more than a period ago, or a reaction whose time passed more than
    half a period ago, is skipped (as is the reaction of a command that got no reply). Each
    person is first put on the roadmap's first step (`!start`, `!goto 1.1`), untimed; a
    stream's first `warmup` commands and reactions are not counted."""
    out = Samples()
    loop = asyncio.get_running_loop()
    for chat, _ in streams:
        for setup in ("!start", "!goto 1.1"):
            await round_trip(chat.user, chat.room_id, setup, chat.bot_id)
    start = loop.time() + 0.2

    async def stream(chat: Chat, offset: float) -> None:
        sent: Counter[str] = Counter()

        async def timed(
            role: str, at: float, late: float, send: Callable[[], Awaitable[Reply]]
        ) -> ReceivedMessage | None:
            """At `at` (unless more than `late` past it), `send()`; its reply, timed as `role`."""
            if loop.time() > at + late:
                out.skip(chat, role)
                return None
            await asyncio.sleep(max(0.0, at - loop.time()))
            sent[role] += 1
            try:
                seconds, message = await send()
            except MatrixUserError:
                out.fail(chat, role)
                return None
            if sent[role] > warmup:
                out.add(chat, seconds * 1000, role)
            return message

        command = {"msgtype": "m.text", "body": COMMAND}
        for k in range(rounds):
            at = start + k * period + offset
            ask = partial(exchange, chat.user, chat.room_id, command, chat.bot_id, PACED_TIMEOUT_S)
            shown = await timed("command", at, period, ask)
            if shown is None:  # skipped or unanswered: nothing to react to
                out.skip(chat, "reaction")
                continue
            relates = {"rel_type": "m.annotation", "event_id": shown.event_id, "key": REACTION}
            react = partial(
                exchange,
                chat.user,
                chat.room_id,
                {"m.relates_to": relates},
                chat.bot_id,
                PACED_TIMEOUT_S,
                event_type="m.reaction",
                answers=shown.event_id,
            )
            await timed("reaction", at + period / 2, period / 2, react)

    await asyncio.gather(*(stream(chat, offset) for chat, offset in streams))
    return out


async def person(synapse: DevSynapse, work: Path, name: str) -> MatrixUser:
    user_id = await synapse.register(name, f"{name}-password")
    return await MatrixUser.login(
        synapse.url,
        user_id,
        f"{name}-password",
        work / f"{name}-store",
        device_name=f"bench-{name}",
        # The bot answers cross-signed devices only, as Element's users have.
        cross_signing=CrossSigningKeys.generate(),
        sync_timeout_ms=30_000,
        notice=lambda text: print(f"  ({name}: {text})", file=sys.stderr),
    )


async def chats_of(user: MatrixUser, bots: dict[str, str], kind: str) -> list[Chat]:
    """The person's direct chats of one kind with both bots, opened side by side."""
    rooms = await asyncio.gather(
        *(user.open_direct_chat(bot_id, encrypted=kind == "encrypted") for bot_id in bots.values())
    )
    return [
        Chat(user, room_id, kind, name, bot_id)
        for (name, bot_id), room_id in zip(bots.items(), rooms, strict=True)
    ]


async def answer_to_copy(chat: Chat, command: str) -> dict[str, Any]:
    """The bot's answer to `command` in `chat` (the second: the first may greet), less what ties
    it to the command it answers."""
    content = {"msgtype": "m.text", "body": command}
    await exchange(chat.user, chat.room_id, content, chat.bot_id)
    _, message = await exchange(chat.user, chat.room_id, content, chat.bot_id)
    return {k: v for k, v in message.content.items() if k != "m.relates_to"}


def _spawn_echo(
    synapse: DevSynapse, work: Path, echo_id: str, reply: Path
) -> subprocess.Popen[bytes]:
    (work / "echo-store").mkdir()
    return spawn(
        [
            sys.executable,
            "-m",
            "bench.echo_bot",
            "--homeserver",
            synapse.url,
            "--user",
            echo_id,
            "--password",
            "echo-password",
            "--store",
            str(work / "echo-store"),
            "--reply",
            str(reply),
        ],
        cwd=REPO,
        log_path=work / "echo.log",
    )


def settings(args: argparse.Namespace) -> dict[str, Any]:
    quick = {
        "n": 20,
        "warmup": 3,
        "paced_rounds": 10,
        "reaction_rounds": 6,
        "crowd_rounds": 2,
    }
    return {
        "n": args.n,
        "warmup": args.warmup,
        "paced_rounds": args.paced_rounds,
        "reaction_rounds": args.reaction_rounds,
        "crowd": args.crowd,
        "crowd_rounds": args.crowd_rounds,
        "period": args.period,
        "crowd_period": args.crowd_period,
        "shortcuts": args.shortcuts,
    } | (quick if args.quick else {})


async def run(args: argparse.Namespace, synapse: DevSynapse | None = None) -> dict[str, Any]:
    s = settings(args)
    period = s["period"]
    logging.getLogger("nio").setLevel(logging.ERROR)  # "Missing session for device" and such
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        work = Path(tmp)
        async with contextlib.AsyncExitStack() as stack:
            if synapse is None:
                synapse = await stack.enter_async_context(synapse_at(work / "synapse"))
            bot_id = await synapse.register("lat-bot", "bot-password")
            echo_id = await synapse.register("lat-echo", "echo-password")
            bots = {"bot": bot_id, "echo": echo_id}

            bot = bench_bot(
                work / "bot",
                homeserver=synapse.url,
                user_id=bot_id,
                password="bot-password",
                extra={
                    "nudges": {"enabled": False},
                    "bot": {"reaction_shortcuts": s["shortcuts"]},
                },
            )
            stack.push_async_callback(bot.stop)
            await bot.start(poll=READY_POLL_S)

            # One person for each room kind's back-to-back and paced rounds, and the crowd.
            names = [f"lat-{kind}" for kind in KINDS]
            names += [f"lat-newcomer{i}" for i in range(s["crowd"])]
            people = await asyncio.gather(*(person(synapse, work, name) for name in names))
            for member in people:
                stack.push_async_callback(member.close)
            singles, crowd = people[: len(KINDS)], people[len(KINDS) :]
            chats = {
                kind: await chats_of(user, {"bot": bot_id}, kind)
                for kind, user in zip(KINDS, singles, strict=True)
            }
            # The echo bot sends a copy of what the bot sends for each command: its answer and,
            # as the answer to COMMAND shows a step, the shortcut reactions on it.
            reply = work / "reply.json"
            copies = {
                command: {
                    "content": await answer_to_copy(chats["unencrypted"][0], command),
                    "reactions": list(SHORTCUTS) if s["shortcuts"] and command == COMMAND else [],
                }
                for command in (COMMAND, CROWD_COMMAND)
            }
            reply.write_text(json.dumps(copies))
            echo = _spawn_echo(synapse, work, echo_id, reply)
            stack.push_async_callback(stop_process, echo)
            await wait_for_log(
                work / "echo.log", ECHO_READY, echo, timeout=60, poll=0.005, what="echo bot"
            )
            for kind, user in zip(KINDS, singles, strict=True):
                chats[kind] += await chats_of(user, {"echo": echo_id}, kind)

            rows: dict[str, Samples] = {}
            timing: dict[str, float] = {}
            t0 = time.perf_counter()
            rows["back to back"] = Samples()
            for kind in KINDS:
                rows["back to back"].update(await back_to_back(chats[kind], s["n"], s["warmup"]))
            timing["back to back"] = time.perf_counter() - t0

            # Both room kinds at once, the bots taking turns a quarter period apart (the bot's
            # unencrypted room, the echo bot's, the bot's encrypted room, the echo bot's): each
            # command finds its bot idle half a period after its last one, and what the other
            # bot sent last (the same traffic: an answer and three reactions) done.
            t0 = time.perf_counter()
            order = [(kind, bot) for kind in KINDS for bot in ("bot", "echo")]
            streams = [
                (chat, order.index((kind, chat.bot)) / len(order) * period)
                for kind in KINDS
                for chat in chats[kind]
            ]
            rows["paced"] = await paced(
                streams, period, s["paced_rounds"] + PACED_WARMUP, PACED_WARMUP
            )
            timing["paced"] = time.perf_counter() - t0

            # The bot only (the echo bot has no shortcuts): a reaction against the command it
            # stands for, both room kinds at once, a quarter period apart (the bot only: what
            # follows one room's reply is behind the other room's command and reaction alike).
            t0 = time.perf_counter()
            streams = [
                (chat, k / 4 * period)
                for k, kind in enumerate(KINDS)
                for chat in chats[kind]
                if chat.bot == "bot"
            ]
            reaction = await paced_reaction(
                streams, period, s["reaction_rounds"] + PACED_WARMUP, PACED_WARMUP
            )
            timing["paced reaction"] = time.perf_counter() - t0

            crowd_name = f"{len(crowd)} paced"
            rows[crowd_name] = Samples()
            t0 = time.perf_counter()
            crowd_period = s["crowd_period"]
            slot = crowd_period / max(1, len(crowd))
            for kind in KINDS:
                crowd_chats = await asyncio.gather(*(chats_of(m, bots, kind) for m in crowd))
                streams = [(chat, i * slot) for i, pair in enumerate(crowd_chats) for chat in pair]
                # Each person's first command to each bot, all at once and untimed: it enrols
                # them and, encrypted, has the bot share its room key with them.
                await asyncio.gather(
                    *(round_trip(c.user, c.room_id, CROWD_COMMAND, c.bot_id) for c, _ in streams)
                )
                rows[crowd_name].update(
                    await paced(
                        streams,
                        crowd_period,
                        s["crowd_rounds"],
                        0,
                        alternate=True,
                        command=CROWD_COMMAND,
                    )
                )
            timing[crowd_name] = time.perf_counter() - t0
    return {"settings": s, "rows": rows, "reaction": reaction, "timing": timing}


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _against(xs: Sequence[float], ys: Sequence[float]) -> tuple[str, int]:
    """'median ratio | p95 ratio | their 90 % intervals' of samples xs against ys, each ratio
    marked ✗ when over its target, and how many of the two targets xs meets."""
    x, y = Summary.of(xs), Summary.of(ys)
    r_med, r_p95 = _ratio(x.median, y.median), _ratio(x.p95, y.p95)
    ok_med, ok_p95 = r_med <= TARGET_MEDIAN, r_p95 <= TARGET_P95
    med_lo, med_hi = ratio_interval(xs, ys, statistics.median)
    p95_lo, p95_hi = ratio_interval(xs, ys, partial(percentile, q=95))
    cells = (
        f"{r_med:.2f}{'' if ok_med else ' ✗'} | {r_p95:.2f}{'' if ok_p95 else ' ✗'} | "
        f"{med_lo:.2f}–{med_hi:.2f}; {p95_lo:.2f}–{p95_hi:.2f}"
    )
    return cells, ok_med + ok_p95


INTERVALS = "90 % intervals, median; p95 (bootstrap)"
SATURATED = 2.0  # the echo bot's median this many times its paced one: the server queues


def report(results: dict[str, Any]) -> str:
    s = results["settings"]
    rows: dict[str, Samples] = results["rows"]
    timing: dict[str, float] = results["timing"]
    crowd = f"{s['crowd']} paced"
    out = [
        "Reply latency: command sent -> reply received, ms; bot = `python -m bot run` (INFO "
        "logging), echo = bench/echo_bot.py (bare matrix-nio) sending a copy of the bot's "
        "traffic (its answer, then the shortcut reactions on it when the bot has them on); one "
        f"Synapse, both bots side by side; command {COMMAND!r}; the bot's reaction shortcuts "
        f"{'on' if s.get('shortcuts', True) else 'off (--no-shortcuts)'}",
        f"- back to back: one person, {s['n']} round trips to each bot after {s['warmup']} "
        f"warm-up rounds, ABBA ({timing['back to back']:.0f} s)",
        f"- paced: one person a room kind, one command every {s['period']:g} s to each bot, "
        f"both room kinds at once, the bots taking turns a quarter period apart, "
        f"{s['paced_rounds']} each after {PACED_WARMUP} warm-up "
        f"({timing['paced']:.0f} s)",
        f"- {crowd}: {s['crowd']} people each sending {CROWD_COMMAND!r} every "
        f"{s['crowd_period']:g} s, staggered evenly, each to the two bots in turn (neighbours "
        f"out of step), {s['crowd_rounds']} periods a room kind after one untimed command to "
        f"each bot: {s['crowd'] / s['crowd_period']:.0f} commands a second at the homeserver, "
        f"half to each bot ({timing[crowd]:.0f} s)",
        "",
        "| pattern | room | n bot / echo | bot median / p95 | echo median / p95 | "
        f"ratio of medians (<= {TARGET_MEDIAN:.2f}) | ratio of p95s (<= {TARGET_P95:.2f}) "
        f"| {INTERVALS} | failed / skipped |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    met = total = 0
    notes: list[str] = []
    for pattern, samples in rows.items():
        for kind in KINDS:
            b, e = samples.of(kind, "bot"), samples.of(kind, "echo")
            ratios, ok = _against(*samples.pair(kind, "bot", "echo"))
            met += ok
            total += 2
            out.append(
                f"| {pattern} | {kind} | {b.n} / {e.n} | {b.median:.1f} / {b.p95:.1f} | "
                f"{e.median:.1f} / {e.p95:.1f} | {ratios} | {samples.lost(kind)} |"
            )
            alone = rows["paced"].of(kind, "echo").median
            if pattern == crowd and e.median > SATURATED * alone:
                notes.append(
                    f"{crowd}, {kind}: the echo bot's median is {e.median / alone:.0f}x its "
                    f"paced one: this homeserver (one SQLite connection), on this machine now, "
                    f"does not keep up with {s['crowd'] / s['crowd_period']:.0f} round trips a "
                    "second; the row measures its queue more than either bot"
                )

    reaction: Samples = results["reaction"]
    roles = ("reaction", "command")
    out += [
        "",
        f"Reaction vs the command it stands for (paced reaction, bot only): one person a room "
        f"kind sends {COMMAND!r} every {s['period']:g} s (command) and half a period later "
        f"reacts {REACTION} on its reply, which the bot answers as `!done <that step>` in reply "
        f"to the message reacted to (reaction: sent -> that reply received); the encrypted "
        f"room's a quarter period after the unencrypted one's; {s['reaction_rounds']} of each "
        f"after {PACED_WARMUP} warm-up ({timing['paced reaction']:.0f} s)",
        "",
        "| room | n reaction / command | reaction median / p95 | command median / p95 | "
        f"ratio of medians (<= {TARGET_MEDIAN:.2f}) | ratio of p95s (<= {TARGET_P95:.2f}) "
        f"| {INTERVALS} | failed / skipped |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in KINDS:
        r, c = reaction.of(kind, "reaction"), reaction.of(kind, "command")
        ratios, ok = _against(*reaction.pair(kind, "reaction", "command"))
        met += ok
        total += 2
        out.append(
            f"| {kind} | {r.n} / {c.n} | {r.median:.1f} / {r.p95:.1f} | "
            f"{c.median:.1f} / {c.p95:.1f} | {ratios} | {reaction.lost(kind, roles)} |"
        )
    out.append(f"\ntargets met: {met} of {total} (✗: missed)")
    out += [f"note: {n}" for n in notes]
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=25, help="back-to-back round trips per bot")
    parser.add_argument("--warmup", type=int, default=3, help="back-to-back rounds not counted")
    parser.add_argument(
        "--paced-rounds", type=int, default=60, help="paced commands per bot and room kind"
    )
    parser.add_argument(
        "--reaction-rounds",
        type=int,
        default=20,
        help="paced reaction: commands and reactions per room kind (each walks a step)",
    )
    parser.add_argument("--crowd", type=int, default=20, help="people in the crowd pattern")
    parser.add_argument(
        "--crowd-rounds",
        type=int,
        default=6,
        help="periods of the crowd pattern a room kind (each person, each bot every other)",
    )
    parser.add_argument(
        "--crowd-period",
        type=float,
        default=3.0,
        help="crowd pattern: seconds between one person's commands",
    )
    parser.add_argument("--period", type=float, default=1.0, help="seconds between commands")
    parser.add_argument(
        "--no-shortcuts",
        dest="shortcuts",
        action="store_false",
        help="the bot with bot.reaction_shortcuts off (what its ✅ ⏭️ 📚 cost the others)",
    )


async def main() -> None:
    quick = "a few rounds of each pattern"
    await run_alone(__doc__, add_arguments, quick, run, report, wall_time="latency")


if __name__ == "__main__":
    asyncio.run(main())
