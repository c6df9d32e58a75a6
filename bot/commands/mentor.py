"""Mentor and admin commands: who is moving, who is stuck, pairing, nudging, reloading."""

from __future__ import annotations

from bot.commands.registry import Arg, ArgKind, CommandSet, Ctx, Outcome, Role
from bot.nudges import nudge_message, nudge_send, pill
from bot.ops import RecordNudge, Send, SetMentor
from bot.progress import NewcomerInfo, current_step, is_finished
from bot.render import Bold, Code, Message, echo, text
from bot.reports import render_history, render_status, render_team
from bot.roadmap import Roadmap, RoadmapError
from bot.timeutil import format_duration

commands = CommandSet()
TEAM_ROWS = 50  # a Matrix event holds 64 KiB; a longer table is unreadable in a chat anyway
USER = Arg("user", ArgKind.USER, required=True)


async def _newcomer(ctx: Ctx, user_id: str) -> NewcomerInfo | None:
    found = await ctx.services.store.newcomers([s.id for s in ctx.roadmap], user_id)
    return found[0] if found else None


def _not_enrolled(user_id: str) -> Outcome:
    return Outcome(text(echo(user_id), " has not enrolled in the roadmap (yet)."))


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
    progress = await ctx.services.store.load_progress(user)
    return Outcome(render_status(ctx.roadmap, info, progress, ctx.services.policy, ctx.now))


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
    entries = await ctx.services.store.history(user, limit=20)
    return Outcome(render_history(ctx.roadmap, user, entries))


@commands.command(
    "team",
    "every newcomer in one table, most idle first",
    role=Role.MENTOR,
    enrolls=False,
    private=True,
)
async def team(ctx: Ctx) -> Outcome:
    store = ctx.services.store
    infos = await store.newcomers([s.id for s in ctx.roadmap], limit=TEAM_ROWS)
    total = await store.count_newcomers()
    return Outcome(render_team(ctx.roadmap, infos, ctx.services.policy, ctx.now, total))


@commands.command(
    "assign",
    "pair a mentor (default: you) with a newcomer; an admin may --force a non-mentor",
    args=[
        Arg("newcomer", ArgKind.USER, required=True),
        Arg("mentor", ArgKind.USER),
        Arg("force", ArgKind.FLAG),
    ],
    role=Role.MENTOR,
    enrolls=False,
)
async def assign(ctx: Ctx, newcomer: str, mentor: str | None, force: bool) -> Outcome:
    mentor = mentor or ctx.sender
    if force and ctx.role < Role.ADMIN:
        return Outcome(text("Only an admin can use --force."), outcome="refused")
    if await _newcomer(ctx, newcomer) is None:
        return _not_enrolled(newcomer)
    if not force and ctx.role_of(mentor) < Role.MENTOR:
        # The newcomer would be told to trust whoever was named.
        return Outcome(
            text(
                pill(mentor),
                " is not a mentor, so I can't pair them with ",
                pill(newcomer),
                ". An admin can make them a mentor, or add --force.",
            ),
            outcome="refused",
        )
    note = Message().line("🤝 ", pill(mentor), " is now the mentor of ", pill(newcomer), ".")
    tell = Message().line(
        "🤝 ", pill(mentor), " is your mentor for the roadmap: ask them anything."
    )
    return Outcome(
        note.reply(),
        ops=(SetMentor(newcomer, mentor),),
        messages=(Send("assigned", tell.reply().content(), to_user=newcomer),),
    )


@commands.command(
    "nudge", "send a newcomer a nudge now", args=[USER], role=Role.MENTOR, enrolls=False
)
async def nudge(ctx: Ctx, user: str) -> Outcome:
    info = await _newcomer(ctx, user)
    if info is None:
        return _not_enrolled(user)
    progress = await ctx.services.store.load_progress(user)
    if is_finished(ctx.roadmap, progress):
        return Outcome(text(f"{user} has finished the roadmap; no nudge needed."))
    policy = ctx.services.policy
    if info.last_nudged_at is not None:
        ago = ctx.now - info.last_nudged_at
        if ago < policy.manual_cooldown:
            return Outcome(
                text(
                    "⏳ ",
                    pill(user),
                    f" was already nudged {format_duration(ago)} ago; you can nudge again in "
                    f"{format_duration(policy.manual_cooldown - ago)}.",
                ),
                outcome="refused",
            )
    step = current_step(ctx.roadmap, progress)
    idle = policy.idle_time(info.last_activity_at, ctx.now, policy.zone_of(info.timezone))
    content = nudge_message(ctx.roadmap, user, step, idle, ctx.prefix)
    return Outcome(
        text("📣 Nudged ", pill(user), "."),
        ops=(RecordNudge(user, "nudge", step.id if step else None, ctx.sender),),
        messages=(nudge_send(policy, user, content),),
    )


def _diff(old: Roadmap, new: Roadmap) -> tuple[list[str], list[str], list[str]]:
    old_ids, new_ids = {s.id for s in old}, {s.id for s in new}
    added = [f"{s.number} {s.title}" for s in new if s.id not in old_ids]
    removed = [f"{s.number} {s.title} [{s.id}]" for s in old if s.id not in new_ids]
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
        new = ctx.services.load_roadmap()
    except RoadmapError as exc:
        m = Message().line("✗ The new roadmap was refused; the old one stays. Problems:")
        m.bullets([[line] for line in str(exc).splitlines()[:20]])
        return Outcome(m.reply())
    added, removed, renamed = _diff(ctx.roadmap, new)
    m = Message().line(
        "✓ Reloaded: ",
        Bold(f"{len(new)} steps"),
        f" in {len(new.sections)} sections. ",
        "Everyone's progress is kept (it is keyed on step ids).",
    )
    for label, items in (("Added", added), ("Removed", removed), ("Renamed", renamed)):
        if items:
            m.line(f"{label} ({len(items)}):").bullets([[i] for i in items[:30]])
    if not (added or removed or renamed):
        m.line("No steps were added, removed or renamed.")
    if removed:
        m.line(
            "Progress on removed steps stays in the database and comes back if you restore them. ",
            "Check with ",
            Code(f"{ctx.prefix}team"),
            ".",
        )
    return Outcome(m.reply(), new_roadmap=new)
