"""Mentor and admin commands: who is moving, who is stuck, pairing, nudging, reloading."""

from __future__ import annotations

from bot import texts
from bot.commands.registry import FLAG, PERSON, Arg, CommandSet, Ctx, Outcome, Role
from bot.markup import Message
from bot.nudges import nudge_message, nudge_send
from bot.ops import RecordNudge, Send, SetMentor
from bot.progress import NewcomerInfo, current_step, is_finished
from bot.reports import render_history, render_status, render_team
from bot.roadmap import Roadmap, RoadmapError

commands = CommandSet()
TEAM_ROWS = 50  # a Matrix event holds 64 KiB; a longer table is unreadable in a chat anyway
USER = Arg("user", PERSON, required=True)


async def _newcomer(ctx: Ctx, user_id: str) -> NewcomerInfo | None:
    found = await ctx.reader.newcomers([s.id for s in ctx.roadmap], user_id)
    return found[0] if found else None


def _not_enrolled(user_id: str) -> Outcome:
    return Outcome(texts.not_enrolled(user_id))


@commands.command(
    "status",
    "a newcomer's progress, idle time and whether they need attention",
    args=[USER],
    role=Role.MENTOR,
    enrolls=False,
    private=True,
)
async def status(ctx: Ctx, user: str) -> Outcome:
    info = await _newcomer(ctx, user)
    if info is None:
        return _not_enrolled(user)
    progress = await ctx.reader.load_progress(user)
    answers = await ctx.reader.check_answers(user)
    return Outcome(
        render_status(
            ctx.roadmap, info, progress, ctx.policy, ctx.now, prefix=ctx.prefix, answers=answers
        )
    )


@commands.command(
    "history",
    "a newcomer's recent activity, newest first",
    args=[USER],
    role=Role.MENTOR,
    enrolls=False,
    private=True,
)
async def history(ctx: Ctx, user: str) -> Outcome:
    if await _newcomer(ctx, user) is None:
        return _not_enrolled(user)
    entries = await ctx.reader.history(user, limit=20)
    return Outcome(render_history(ctx.roadmap, user, entries))


@commands.command(
    "team",
    "every newcomer in one table, most idle first",
    role=Role.MENTOR,
    enrolls=False,
    private=True,
)
async def team(ctx: Ctx) -> Outcome:
    infos = await ctx.reader.newcomers([s.id for s in ctx.roadmap], limit=TEAM_ROWS)
    total = await ctx.reader.count_newcomers()
    states = await ctx.reader.states_of(i.user_id for i in infos)
    return Outcome(render_team(ctx.roadmap, infos, ctx.policy, ctx.now, total, states))


@commands.command(
    "assign",
    "pair a mentor (default: you) with a newcomer; an admin may --force a non-mentor",
    args=[
        Arg("newcomer", PERSON, required=True),
        Arg("mentor", PERSON),
        Arg("force", FLAG),
    ],
    role=Role.MENTOR,
    enrolls=False,
)
async def assign(ctx: Ctx, newcomer: str, mentor: str | None, force: bool) -> Outcome:
    mentor = mentor or ctx.sender
    if force and ctx.role < Role.ADMIN:
        return Outcome(texts.FORCE_IS_FOR_ADMINS, outcome="refused")
    if await _newcomer(ctx, newcomer) is None:
        return _not_enrolled(newcomer)
    if not force and ctx.role_of(mentor) < Role.MENTOR:
        # The newcomer would be told to trust whoever was named.
        return Outcome(texts.not_a_mentor(mentor, newcomer), outcome="refused")
    tell = texts.your_new_mentor(mentor).content()
    return Outcome(
        texts.mentor_assigned(mentor, newcomer),
        ops=(SetMentor(newcomer, mentor),),
        messages=(Send("assigned", tell, to_user=newcomer),),
    )


@commands.command(
    "nudge", "send a newcomer a nudge now", args=[USER], role=Role.MENTOR, enrolls=False
)
async def nudge(ctx: Ctx, user: str) -> Outcome:
    info = await _newcomer(ctx, user)
    if info is None:
        return _not_enrolled(user)
    progress = await ctx.reader.load_progress(user)
    if is_finished(ctx.roadmap, progress):
        return Outcome(texts.no_nudge_needed(user))
    policy = ctx.policy
    if info.last_nudged_at is not None:
        ago = ctx.now - info.last_nudged_at
        if ago < policy.manual_cooldown:
            wait = policy.manual_cooldown - ago
            return Outcome(texts.nudged_recently(user, ago, wait), outcome="refused")
    step = current_step(ctx.roadmap, progress)
    idle = policy.idle_time(info.last_activity_at, ctx.now, policy.zone_of(info.timezone))
    content = nudge_message(ctx.roadmap, user, step, idle, ctx.prefix)
    return Outcome(
        texts.nudged(user),
        ops=(RecordNudge(user, "nudge", step.id if step else None, ctx.sender),),
        messages=(nudge_send(policy, user, content),),
    )


def _diff(old: Roadmap, new: Roadmap) -> tuple[list[str], list[str], list[str]]:
    old_ids, new_ids = {s.id for s in old}, {s.id for s in new}
    added = [texts.step_name(s) for s in new if s.id not in old_ids]
    removed = [f"{texts.step_name(s)} [{s.id}]" for s in old if s.id not in new_ids]
    renamed = [
        f"{o.title} → {n.title}"
        for o in old
        if (n := new.get(o.id)) is not None and n.title != o.title
    ]
    return added, removed, renamed


@commands.command(
    "reload", "reload roadmap.yaml and keep everyone's progress", role=Role.ADMIN, enrolls=False
)
def reload(ctx: Ctx) -> Outcome:
    try:
        new = ctx.load_roadmap()
    except RoadmapError as exc:
        m = Message().line(texts.ROADMAP_REFUSED)
        m.bullets([[line] for line in str(exc).splitlines()[:20]])
        return Outcome(m.reply())
    added, removed, renamed = _diff(ctx.roadmap, new)
    m = Message().line(*texts.reloaded(len(new), len(new.sections)))
    for label, items in (
        (texts.STEPS_ADDED, added),
        (texts.STEPS_REMOVED, removed),
        (texts.STEPS_RENAMED, renamed),
    ):
        if items:
            m.line(texts.changed_steps(label, len(items))).bullets([[i] for i in items[:30]])
    if not (added or removed or renamed):
        m.line(texts.NO_STEPS_CHANGED)
    if removed:
        m.line(*texts.removed_progress_kept(ctx.prefix))
    return Outcome(m.reply(), new_roadmap=new)
