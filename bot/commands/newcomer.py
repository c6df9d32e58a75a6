"""Newcomer commands: walking the roadmap one step at a time."""

from __future__ import annotations

from datetime import timedelta

from bot import progress as rules
from bot.commands.registry import Arg, ArgKind, CommandSet, Ctx, Outcome, help_reply
from bot.nudges import finished_message, pill
from bot.ops import PAUSED_FOREVER, MarkFinishAnnounced, Send, SetPause, SetTimezone
from bot.progress import Change, State, UndoRefused, current_step, is_finished
from bot.render import (
    Bold,
    Code,
    Message,
    render_current,
    render_progress,
    render_roadmap,
    resource_items,
    step_heading,
    text,
)
from bot.roadmap import Step
from bot.timeutil import format_duration

commands = CommandSet()
STEP = Arg("step", ArgKind.STEP)


def _after(ctx: Ctx, change: Change | None, lead: Message) -> Outcome:
    """Reply with `lead`, then the (new) current step."""
    after = rules.apply(ctx.progress, change, ctx.now) if change else ctx.progress
    render_current(lead, ctx.roadmap, after, ctx.prefix)
    return Outcome(lead.reply(), (change,) if change else ())


@commands.command("help", "the commands you can use, one line each", aliases=("h",), enrolls=False)
def help_(ctx: Ctx) -> Outcome:
    return Outcome(help_reply(ctx.commands, ctx.role, ctx.prefix))


@commands.command("start", "enroll in the roadmap and see the first step")
def start(ctx: Ctx) -> Outcome:
    lead = Message().line(
        Bold(f"Welcome to the {ctx.roadmap.title}!"),
        f" It has {len(ctx.roadmap)} steps in {len(ctx.roadmap.sections)} sections. ",
        "I'll keep track of where you are. Say ",
        Code(f"{ctx.prefix}help"),
        " at any time to see what I can do.",
    )
    return _after(ctx, None, lead)


@commands.command("next", "your current step: topics and resources", aliases=("current",))
def next_(ctx: Ctx) -> Outcome:
    return _after(ctx, None, Message())


@commands.command("resources", "the resources of the current or the named step", args=[STEP])
def resources(ctx: Ctx, step: Step | None) -> Outcome:
    step = step or current_step(ctx.roadmap, ctx.progress)
    if step is None:
        return Outcome(text("You have finished the roadmap; name a step to see its resources."))
    m = Message().line(*step_heading(step, len(ctx.roadmap)))
    if step.resources:
        m.bullets(resource_items(step.resources))
    else:
        m.line("This step has no links; its topics are: ", ", ".join(step.topics) or "—", ".")
    return Outcome(m.reply())


def _finish(ctx: Ctx, step: Step | None, state: State, verb: str) -> Outcome:
    step = step or current_step(ctx.roadmap, ctx.progress)
    if step is None:
        return Outcome(text("You have finished every step already. 🎉"))
    change = rules.finish(ctx.roadmap, ctx.progress, step, state)
    if change is None:
        lead = Message().line(f"{step.number} {step.title} is already marked {state.value}.")
        return _after(ctx, None, lead)
    after = rules.apply(ctx.progress, change, ctx.now)
    lead = Message().line(f"{verb} ", Bold(f"{step.number} {step.title}"), ".")
    if is_finished(ctx.roadmap, after) and not is_finished(ctx.roadmap, ctx.progress):
        lead.line("That was the last step. Congratulations on finishing the roadmap! 🎉")
        if ctx.progress.finish_announced_at is not None:
            return Outcome(lead.reply(), (change,))  # finished again after !undo: told once
        mentor = ctx.progress.mentor
        tell = [mentor] if mentor else sorted(ctx.services.mentors)
        content = finished_message(ctx.sender, ctx.roadmap)
        return Outcome(
            lead.reply(),
            (change,),
            ops=(MarkFinishAnnounced(ctx.sender),),
            messages=tuple(Send(f"finished-{m}", content, to_user=m) for m in tell),
        )
    lead.line("Next up:")
    return _after(ctx, change, lead)


@commands.command("done", "mark the current (or named) step done, then see the next", args=[STEP])
def done(ctx: Ctx, step: Step | None) -> Outcome:
    return _finish(ctx, step, State.DONE, "✓ Done:")


@commands.command("skip", "skip the current (or named) step, then see the next", args=[STEP])
def skip(ctx: Ctx, step: Step | None) -> Outcome:
    return _finish(ctx, step, State.SKIPPED, "↷ Skipped:")


@commands.command("doing", "mark a step as in progress; it stays current until done", args=[STEP])
def doing(ctx: Ctx, step: Step | None) -> Outcome:
    step = step or current_step(ctx.roadmap, ctx.progress)
    if step is None:
        return Outcome(text("You have finished every step; name one to work on it again."))
    change = rules.start_learning(ctx.roadmap, ctx.progress, step)
    lead = Message().line("◐ Working on ", Bold(f"{step.number} {step.title}"), ". Good luck!")
    return Outcome(lead.reply(), (change,) if change else ())


@commands.command("undo", "revert your last done or skip")
def undo(ctx: Ctx) -> Outcome:
    change = rules.undo(ctx.progress)
    if isinstance(change, UndoRefused):
        return Outcome(text(change.reason))
    step = ctx.roadmap.get(change.step_id)
    name = f"{step.number} {step.title}" if step else str(change.step_id)
    lead = Message().line("↶ Undone: ", Bold(name), f" is {change.to_state} again.")
    return _after(ctx, change, lead)


@commands.command("goto", "make a step your current one", args=[Arg("step", ArgKind.STEP, True)])
def goto(ctx: Ctx, step: Step) -> Outcome:
    change = rules.goto(ctx.roadmap, ctx.progress, step)
    return _after(ctx, change, Message().line("➜ Moved to this step."))


@commands.command("progress", "what you have done so far, section by section")
def progress(ctx: Ctx) -> Outcome:
    return Outcome(render_progress(ctx.roadmap, ctx.progress))


@commands.command("roadmap", "every section and step, with where you stand", aliases=("steps",))
def roadmap(ctx: Ctx) -> Outcome:
    return Outcome(render_roadmap(ctx.roadmap, ctx.progress))


@commands.command(
    "pause",
    "stop reminders for a while (e.g. 5d), or until you resume",
    args=[Arg("duration", ArgKind.DURATION)],
)
def pause(ctx: Ctx, duration: timedelta | None) -> Outcome:
    if duration is None:
        until, when = PAUSED_FOREVER, f"until you say {ctx.prefix}resume"
    else:
        until, when = ctx.now + duration, f"for {format_duration(duration)}"
    reply = text("⏸ Reminders paused ", when, ". Your progress stays as it is.")
    return Outcome(reply, ops=(SetPause(ctx.sender, until),))


@commands.command("resume", "start reminders again after a pause")
def resume(ctx: Ctx) -> Outcome:
    return Outcome(
        text("▶ Reminders are back on. Welcome back!"), ops=(SetPause(ctx.sender, None),)
    )


@commands.command("mentor", "who your mentor is")
def mentor(ctx: Ctx) -> Outcome:
    if ctx.progress.mentor is None:
        if ctx.services.mentors:
            m = Message().line("You have no mentor assigned yet. The team's mentors are:")
            m.bullets([[pill(u)] for u in sorted(ctx.services.mentors)])
            return Outcome(m.reply())
        return Outcome(text("You have no mentor assigned yet; ask your team lead."))
    return Outcome(text("Your mentor is ", pill(ctx.progress.mentor), "."))


@commands.command(
    "timezone",
    "set your time zone (Area/City) for reminders and working days",
    args=[Arg("zone", ArgKind.TIMEZONE)],
    aliases=("tz",),
)
def timezone(ctx: Ctx, zone: str | None) -> Outcome:
    if zone is None:
        shown = ctx.progress.timezone or f"{ctx.services.policy.timezone.key} (the team's default)"
        return Outcome(
            text(
                "Your time zone is ",
                shown,
                ". Change it with ",
                Code(f"{ctx.prefix}timezone Europe/Berlin"),
                ".",
            )
        )
    return Outcome(
        text("🕑 Your time zone is now ", zone, "; reminders follow your working days there."),
        ops=(SetTimezone(ctx.sender, zone),),
    )
