"""Knowledge checks: `!quiz` asks one of a step's checks (as a poll, and as text), `!answer`
answers it. With `checks.required`, `!done` asks a step's checks first (see newcomer.py)."""

from __future__ import annotations

from bot import progress as rules
from bot import texts
from bot.commands.registry import NUMBER, STEP, Arg, CommandSet, Ctx, Outcome
from bot.markup import Message
from bot.ops import AnswerCheck, AskCheck, Mark, Send
from bot.polls import POLL_START, poll_end, poll_start
from bot.progress import CheckAnswer, State, current_step
from bot.render import render_current
from bot.roadmap import Step

commands = CommandSet()


def next_check(step: Step, answers: list[CheckAnswer]) -> int | None:
    """The first of the step's checks not answered right yet; None: all were."""
    right = {a.check for a in answers if a.step_id == step.id and a.correct}
    return next((i for i in range(len(step.checks)) if i not in right), None)


def ask(ctx: Ctx, step: Step, index: int, lead: Message | None = None) -> Outcome:
    """Check `index` of `step`, as text (the reply) and as a poll (a message after it)."""
    check = step.checks[index]
    m = (lead or Message()).line(*texts.check_question(step, check.question))
    m.numbered([(option,) for option in check.options]).line(texts.how_to_answer(ctx.prefix))
    fallback = texts.check_poll_fallback(check.question, check.options, ctx.prefix)
    poll = Send(
        "quiz",
        poll_start(check.question, check.options, fallback),
        room_id=ctx.room_id,
        event_type=POLL_START,
        mark=Mark("quiz", ctx.sender, step.id, index),
    )
    return Outcome(
        m.reply(), ops=(AskCheck(ctx.sender, step.id, index, ctx.room_id),), messages=(poll,)
    )


@commands.command(
    "quiz", "a knowledge check on the current (or named) step", args=[Arg("step", STEP)]
)
async def quiz(ctx: Ctx, step: Step | None) -> Outcome:
    step = step or current_step(ctx.roadmap, ctx.progress)
    if step is None:
        return Outcome(texts.NOTHING_TO_CHECK)
    if not step.checks:
        return Outcome(texts.no_checks(step))
    answers = await ctx.reader.check_answers(ctx.sender)
    index = next_check(step, answers)
    if index is None:  # all answered right: ask them again in turn, for practice
        index = sum(1 for a in answers if a.step_id == step.id) % len(step.checks)
    return ask(ctx, step, index)


@commands.command(
    "answer", "answer the knowledge check you were asked", args=[Arg("number", NUMBER, True)]
)
async def answer(ctx: Ctx, number: int) -> Outcome:
    asked = await ctx.reader.open_check(ctx.sender)
    step = ctx.roadmap.get(asked.step_id) if asked else None
    if asked is None or step is None or asked.check >= len(step.checks):
        return Outcome(texts.no_open_check(ctx.prefix))  # none, or the roadmap changed since
    check = step.checks[asked.check]
    if number > len(check.options):
        return Outcome(texts.option_out_of_range(number, len(check.options)))
    correct = number - 1 == check.answer
    m = Message().line(*texts.check_answered(correct, check.options[check.answer], check.explain))
    answered = AnswerCheck(ctx.sender, step.id, asked.check, correct)
    ended = (
        (
            Send(
                "poll-end",
                poll_end(asked.poll_event_id, texts.check_poll_ended(correct)),
                room_id=asked.room_id,
                event_type="org.matrix.msc3381.poll.end",
            ),
        )
        if asked.poll_event_id
        else ()
    )
    if not ctx.team.checks_required or ctx.progress.state(step.id).finished:
        return Outcome(m.reply(), ops=(answered,), messages=ended)
    # Required checks: the next one, or the step done once all are answered right.
    answers = [
        *await ctx.reader.check_answers(ctx.sender),
        CheckAnswer(step.id, asked.check, correct, ctx.now),
    ]
    index = next_check(step, answers)
    if index is not None:
        more = ask(ctx, step, index, m)
        return Outcome(more.reply, ops=(answered, *more.ops), messages=(*ended, *more.messages))
    change = rules.finish(ctx.roadmap, ctx.progress, step, State.DONE)
    if change is None:
        return Outcome(m.reply(), ops=(answered,), messages=ended)
    after = rules.apply(ctx.progress, change, ctx.now)
    m.line(*texts.marked(step, State.DONE)).line(texts.NEXT_UP)
    render_current(m, ctx.roadmap, after, ctx.prefix)
    shown = current_step(ctx.roadmap, after)
    return Outcome(
        m.reply(), (change,), ops=(answered,), messages=ended, shows=shown.id if shown else None
    )
