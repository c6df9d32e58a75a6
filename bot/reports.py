"""Mentors' views of their newcomers: status, history, the team table, the weekly digest. Pure.

The words are texts.py's; this lays them out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from bot import texts
from bot.forecast import Forecast, forecast
from bot.markup import Code, Inline, Message, Reply
from bot.nudges import NudgePolicy, attention_reasons
from bot.ops import PAUSED_FOREVER
from bot.progress import (
    ActivityEntry,
    CheckAnswer,
    NewcomerInfo,
    Progress,
    State,
    current_step,
)
from bot.render import section_bars
from bot.roadmap import Roadmap


def _day(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d") if at else texts.BLANK


def _pause_end(info: NewcomerInfo, now: datetime) -> datetime | None:
    """When the newcomer's pause ends (PAUSED_FOREVER: when they resume); None if not paused."""
    if info.paused_until is None or info.paused_until <= now:
        return None
    return info.paused_until


def _paused(info: NewcomerInfo, now: datetime, prefix: str) -> str | None:
    end = _pause_end(info, now)
    if end is None:
        return None
    return (
        texts.paused_until_resume(prefix)
        if end >= PAUSED_FOREVER
        else texts.paused_until(_day(end))
    )


def reasons_for(
    info: NewcomerInfo, policy: NudgePolicy, now: datetime, outlook: Forecast | None = None
) -> list[str]:
    """`outlook`: the newcomer's forecast; without it, being behind pace is no reason."""
    return attention_reasons(
        policy,
        last_activity_at=info.last_activity_at,
        timezone=info.timezone,
        nudges_in_row=info.nudges_in_row,
        mentor=info.mentor,
        finished=info.finished_at is not None,
        paused=_pause_end(info, now) is not None,
        now=now,
        behind=outlook.behind if outlook else None,
    )


States = Mapping[str, Mapping[str, State]]  # newcomer -> step id -> state


def team_reasons(
    roadmap: Roadmap, info: NewcomerInfo, policy: NudgePolicy, now: datetime, states: States
) -> list[str]:
    """`reasons_for` a row of a team view, behind pace included (from the step states)."""
    progress = Progress(
        info.user_id,
        enrolled_at=info.enrolled_at,
        current_id=info.current_step,
        states=states.get(info.user_id, {}),
    )
    tz = policy.zone_of(info.timezone)
    return reasons_for(info, policy, now, forecast(roadmap, progress, now, tz, policy.working_days))


def render_status(
    roadmap: Roadmap,
    info: NewcomerInfo,
    progress: Progress,
    policy: NudgePolicy,
    now: datetime,
    *,
    prefix: str = "!",
    answers: Sequence[CheckAnswer] = (),
) -> Reply:
    """`prefix`: the chat's command prefix, for the commands the view names; `answers`: the
    newcomer's answers to knowledge checks, oldest first."""
    tz = policy.zone_of(info.timezone)
    outlook = forecast(roadmap, progress, now, tz, policy.working_days)
    reasons = reasons_for(info, policy, now, outlook)
    m = Message()
    if reasons:
        m.line(*texts.needs_attention(reasons))
    elif info.finished_at:
        m.line(*texts.finished_on(_day(info.finished_at)))
    else:
        m.line(texts.ON_TRACK)
    m.line(*texts.newcomer_heading(info.user_id, info.done, info.skipped, len(roadmap)))
    m.bullets(section_bars(roadmap, progress))
    facts = texts.status_facts(
        step=current_step(roadmap, progress),
        enrolled=_day(info.enrolled_at),
        last_activity=info.last_activity_at.strftime("%Y-%m-%d %H:%M UTC"),
        idle_days=policy.idle_days(info.last_activity_at, now, tz),
        nudges_total=info.nudges_total,
        nudges_in_row=info.nudges_in_row,
        mentor=info.mentor,
        paused=_paused(info, now, prefix),
        timezone=info.timezone,
        team_timezone=policy.timezone.key,
    )
    if outlook is not None:
        facts += texts.status_forecast(outlook)
    if answers:
        facts.append((texts.checks_line(*right_first_time(answers)),))
    return m.bullets(facts).reply()


def right_first_time(answers: Sequence[CheckAnswer]) -> tuple[int, int]:
    """(checks answered right at the first try, checks answered at all)."""
    first: dict[tuple[str, int], bool] = {}
    for a in answers:
        first.setdefault((a.step_id, a.check), a.correct)
    return sum(first.values()), len(first)


def render_history(roadmap: Roadmap, user_id: str, entries: Sequence[ActivityEntry]) -> Reply:
    m = Message().line(*texts.history_heading(user_id))
    if not entries:
        return m.line(texts.HISTORY_EMPTY).reply()
    rows: list[list[Inline]] = []
    for e in entries:
        step = roadmap.get(e.step_id)
        name = texts.step_name(step) if step else (e.step_id or "")
        what = texts.HISTORY_ACTIONS.get(e.action, e.action)
        if e.action == "undo" and e.to_state:
            what = texts.history_undid(e.to_state)
        rows.append([Code(e.at.strftime("%Y-%m-%d %H:%M")), f" {what} {name}".rstrip()])
    return m.bullets(rows).reply()


def team_order(infos: Sequence[NewcomerInfo]) -> list[NewcomerInfo]:
    """Most idle first, finished ones last."""
    return sorted(infos, key=lambda i: (i.finished_at is not None, i.last_activity_at))


def render_team(
    roadmap: Roadmap,
    infos: Sequence[NewcomerInfo],
    policy: NudgePolicy,
    now: datetime,
    total: int | None = None,
    states: States | None = None,
) -> Reply:
    """`infos` may be the first rows of `total`, in team order already or not; `states`: their
    step states, for the pace (without them, being behind pace is no reason)."""
    if not infos:
        return Message().line(texts.TEAM_EMPTY).reply()
    total = max(total or 0, len(infos))
    m = Message().line(*texts.team_heading(total, len(infos)))
    rows: list[list[Inline]] = []
    for info in team_order(infos):
        step = roadmap.get(info.current_step)
        tz = policy.zone_of(info.timezone)
        reasons = (
            team_reasons(roadmap, info, policy, now, states)
            if states is not None
            else reasons_for(info, policy, now)
        )
        rows.append(
            [
                info.user_id,
                f"{info.done + info.skipped}/{len(roadmap)}",
                texts.TEAM_FINISHED if info.finished_at else (step.number if step else texts.BLANK),
                texts.team_idle(policy.idle_days(info.last_activity_at, now, tz)),
                str(info.nudges_in_row),
                info.mentor or texts.BLANK,
                texts.team_attention(reasons)
                if reasons
                else (texts.TEAM_PAUSED if _pause_end(info, now) else texts.TEAM_OK),
            ]
        )
    return m.table(texts.TEAM_COLUMNS, rows).reply()


DIGEST_ROWS = 25  # of each kind, so the digest stays well inside one Matrix event


def render_digest(
    roadmap: Roadmap,
    infos: Sequence[NewcomerInfo],
    done_this_week: Mapping[str, int],
    policy: NudgePolicy,
    now: datetime,
    since: datetime,
    *,
    prefix: str = "!",
    missed_twice: Mapping[str, int] | None = None,
    states: States | None = None,
) -> Reply:
    """`prefix`: the chat's command prefix, for the commands the digest names; `missed_twice`:
    step id -> newcomers who answered a check of it wrong twice this week."""
    progressed = [i for i in infos if done_this_week.get(i.user_id) and not i.finished_at]
    finished = [i for i in infos if i.finished_at and i.finished_at >= since]

    def stuck_reasons(i: NewcomerInfo) -> list[str]:
        reasons = (
            team_reasons(roadmap, i, policy, now, states)
            if states is not None
            else reasons_for(i, policy, now)
        )
        return [r for r in reasons if r != texts.NO_MENTOR]

    stuck = [
        i
        for i in team_order(infos)
        if not i.finished_at and not done_this_week.get(i.user_id) and stuck_reasons(i)
    ]
    m = Message().line(*texts.digest_heading(_day(since)))
    rows: list[list[Inline]] = []
    for i in progressed[:DIGEST_ROWS]:
        rows.append(
            [
                i.user_id,
                texts.DIGEST_PROGRESSED,
                texts.digest_progress(done_this_week[i.user_id], i.done + i.skipped, len(roadmap)),
            ]
        )
    for i in stuck[:DIGEST_ROWS]:
        rows.append([i.user_id, texts.DIGEST_STUCK, texts.reason_list(stuck_reasons(i))])
    for i in finished[:DIGEST_ROWS]:
        rows.append([i.user_id, texts.DIGEST_FINISHED, _day(i.finished_at)])
    topics = [
        texts.missed_twice(step, people)
        for step_id, people in (missed_twice or {}).items()
        if (step := roadmap.get(step_id)) is not None
    ]
    if not rows and not topics:
        return m.line(texts.DIGEST_QUIET).reply()
    if rows:
        m.line(texts.digest_counts(len(progressed), len(stuck), len(finished)))
        m.table(texts.DIGEST_COLUMNS, rows)
        if max(len(progressed), len(stuck), len(finished)) > DIGEST_ROWS:
            m.line(texts.digest_cut(DIGEST_ROWS, prefix))
    if topics:
        m.line(texts.MISSED_TWICE_HEADING).bullets(topics[:DIGEST_ROWS])
    return m.reply()
