"""Mentors' views with a frozen clock: the status card, the history, the team table, the digest.

NOW is Thursday 5 March 2026, 10:00 UTC; the team works Monday to Friday in Berlin and counts
someone idle after one working day.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from bot import progress as rules
from bot.clock import ServerClock
from bot.nudges import NudgePolicy
from bot.ops import PAUSED_FOREVER
from bot.progress import ActivityEntry, NewcomerInfo, Progress, State
from bot.reports import render_digest, render_history, render_status, render_team, team_order
from bot.roadmap import Roadmap, load_roadmap
from bot.scheduler import Jobs
from bot.store import Store
from bot.team import Team, TeamState
from tests.unit.common import POLICY, ROADMAP_FILE

MENTOR = "@mentor:example.org"
TEAM_ROOM = "!team:example.org"


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


NOW = at(5, 10)


@pytest.fixture(scope="module")
def roadmap() -> Roadmap:
    return load_roadmap(ROADMAP_FILE)


def info(user_id: str, last_activity_at: datetime, **changes: object) -> NewcomerInfo:
    """A newcomer on step 1.1 with a mentor, nothing done, all well unless `changes` say not."""
    base = NewcomerInfo(
        user_id=user_id,
        enrolled_at=at(2, 9),
        current_step="bash-terminal",
        last_activity_at=last_activity_at,
        mentor=MENTOR,
        paused_until=None,
        timezone=None,
        finished_at=None,
        last_nudged_at=None,
        nudges_in_row=0,
        nudges_total=0,
        done=0,
        skipped=0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def lines(body: str) -> list[str]:
    return body.splitlines()


def row_order(body: str, users: list[str]) -> list[str]:
    """The users in the order their rows appear in a plain-text table."""
    return sorted(users, key=lambda u: body.index(u))


def tbody_rows(html: str) -> list[str]:
    [tbody] = re.findall(r"<tbody>(.*?)</tbody>", html)
    return re.findall(r"<tr>(.*?)</tr>", tbody)


# --- render_status -----------------------------------------------------------------------


def test_status_flags_an_idle_unmentored_newcomer(roadmap: Roadmap) -> None:
    newbie = info("@newbie:example.org", at(2, 9), mentor=None, nudges_in_row=2, nudges_total=3)
    body = render_status(roadmap, newbie, Progress(newbie.user_id), POLICY, NOW).body
    assert lines(body)[0] == (
        "⚠ Needs attention: idle 3 working days; 2 unanswered nudges; no mentor"
    )
    assert "• Idle: 3 working days" in body
    assert "• Nudges sent: 3 (2 unanswered)" in body
    assert "• Mentor: none assigned" in body
    assert "• Time zone: Europe/Berlin (team default)" in body


def test_status_of_a_newcomer_on_track(roadmap: Roadmap) -> None:
    progress = Progress(
        "@newbie:example.org",
        current_id="basic-internet",
        states={"bash-terminal": State.DONE, "web-server": State.SKIPPED},
    )
    newbie = info(
        "@newbie:example.org",
        at(5, 8),
        current_step="basic-internet",
        done=1,
        skipped=1,
        timezone="Asia/Tokyo",
    )
    reply = render_status(roadmap, newbie, progress, POLICY, NOW)
    body = reply.body
    assert lines(body)[0] == "✓ On track."
    assert "Newcomer @newbie:example.org: 1 done, 1 skipped, of 52 steps" in body
    assert "2/3 1. Basic Internet, Operating System and Frontend Knowledge" in body
    assert "• Current step: 1.2 Basic Internet" in body
    assert "• Last activity: 2026-03-05 08:00 UTC" in body
    assert "• Idle: 0 working days" in body
    assert f"• Mentor: {MENTOR}" in body
    assert "• Paused: no" in body
    assert "• Time zone: Asia/Tokyo" in body
    assert f'<a href="https://matrix.to/#/{MENTOR}">{MENTOR}</a>' in reply.html


def test_status_of_a_finished_newcomer_celebrates(roadmap: Roadmap) -> None:
    progress = Progress("@done:example.org", states={s.id: State.DONE for s in roadmap})
    done = info("@done:example.org", at(2, 9), finished_at=at(3, 12), mentor=None, done=52)
    body = render_status(roadmap, done, progress, POLICY, NOW).body
    assert lines(body)[0] == "🎉 Finished the roadmap on 2026-03-03."
    assert "• Current step: — (finished)" in body


def test_status_of_a_paused_newcomer_says_until_when(roadmap: Roadmap) -> None:
    away = info("@away:example.org", at(2, 9), paused_until=at(10, 9))
    body = render_status(roadmap, away, Progress(away.user_id), POLICY, NOW).body
    assert lines(body)[0] == "✓ On track."  # idle, but paused: not a reason
    assert "• Paused: until 2026-03-10" in body

    forever = replace(away, paused_until=PAUSED_FOREVER)
    body = render_status(roadmap, forever, Progress(away.user_id), POLICY, NOW).body
    assert "• Paused: until !resume" in body

    over = replace(away, paused_until=at(4, 9))  # ran out yesterday
    body = render_status(roadmap, over, Progress(away.user_id), POLICY, NOW).body
    assert lines(body)[0] == "⚠ Needs attention: idle 3 working days"
    assert "• Paused: no" in body


# --- the pace forecast in render_status ---------------------------------------------------


def test_status_of_a_newcomer_behind_pace(roadmap: Roadmap) -> None:
    # Only three steps left on their roadmap (2d, 1d, 2d), the first done; enrolled Monday 23
    # February 10:00 in Berlin: 8 working days and an hour to NOW, for 2 days of estimate.
    keep = {"bash-terminal", "basic-internet", "web-server"}
    states = {s.id: State.SKIPPED for s in roadmap if s.id not in keep}
    progress = Progress(
        "@slow:example.org",
        enrolled_at=at(2, 9) - timedelta(weeks=1),
        current_id="basic-internet",
        states=states | {"bash-terminal": State.DONE},
    )
    slow = info("@slow:example.org", at(5, 8), enrolled_at=progress.enrolled_at, done=1, skipped=49)
    body = render_status(roadmap, slow, progress, POLICY, NOW).body
    assert lines(body)[0] == "⚠ Needs attention: behind pace by 6 working days"
    # 3 days left at 4.02 working days each: 12.06 working days from Thursday 11:00.
    assert "• Finish: around Mon 23 Mar at their pace; Mon 2 Mar by the estimates alone" in body
    assert lines(body)[-1] == "• Pace: behind by 6 working days"

    tolerant = replace(POLICY, behind_pace_after=timedelta(days=7))
    assert lines(render_status(roadmap, slow, progress, tolerant, NOW).body)[0] == "✓ On track."


def test_status_of_a_newcomer_ahead_and_of_one_without_a_pace(roadmap: Roadmap) -> None:
    # 5 days of estimate done in 3 working days and an hour.
    done = {"bash-terminal": State.DONE, "basic-internet": State.DONE, "web-server": State.DONE}
    quick = Progress("@quick:example.org", enrolled_at=at(2, 9), states=done)
    body = render_status(roadmap, info(quick.user_id, at(5, 8), done=3), quick, POLICY, NOW).body
    assert lines(body)[0] == "✓ On track."
    assert "• Finish: around " in body and "• Pace: ahead by 1 working day" in body

    fresh = Progress("@fresh:example.org", enrolled_at=at(2, 9))
    body = render_status(roadmap, info(fresh.user_id, at(5, 8)), fresh, POLICY, NOW).body
    assert lines(body)[-2:] == [
        # 83.75 working days of estimate from Monday 2 March 10:00 in Berlin.
        "• Finish: not enough to go on yet; Fri 26 Jun by the estimates alone",
        "• Pace: behind by 3 working days",
    ]


def test_status_of_a_finished_newcomer_has_no_forecast(roadmap: Roadmap) -> None:
    progress = Progress(
        "@done:example.org", enrolled_at=at(2, 9), states={s.id: State.DONE for s in roadmap}
    )
    done = info("@done:example.org", at(2, 9), finished_at=at(3, 12), done=52)
    body = render_status(roadmap, done, progress, POLICY, NOW).body
    assert "Finish:" not in body and "Pace:" not in body


# --- render_history ----------------------------------------------------------------------


def entry(n: int, action: str, step_id: str | None, when: datetime, **kw: str) -> ActivityEntry:
    user = "@newbie:example.org"
    return ActivityEntry(
        n, user, user, action, step_id, kw.get("from_state"), kw.get("to_state"), when
    )


def test_history_lists_entries_newest_first_in_words(roadmap: Roadmap) -> None:
    entries = [  # as the store gives them: newest first
        entry(5, "undo", "basic-internet", at(4, 12), to_state="pending"),
        entry(4, "skip", "basic-internet", at(4, 11)),
        entry(3, "goto", "gone-step", at(3, 10)),
        entry(2, "done", "bash-terminal", at(2, 10)),
        entry(1, "enroll", None, at(2, 9)),
    ]
    body = render_history(roadmap, "@newbie:example.org", entries).body
    assert lines(body) == [
        "Recent activity of @newbie:example.org (newest first):",
        "• 2026-03-04 12:00 undid; back to pending: 1.2 Basic Internet",
        "• 2026-03-04 11:00 skipped 1.2 Basic Internet",
        "• 2026-03-03 10:00 moved to gone-step",  # a step since removed keeps its id
        "• 2026-03-02 10:00 marked done 1.1 Bash/Terminal",
        "• 2026-03-02 09:00 enrolled",
    ]


def test_history_of_someone_without_activity(roadmap: Roadmap) -> None:
    body = render_history(roadmap, "@newbie:example.org", []).body
    assert lines(body)[-1] == "Nothing yet."


# --- render_team -------------------------------------------------------------------------


def team() -> list[NewcomerInfo]:
    return [
        info("@recent:example.org", at(5, 9)),
        info("@finished:example.org", at(1, 9), finished_at=at(2, 9), done=52),
        info("@oldest:example.org", at(2, 9), nudges_in_row=2),
        info("@middle:example.org", at(3, 9), mentor=None),
        info("@paused:example.org", at(4, 9), paused_until=at(12, 9)),
    ]


def test_team_order_is_most_idle_first_and_finished_last() -> None:
    assert [i.user_id for i in team_order(team())] == [
        "@oldest:example.org",
        "@middle:example.org",
        "@paused:example.org",
        "@recent:example.org",
        "@finished:example.org",  # idle longest of all, but done
    ]


def test_team_table_plain_text(roadmap: Roadmap) -> None:
    body = render_team(roadmap, team(), POLICY, NOW).body
    assert lines(body)[0] == "5 newcomers — most idle first, finished last:"
    assert lines(body)[1].split() == [
        "newcomer", "steps", "current", "idle", "nudges", "mentor", "status"
    ]  # fmt: skip
    users = [i.user_id for i in team()]
    assert row_order(body, users) == [i.user_id for i in team_order(team())]
    rows = {line.split()[0]: line for line in lines(body)[2:]}
    assert rows["@oldest:example.org"].split() == [
        "@oldest:example.org", "0/52", "1.1", "3d", "2", MENTOR,
        "⚠", "idle", "3", "working", "days;", "2", "unanswered", "nudges",
    ]  # fmt: skip
    assert rows["@middle:example.org"].endswith("⚠ idle 2 working days; no mentor")
    assert rows["@paused:example.org"].endswith("paused")
    assert rows["@recent:example.org"].endswith("ok")
    assert rows["@finished:example.org"].split()[1:3] == ["52/52", "finished"]


def test_team_table_html_has_a_header_and_one_row_per_newcomer(roadmap: Roadmap) -> None:
    html = render_team(roadmap, team(), POLICY, NOW).html
    assert html.count("<table>") == 1
    assert re.findall(r"<th>(.*?)</th>", html) == [
        "newcomer", "steps", "current", "idle", "nudges", "mentor", "status"
    ]  # fmt: skip
    rows = tbody_rows(html)
    assert len(rows) == 5
    first_cells = [re.findall(r"<td>(.*?)</td>", row)[0] for row in rows]
    assert first_cells == [i.user_id for i in team_order(team())]


def test_nobody_enrolled_yet(roadmap: Roadmap) -> None:
    reply = render_team(roadmap, [], POLICY, NOW)
    assert reply.body == "Nobody is enrolled yet."
    assert "<table>" not in reply.html


EVIL = "@<script>alert(1)</script>:example.org"


def test_user_controlled_strings_are_escaped_everywhere(roadmap: Roadmap) -> None:
    evil = info(EVIL, at(2, 9), mentor="@<b>boss</b>:example.org", timezone="<i>Mars</i>")
    htmls = [
        render_team(roadmap, [evil], POLICY, NOW).html,
        render_status(roadmap, evil, Progress(EVIL), POLICY, NOW).html,
        render_history(roadmap, EVIL, [entry(1, "<img src=x>", "<svg>", at(2, 9))]).html,
        render_digest(roadmap, [evil], {EVIL: 1}, POLICY, NOW, NOW - timedelta(days=7)).html,
    ]
    for html in htmls:
        for tag in ("<script>", "<b>", "<i>", "<img", "<svg>"):
            assert tag not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;boss&lt;/b&gt;" in htmls[0]
    assert "&lt;i&gt;Mars&lt;/i&gt;" in htmls[1]


# --- render_digest -----------------------------------------------------------------------

SINCE = NOW - timedelta(days=7)


def test_digest_has_progressed_stuck_and_finished_sections(roadmap: Roadmap) -> None:
    infos = [
        info("@busy:example.org", at(5, 9), done=5),
        info("@stuck:example.org", at(2, 9), nudges_in_row=1),
        info("@fresh-grad:example.org", at(4, 9), finished_at=at(4, 9), done=50, skipped=2),
        info("@old-grad:example.org", at(1, 9), finished_at=at(1, 9) - timedelta(days=30)),
        info("@calm:example.org", at(5, 8)),
    ]
    done_this_week = {"@busy:example.org": 3, "@fresh-grad:example.org": 4}
    reply = render_digest(roadmap, infos, done_this_week, POLICY, NOW, SINCE)

    assert lines(reply.body)[:2] == [
        "Weekly onboarding digest — since 2026-02-26",
        "1 progressed, 1 stuck, 1 finished.",
    ]
    rows = [line.split(None, 2) for line in lines(reply.body)[3:]]
    assert rows == [
        ["@busy:example.org", "progressed", "+3 steps, 5/52 in all"],
        ["@stuck:example.org", "stuck", "idle 3 working days; 1 unanswered nudge"],
        ["@fresh-grad:example.org", "finished", "2026-03-04"],
    ]
    assert len(tbody_rows(reply.html)) == 3


def test_stuck_newcomers_in_the_digest_are_most_idle_first(roadmap: Roadmap) -> None:
    infos = [info("@b:example.org", at(3, 9)), info("@a:example.org", at(2, 9))]
    body = render_digest(roadmap, infos, {}, POLICY, NOW, SINCE).body
    assert row_order(body, ["@a:example.org", "@b:example.org"]) == [
        "@a:example.org",
        "@b:example.org",
    ]
    assert "0 progressed, 2 stuck, 0 finished." in body


def test_a_quiet_week(roadmap: Roadmap) -> None:
    body = render_digest(roadmap, [info("@calm:example.org", at(5, 8))], {}, POLICY, NOW, SINCE)
    assert body.body == (
        "Weekly onboarding digest — since 2026-02-26\n"
        "A quiet week: nobody progressed, got stuck or finished."
    )


# --- the weekly digest job ---------------------------------------------------------------


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "bot.db")
    yield s
    await s.close()


async def progressing_newcomer(store: Store, roadmap: Roadmap, user: str) -> None:
    """Enrolled on Monday; marks 1.1 and 1.2 done this week, then undoes 1.2."""

    async def record(change: object, when: datetime) -> None:
        assert isinstance(change, rules.Change)
        await store.commit_command(
            event_id=f"${user}-{when.isoformat()}",
            room_id="!r:x",
            sender=user,
            changes=[change],
            messages=[],
            at=when,
        )

    await record(rules.enroll(roadmap, Progress(user)), at(2, 9))
    for step, when in ((roadmap.steps[0], at(3, 9)), (roadmap.steps[1], at(4, 9))):
        await record(rules.finish(roadmap, await store.load_progress(user), step, State.DONE), when)
    await record(rules.undo(await store.load_progress(user)), at(4, 10))


def digest_jobs(store: Store, roadmap: Roadmap, policy: NudgePolicy) -> Jobs:
    return Jobs(
        store=store,
        team=Team(
            TeamState(roadmap, policy, configured_mentors=frozenset({MENTOR, "@other:example.org"}))
        ),
        prefix="!",
        clock=ServerClock(lambda: NOW),
    )


async def test_the_digest_job_posts_once_to_the_team_room(store: Store, roadmap: Roadmap) -> None:
    await progressing_newcomer(store, roadmap, "@busy:example.org")
    jobs = digest_jobs(store, roadmap, replace(POLICY, team_room=TEAM_ROOM))

    await jobs.digest()
    await jobs.digest()  # a second run the same day queues nothing new

    [item] = await store.outbox()
    assert item.room_id == TEAM_ROOM
    body = item.content["body"]
    assert "Weekly onboarding digest — since 2026-02-26" in body
    # Two steps were marked done this week and one of them was undone.
    assert "@busy:example.org  progressed  +1 step, 1/52 in all" in body


async def test_without_a_team_room_each_mentor_gets_the_digest(
    store: Store, roadmap: Roadmap
) -> None:
    await progressing_newcomer(store, roadmap, "@busy:example.org")
    await digest_jobs(store, roadmap, POLICY).digest()
    items = await store.outbox()
    assert [i.to_user for i in items] == ["@mentor:example.org", "@other:example.org"]
    assert items[0].content == items[1].content
