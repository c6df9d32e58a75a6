"""Newcomer commands: walking the roadmap one step at a time."""

from __future__ import annotations

from datetime import timedelta

from bot import progress as rules
from bot import texts
from bot.commands.checks import ask, next_check
from bot.commands.registry import (
    DURATION,
    STEP,
    TIMEZONE,
    Arg,
    CommandSet,
    Ctx,
    Outcome,
    help_reply,
)
from bot.forecast import forecast
from bot.markup import Message, text
from bot.nudges import finished_message, pill
from bot.ops import PAUSED_FOREVER, MarkFinishAnnounced, Send, SetPause, SetTimezone
from bot.progress import Change, State, UndoRefused, current_step, is_finished
from bot.render import render_current, render_progress, render_roadmap, resource_items
from bot.roadmap import Step

commands = CommandSet()
OPTIONAL_STEP = Arg("step", STEP)


def _after(ctx: Ctx, change: Change | None, lead: Message) -> Outcome:
    """Reply with `lead`, then the (new) current step."""
    after = rules.apply(ctx.progress, change, ctx.now) if change else ctx.progress
    render_current(lead, ctx.roadmap, after, ctx.prefix)
    shown = current_step(ctx.roadmap, after)
    return Outcome(lead.reply(), (change,) if change else (), shows=shown.id if shown else None)


@commands.command("help", "the commands you can use, one line each", aliases=("h",), enrolls=False)
def help_(ctx: Ctx) -> Outcome:
    return Outcome(help_reply(ctx.commands, ctx.role, ctx.prefix))


@commands.command("start", "enroll in the roadmap and see the first step")
def start(ctx: Ctx) -> Outcome:
    roadmap = ctx.roadmap
    lead = Message().line(
        *texts.welcome(roadmap.title, len(roadmap), len(roadmap.sections), ctx.prefix)
    )
    return _after(ctx, None, lead)


@commands.command("next", "your current step: topics and resources", aliases=("current",))
def next_(ctx: Ctx) -> Outcome:
    return _after(ctx, None, Message())


@commands.command(
    "resources", "the resources of the current or the named step", args=[OPTIONAL_STEP]
)
def resources(ctx: Ctx, step: Step | None) -> Outcome:
    step = step or current_step(ctx.roadmap, ctx.progress)
    if step is None:
        return Outcome(texts.RESOURCES_AFTER_FINISH)
    m = Message().line(*texts.step_heading(step, len(ctx.roadmap)))
    if step.resources:
        m.bullets(resource_items(step.resources))
    else:
        m.line(*texts.no_links(step.topics))
    return Outcome(m.reply())


def _finish(ctx: Ctx, step: Step | None, state: State) -> Outcome:
    step = step or current_step(ctx.roadmap, ctx.progress)
    if step is None:
        return Outcome(texts.NOTHING_LEFT_TO_FINISH)
    change = rules.finish(ctx.roadmap, ctx.progress, step, state)
    if change is None:
        return _after(ctx, None, Message().line(texts.already_marked(step, state)))
    after = rules.apply(ctx.progress, change, ctx.now)
    lead = Message().line(*texts.marked(step, state))
    if is_finished(ctx.roadmap, after) and not is_finished(ctx.roadmap, ctx.progress):
        lead.line(texts.JUST_FINISHED)
        if ctx.progress.finish_announced_at is not None:
            return Outcome(lead.reply(), (change,))  # finished again after !undo: told once
        tell = ctx.team.told_about(ctx.progress.mentor)
        content = finished_message(ctx.sender, ctx.roadmap)
        return Outcome(
            lead.reply(),
            (change,),
            ops=(MarkFinishAnnounced(ctx.sender),),
            messages=tuple(Send(f"finished-{m}", content, to_user=m) for m in tell),
        )
    lead.line(texts.NEXT_UP)
    return _after(ctx, change, lead)


@commands.command(
    "done", "mark the current (or named) step done, then see the next", args=[OPTIONAL_STEP]
)
async def done(ctx: Ctx, step: Step | None) -> Outcome:
    target = step or current_step(ctx.roadmap, ctx.progress)
    required = ctx.team.checks_required and target and target.checks
    if required and target and not ctx.progress.state(target.id).finished:
        index = next_check(target, await ctx.reader.check_answers(ctx.sender))
        if index is not None:  # asked first; answered right, the step is done
            return ask(ctx, target, index, Message().line(*texts.checks_first(target)))
    return _finish(ctx, step, State.DONE)


@commands.command(
    "skip", "skip the current (or named) step, then see the next", args=[OPTIONAL_STEP]
)
def skip(ctx: Ctx, step: Step | None) -> Outcome:
    return _finish(ctx, step, State.SKIPPED)


@commands.command(
    "doing", "mark a step as in progress; it stays current until done", args=[OPTIONAL_STEP]
)
def doing(ctx: Ctx, step: Step | None) -> Outcome:
    step = step or current_step(ctx.roadmap, ctx.progress)
    if step is None:
        return Outcome(texts.NOTHING_LEFT_TO_START)
    change = rules.start_learning(ctx.roadmap, ctx.progress, step)
    return Outcome(text(*texts.working_on(step)), (change,) if change else ())


@commands.command("undo", "revert your last done or skip")
def undo(ctx: Ctx) -> Outcome:
    change = rules.undo(ctx.progress)
    if isinstance(change, UndoRefused):
        return Outcome(text(change.reason))  # texts.NOTHING_TO_UNDO or texts.undo_overtaken
    step = ctx.roadmap.get(change.step_id)
    name = texts.step_name(step) if step else str(change.step_id)
    return _after(ctx, change, Message().line(*texts.undone(name, str(change.to_state))))


@commands.command("goto", "make a step your current one", args=[Arg("step", STEP, required=True)])
def goto(ctx: Ctx, step: Step) -> Outcome:
    change = rules.goto(ctx.roadmap, ctx.progress, step)
    return _after(ctx, change, Message().line(texts.MOVED))


@commands.command("progress", "what you have done so far, section by section")
def progress(ctx: Ctx) -> Outcome:
    tz = ctx.policy.zone_of(ctx.progress.timezone)
    outlook = forecast(ctx.roadmap, ctx.progress, ctx.now, tz, ctx.policy.working_days)
    return Outcome(render_progress(ctx.roadmap, ctx.progress, outlook))


@commands.command("roadmap", "every section and step, with where you stand", aliases=("steps",))
def roadmap(ctx: Ctx) -> Outcome:
    return Outcome(render_roadmap(ctx.roadmap, ctx.progress))


@commands.command(
    "pause",
    "stop reminders for a while (e.g. 5d), or until you resume",
    args=[Arg("duration", DURATION)],
)
def pause(ctx: Ctx, duration: timedelta | None) -> Outcome:
    until = PAUSED_FOREVER if duration is None else ctx.now + duration
    return Outcome(texts.paused(duration, ctx.prefix), ops=(SetPause(ctx.sender, until),))


@commands.command("resume", "start reminders again after a pause")
def resume(ctx: Ctx) -> Outcome:
    return Outcome(texts.RESUMED, ops=(SetPause(ctx.sender, None),))


@commands.command("mentor", "who your mentor is")
def mentor(ctx: Ctx) -> Outcome:
    if ctx.progress.mentor is None:
        if ctx.team.mentors:
            m = Message().line(texts.NO_MENTOR_YET)
            m.bullets([[pill(u)] for u in sorted(ctx.team.mentors)])
            return Outcome(m.reply())
        return Outcome(texts.NO_MENTOR_AT_ALL)
    return Outcome(texts.your_mentor(ctx.progress.mentor))


@commands.command(
    "timezone",
    "set your time zone (Area/City) for reminders and working days",
    args=[Arg("zone", TIMEZONE)],
    aliases=("tz",),
)
def timezone(ctx: Ctx, zone: str | None) -> Outcome:
    if zone is None:
        return Outcome(
            texts.your_timezone(ctx.progress.timezone, ctx.policy.timezone.key, ctx.prefix)
        )
    return Outcome(texts.timezone_set(zone), ops=(SetTimezone(ctx.sender, zone),))
