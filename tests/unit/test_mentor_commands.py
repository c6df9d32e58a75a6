"""Mentor, admin and newcomer commands through the Dispatcher and a real Store, frozen clock.

Each test reads like the chat it checks: `await bot.say(NINA, "!pause 5d")` returns the reply.
Nina and friends are newcomers, Mona is a mentor, Ada is an admin.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from bot.app import build_dispatcher
from bot.dispatch import Incoming
from bot.ops import PAUSED_FOREVER
from bot.progress import NewcomerInfo, State
from bot.roadmap import Roadmap, load_roadmap
from bot.store import OutboxItem, Store
from bot.team import Team, TeamState
from tests.unit.common import POLICY, ROADMAP_FILE

NINA = "@nina:example.org"
NEWBIE = "@newbie:example.org"
MENTOR = "@mona:example.org"
ADMIN = "@ada:example.org"
DM = "!dm:example.org"
TEAM_ROOM = "!team:example.org"
MONDAY = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class Bot:
    """The dispatcher as wired in bot.app, with a frozen clock and a roadmap file to reload."""

    def __init__(self, store: Store, roadmap: Roadmap, roadmap_file: Path) -> None:
        self.store = store
        self.now = MONDAY
        self.roadmap_file = roadmap_file
        self._ids = itertools.count(1)
        self.team = Team(
            TeamState(
                roadmap, POLICY, admins=frozenset({ADMIN}), configured_mentors=frozenset({MENTOR})
            )
        )
        self.dispatcher = build_dispatcher(
            store,
            self.team,
            server_name="example.org",
            load_roadmap=lambda: load_roadmap(roadmap_file),
            clock=lambda: self.now,
        )

    async def send(
        self,
        sender: str,
        body: str,
        *,
        formatted_body: str | None = None,
        room: str = DM,
        is_direct: bool = True,
    ) -> list[OutboxItem]:
        event_id = f"$event{next(self._ids)}"
        msg = Incoming(event_id, room, sender, body, formatted_body, is_direct)
        items = await self.dispatcher.handle(msg)
        assert items, f"no reply to {body!r}"
        return items

    async def say(self, sender: str, body: str, **kw: Any) -> str:
        """The reply's plain body."""
        return str((await self.send(sender, body, **kw))[0].content["body"])

    async def info(self, user_id: str) -> NewcomerInfo | None:
        found = await self.store.newcomers([s.id for s in self.team.state.roadmap], user_id)
        return found[0] if found else None


@pytest.fixture(scope="module")
def roadmap() -> Roadmap:
    return load_roadmap(ROADMAP_FILE)


@pytest.fixture(scope="module")
def roadmap_data() -> dict[str, Any]:
    return yaml.load(ROADMAP_FILE.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)


def write_roadmap(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.dump(data, Dumper=yaml.CSafeDumper, sort_keys=False), encoding="utf-8")


@pytest_asyncio.fixture
async def bot(tmp_path: Path, roadmap: Roadmap) -> AsyncIterator[Bot]:
    """Starts with the real roadmap; !reload reads the copy at `bot.roadmap_file`."""
    roadmap_file = tmp_path / "roadmap.yaml"
    roadmap_file.write_text(ROADMAP_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    store = await Store.open(tmp_path / "bot.db")
    yield Bot(store, roadmap, roadmap_file)
    await store.close()


# --- who may do what ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "refusal"),
    [
        (f"!status {NINA}", "Sorry, !status is for mentors only."),
        (f"!history {NINA}", "Sorry, !history is for mentors only."),
        ("!team", "Sorry, !team is for mentors only."),
        (f"!assign {NINA} {NEWBIE}", "Sorry, !assign is for mentors only."),
        (f"!nudge {NINA}", "Sorry, !nudge is for mentors only."),
        ("!reload", "Sorry, !reload is for admins only."),
    ],
)
async def test_a_newcomer_may_not_use_mentor_commands(bot: Bot, command: str, refusal: str) -> None:
    await bot.say(NINA, "!start")

    items = await bot.send(NEWBIE, command)

    assert [i.content["body"] for i in items] == [
        f"{refusal} Say !help for the commands you can use."
    ]
    nina = await bot.info(NINA)
    assert nina is not None
    assert (nina.mentor, nina.nudges_total) == (None, 0)
    assert await bot.info(NEWBIE) is None  # a refused command enrolls nobody


async def test_a_mentor_may_not_reload_the_roadmap(bot: Bot) -> None:
    reply = await bot.say(MENTOR, "!reload")
    assert reply.startswith("Sorry, !reload is for admins only.")


# --- !assign -----------------------------------------------------------------------------


async def test_assign_by_localpart_pairs_the_sender_and_tells_the_newcomer(bot: Bot) -> None:
    await bot.say(NINA, "!start")

    reply, tell = await bot.send(MENTOR, "!assign nina")

    assert reply.content["body"] == f"🤝 {MENTOR} is now the mentor of {NINA}."
    assert tell.to_user == NINA
    assert tell.content["body"] == f"🤝 {MENTOR} is your mentor for the roadmap: ask them anything."
    nina = await bot.info(NINA)
    assert nina is not None and nina.mentor == MENTOR


async def test_assign_by_full_ids_names_another_mentor(bot: Bot) -> None:
    await bot.say(NINA, "!start")

    reply = await bot.say(MENTOR, f"!assign {NINA} {ADMIN}")  # an admin is a mentor too

    assert reply == f"🤝 {ADMIN} is now the mentor of {NINA}."
    nina = await bot.info(NINA)
    assert nina is not None and nina.mentor == ADMIN


async def test_assign_names_a_mentor_found_by_power_level(bot: Bot) -> None:
    coach = "@coach:example.org"
    bot.team.swap(mentors_by_power=frozenset({coach}))
    await bot.say(NINA, "!start")

    assert await bot.say(MENTOR, f"!assign {NINA} {coach}") == (
        f"🤝 {coach} is now the mentor of {NINA}."
    )


async def test_assign_refuses_someone_who_is_no_mentor(bot: Bot) -> None:
    await bot.say(NINA, "!start")
    await bot.say(NEWBIE, "!start")

    items = await bot.send(MENTOR, f"!assign {NINA} {NEWBIE}")

    assert [i.content["body"] for i in items] == [
        f"{NEWBIE} is not a mentor, so I can't pair them with {NINA}. "
        "An admin can make them a mentor, or add --force."
    ]
    nina = await bot.info(NINA)
    assert nina is not None and nina.mentor is None


async def test_only_an_admin_may_force_an_assignment(bot: Bot) -> None:
    await bot.say(NINA, "!start")
    outsider = "@outsider:example.org"

    reply = await bot.say(MENTOR, f"!assign {NINA} {outsider} --force")
    assert reply == "Only an admin can use --force."
    nina = await bot.info(NINA)
    assert nina is not None and nina.mentor is None

    reply, tell = await bot.send(ADMIN, f"!assign {NINA} {outsider} --force")
    assert reply.content["body"] == f"🤝 {outsider} is now the mentor of {NINA}."
    assert tell.to_user == NINA
    nina = await bot.info(NINA)
    assert nina is not None and nina.mentor == outsider


async def test_assign_usage_names_the_flag(bot: Bot) -> None:
    assert "!assign <newcomer> [mentor] [--force]" in await bot.say(MENTOR, "!help")


async def test_assign_by_a_pill_settles_a_name_shared_by_two_people(bot: Bot) -> None:
    await bot.say(NINA, "!start")
    await bot.say("@nina:elsewhere.org", "!start")

    assert "could be several people" in await bot.say(MENTOR, "!assign nina")

    reply = await bot.say(
        MENTOR,
        "!assign Nina",
        formatted_body=f'!assign <a href="https://matrix.to/#/{NINA}">Nina</a>',
    )
    assert reply == f"🤝 {MENTOR} is now the mentor of {NINA}."
    here, there = await bot.info(NINA), await bot.info("@nina:elsewhere.org")
    assert here is not None and here.mentor == MENTOR
    assert there is not None and there.mentor is None


async def test_assign_an_ambiguous_localpart_asks_for_the_full_id(bot: Bot) -> None:
    await bot.say("@sam:a.org", "!start")
    await bot.say("@sam:b.org", "!start")

    items = await bot.send(MENTOR, "!assign sam")

    assert [i.content["body"] for i in items] == [
        "sam could be several people: @sam:a.org, @sam:b.org; write the full id."
    ]
    for sam in ("@sam:a.org", "@sam:b.org"):
        info = await bot.info(sam)
        assert info is not None and info.mentor is None


async def test_assign_someone_unknown_or_not_enrolled(bot: Bot) -> None:
    reply = await bot.say(MENTOR, "!assign ghost")
    assert reply == (
        "I don't know anyone called ghost; if you mean @ghost:example.org, write the full id."
    )
    reply = await bot.say(MENTOR, "!assign @ghost:example.org")
    assert reply == "@ghost:example.org has not enrolled in the roadmap (yet)."


# --- !status, !history, !team, !nudge ----------------------------------------------------


async def test_status_in_a_shared_room_is_answered_privately(bot: Bot) -> None:
    await bot.say(NINA, "!start")

    note, answer = await bot.send(MENTOR, f"!status {NINA}", room=TEAM_ROOM, is_direct=False)

    assert note.room_id == TEAM_ROOM
    assert note.content["body"] == (
        "I've sent you the answer in our direct chat, where only you can read it "
        "(if you're not in it yet, I've invited you)."
    )
    assert note.to_user is None
    assert (answer.to_user, answer.room_id) == (MENTOR, None)
    assert f"Newcomer {NINA}: 0 done, 0 skipped, of 52 steps" in answer.content["body"]
    assert "m.relates_to" not in answer.content  # not a reply to an event in another room


async def test_status_in_a_direct_chat_is_answered_there(bot: Bot) -> None:
    await bot.say(NINA, "!start")
    [answer] = await bot.send(MENTOR, f"!status {NINA}")
    assert answer.room_id == DM
    assert f"Newcomer {NINA}" in answer.content["body"]


async def test_status_shows_idle_working_days_by_the_frozen_clock(bot: Bot) -> None:
    await bot.say(NINA, "!start")
    await bot.say(NINA, "!done")
    bot.now = MONDAY + timedelta(days=3, hours=1)  # Thursday 10:00 UTC

    reply = await bot.say(MENTOR, f"!status {NINA}")

    assert reply.splitlines()[0] == "⚠ Needs attention: idle 3 working days; no mentor"
    assert f"Newcomer {NINA}: 1 done, 0 skipped, of 52 steps" in reply
    assert "• Current step: 1.2 Basic Internet" in reply
    assert "• Last activity: 2026-03-02 09:00 UTC" in reply


async def test_status_of_someone_not_enrolled(bot: Bot) -> None:
    assert await bot.say(MENTOR, f"!status {NEWBIE}") == (
        f"{NEWBIE} has not enrolled in the roadmap (yet)."
    )


async def test_history_is_newest_first(bot: Bot) -> None:
    await bot.say(NINA, "!start")
    bot.now += timedelta(hours=1)
    await bot.say(NINA, "!done")
    bot.now += timedelta(hours=1)
    await bot.say(NINA, "!skip")

    reply = await bot.say(MENTOR, f"!history {NINA}")

    assert reply.splitlines() == [
        f"Recent activity of {NINA} (newest first):",
        "• 2026-03-02 11:00 skipped 1.2 Basic Internet",
        "• 2026-03-02 10:00 marked done 1.1 Bash/Terminal",
        "• 2026-03-02 09:00 enrolled",
    ]


async def test_team_lists_every_newcomer_most_idle_first(bot: Bot) -> None:
    await bot.say(NINA, "!start")
    bot.now += timedelta(hours=2)
    await bot.say(NEWBIE, "!start")
    bot.now += timedelta(days=1)

    [answer] = await bot.send(MENTOR, "!team")

    body = answer.content["body"]
    assert body.splitlines()[0] == "2 newcomers — most idle first, finished last:"
    assert body.index(NINA) < body.index(NEWBIE)
    tbody = answer.content["formatted_body"].split("<tbody>")[1]
    assert tbody.count("<tr>") == 2


async def test_nudge_now_sends_the_newcomer_a_mention_and_counts_it(bot: Bot) -> None:
    await bot.say(NINA, "!start")

    reply, nudge = await bot.send(MENTOR, f"!nudge {NINA}")

    assert reply.content["body"] == f"📣 Nudged {NINA}."
    assert (reply.content["msgtype"], reply.content["m.mentions"]) == ("m.notice", {})
    assert nudge.to_user == NINA
    assert (nudge.content["msgtype"], nudge.content["m.mentions"]) == (
        "m.text",
        {"user_ids": [NINA]},
    )
    assert "You are on 1.1 Bash/Terminal." in nudge.content["body"]
    nina = await bot.info(NINA)
    assert nina is not None
    assert (nina.nudges_in_row, nina.nudges_total) == (1, 1)
    assert nina.last_activity_at == MONDAY  # a mentor's command is not her activity


async def test_a_second_nudge_within_the_cooldown_is_refused(bot: Bot) -> None:
    await bot.say(NINA, "!start")
    await bot.send(MENTOR, f"!nudge {NINA}")

    bot.now += timedelta(minutes=12)
    items = await bot.send(MENTOR, f"!nudge {NINA}")

    assert [i.content["body"] for i in items] == [
        f"⏳ {NINA} was already nudged 12 min ago; you can nudge again in 48 min."
    ]
    nina = await bot.info(NINA)
    assert nina is not None and (nina.nudges_in_row, nina.nudges_total) == (1, 1)

    bot.now += timedelta(minutes=48)  # the default cooldown, an hour, has passed
    reply, nudge = await bot.send(MENTOR, f"!nudge {NINA}")
    assert reply.content["body"] == f"📣 Nudged {NINA}."
    nina = await bot.info(NINA)
    assert nina is not None and nina.nudges_total == 2


async def test_the_nudge_cooldown_comes_from_the_policy(bot: Bot) -> None:
    bot.team.swap(policy=replace(POLICY, manual_cooldown=timedelta(minutes=5)))
    await bot.say(NINA, "!start")
    await bot.send(MENTOR, f"!nudge {NINA}")
    bot.now += timedelta(minutes=5)
    assert await bot.say(MENTOR, f"!nudge {NINA}") == f"📣 Nudged {NINA}."


# --- !reload -----------------------------------------------------------------------------


async def test_reload_of_a_broken_roadmap_keeps_the_old_one(
    bot: Bot, roadmap_data: dict[str, Any]
) -> None:
    await bot.say(NINA, "!start")
    old = bot.team.state.roadmap
    broken = copy.deepcopy(roadmap_data)
    docker = next(s for sec in broken["sections"] for s in sec["steps"] if s["id"] == "docker")
    docker["resources"][0]["url"] = "not a url"
    write_roadmap(bot.roadmap_file, broken)

    reply = await bot.say(ADMIN, "!reload")

    lines = reply.splitlines()
    assert lines[0] == "✗ The new roadmap was refused; the old one stays. Problems:"
    assert lines[1].startswith(f"• {bot.roadmap_file}: step docker, resource 1: bad URL")
    assert bot.team.state.roadmap is old
    assert "1.2 Basic Internet — step 2 of 52" in await bot.say(NINA, "!done")


async def test_reload_of_unreadable_yaml_names_the_line(bot: Bot) -> None:
    bot.roadmap_file.write_text("title: x\nsections: [\n", encoding="utf-8")
    reply = await bot.say(ADMIN, "!reload")
    assert reply.startswith("✗ The new roadmap was refused; the old one stays.")
    assert "not valid YAML" in reply


async def test_reload_of_a_file_that_is_not_utf8_is_refused(bot: Bot) -> None:
    bot.roadmap_file.write_bytes("title: Café roadmap\n".encode("latin-1"))
    old = bot.team.state.roadmap

    reply = await bot.say(ADMIN, "!reload")

    assert reply.startswith("✗ The new roadmap was refused; the old one stays.")
    assert str(bot.roadmap_file) in reply
    assert bot.team.state.roadmap is old


async def test_reload_reports_renamed_added_and_removed_steps_and_keeps_progress(
    bot: Bot, roadmap_data: dict[str, Any]
) -> None:
    await bot.say(NINA, "!start")
    await bot.say(NINA, "!done")
    await bot.say(NINA, "!done")
    await bot.say(NINA, "!done stomp")
    assert "3 done, 0 skipped, of 52 steps" in await bot.say(NINA, "!progress")

    data = copy.deepcopy(roadmap_data)
    steps = {s["id"]: (sec, s) for sec in data["sections"] for s in sec["steps"]}
    steps["docker"][1]["title"] = "Docker and Compose"
    section, stomp = steps["stomp"]
    section["steps"].remove(stomp)
    steps["monitoring-engines"][0]["steps"].append(
        {"id": "tracing", "number": "14.2", "title": "Distributed Tracing"}
    )
    write_roadmap(bot.roadmap_file, data)

    reply = await bot.say(ADMIN, "!reload")

    assert reply.splitlines() == [
        "✓ Reloaded: 52 steps in 14 sections. "
        "Everyone's progress is kept (it is keyed on step ids).",
        "Added (1):",
        "• 14.2 Distributed Tracing",
        "Removed (1):",
        "• 13.3 STOMP [stomp]",
        "Renamed (1):",
        "• Docker → Docker and Compose",
        "Progress on removed steps stays in the database and comes back if you restore them. "
        "Check with !team.",
    ]
    assert bot.team.state.roadmap.get("tracing") is not None
    assert bot.team.state.roadmap.get("stomp") is None
    progress = await bot.store.load_progress(NINA)
    assert progress.state("bash-terminal") == State.DONE
    assert progress.state("basic-internet") == State.DONE
    assert "2 done, 0 skipped, of 52 steps" in await bot.say(NINA, "!progress")
    assert "11.1 Docker and Compose" in await bot.say(NINA, "!goto docker")


async def test_reload_of_the_same_roadmap_says_nothing_changed(bot: Bot) -> None:
    reply = await bot.say(ADMIN, "!reload")
    assert "No steps were added, removed or renamed." in reply


# --- newcomer commands about reminders ---------------------------------------------------


async def test_pause_for_five_days_then_resume(bot: Bot) -> None:
    await bot.say(NINA, "!start")

    assert await bot.say(NINA, "!pause 5d") == (
        "⏸ Reminders paused for 5 days. Your progress stays as it is."
    )
    nina = await bot.info(NINA)
    assert nina is not None and nina.paused_until == MONDAY + timedelta(days=5)

    async def candidates_on(day: int) -> list[str]:
        now = MONDAY + timedelta(days=day)
        return [c.user_id for c in await bot.store.nudge_candidates(now, now - POLICY.idle_after)]

    assert await candidates_on(4) == []  # still paused on Friday
    assert await candidates_on(6) == [NINA]  # the pause ran out on Saturday

    assert await bot.say(NINA, "!resume") == "▶ Reminders are back on. Welcome back!"
    nina = await bot.info(NINA)
    assert nina is not None and nina.paused_until is None


async def test_pause_without_a_duration_lasts_until_resume(bot: Bot) -> None:
    reply = await bot.say(NINA, "!pause")
    assert reply == "⏸ Reminders paused until you say !resume. Your progress stays as it is."
    nina = await bot.info(NINA)
    assert nina is not None and nina.paused_until == PAUSED_FOREVER


async def test_pause_with_a_nonsense_duration_is_refused(bot: Bot) -> None:
    await bot.say(NINA, "!start")
    reply = await bot.say(NINA, "!pause soon")
    assert reply == "soon is not a duration like 30s, 45m, 12h, 3d or 1w."
    nina = await bot.info(NINA)
    assert nina is not None and nina.paused_until is None


async def test_pause_for_longer_than_a_year_is_refused_clearly(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    await bot.say(NINA, "!start")

    reply = await bot.say(NINA, "!pause 500000w")

    assert reply == "500000w is longer than a year (365d), the longest I accept."
    assert "Traceback" not in caplog.text and "OverflowError" not in caplog.text
    nina = await bot.info(NINA)
    assert nina is not None and nina.paused_until is None
    assert (await bot.say(NINA, "!pause 52w")).startswith("⏸ Reminders paused for 52 weeks.")


async def test_timezone_is_set_shown_and_checked(bot: Bot) -> None:
    await bot.say(NINA, "!start")
    assert await bot.say(NINA, "!timezone") == (
        "Your time zone is Europe/Berlin (the team's default). "
        "Change it with !timezone Europe/Berlin."
    )

    reply = await bot.say(NINA, "!timezone Europe/Berlin")
    assert reply == (
        "🕑 Your time zone is now Europe/Berlin; reminders follow your working days there."
    )
    nina = await bot.info(NINA)
    assert nina is not None and nina.timezone == "Europe/Berlin"
    assert (await bot.say(NINA, "!tz")).startswith("Your time zone is Europe/Berlin. ")

    assert await bot.say(NINA, "!timezone Mars/Base") == (
        "Mars/Base is not a time zone like Europe/Berlin."
    )
    nina = await bot.info(NINA)
    assert nina is not None and nina.timezone == "Europe/Berlin"


async def test_mentor_names_the_team_until_one_is_assigned(bot: Bot) -> None:
    assert (await bot.say(NINA, "!mentor")).splitlines() == [
        "You have no mentor assigned yet. The team's mentors are:",
        f"• {MENTOR}",
    ]
    await bot.say(MENTOR, "!assign nina")
    assert await bot.say(NINA, "!mentor") == f"Your mentor is {MENTOR}."


async def test_mentors_by_power_level_are_listed_and_told_of_a_finish(bot: Bot) -> None:
    # Bug (issue 10): `!mentor` and the finish notice read only people.mentors.
    coach = "@coach:example.org"
    bot.team.swap(mentors_by_power=frozenset({coach}))
    assert (await bot.say(NINA, "!mentor")).splitlines() == [
        "You have no mentor assigned yet. The team's mentors are:",
        f"• {coach}",
        f"• {MENTOR}",
    ]
    for _ in range(len(bot.team.state.roadmap) - 1):
        bot.now += timedelta(seconds=2)  # within the flood limit
        await bot.say(NINA, "!skip")
    items = await bot.send(NINA, "!done")
    told = sorted(i.to_user for i in items[1:] if "has finished" in i.content["body"])
    assert told == [coach, MENTOR]
