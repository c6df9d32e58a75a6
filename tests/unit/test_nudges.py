"""Nudge rules with a frozen clock: who is due, why a mentor should look, what a nudge says.

The team works Monday to Friday in Berlin with quiet hours 20:00-08:00 and nudges after one
working day of silence. March 2026 has no daylight-saving change in Europe or Japan.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.nudges import (
    Candidate,
    NudgePolicy,
    attention_reasons,
    due,
    escalation_message,
    finished_message,
    nudge_message,
    select,
)
from bot.roadmap import Roadmap, load_roadmap
from tests.unit.common import BERLIN, POLICY, ROADMAP_FILE

TOKYO = ZoneInfo("Asia/Tokyo")
NEWCOMER = "@newbie:example.org"
MENTOR = "@mentor:example.org"


def berlin(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """A wall-clock time in Berlin in March 2026 (2 March is a Monday)."""
    return datetime(2026, 3, day, hour, minute, second, tzinfo=BERLIN)


def utc(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


def candidate(
    last_activity_at: datetime,
    *,
    user_id: str = NEWCOMER,
    timezone: str | None = None,
    last_nudged_at: datetime | None = None,
    nudges_in_row: int = 0,
) -> Candidate:
    return Candidate(
        user_id=user_id,
        current_step="bash-terminal",
        last_activity_at=last_activity_at,
        last_nudged_at=last_nudged_at,
        timezone=timezone,
        mentor=None,
        nudges_in_row=nudges_in_row,
    )


@pytest.fixture(scope="module")
def roadmap() -> Roadmap:
    return load_roadmap(ROADMAP_FILE)


# --- due / select ------------------------------------------------------------------------


def chosen(policy: NudgePolicy, candidates: list[Candidate], now: datetime) -> list[str]:
    """Whom select() picks, in order."""
    return [c.user_id for c, _idle in select(policy, candidates, now)]


def test_due_exactly_when_idle_working_time_reaches_idle_after() -> None:
    c = candidate(berlin(2, 10))  # Monday 10:00
    assert due(POLICY, c, berlin(3, 10)) is True  # Tuesday 10:00: exactly one working day
    assert due(POLICY, c, berlin(3, 9, 59, 59)) is False  # one second short


def test_weekend_does_not_count_as_idle_time() -> None:
    c = candidate(berlin(6, 17))  # Friday 17:00
    monday_morning = berlin(9, 9)
    # Friday 17:00-24:00 and Monday 00:00-09:00: 16 working hours, the weekend counts for nothing.
    assert POLICY.idle_time(c.last_activity_at, monday_morning, BERLIN) == timedelta(hours=16)
    assert due(POLICY, c, monday_morning) is False
    assert due(POLICY, c, berlin(10, 9)) is True  # Tuesday 09:00: 40 working hours


def test_nobody_is_nudged_on_a_day_off_however_long_idle() -> None:
    c = candidate(berlin(2, 10))  # idle since Monday
    assert due(POLICY, c, berlin(7, 11)) is False  # Saturday 11:00
    assert due(POLICY, c, berlin(8, 11)) is False  # Sunday 11:00
    assert due(POLICY, c, berlin(9, 11)) is True  # Monday 11:00


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ((10, 7, 59), False),
        ((10, 8, 0), True),  # quiet hours end at 08:00 (exclusive)
        ((10, 19, 59), True),
        ((10, 20, 0), False),  # and start at 20:00 (inclusive)
        ((10, 23, 30), False),
    ],
)
def test_quiet_hours_are_20_to_8_local_time(local: tuple[int, int, int], expected: bool) -> None:
    c = candidate(berlin(2, 10))
    assert due(POLICY, c, berlin(*local)) is expected


def test_quiet_hours_are_judged_in_the_newcomers_own_time_zone() -> None:
    in_berlin = candidate(berlin(2, 10), user_id="@berlin:example.org")
    in_tokyo = candidate(berlin(2, 10), user_id="@tokyo:example.org", timezone="Asia/Tokyo")

    # Tuesday 12:00 UTC: 13:00 in Berlin, 21:00 (quiet) in Tokyo.
    noon = utc(10, 12)
    assert noon.astimezone(TOKYO).hour == 21
    assert chosen(POLICY, [in_berlin, in_tokyo], noon) == [in_berlin.user_id]

    # Monday 23:30 UTC: 00:30 Tuesday (quiet) in Berlin, 08:30 Tuesday in Tokyo.
    late = utc(9, 23, 30)
    assert chosen(POLICY, [in_berlin, in_tokyo], late) == [in_tokyo.user_id]


def test_working_days_are_judged_in_the_newcomers_own_time_zone() -> None:
    policy = replace(POLICY, quiet=None)
    in_berlin = candidate(berlin(2, 10), user_id="@berlin:example.org")
    in_tokyo = candidate(berlin(2, 10), user_id="@tokyo:example.org", timezone="Asia/Tokyo")
    # Sunday 20:00 UTC is still Sunday in Berlin but already Monday 05:00 in Tokyo.
    sunday_evening = utc(8, 20)
    assert chosen(policy, [in_berlin, in_tokyo], sunday_evening) == [in_tokyo.user_id]


def test_not_nudged_again_within_idle_after_of_the_last_nudge() -> None:
    c = candidate(berlin(2, 10), last_nudged_at=berlin(4, 10), nudges_in_row=1)  # nudged Wed
    assert due(POLICY, c, berlin(5, 9, 59)) is False  # Thursday, one minute short of a day
    assert due(POLICY, c, berlin(5, 10)) is True


def test_the_weekend_does_not_count_between_nudges_either() -> None:
    c = candidate(berlin(2, 10), last_nudged_at=berlin(6, 17), nudges_in_row=1)  # Friday 17:00
    assert due(POLICY, c, berlin(9, 9)) is False  # Monday 09:00: 16 working hours later
    assert due(POLICY, c, berlin(10, 9)) is True


def test_an_unknown_stored_time_zone_falls_back_to_the_teams() -> None:
    assert POLICY.zone_of("Mars/Base") == BERLIN
    lost = candidate(berlin(2, 10), timezone="Mars/Base")
    # 19:30 UTC on Tuesday is 20:30 (quiet) in Berlin; in UTC it would not be quiet yet.
    assert due(POLICY, lost, utc(10, 19, 30)) is False
    # 07:30 UTC on Wednesday is 08:30 in Berlin; in UTC it would still be quiet.
    assert due(POLICY, lost, utc(11, 7, 30)) is True


def test_select_keeps_the_due_in_the_given_order_with_their_idle_working_time() -> None:
    idle_long = candidate(berlin(2, 10), user_id="@a:example.org")
    just_active = candidate(berlin(4, 9), user_id="@b:example.org")
    idle_too = candidate(berlin(3, 8), user_id="@c:example.org")
    assert select(POLICY, [idle_long, just_active, idle_too], berlin(4, 10)) == [
        (idle_long, timedelta(days=2)),
        (idle_too, timedelta(days=1, hours=2)),
    ]


# --- attention_reasons -------------------------------------------------------------------


def reasons(
    last_activity_at: datetime,
    now: datetime,
    *,
    nudges_in_row: int = 0,
    mentor: str | None = MENTOR,
    finished: bool = False,
    paused: bool = False,
    timezone: str | None = None,
    policy: NudgePolicy = POLICY,
    behind: timedelta | None = None,
) -> list[str]:
    return attention_reasons(
        policy,
        last_activity_at=last_activity_at,
        timezone=timezone,
        nudges_in_row=nudges_in_row,
        mentor=mentor,
        finished=finished,
        paused=paused,
        now=now,
        behind=behind,
    )


def test_a_busy_newcomer_with_a_mentor_needs_no_attention() -> None:
    assert reasons(berlin(4, 9), berlin(4, 15)) == []


def test_idle_time_is_counted_in_working_days() -> None:
    # Friday 10:00 to Wednesday 10:00: 14 h + Monday + Tuesday + 10 h = 3 working days.
    assert reasons(berlin(6, 10), berlin(11, 10)) == ["idle 3 working days"]
    assert reasons(berlin(2, 10), berlin(3, 10)) == ["idle 1 working day"]


def test_idle_less_than_a_day_is_said_in_hours() -> None:
    policy = replace(POLICY, idle_after=timedelta(hours=4))
    assert reasons(berlin(3, 9), berlin(3, 14), policy=policy) == ["idle 5 h"]


def test_unanswered_nudges_and_a_missing_mentor_are_reasons() -> None:
    assert reasons(berlin(4, 9), berlin(4, 15), nudges_in_row=1) == ["1 unanswered nudge"]
    assert reasons(berlin(2, 10), berlin(5, 10), nudges_in_row=2, mentor=None) == [
        "idle 3 working days",
        "2 unanswered nudges",
        "no mentor",
    ]


def test_a_finished_newcomer_needs_no_attention_at_all() -> None:
    assert reasons(berlin(2, 10), berlin(20, 10), nudges_in_row=4, mentor=None, finished=True) == []


def test_a_paused_newcomer_is_not_idle_but_other_reasons_stay() -> None:
    assert reasons(berlin(2, 10), berlin(20, 10), paused=True) == []
    assert reasons(berlin(2, 10), berlin(20, 10), nudges_in_row=2, mentor=None, paused=True) == [
        "2 unanswered nudges",
        "no mentor",
    ]


def test_idle_reason_uses_the_newcomers_time_zone() -> None:
    # Friday 18:00 in Berlin is already Saturday 02:00 in Tokyo, and Tuesday 17:00 in Berlin is
    # Wednesday 01:00 there: Berlin counts 6 + 24 + 17 = 47 working hours, Tokyo 24 + 24 + 1 = 49.
    friday, tuesday = berlin(6, 18), berlin(10, 17)
    assert reasons(friday, tuesday) == ["idle 1 working day"]
    assert reasons(friday, tuesday, timezone="Asia/Tokyo") == ["idle 2 working days"]


def test_behind_pace_is_a_reason_past_the_threshold_only() -> None:
    busy = berlin(4, 9), berlin(4, 15)
    assert POLICY.behind_pace_after == timedelta(days=5)  # the default
    assert reasons(*busy, behind=timedelta(days=5)) == []  # at it: not more than it
    assert reasons(*busy, behind=timedelta(days=5, minutes=1)) == ["behind pace by 5 working days"]
    assert reasons(*busy, behind=timedelta(days=8, hours=20)) == ["behind pace by 8 working days"]
    assert reasons(*busy, behind=-timedelta(days=9)) == []  # ahead
    assert reasons(*busy, behind=None) == []  # no forecast to go on


def test_behind_pace_follows_the_policy_and_waits_out_a_pause() -> None:
    policy = replace(POLICY, behind_pace_after=timedelta(hours=12))
    busy = berlin(4, 9), berlin(4, 15)
    assert reasons(*busy, policy=policy, behind=timedelta(hours=14)) == ["behind pace by 14 h"]
    assert reasons(*busy, policy=policy, behind=timedelta(hours=14), paused=True) == []
    assert reasons(*busy, policy=policy, behind=timedelta(days=9), finished=True) == []
    idle = reasons(berlin(2, 10), berlin(5, 10), policy=policy, behind=2 * timedelta(days=1))
    assert idle == ["idle 3 working days", "behind pace by 2 working days"]


# --- messages ----------------------------------------------------------------------------


def test_a_nudge_mentions_only_the_newcomer_and_names_their_step(roadmap: Roadmap) -> None:
    step = roadmap.get("web-server")
    assert step is not None
    content = nudge_message(roadmap, NEWCOMER, step, timedelta(days=3, hours=2), "!")

    # m.text: Synapse's default push rules silence every m.notice, mentions or not.
    assert content["msgtype"] == "m.text"
    assert content["m.mentions"] == {"user_ids": [NEWCOMER]}
    body, html = str(content["body"]), str(content["formatted_body"])
    assert body.startswith(f"Hi {NEWCOMER}, it has been 3 days of working time")
    assert "You are on 1.3 Web Server." in body
    first = step.resources[0]
    assert f"A good way back in: {first.title} <{first.url}>." in body
    assert f'<a href="{first.url}">' in html
    assert f'<a href="https://matrix.to/#/{NEWCOMER}">' in html
    for command in ("!done", "!next", "!pause 5d"):
        assert f"<code>{command}</code>" in html


def test_a_nudge_without_a_step_or_links_still_reads_well(roadmap: Roadmap) -> None:
    content = nudge_message(roadmap, NEWCOMER, None, timedelta(days=1), "?")
    body = str(content["body"])
    assert "You are on" not in body
    assert "A good way back in" not in body
    assert "Say ?done when it's finished" in body

    no_links = replace(roadmap.steps[0], resources=())
    body = str(nudge_message(roadmap, NEWCOMER, no_links, timedelta(days=1), "!")["body"])
    assert "You are on 1.1 Bash/Terminal." in body
    assert "A good way back in" not in body


def test_an_escalation_notifies_its_mentor_not_the_newcomer(roadmap: Roadmap) -> None:
    step = roadmap.get("docker")
    content = escalation_message(NEWCOMER, step, timedelta(days=4), 3, MENTOR)

    assert content["msgtype"] == "m.text"
    assert content["m.mentions"] == {"user_ids": [MENTOR]}
    body = str(content["body"])
    assert body.startswith(
        f"{NEWCOMER} has been idle for 4 days of working time and has not answered 3 nudges."
    )
    assert "Current step: 11.1 Docker." in body


def test_a_finished_note_is_a_quiet_notice(roadmap: Roadmap) -> None:
    content = finished_message(NEWCOMER, roadmap)
    assert content["msgtype"] == "m.notice"
    assert content["m.mentions"] == {}
