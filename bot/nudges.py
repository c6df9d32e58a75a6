"""Nudge rules: who needs attention, whom to nudge now, and how a nudge is addressed. Pure.

Idle time counts working days only, judged in each newcomer's own time zone; nobody is nudged
on a day off or inside quiet hours.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from bot import texts
from bot.markup import Mention, Reply
from bot.ops import Send
from bot.roadmap import Roadmap, Step
from bot.timeutil import (
    QuietHours,
    may_nudge_now,
    parse_timezone,
    working_days_between,
    working_time_between,
)


@dataclass(frozen=True)
class NudgePolicy:
    idle_after: timedelta
    timezone: ZoneInfo
    working_days: frozenset[int]
    quiet: QuietHours | None
    escalate_after: int
    target: str  # "dm" or "team"
    team_room: str | None
    manual_cooldown: timedelta = timedelta(hours=1)  # between two !nudge of one newcomer
    # Working time behind the roadmap's estimates past which a newcomer needs attention.
    behind_pace_after: timedelta = timedelta(days=5)

    def zone_of(self, name: str | None) -> ZoneInfo:
        if name:
            try:
                return parse_timezone(name)
            except ValueError:
                pass  # a zone that vanished from tzdata: fall back to the team's
        return self.timezone

    def idle_time(self, since: datetime, now: datetime, tz: ZoneInfo) -> timedelta:
        return working_time_between(since, now, tz, self.working_days)

    def idle_days(self, since: datetime, now: datetime, tz: ZoneInfo) -> int:
        return working_days_between(since, now, tz, self.working_days)


@dataclass(frozen=True)
class Candidate:
    """The store's short list; see Store.nudge_candidates."""

    user_id: str
    current_step: str | None
    last_activity_at: datetime
    last_nudged_at: datetime | None
    timezone: str | None
    mentor: str | None
    nudges_in_row: int
    escalated: bool = False  # a mentor was told already in this idle spell


def nudge_send(policy: NudgePolicy, user_id: str, content: dict[str, object]) -> Send:
    """A nudge goes to the team room (target "team") or the newcomer's direct chat."""
    if policy.target == "team" and policy.team_room:
        return Send("nudge", content, room_id=policy.team_room)
    return Send("nudge", content, to_user=user_id)


def should_escalate(policy: NudgePolicy, candidate: Candidate) -> bool:
    """With the nudge about to go out: the streak has reached escalate_after, mentor not told."""
    return not candidate.escalated and candidate.nudges_in_row + 1 >= policy.escalate_after


def idle_if_due(policy: NudgePolicy, candidate: Candidate, now: datetime) -> timedelta | None:
    """The idle working time if a nudge is due now, else None.

    Due: idle for idle_after, not nudged within it, and a fine moment in the newcomer's zone.
    """
    tz = policy.zone_of(candidate.timezone)
    if not may_nudge_now(now, tz, policy.working_days, policy.quiet):
        return None
    last = candidate.last_nudged_at
    if last is not None and policy.idle_time(last, now, tz) < policy.idle_after:
        return None
    idle = policy.idle_time(candidate.last_activity_at, now, tz)
    return idle if idle >= policy.idle_after else None


def due(policy: NudgePolicy, candidate: Candidate, now: datetime) -> bool:
    return idle_if_due(policy, candidate, now) is not None


def select(
    policy: NudgePolicy, candidates: Iterable[Candidate], now: datetime
) -> list[tuple[Candidate, timedelta]]:
    """The candidates due a nudge now, each with its idle working time."""
    found = ((c, idle_if_due(policy, c, now)) for c in candidates)
    return [(c, idle) for c, idle in found if idle is not None]


def attention_reasons(
    policy: NudgePolicy,
    *,
    last_activity_at: datetime,
    timezone: str | None,
    nudges_in_row: int,
    mentor: str | None,
    finished: bool,
    paused: bool,
    now: datetime,
    behind: timedelta | None = None,
) -> list[str]:
    """Why a mentor should look at this newcomer; empty when all is well.

    `behind`: working time behind the estimates (forecast.Forecast.behind), None if unknown.
    Like idle time, it is no reason while the newcomer is paused.
    """
    if finished:
        return []
    reasons = []
    tz = policy.zone_of(timezone)
    if not paused:
        idle = policy.idle_time(last_activity_at, now, tz)
        if idle >= policy.idle_after:
            reasons.append(texts.idle_reason(policy.idle_days(last_activity_at, now, tz), idle))
        if behind is not None and behind > policy.behind_pace_after:
            reasons.append(texts.behind_pace_reason(behind // timedelta(days=1), behind))
    if nudges_in_row:
        reasons.append(texts.unanswered_nudges(nudges_in_row))
    if mentor is None:
        reasons.append(texts.NO_MENTOR)
    return reasons


def pill(user_id: str) -> Mention:
    return Mention(user_id)


def notify_content(reply: Reply, user_id: str) -> dict[str, object]:
    """A message that notifies exactly `user_id` (an intentional mention, MSC3952).

    m.text, not m.notice: Synapse's default push rule .m.rule.suppress_notices silences every
    notice before any mention rule is looked at, so a notice never notifies anyone.
    """
    content: dict[str, object] = dict(reply.content())
    content["msgtype"] = "m.text"
    content["m.mentions"] = {"user_ids": [user_id]}
    return content


def quiet_content(reply: Reply) -> dict[str, object]:
    """A notice that notifies nobody, whoever it names."""
    content: dict[str, object] = dict(reply.content())
    content["m.mentions"] = {}
    return content


def nudge_message(
    roadmap: Roadmap, user_id: str, step: Step | None, idle: timedelta, prefix: str
) -> dict[str, object]:
    return notify_content(texts.nudge(user_id, step, idle, prefix), user_id)


def escalation_message(
    user_id: str, step: Step | None, idle: timedelta, nudges: int, mentor_id: str
) -> dict[str, object]:
    """The note to one mentor (each gets their own, so it notifies them and nobody else)."""
    return notify_content(texts.escalation(user_id, step, idle, nudges), mentor_id)


def finished_message(user_id: str, roadmap: Roadmap) -> dict[str, object]:
    return quiet_content(texts.finished_announcement(user_id, roadmap.title))
