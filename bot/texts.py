"""Every sentence a user reads, in one catalogue: review, change or translate the wording here.

Code refers to a text by name; the layouts (render.py, reports.py) only arrange texts into
messages. A fixed text is a constant; one with variable parts is a function that takes them
and returns a `Line` (the parts of one line, emphasis included), a list of lines, or a whole
`Reply`. Log lines and operators' errors are not texts: they stay with their code.

The pure rules take their words from here too: why an !undo is refused
(`progress.UndoRefused.reason`) and what is wrong with a duration or a time zone
(`timeutil.BadValue.problem`, which config errors share). So this module imports none of the
rules at run time (the types it takes are for the type checker only) and reads a step's state
by its word. The one exception is a command's one-line help: it is written where the command is
declared (commands/), since that declaration is what `!help` and the usage lines are made from.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import TYPE_CHECKING

from bot.markup import Bold, Code, Inline, Line, Link, Mention, Message, Reply, echo, text
from bot.roadmap import Step

if TYPE_CHECKING:  # the rules import this module: it must not import them
    from bot.forecast import Forecast
    from bot.progress import State

# --- words used throughout ---------------------------------------------------------------

BLANK = "—"  # in place of a missing date, step or mentor


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def step_name(step: Step) -> str:
    return f"{step.number} {step.title}"


def format_duration(delta: timedelta) -> str:
    """Say a duration coarsely, in the largest unit that fits, rounded down: "3 days"."""
    if delta < timedelta(0):
        return "-" + format_duration(-delta)
    seconds = int(delta.total_seconds())
    weeks, days, hours, minutes = (
        seconds // 604800,
        seconds // 86400,
        seconds // 3600,
        seconds // 60,
    )
    if weeks:
        return plural(weeks, "week")
    if days:
        return plural(days, "day")
    if hours:
        return f"{hours} h"
    if minutes:
        return f"{minutes} min"
    return f"{seconds} s"


# --- newcomers: a step, their progress, the roadmap -----------------------------------------

TOPICS = "Topics:"
RESOURCES = "Resources:"


def step_heading(step: Step, steps: int) -> Line:
    return (
        Bold(step_name(step)),
        f" — step {step.index + 1} of {steps}, section {step.section_title}",
    )


def step_summary(summary: str, estimate: str, state: State) -> str:
    """The step's summary, then how long it takes and how far the newcomer got; may be empty."""
    details = []
    if estimate:
        details.append(f"about {estimate}")
    if state.value != "pending":
        details.append(f"you marked it {state.value}")
    return summary + (f" ({', '.join(details)})" if details else "")


def step_done_hint(prefix: str) -> Line:
    return (
        "When you have finished it, say ",
        Code(f"{prefix}done"),
        "; to put it aside, ",
        Code(f"{prefix}skip"),
        ".",
    )


def roadmap_finished(done: int, skipped: int, total: int, prefix: str) -> Line:
    return (
        "🎉 You have been through the whole roadmap: ",
        f"{done} of {total} steps done, {skipped} skipped. ",
        "Say ",
        Code(f"{prefix}roadmap"),
        " to look back, or ",
        Code(f"{prefix}goto <step>"),
        " to revisit one.",
    )


def progress_heading(done: int, skipped: int, total: int) -> Line:
    return (Bold("Your progress: "), f"{done} done, {skipped} skipped, of {total} steps")


def progress_current(step: Step) -> Line:
    return ("Current step: ", Bold(step_name(step)))


# The pace forecast (forecast.py): in !progress for the newcomer, in !status for mentors.

WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
FORECAST_UNKNOWN = "not enough to go on yet"  # no estimated step done yet
FORECAST_TOO_FAR = "too far off to put a date on"  # beyond forecast.HORIZON


def day_name(day: date, today: date) -> str:
    """A day as people say it, "Tue 14 Apr", with the year when it is not this one."""
    name = f"{WEEKDAY_NAMES[day.weekday()]} {day.day} {MONTH_NAMES[day.month - 1]}"
    return name if day.year == today.year else f"{name} {day.year}"


def progress_forecast(outlook: Forecast) -> Line:
    """For the newcomer: when they finish at their pace so far."""
    if outlook.finish is not None:
        return (
            "📅 Going by the estimates, at your pace you'll finish around ",
            Bold(day_name(outlook.finish, outlook.today)),
            ".",
        )
    if outlook.too_far:
        return (f"📅 At your pace so far, the finish is {FORECAST_TOO_FAR}.",)
    return (f"📅 When you'll finish: {FORECAST_UNKNOWN}; ask again once you've done a step.",)


def behind_by(days: int) -> str:
    """Whole working days behind the estimates; negative: ahead of them."""
    if days > 0:
        return f"behind by {plural(days, 'working day')}"
    if days < 0:
        return f"ahead by {plural(-days, 'working day')}"
    return "as estimated"


def status_forecast(outlook: Forecast) -> list[Line]:
    """For mentors: the finish at the newcomer's pace and by the estimates, and the gap."""
    today = outlook.today
    if outlook.finish is not None:
        at_pace = f"around {day_name(outlook.finish, today)} at their pace"
    else:
        at_pace = FORECAST_TOO_FAR if outlook.too_far else FORECAST_UNKNOWN
    expected = outlook.expected
    by_estimates = day_name(expected, today) if expected is not None else FORECAST_TOO_FAR
    return [
        ("Finish: ", f"{at_pace}; {by_estimates} by the estimates alone"),
        ("Pace: ", behind_by(outlook.behind_days)),
    ]


def roadmap_heading(title: str, steps: int) -> Line:
    return (Bold(title), f" — {steps} steps")


ROADMAP_CURRENT = " ← current"  # after the current step in the list
ROADMAP_LEGEND = "✓ done  ◐ learning  ↷ skipped  ○ to do"  # render.STATE_MARK's marks


# --- newcomers: answers to their commands ---------------------------------------------------


def welcome(title: str, steps: int, sections: int, prefix: str) -> Line:
    return (
        Bold(f"Welcome to the {title}!"),
        f" It has {steps} steps in {sections} sections. ",
        "I'll keep track of where you are. Say ",
        Code(f"{prefix}help"),
        " at any time to see what I can do.",
    )


RESOURCES_AFTER_FINISH = text("You have finished the roadmap; name a step to see its resources.")


def no_links(topics: Sequence[str]) -> Line:
    return ("This step has no links; its topics are: ", ", ".join(topics) or BLANK, ".")


NOTHING_LEFT_TO_FINISH = text("You have finished every step already. 🎉")


def already_marked(step: Step, state: State) -> str:
    return f"{step_name(step)} is already marked {state.value}."


def marked(step: Step, state: State) -> Line:
    """A step marked done or skipped."""
    verb = "✓ Done:" if state.value == "done" else "↷ Skipped:"
    return (f"{verb} ", Bold(step_name(step)), ".")


JUST_FINISHED = "That was the last step. Congratulations on finishing the roadmap! 🎉"
NEXT_UP = "Next up:"
NOTHING_LEFT_TO_START = text("You have finished every step; name one to work on it again.")


def working_on(step: Step) -> Line:
    return ("◐ Working on ", Bold(step_name(step)), ". Good luck!")


def undone(name: str, state: str) -> Line:
    """`name`: the step's, or its id when the roadmap no longer has it."""
    return ("↶ Undone: ", Bold(name), f" is {state} again.")


# Why !undo did nothing (progress.UndoRefused.reason).
NOTHING_TO_UNDO = "There is nothing to undo: no step has been marked done or skipped."


def undo_overtaken(now: State, expected: State) -> str:
    """The last done/skip's step has changed state since (by !doing, say)."""
    return f"The last change can't be undone: that step is now {now}, not {expected}."


MOVED = "➜ Moved to this step."


def paused(duration: timedelta | None, prefix: str) -> Reply:
    """Reminders paused for `duration`, or until the newcomer resumes them (None)."""
    when = (
        f"until you say {prefix}resume" if duration is None else f"for {format_duration(duration)}"
    )
    return text("⏸ Reminders paused ", when, ". Your progress stays as it is.")


RESUMED = text("▶ Reminders are back on. Welcome back!")
NO_MENTOR_YET = "You have no mentor assigned yet. The team's mentors are:"  # then the list
NO_MENTOR_AT_ALL = text("You have no mentor assigned yet; ask your team lead.")


def your_mentor(mentor: str) -> Reply:
    return text("Your mentor is ", Mention(mentor), ".")


def your_timezone(zone: str | None, team_zone: str, prefix: str) -> Reply:
    """The newcomer's own zone, or the team's (None)."""
    return text(
        "Your time zone is ",
        zone or f"{team_zone} (the team's default)",
        ". Change it with ",
        Code(f"{prefix}timezone Europe/Berlin"),
        ".",
    )


def timezone_set(zone: str) -> Reply:
    return text("🕑 Your time zone is now ", zone, "; reminders follow your working days there.")


# --- mentors: a newcomer's status and history, the team table -------------------------------

NO_MENTOR = "no mentor"  # a reason for attention the digest leaves out


def idle_reason(days: int, idle: timedelta) -> str:
    """In working days once there is one, else in working time."""
    return f"idle {plural(days, 'working day')}" if days else f"idle {format_duration(idle)}"


def unanswered_nudges(n: int) -> str:
    return plural(n, "unanswered nudge")


def behind_pace_reason(days: int, behind: timedelta) -> str:
    """Behind the estimates by more than nudges.behind_pace_after: in working days once there
    is one, else in working time."""
    by = plural(days, "working day") if days else format_duration(behind)
    return f"behind pace by {by}"


def reason_list(reasons: Sequence[str]) -> str:
    return "; ".join(reasons)


def paused_until(day: str) -> str:
    return f"until {day}"


def paused_until_resume(prefix: str) -> str:
    return f"until {prefix}resume"


def needs_attention(reasons: Sequence[str]) -> Line:
    return ("⚠ ", Bold("Needs attention: "), reason_list(reasons))


def finished_on(day: str) -> Line:
    return ("🎉 Finished the roadmap on ", day, ".")


ON_TRACK = "✓ On track."


def newcomer_heading(user_id: str, done: int, skipped: int, steps: int) -> Line:
    return (
        Bold("Newcomer "),
        Mention(user_id),
        f": {done} done, {skipped} skipped, of {steps} steps",
    )


def status_facts(
    *,
    step: Step | None,
    enrolled: str,
    last_activity: str,
    idle_days: int,
    nudges_total: int,
    nudges_in_row: int,
    mentor: str | None,
    paused: str | None,
    timezone: str | None,
    team_timezone: str,
) -> list[Line]:
    return [
        ("Current step: ", step_name(step) if step else "— (finished)"),
        ("Enrolled since: ", enrolled),
        ("Last activity: ", last_activity),
        ("Idle: ", plural(idle_days, "working day")),
        ("Nudges sent: ", f"{nudges_total} ({nudges_in_row} unanswered)"),
        ("Mentor: ", Mention(mentor) if mentor else "none assigned"),
        ("Paused: ", paused or "no"),
        ("Time zone: ", timezone or f"{team_timezone} (team default)"),
    ]


def history_heading(user_id: str) -> Line:
    return (Bold("Recent activity of "), Mention(user_id), " (newest first):")


HISTORY_EMPTY = "Nothing yet."
# What each action in a newcomer's history did; an action missing here shows as its name.
HISTORY_ACTIONS = {
    "enroll": "enrolled",
    "done": "marked done",
    "doing": "started",
    "skip": "skipped",
    "undo": "undid",
    "goto": "moved to",
}


def history_undid(to_state: str) -> str:
    return f"undid; back to {to_state}:"


TEAM_EMPTY = "Nobody is enrolled yet."
TEAM_COLUMNS = ("newcomer", "steps", "current", "idle", "nudges", "mentor", "status")
TEAM_FINISHED = "finished"
TEAM_PAUSED = "paused"
TEAM_OK = "ok"


def team_heading(total: int, shown: int) -> Line:
    more = "" if total == shown else f" (the {shown} most idle shown)"
    return (Bold(plural(total, "newcomer")), f" — most idle first, finished last{more}:")


def team_idle(days: int) -> str:
    return f"{days}d"


def team_attention(reasons: Sequence[str]) -> str:
    return "⚠ " + reason_list(reasons)


# --- mentors and admins: answers to their commands ------------------------------------------

# Where a mentor command asked in a shared room is answered instead.
ANSWERED_IN_DIRECT_CHAT = text(
    "I've sent you the answer in our direct chat, where only you can read it "
    "(if you're not in it yet, I've invited you)."
)


def not_enrolled(user_id: str) -> Reply:
    return text(echo(user_id), " has not enrolled in the roadmap (yet).")


FORCE_IS_FOR_ADMINS = text("Only an admin can use --force.")


def not_a_mentor(mentor: str, newcomer: str) -> Reply:
    return text(
        Mention(mentor),
        " is not a mentor, so I can't pair them with ",
        Mention(newcomer),
        ". An admin can make them a mentor, or add --force.",
    )


def mentor_assigned(mentor: str, newcomer: str) -> Reply:
    """To whoever paired them."""
    return text("🤝 ", Mention(mentor), " is now the mentor of ", Mention(newcomer), ".")


def your_new_mentor(mentor: str) -> Reply:
    """To the newcomer."""
    return text("🤝 ", Mention(mentor), " is your mentor for the roadmap: ask them anything.")


def no_nudge_needed(user_id: str) -> Reply:
    return text(f"{user_id} has finished the roadmap; no nudge needed.")


def nudged_recently(user_id: str, ago: timedelta, wait: timedelta) -> Reply:
    return text(
        "⏳ ",
        Mention(user_id),
        f" was already nudged {format_duration(ago)} ago; you can nudge again in "
        f"{format_duration(wait)}.",
    )


def nudged(user_id: str) -> Reply:
    return text("📣 Nudged ", Mention(user_id), ".")


ROADMAP_REFUSED = "✗ The new roadmap was refused; the old one stays. Problems:"  # then the list


def reloaded(steps: int, sections: int) -> Line:
    return (
        "✓ Reloaded: ",
        Bold(f"{steps} steps"),
        f" in {sections} sections. ",
        "Everyone's progress is kept (it is keyed on step ids).",
    )


STEPS_ADDED, STEPS_REMOVED, STEPS_RENAMED = "Added", "Removed", "Renamed"


def changed_steps(label: str, n: int) -> str:
    """Above the list of the steps added, removed or renamed."""
    return f"{label} ({n}):"


NO_STEPS_CHANGED = "No steps were added, removed or renamed."


def removed_progress_kept(prefix: str) -> Line:
    return (
        "Progress on removed steps stays in the database and comes back if you restore them. ",
        "Check with ",
        Code(f"{prefix}team"),
        ".",
    )


# --- nudges and digests ---------------------------------------------------------------------


def nudge(user_id: str, step: Step | None, idle: timedelta, prefix: str) -> Reply:
    m = Message().line(
        "Hi ",
        Mention(user_id),
        f", it has been {format_duration(idle)} of working time since "
        "your last step on the roadmap.",
    )
    if step is not None:
        m.line("You are on ", Code(step.number), f" {step.title}.")
        if step.resources:
            first = step.resources[0]
            m.line("A good way back in: ", Link(first.title, first.url), ".")
    m.line(
        "Say ",
        Code(f"{prefix}done"),
        " when it's finished, ",
        Code(f"{prefix}next"),
        " to see it again, or ",
        Code(f"{prefix}pause 5d"),
        " if you need a break.",
    )
    return m.reply()


def escalation(user_id: str, step: Step | None, idle: timedelta, nudges: int) -> Reply:
    """To a mentor: a newcomer has left nudges unanswered."""
    m = Message().line(
        Mention(user_id),
        f" has been idle for {format_duration(idle)} of working time and has not "
        f"answered {plural(nudges, 'nudge')}.",
    )
    if step is not None:
        m.line(f"Current step: {step_name(step)}.")
    m.line("Maybe a quick chat would help?")
    return m.reply()


def finished_announcement(user_id: str, roadmap_title: str) -> Reply:
    return text("🎉 ", Mention(user_id), f" has finished the {roadmap_title}.")


DIGEST_COLUMNS = ("newcomer", "", "details")
DIGEST_PROGRESSED = "progressed"
DIGEST_STUCK = "stuck"
DIGEST_FINISHED = "finished"
DIGEST_QUIET = "A quiet week: nobody progressed, got stuck or finished."


def digest_heading(since: str) -> Line:
    return (Bold("Weekly onboarding digest"), f" — since {since}")


def digest_counts(progressed: int, stuck: int, finished: int) -> str:
    return f"{progressed} progressed, {stuck} stuck, {finished} finished."


def digest_progress(this_week: int, finished: int, steps: int) -> str:
    return f"+{plural(this_week, 'step')}, {finished}/{steps} in all"


def digest_cut(rows: int, prefix: str) -> str:
    return f"(at most {rows} of each shown; {prefix}team has everyone)"


# --- everyone: help, errors and refusals ----------------------------------------------------

HELP_HEADING = "Here is what I can do for you:"


def help_item(line: str, summary: str) -> Line:
    """One command in !help: its usage line and its one-line help (both from its declaration)."""
    return (Code(line), f" — {summary}")


HELP_STEP_NAMES: Line = (
    "A step can be named by its number (",
    Code("2.8"),
    "), its id (",
    Code("web-server"),
    ") or a piece of its title.",
)


def unknown_command(typed: str, suggestions: Sequence[str], prefix: str) -> Reply:
    """`typed`: the command as written, prefix included; `suggestions`: close command names."""
    parts: list[Inline] = ["I don't know the command ", echo(typed), ". "]
    if suggestions:
        parts.append("Did you mean ")
        for i, name in enumerate(suggestions):
            parts += [", " if i else "", Code(f"{prefix}{name}")]
        parts.append("? ")
    parts += ["Say ", Code(f"{prefix}help"), " for the list of commands."]
    return text(*parts)


def role_refused(command: str, role: str, prefix: str) -> Reply:
    """`role`: the role's name ("mentor", "admin")."""
    return text(
        f"Sorry, {prefix}{command} is for {role}s only. Say ",
        Code(f"{prefix}help"),
        " for the commands you can use.",
    )


def usage(line: str, summary: str) -> Reply:
    """A command given without what it needs: its usage line and its one-line help."""
    return text("Usage: ", Code(line), f" — {summary}")


def more_than_expected(line: str) -> Reply:
    return text("That is more than I expected. Usage: ", Code(line))


# What is wrong with a value, said after it: "'3 days' is not a duration like ...". Config
# errors show them too, through timeutil.BadValue.
NOT_A_DURATION = "is not a duration like 30s, 45m, 12h, 3d or 1w"
DURATION_NOT_POSITIVE = "must be more than zero, like 30s, 45m, 12h, 3d or 1w"
DURATION_TOO_LONG = "is longer than a year (365d), the longest I accept"  # timeutil.MAX_DURATION
NOT_A_TIME_ZONE = "is not a time zone like Europe/Berlin"


def bad_value(typed: str, problem: str) -> Reply:
    """A duration or time zone that cannot be used; `problem` is one of the four above."""
    return text(echo(typed), f" {problem}.")


def too_long(limit: int) -> Reply:
    return text(
        f"That message is too long for a command (over {limit} characters); I have ignored it."
    )


def slow_down(limit: int, seconds: int) -> Reply:
    return text(
        f"Slow down, please: at most {limit} commands in {seconds} seconds. "
        "I'll ignore the next few."
    )


OOPS = text(
    "Sorry, something went wrong on my side with that command; it has been logged. "
    "Please try again later, or tell a mentor if it keeps happening."
)


# Naming a person (mentions.py): what could not be resolved.
UNKNOWN_PERSON = text("I don't know who that is.")


def not_a_user(typed: str, server: str) -> Reply:
    return text(echo(typed), f" is not a user; write an id like @name:{server} or a mention.")


def several_people(typed: str, users: Sequence[str]) -> Reply:
    return text(echo(typed), f" could be several people: {', '.join(users)}; write the full id.")


def nobody_called(typed: str, example: str) -> Reply:
    """`example`: the full id the name would have on the bot's server."""
    return text(
        "I don't know anyone called ",
        echo(typed),
        "; if you mean ",
        echo(example),
        ", write the full id.",
    )


# Naming a step (render.render_candidates lays out the candidates).


def unknown_step(query: str, prefix: str) -> Reply:
    return text(
        "I don't know a step called ",
        echo(query),
        ". Say ",
        Code(f"{prefix}roadmap"),
        " to see every step with its number and id.",
    )


def ambiguous_step(query: str) -> Line:
    return (echo(query), " could be more than one step; which one did you mean?")


def closest_steps(query: str) -> Line:
    return ("I don't know a step called ", echo(query), ". The closest are:")


def name_a_step(example: str) -> Line:
    return ("Name it by number or id, e.g. ", Code(example), ".")


# --- notices from the Matrix edge: invites, devices, encryption -----------------------------


def greeting(prefix: str) -> Reply:
    """In a room the bot joins on an invite, the first time."""
    return (
        Message()
        .line(
            "Hello! I'm your onboarding mentor. I walk you through the team's roadmap one "
            "step at a time and keep track of your progress."
        )
        .line(
            "Say ",
            Code(f"{prefix}start"),
            " to begin, or ",
            Code(f"{prefix}help"),
            " for commands.",
        )
        .reply()
    )


def insecure_session(device: str) -> Reply:
    return text(
        f"🔒 I don't take commands from this session ({device}): it isn't verified, "
        "so I can't be sure it's really you, and I don't share my encryption keys "
        "with it. Verify it from another of your sessions (or set up cross-signing "
        "in your client's security settings), then send the command again."
    )


# While the database cannot be written (full disk, locked, read-only, corrupt): once per room.
UNSAVED = text("⏳ I can't save progress right now; I'll answer as soon as I can.")
UNSAVED_ANSWERED = text(
    "⏳ I can't save progress right now: the answer above stands, and I'll record it as soon "
    "as I can. Anything else you send waits until then."
)


UNDECRYPTABLE = text(
    "🔒 I couldn't decrypt your message: my device never received its key. "
    "I've asked your devices for it. Please send the command again; if it keeps "
    "happening, make sure your client shares keys with unverified devices, or "
    "start a new direct chat with me."
)


# --- knowledge checks ---------------------------------------------------------------------------


def not_a_number(typed: str) -> Reply:
    return text(echo(typed), " is not a number: answer with the number of an option, e.g. 2.")


def check_question(step: Step, question: str) -> Line:
    """A check as text (its options follow, numbered): for clients without polls, and above
    the poll in those with them."""
    return ("🧠 A check on ", Bold(step_name(step)), ": ", question)


def how_to_answer(prefix: str) -> str:
    return f"Tap your answer in the poll, or say {prefix}answer N."


def check_poll_fallback(question: str, options: Sequence[str], prefix: str) -> str:
    lines = [question, *(f"{i}. {o}" for i, o in enumerate(options, 1))]
    return "\n".join([*lines, f"(answer with {prefix}answer N)"])


def checks_first(step: Step) -> Line:
    return ("Before ", Bold(step_name(step)), " is done, a quick check of what it taught.")


def no_checks(step: Step) -> Reply:
    return text(step_name(step), " has no knowledge checks yet.")


NOTHING_TO_CHECK = text("You have finished every step; name one to be checked on it.")


def no_open_check(prefix: str) -> Reply:
    return text(f"There is no question waiting for your answer: {prefix}quiz asks one.")


def option_out_of_range(typed: int, options: int) -> Reply:
    return text(f"{typed} is not one of the options: answer with a number from 1 to {options}.")


def check_answered(correct: bool, right: str, explain: str) -> Line:
    if correct:
        return ("✅ Right. ", explain)
    return ("❌ Not quite: the answer is ", Bold(right), ". ", explain)


def check_poll_ended(correct: bool) -> str:
    return "The check is answered: right." if correct else "The check is answered: not right."


def checks_line(right_first: int, asked: int) -> str:
    return f"Knowledge checks: {right_first}/{asked} right first time"


def missed_twice(step: Step, people: int) -> Line:
    return (Bold(step_name(step)), f": answered wrong twice by {plural(people, 'newcomer')}")


MISSED_TWICE_HEADING = "Topics the team could explain better (checks answered wrong twice):"
