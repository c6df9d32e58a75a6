"""The bot probed as an attacker with an account on the same homeserver would (issue 15), on a
real Synapse with the bot as its own process: private answers in rooms others read, a
squatted or moved team alias, a flood that stalls everyone, 200 invites, undecryptable spam,
finish-note spam, and nudges that must really notify."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from urllib.parse import quote

import pytest
import pytest_asyncio

from bot.dev.process import NotReady
from tests.harness import MakePerson, MakeSynapse, Person, ReceivedMessage, Synapse, conversation
from tests.harness.attacker import (
    api,
    bot_events,
    create_room,
    exempt_from_rate_limits,
    fake_megolm,
    hear,
    membership,
    send_raw,
    text_of,
)
from tests.harness.bot import BotProcess, new_bot, open_chat, running
from tests.harness.conversation import answered, reply_to

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

POINTER = "direct chat"  # the note left in a shared room when the answer went to the DM
ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
NEVER = "0 0 1 1 *"  # a crontab that does not fire during a test: SIGUSR1 runs the sweep


# --------------------------------------------------------------------------- helpers


# The answer to each command, past whatever else the bot says in the room meanwhile.
ask = partial(conversation.ask, skipping=True)


async def answer(person: Person, room: str, command: str, bot_id: str) -> ReceivedMessage:
    """What the bot answers `command` with: its reply in `room` or, when that reply only
    points to the direct chat, the first thing the bot says to `person` in another room."""
    reply = await ask(person, room, command)
    if POINTER not in reply.body:
        return reply
    heard = await hear(person, bot_id, within=30, until=lambda h: any(m.room_id != room for m in h))
    elsewhere = [m for m in heard if m.room_id != room]
    assert elsewhere, f"{command} was 'sent to the direct chat', but nothing arrived: {heard}"
    return elsewhere[0]


def mentions(needle: str, events: list[dict[str, object]]) -> list[str]:
    return [text_of(e)[:200] for e in events if needle in text_of(e)]


async def private_room_problems(person: Person, room: str, bot_id: str) -> list[str]:
    """What makes `room` unfit for answers only `person` may read: other members (joined or
    invited), or a history visibility that shows it to people who join later or never do."""
    base, token = str(person.client.homeserver), str(person.client.access_token)
    rooms = f"{base}/_matrix/client/v3/rooms/{quote(room)}"
    status, body = await api("GET", f"{rooms}/members", token)
    assert status == 200, body
    members = {
        e["state_key"]
        for e in body["chunk"]
        if e["content"].get("membership") in ("join", "invite")
    }
    problems = []
    if members != {bot_id, person.user_id}:
        problems.append(f"members are {sorted(members)}")
    status, body = await api("GET", f"{rooms}/state/m.room.history_visibility/", token)
    visibility = body.get("history_visibility") if status == 200 else "shared (the default)"
    if visibility in ("shared", "world_readable", "shared (the default)"):
        problems.append(f"history visibility is {visibility}")
    return problems


def fire(bot: BotProcess, sig: signal.Signals = signal.SIGUSR1) -> None:
    """Runs the nudge sweep now (SIGUSR1), through the bot's scheduler."""
    assert bot.proc is not None
    os.kill(bot.proc.pid, sig)


# ------------------------------------------------ private answers: only where only you read


@dataclass
class Team:
    bot: BotProcess
    newcomer: Person  # enrolled: what !team and !status show, and must show nobody else


MENTORS = ("sec-trap-mentor", "sec-lead")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def team(
    synapse: Synapse, make_person_module: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Team]:
    bot = await new_bot(
        synapse,
        tmp_path_factory.mktemp("sec-bot"),
        "sec-bot",
        people={"mentors": [synapse.mxid(m) for m in MENTORS]},
    )
    async with running(bot):
        newcomer = await make_person_module("sec-newbie")
        room = await open_chat(newcomer, bot.user_id, encrypted=True)
        assert "step 1 of" in (await ask(newcomer, room, "!start")).body
        yield Team(bot, newcomer)


async def test_a_world_readable_trap_room_never_gets_a_private_answer(
    team: Team, make_person: MakePerson
) -> None:
    bot_id, secret = team.bot.user_id, team.newcomer.user_id
    mallory = await make_person("sec-mallory")
    mentor = await make_person("sec-trap-mentor")
    lurker = await make_person("sec-lurker")  # never joins: reads like anyone on the internet
    colleague = await make_person("sec-colleague")

    # Mallory sets the trap: public, world-readable, the bot and a mentor invited; she leaves.
    trap = await create_room(
        mallory,
        public=True,
        history_visibility="world_readable",
        invite=[bot_id, mentor.user_id],
        name="Mentors' corner",
    )
    await mallory.wait_for_join(trap, bot_id, timeout=30)
    await mentor.join(await mentor.wait_for_invite(mallory.user_id))
    await mallory.client.room_leave(trap)
    while mallory.user_id in mentor.client.rooms[trap].users:
        await mentor.synced()
    # The mentor tries the bot there once: two members now, the mentor and the bot.
    assert "Here is what I can do" in (await ask(mentor, trap, "!help")).body

    # Later, in a room shared with a colleague, the mentor asks about the newcomers.
    shared = await mentor.create_room(invite=[bot_id, colleague.user_id])
    await colleague.join(await colleague.wait_for_invite(mentor.user_id))
    await mentor.wait_for_join(shared, bot_id, timeout=30)
    pointer = await ask(mentor, shared, "!team")
    assert POINTER in pointer.body and secret not in pointer.body
    heard = await hear(mentor, bot_id, within=30, until=lambda h: any(secret in m.body for m in h))

    leaked = mentions(secret, await bot_events(lurker, trap, bot_id))
    assert not leaked, (
        f"the !team answer went to the world-readable trap room {trap}; a stranger read: {leaked}"
    )
    private = [m for m in heard if secret in m.body]
    assert private, f"the mentor never got the !team answer; heard {[m.body[:60] for m in heard]}"
    dm = private[0].room_id
    assert dm not in (trap, shared)
    assert not await private_room_problems(mentor, dm, bot_id)


async def test_a_room_that_gained_members_is_no_direct_chat_any_more(
    team: Team, make_person: MakePerson
) -> None:
    bot_id, secret = team.bot.user_id, team.newcomer.user_id
    lead = await make_person("sec-lead")
    dev = await make_person("sec-dev")

    # The team lead opens the team room alone with the bot and tries it before inviting anyone.
    team_room = await lead.create_room(name="Backend team", invite=[bot_id])
    await lead.wait_for_join(team_room, bot_id, timeout=30)
    assert "Here is what I can do" in (await ask(lead, team_room, "!help")).body
    await lead.client.room_invite(team_room, dev.user_id)
    await dev.join(await dev.wait_for_invite(lead.user_id))

    # Later the lead asks !team in another shared room.
    standup = await lead.create_room(name="Stand-up", invite=[bot_id, dev.user_id])
    await dev.join(await dev.wait_for_invite(lead.user_id))
    await lead.wait_for_join(standup, bot_id, timeout=30)
    pointer = await ask(lead, standup, "!team")
    assert POINTER in pointer.body and secret not in pointer.body
    heard = await hear(lead, bot_id, within=30, until=lambda h: any(secret in m.body for m in h))

    leaked = mentions(secret, await bot_events(dev, team_room, bot_id))
    assert not leaked, f"the !team answer went to the team room {team_room}, dev read: {leaked}"
    private = [m for m in heard if secret in m.body]
    assert private, f"the lead never got the !team answer; heard {[m.body[:60] for m in heard]}"
    assert private[0].room_id not in (team_room, standup)
    assert not await private_room_problems(lead, private[0].room_id, bot_id)


async def test_sixty_undecryptable_messages_get_one_note(
    team: Team, make_person: MakePerson
) -> None:
    gus = await make_person("sec-locksmith")
    room = await open_chat(gus, team.bot.user_id, encrypted=True)
    for _ in range(60):  # each with a session of its own, as a fresh device would
        await send_raw(gus, room, fake_megolm(gus))
    command = await gus.say(room, "!progress")
    # Sync delivers events in order: once !progress is answered, the bot has seen all 60.
    received: list[ReceivedMessage] = []
    deadline = time.monotonic() + 90
    while not any(answered(m) == command for m in received):
        assert time.monotonic() < deadline, f"!progress never answered; got {len(received)}"
        received.append(await gus.reply(room, timeout=max(0.1, deadline - time.monotonic())))
    with contextlib.suppress(AssertionError):
        while True:
            received.append(await gus.reply(room, timeout=3))
    notes = [m for m in received if "couldn't decrypt" in m.body]
    assert len(notes) <= 1, f"{len(notes)} 'couldn't decrypt' notes for one sender's 60 events"
    assert "0 done, 0 skipped" in next(m.body for m in received if answered(m) == command)


# ------------------------------------------------------------ the team room: pinned, unsquattable


@pytest.mark.parametrize("room_version", ["10", "12"])
async def test_a_squatted_team_alias_makes_nobody_a_mentor(
    synapse: Synapse,
    make_person: MakePerson,
    tmp_path_factory: pytest.TempPathFactory,
    room_version: str,
) -> None:
    localpart = f"sec-squatted-v{room_version}"
    squatter = await make_person(f"sec-squatter-v{room_version}")
    # The attacker registers the team's alias first: creator, power 100, a public room.
    await create_room(
        squatter, public=True, alias=localpart, room_version=room_version, name="Backend team"
    )
    ops = await synapse.ensure_user("sec-ops", "sec-ops-password")  # the real admin, not there
    bot = await new_bot(
        synapse,
        tmp_path_factory.mktemp("squat-bot"),
        f"sec-squat-bot-v{room_version}",
        rooms={"team": f"#{localpart}:localhost"},
        people={"admins": [ops], "mentors": []},
    )
    async with running(bot):
        newbie = await make_person(f"sec-squat-newbie-v{room_version}")
        newbie_room = await open_chat(newbie, bot.user_id, encrypted=False)
        await ask(newbie, newbie_room, "!start")
        room = await open_chat(squatter, bot.user_id, encrypted=False)

        table = await answer(squatter, room, "!team", bot.user_id)
        assert "for mentors only" in table.body and newbie.user_id not in table.body, (
            f"the alias squatter is a mentor: !team answered {table.body[:200]!r}"
        )
        assigned = await answer(
            squatter, room, f"!assign {newbie.user_id} {squatter.user_id}", bot.user_id
        )
        assert "for mentors only" in assigned.body, assigned.body
        await newbie.no_more_replies(newbie_room, wait=3)


async def test_a_team_alias_moved_after_pinning_is_refused_at_start(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    alias = "#sec-pinned:localhost"
    ops = await make_person("sec-pin-ops")
    bot = await new_bot(
        synapse,
        tmp_path_factory.mktemp("pin-bot"),
        "sec-pin-bot",
        rooms={"team": alias},
        people={"admins": [ops.user_id]},
    )
    room_a = await create_room(ops, alias="sec-pinned", invite=[bot.user_id], name="Team A")
    await bot.start()
    try:
        await ops.wait_for_join(room_a, bot.user_id, timeout=30)
        assert await bot.stop() == 0

        # Whoever may edit the directory points the alias at another room.
        room_b = await create_room(ops, public=True, name="Team B")
        directory = f"{synapse.url}/_matrix/client/v3/directory/room/{quote(alias)}"
        token = str(ops.client.access_token)
        assert (await api("DELETE", directory, token))[0] == 200
        status, body = await api("PUT", directory, token, {"room_id": room_b})
        assert status == 200, body

        offset = bot.log_path.stat().st_size
        with contextlib.suppress(NotReady):
            await bot.start()
        assert bot.proc is not None
        deadline = time.monotonic() + 20
        while bot.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        log = bot.log_path.read_bytes()[offset:].decode(errors="replace")
        assert bot.proc.poll() is not None, (
            f"the bot runs on although {alias} now points to {room_b}, not the pinned {room_a}"
        )
        assert bot.proc.returncode != 0
        assert "Traceback" not in log, log
        named = [
            line
            for line in log.splitlines()
            if "rooms.team" in line and " DEBUG " not in line and " INFO " not in line
        ]
        assert len(named) == 1, f"want one line naming rooms.team, got {named}"

        check = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bot", "check", "--online", "--config", str(bot.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=bot.workdir,
            check=False,
        )
        assert check.returncode != 0 and "rooms.team" in check.stderr, (
            f"`check --online` passed a moved team alias: {check.stdout} {check.stderr}"
        )
    finally:
        bot.kill()


# ------------------------------------------------------------------ fair and bounded sending


async def test_a_rate_limited_bot_answers_a_quiet_room_within_one_round(
    make_synapse: MakeSynapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    per_second, noisy_users, commands_each = 0.5, 6, 9
    limited = await make_synapse(rc_message={"per_second": per_second, "burst_count": 3})
    root = await make_person("sec-rl-root", admin=True, server=limited, cross_signed=False)
    *noisy, legit = await asyncio.gather(
        *(
            make_person(name, server=limited, cross_signed=False)
            for name in [*(f"sec-noisy-{i}" for i in range(noisy_users)), "sec-legit"]
        )
    )
    for person in (*noisy, legit):  # only the bot is rate limited
        await exempt_from_rate_limits(root, person.user_id)
    bot = await new_bot(limited, tmp_path_factory.mktemp("rl-bot"), "sec-rl-bot")
    await exempt_from_rate_limits(root, bot.user_id)  # for the greetings: quicker to set up
    async with running(bot):
        rooms = await asyncio.gather(
            *(open_chat(p, bot.user_id, encrypted=False) for p in (*noisy, legit))
        )
        legit_room = rooms[-1]
        await exempt_from_rate_limits(root, bot.user_id, exempt=False)

        async def flood(person: Person, room: str) -> None:
            for _ in range(commands_each):
                await person.say(room, "!next")

        await asyncio.gather(*(flood(p, r) for p, r in zip(noisy, rooms, strict=False)))
        # The legitimate user speaks up while the bot works through the flood: once every
        # noisy room has its first answer, the bot has the rest of the flood in hand.
        try:
            await asyncio.gather(
                *(p.reply(r, timeout=60) for p, r in zip(noisy, rooms, strict=False))
            )
        except AssertionError as exc:
            raise AssertionError(f"a noisy room got no answer at all within 60s: {exc}") from None
        await asyncio.sleep(1.5)
        sent = time.monotonic()
        command = await legit.say(legit_room, "!next")
        # One round over the 7 rooms at the allowed rate, and 2 s to spare.
        bound = (noisy_users + 1) / per_second + 2
        try:
            reply = await reply_to(legit, legit_room, command, timeout=bound + 5)
        except AssertionError:
            raise AssertionError(
                f"!next got no reply within {bound + 5:.0f}s behind {noisy_users} users' "
                f"{noisy_users * commands_each} commands (one queue for all rooms?)"
            ) from None
        took = time.monotonic() - sent
        assert "step 1 of" in reply.body
        assert took <= bound, f"!next took {took:.1f}s; one round of 7 rooms is {bound:.0f}s"
        replies = [
            len(await bot_events(p, r, bot.user_id)) - 1  # the greeting
            for p, r in zip(noisy, rooms, strict=False)
        ]
        assert sum(replies) < noisy_users * commands_each, (
            f"every noisy command was answered already ({replies}): the limit never held"
        )


async def test_two_hundred_invites_from_one_user(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    invites = 200
    bot = await new_bot(synapse, tmp_path_factory.mktemp("invite-bot"), "sec-invite-bot")
    async with running(bot):
        spammer = await make_person("sec-spammer", cross_signed=False)
        legit = await make_person("sec-patient")
        legit_room = await open_chat(legit, bot.user_id, encrypted=False)
        latencies: list[float] = []
        storm_over = asyncio.Event()

        async def ping() -> None:
            while not storm_over.is_set():
                began = time.monotonic()
                await ask(legit, legit_room, "!next")
                latencies.append(time.monotonic() - began)
                await asyncio.sleep(0.5)

        pinger = asyncio.create_task(ping())
        gate = asyncio.Semaphore(8)

        async def invite(i: int) -> str:
            async with gate:
                response = await spammer.client.room_create(invite=[bot.user_id], name=f"#{i}")
            return str(getattr(response, "room_id", response))

        try:
            rooms = await asyncio.gather(*(invite(i) for i in range(invites)))
            assert all(r.startswith("!") for r in rooms), rooms[:3]
            deadline = time.monotonic() + 120

            def pending() -> list[str]:
                return [
                    r
                    for r in rooms
                    if r not in spammer.client.rooms
                    or bot.user_id in spammer.client.rooms[r].invited_users
                ]

            while pending() and time.monotonic() < deadline:
                await spammer.synced(timeout=30)
        finally:
            storm_over.set()
            await pinger
        gate = asyncio.Semaphore(10)

        async def state_of(room: str) -> tuple[str | None, int]:
            async with gate:
                said = await bot_events(spammer, room, bot.user_id)
                return await membership(spammer, room, bot.user_id), len(said)

        states = await asyncio.gather(*(state_of(r) for r in rooms))
        joined = sum(1 for m, _ in states if m == "join")
        declined = sum(1 for m, _ in states if m == "leave")
        assert joined <= 5, f"the bot joined {joined} of {invites} rooms from one inviter"
        assert declined == invites - joined, f"{invites - joined - declined} invites left open"
        assert max(n for _, n in states) <= 1, "a room was greeted more than once"
        assert len(latencies) >= 3, f"only {len(latencies)} pings during the storm"
        assert max(latencies) <= 5.0, f"!next took up to {max(latencies):.1f}s during the storm"


# --------------------------------------------------------------------------- announce once


TINY_ROADMAP = """\
version: 1
title: Tiny Roadmap
sections:
  - id: only
    number: 1
    title: The only section
    steps:
      - {id: first, number: "1.1", title: First, summary: One., estimate: 1d, topics: [a]}
      - {id: second, number: "1.2", title: Second, summary: Two., estimate: 1d, topics: [b]}
"""


async def test_finishing_is_announced_to_each_mentor_once(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("finish-bot")
    roadmap = workdir / "tiny-roadmap.yaml"
    roadmap.write_text(TINY_ROADMAP, encoding="utf-8")
    mentors = [await make_person(f"sec-fin-mentor-{i}") for i in (1, 2)]
    bot = await new_bot(
        synapse,
        workdir,
        "sec-finish-bot",
        roadmap=str(roadmap),
        people={"mentors": [m.user_id for m in mentors]},
        matrix={"encryption": False},  # the notes are counted, not decrypted
    )
    async with running(bot):
        # The mentors' clients are online throughout, accepting the bot's invitations.
        over = asyncio.Event()
        listening = [
            asyncio.create_task(hear(m, bot.user_id, within=120, until=lambda _: over.is_set()))
            for m in mentors
        ]
        try:
            newbie = await make_person("sec-finisher")
            room = await open_chat(newbie, bot.user_id, encrypted=False)
            await ask(newbie, room, "!start")
            await ask(newbie, room, "!skip")
            assert "finishing the roadmap" in (await ask(newbie, room, "!skip")).body
            for _ in range(3):
                await ask(newbie, room, "!undo")
                await ask(newbie, room, "!skip")
            await asyncio.sleep(5)  # for notes still on their way
            over.set()
            heard = await asyncio.gather(*listening)
        finally:
            for task in listening:
                task.cancel()
        for mentor, messages in zip(mentors, heard, strict=True):
            finished = [m.body for m in messages if "has finished" in m.body]
            assert len(finished) == 1, f"{mentor.user_id} got {len(finished)} finish notes"


# ---------------------------------------------------------------------- nudges that notify


async def test_a_nudge_shows_in_the_newcomers_notifications(
    synapse: Synapse, make_person: MakePerson, tmp_path_factory: pytest.TempPathFactory
) -> None:
    idle = 2.0
    bot = await new_bot(
        synapse,
        tmp_path_factory.mktemp("nudge-bot"),
        "sec-nudge-bot",
        # Push rules see only what the server can read: nudges in the clear here.
        matrix={"encryption": False},
        nudges={
            "schedule": NEVER,
            "timezone": "UTC",
            "idle_after": f"{idle:.0f}s",
            "target": "dm",
            "escalate_after": 100,
            "working_days": ALL_DAYS,
            "quiet_hours": None,
        },
    )
    async with running(bot):
        newbie = await make_person("sec-nudgee")
        room = await open_chat(newbie, bot.user_id, encrypted=False)
        started = await ask(newbie, room, "!start")
        step = "1.1 Bash/Terminal"

        def nudged(heard: list[ReceivedMessage]) -> bool:
            return any(step in m.body for m in heard)

        # The first nudge may open the direct chat; the newcomer joins it, as anyone would.
        await asyncio.sleep(idle + 0.5)
        fire(bot)
        await hear(newbie, bot.user_id, within=15, until=nudged)
        await asyncio.sleep(idle + 0.5)
        fire(bot)
        heard = await hear(newbie, bot.user_id, within=30, until=nudged)
        nudge = next((m for m in heard if step in m.body), None)
        assert nudge is not None, f"no second nudge; heard {[m.body[:60] for m in heard]}"

        url = f"{synapse.url}/_matrix/client/v3/notifications"
        deadline = time.monotonic() + 5
        while True:
            status, body = await api("GET", url, str(newbie.client.access_token))
            assert status == 200, body
            notified = {n["event"]["event_id"] for n in body["notifications"]}
            if nudge.event_id in notified or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert nudge.event_id in notified, (
            f"the nudge ({nudge.msgtype}, m.mentions {nudge.content.get('m.mentions')}) "
            "did not notify the newcomer"
        )
        assert nudge.msgtype == "m.text"
        assert nudge.content.get("m.mentions") == {"user_ids": [newbie.user_id]}
        assert started.event_id not in notified, "a reply notified: replies stay m.notice"
