"""Mentors' views of their newcomers: status, history, the team table, the weekly digest. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from bot.nudges import NudgePolicy, attention_reasons, pill
from bot.ops import PAUSED_FOREVER
from bot.progress import ActivityEntry, NewcomerInfo, Progress, current_step, section_progress
from bot.render import Bold, Code, Inline, Message, Reply, bar
from bot.roadmap import Roadmap


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _day(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d") if at else "—"


def _paused(info: NewcomerInfo, now: datetime) -> str | None:
    if info.paused_until is None or info.paused_until <= now:
        return None
    return (
        "until !resume"
        if info.paused_until >= PAUSED_FOREVER
        else f"until {_day(info.paused_until)}"
    )


def reasons_for(info: NewcomerInfo, policy: NudgePolicy, now: datetime) -> list[str]:
    return attention_reasons(
        policy,
        last_activity_at=info.last_activity_at,
        timezone=info.timezone,
        nudges_in_row=info.nudges_in_row,
        mentor=info.mentor,
        finished=info.finished_at is not None,
        paused=_paused(info, now) is not None,
        now=now,
    )


def render_status(
    roadmap: Roadmap, info: NewcomerInfo, progress: Progress, policy: NudgePolicy, now: datetime
) -> Reply:
    reasons = reasons_for(info, policy, now)
    m = Message()
    if reasons:
        m.line("⚠ ", Bold("Needs attention: "), "; ".join(reasons))
    elif info.finished_at:
        m.line("🎉 Finished the roadmap on ", _day(info.finished_at), ".")
    else:
        m.line("✓ On track.")
    m.line(
        Bold("Newcomer "),
        pill(info.user_id),
        f": {info.done} done, {info.skipped} skipped, of {len(roadmap)} steps",
    )
    m.bullets(
        [
            Code(f"{bar(sp.done + sp.skipped, sp.total)} {sp.done + sp.skipped:>2}/{sp.total}"),
            f" {sp.section.number}. {sp.section.title}",
        ]
        for sp in section_progress(roadmap, progress)
    )
    step = current_step(roadmap, progress)
    tz = policy.zone_of(info.timezone)
    idle = policy.idle_days(info.last_activity_at, now, tz)
    m.bullets(
        [
            ["Current step: ", f"{step.number} {step.title}" if step else "— (finished)"],
            ["Enrolled since: ", _day(info.enrolled_at)],
            ["Last activity: ", info.last_activity_at.strftime("%Y-%m-%d %H:%M UTC")],
            ["Idle: ", f"{idle} working day{'s' if idle != 1 else ''}"],
            ["Nudges sent: ", f"{info.nudges_total} ({info.nudges_in_row} unanswered)"],
            ["Mentor: ", pill(info.mentor) if info.mentor else "none assigned"],
            ["Paused: ", _paused(info, now) or "no"],
            ["Time zone: ", info.timezone or f"{policy.timezone.key} (team default)"],
        ]
    )
    return m.reply()


ACTION_WORDS = {
    "enroll": "enrolled",
    "done": "marked done",
    "doing": "started",
    "skip": "skipped",
    "undo": "undid",
    "goto": "moved to",
}


def render_history(roadmap: Roadmap, user_id: str, entries: Sequence[ActivityEntry]) -> Reply:
    m = Message().line(Bold("Recent activity of "), pill(user_id), " (newest first):")
    if not entries:
        return m.line("Nothing yet.").reply()
    rows: list[list[Inline]] = []
    for e in entries:
        step = roadmap.get(e.step_id)
        name = f"{step.number} {step.title}" if step else (e.step_id or "")
        what = ACTION_WORDS.get(e.action, e.action)
        if e.action == "undo" and e.to_state:
            what = f"undid; back to {e.to_state}:"
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
) -> Reply:
    """`infos` may be the first rows of `total`, in team order already or not."""
    if not infos:
        return Message().line("Nobody is enrolled yet.").reply()
    total = max(total or 0, len(infos))
    shown = "" if total == len(infos) else f" (the {len(infos)} most idle shown)"
    m = Message().line(
        Bold(plural(total, "newcomer")), f" — most idle first, finished last{shown}:"
    )
    rows: list[list[Inline]] = []
    for info in team_order(infos):
        step = roadmap.get(info.current_step)
        tz = policy.zone_of(info.timezone)
        reasons = reasons_for(info, policy, now)
        rows.append(
            [
                info.user_id,
                f"{info.done + info.skipped}/{len(roadmap)}",
                "finished" if info.finished_at else (step.number if step else "—"),
                f"{policy.idle_days(info.last_activity_at, now, tz)}d",
                str(info.nudges_in_row),
                info.mentor or "—",
                ("⚠ " + "; ".join(reasons))
                if reasons
                else ("paused" if _paused(info, now) else "ok"),
            ]
        )
    return m.table(
        ["newcomer", "steps", "current", "idle", "nudges", "mentor", "status"], rows
    ).reply()


DIGEST_ROWS = 25  # of each kind, so the digest stays well inside one Matrix event


def render_digest(
    roadmap: Roadmap,
    infos: Sequence[NewcomerInfo],
    done_this_week: Mapping[str, int],
    policy: NudgePolicy,
    now: datetime,
    since: datetime,
) -> Reply:
    progressed = [i for i in infos if done_this_week.get(i.user_id) and not i.finished_at]
    finished = [i for i in infos if i.finished_at and i.finished_at >= since]

    def stuck_reasons(i: NewcomerInfo) -> list[str]:
        return [r for r in reasons_for(i, policy, now) if r != "no mentor"]

    stuck = [
        i
        for i in team_order(infos)
        if not i.finished_at and not done_this_week.get(i.user_id) and stuck_reasons(i)
    ]
    m = Message().line(Bold("Weekly onboarding digest"), f" — since {_day(since)}")
    rows: list[list[Inline]] = []
    for i in progressed[:DIGEST_ROWS]:
        rows.append(
            [
                i.user_id,
                "progressed",
                f"+{plural(done_this_week[i.user_id], 'step')}, "
                f"{i.done + i.skipped}/{len(roadmap)} in all",
            ]
        )
    for i in stuck[:DIGEST_ROWS]:
        rows.append([i.user_id, "stuck", "; ".join(stuck_reasons(i))])
    for i in finished[:DIGEST_ROWS]:
        rows.append([i.user_id, "finished", _day(i.finished_at)])
    if not rows:
        return m.line("A quiet week: nobody progressed, got stuck or finished.").reply()
    m.line(f"{len(progressed)} progressed, {len(stuck)} stuck, {len(finished)} finished.")
    m.table(["newcomer", "", "details"], rows)
    if max(len(progressed), len(stuck), len(finished)) > DIGEST_ROWS:
        m.line(f"(at most {DIGEST_ROWS} of each shown; !team has everyone)")
    return m.reply()
