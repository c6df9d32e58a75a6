"""Newcomer commands: walking the roadmap one step at a time."""

from __future__ import annotations

from bot import progress as rules
from bot.commands.registry import Arg, ArgKind, CommandSet, Ctx, Outcome, help_reply
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
    m = Message().line(*step_heading(step, ctx.roadmap))
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
        return Outcome(lead.reply(), (change,))
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
