"""Commands are declared once: name, aliases, arguments, role and one-line help.

The router, `!help`, usage errors and "did you mean" suggestions all read these declarations.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from bot import texts
from bot.markup import Message, Reply
from bot.mentions import Resolved, resolve_users
from bot.ops import Op, Send
from bot.progress import (
    ActivityEntry,
    Change,
    CheckAnswer,
    NewcomerInfo,
    OpenCheck,
    Progress,
    State,
)
from bot.render import render_candidates
from bot.roadmap import Roadmap, Step, find_step
from bot.team import Role, TeamState
from bot.timeutil import BadValue, parse_duration, parse_timezone

if TYPE_CHECKING:
    from bot.nudges import NudgePolicy

__all__ = ["Role"]  # re-exported: commands and the Matrix edge name roles from here

MAX_COMMAND_LENGTH = 2000


class Reader(Protocol):
    """What a handler may read from the store; writing is the dispatcher's, after the handler
    returns. The store is one, but a handler sees only this."""

    async def load_progress(self, user_id: str) -> Progress: ...

    async def history(self, user_id: str, limit: int = 20) -> list[ActivityEntry]: ...

    async def newcomers(
        self, step_ids: Iterable[str], user_id: str | None = None, limit: int = -1
    ) -> list[NewcomerInfo]: ...

    async def count_newcomers(self) -> int: ...

    async def users_with_localpart(self, localpart: str) -> list[str]: ...

    async def open_check(self, user_id: str) -> OpenCheck | None: ...

    async def check_answers(self, user_id: str) -> list[CheckAnswer]: ...

    async def states_of(self, user_ids: Iterable[str]) -> dict[str, dict[str, State]]: ...


@dataclass(frozen=True)
class Ctx:
    """What a command handler may look at. It reads; the store writes the returned changes."""

    team: TeamState
    reader: Reader
    prefix: str
    sender: str
    room_id: str
    now: datetime
    role: Role
    progress: Progress
    commands: CommandSet
    server_name: str
    load_roadmap: Callable[[], Roadmap]  # what !reload reads
    formatted_body: str | None = None

    @property
    def roadmap(self) -> Roadmap:
        return self.team.roadmap

    @property
    def policy(self) -> NudgePolicy:
        return self.team.policy

    def role_of(self, user_id: str) -> Role:
        return self.team.role_of(user_id)


# --- argument parsers: declared with the command, checked against its handler -----------------


class Parser:
    """One kind of argument: it takes its share of what is left of a command's arguments and
    turns it into the value the handler gets (`type`), or raises UsageError with a reply that
    says why not. This base takes the rest of the line, as free text."""

    type: Any = str
    # Takes its share before the others do, wherever it is written (--flags).
    first: bool = False

    async def take(self, arg: Arg, given: Arguments) -> Any:
        if not given.left:
            given.missing(arg)
            return None
        return await self.parse(self.cut(given), given.ctx)

    def cut(self, given: Arguments) -> str:
        """The part of the arguments this parser reads, taken from them."""
        return given.take_rest()

    async def parse(self, raw: str, ctx: Ctx) -> Any:
        return raw

    def usage(self, arg: Arg) -> str:
        return f"<{arg.name}>" if arg.required else f"[{arg.name}]"

    def handler_type(self, arg: Arg) -> Any:
        """The type the handler's parameter must declare."""
        return self.type if arg.required else self.type | None


class WordParser(Parser):
    """Takes one word."""

    def cut(self, given: Arguments) -> str:
        return given.take_word()


class TextParser(Parser):
    """Free text; takes the rest of the line."""


class StepParser(Parser):
    """A step id, number or title fragment; takes the rest of the line."""

    type = Step

    async def parse(self, raw: str, ctx: Ctx) -> Step:
        found = find_step(ctx.roadmap, raw)
        if found.step is None:
            raise UsageError(render_candidates(raw, found.candidates, found.ambiguous, ctx.prefix))
        return found.step


class DurationParser(WordParser):
    """30s, 45m, 12h, 3d, 1w."""

    type = timedelta

    async def parse(self, raw: str, ctx: Ctx) -> timedelta:
        try:
            return parse_duration(raw)
        except BadValue as exc:
            raise UsageError(texts.bad_value(raw, exc.problem)) from None


class TimezoneParser(WordParser):
    """Area/City; the handler gets the zone's key."""

    async def parse(self, raw: str, ctx: Ctx) -> str:
        try:
            return parse_timezone(raw).key
        except BadValue as exc:
            raise UsageError(texts.bad_value(raw, exc.problem)) from None


class NumberParser(WordParser):
    """A whole number, 1 or more."""

    type = int

    async def parse(self, raw: str, ctx: Ctx) -> int:
        if not raw.isdecimal() or int(raw) < 1:
            raise UsageError(texts.not_a_number(raw))
        return int(raw)


class FlagParser(Parser):
    """--name anywhere in the arguments: True when given, never missing."""

    type, first = bool, True

    async def take(self, arg: Arg, given: Arguments) -> bool:
        return given.take_all(f"--{arg.name}")

    def usage(self, arg: Arg) -> str:
        return f"[--{arg.name}]"

    def handler_type(self, arg: Arg) -> Any:
        return bool


class PersonParser(Parser):
    """An MXID, a mention pill or an unambiguous localpart. All of a command's people are
    resolved together, in the order written, from the rest of the line (a pill's text may hold
    spaces); each person argument then takes the next one."""

    async def take(self, arg: Arg, given: Arguments) -> str | None:
        if given.people is None:
            given.people = await self._resolve(given)
            given.take_rest()
        if not given.people:
            given.missing(arg)
            return None
        found = given.people.pop(0)
        if found.user_id is None:
            raise UsageError(found.problem or texts.UNKNOWN_PERSON)
        return found.user_id

    async def _resolve(self, given: Arguments) -> list[Resolved]:
        """A name without a server is looked up among the mentors and the newcomers with that
        localpart, never in the whole list."""
        ctx = given.ctx
        known = set(ctx.team.mentors)
        for word in {w.removeprefix("@").lower() for w in given.left.split()}:
            if word and ":" not in word:
                known.update(await ctx.reader.users_with_localpart(word))
        return resolve_users(
            given.left,
            ctx.formatted_body,
            count=sum(1 for a in given.cmd.args if isinstance(a.parser, PersonParser)),
            known_users=known,
            default_server=ctx.server_name,
        )


STEP, TEXT, DURATION, TIMEZONE = StepParser(), TextParser(), DurationParser(), TimezoneParser()
FLAG, PERSON, NUMBER = FlagParser(), PersonParser(), NumberParser()


@dataclass(frozen=True)
class Arg:
    name: str
    parser: Parser
    required: bool = False

    def usage(self) -> str:
        return self.parser.usage(self)

    @property
    def type(self) -> Any:
        """The type the handler's parameter must declare."""
        return self.parser.handler_type(self)


class Arguments:
    """What is left of a command's arguments while its parsers take their shares; whatever
    none of them takes is more than the command expects."""

    def __init__(self, cmd: Command, ctx: Ctx, raw_args: str) -> None:
        self.cmd, self.ctx = cmd, ctx
        self.left = raw_args  # words separated by single spaces (see `parse`)
        self.people: list[Resolved] | None = None  # PersonParser's, once resolved

    def take_word(self) -> str:
        word, _, self.left = self.left.partition(" ")
        return word

    def take_rest(self) -> str:
        rest, self.left = self.left, ""
        return rest

    def take_all(self, word: str) -> bool:
        """Whether `word` (in any case) is among the arguments; every occurrence is taken."""
        words = self.left.split(" ")
        kept = [w for w in words if w.lower() != word]
        self.left = " ".join(kept)
        return len(kept) < len(words)

    def missing(self, arg: Arg) -> None:
        """An argument not given: a usage error when it is required (else the value is None)."""
        if arg.required:
            raise UsageError(texts.usage(self.cmd.usage(self.ctx.prefix), self.cmd.help))

    def check_all_taken(self) -> None:
        if self.left or self.people:
            raise UsageError(texts.more_than_expected(self.cmd.usage(self.ctx.prefix)))


@dataclass(frozen=True)
class Outcome:
    reply: Reply
    changes: tuple[Change, ...] = ()
    ops: tuple[Op, ...] = ()
    messages: tuple[Send, ...] = ()
    new_roadmap: Roadmap | None = None
    outcome: str = "ok"  # for metrics: ok, usage, refused, unknown, too_long
    shows: str | None = None  # the step the reply shows its reader: reactions on it act on it


Handler = Callable[..., Outcome | Awaitable[Outcome]]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    handler: Handler
    args: tuple[Arg, ...] = ()
    aliases: tuple[str, ...] = ()
    role: Role = Role.NEWCOMER
    enrolls: bool = True  # newcomer commands enroll the sender first
    private: bool = False  # answers about other people: only in a direct chat by default

    def usage(self, prefix: str) -> str:
        return " ".join([f"{prefix}{self.name}", *(a.usage() for a in self.args)])


@dataclass(frozen=True)
class Parsed:
    name: str
    args: str


def parse(body: str, prefix: str) -> Parsed | None:
    """`!done 2.8` -> Parsed("done", "2.8"); None when the text is not a command at all."""
    stripped = body.strip()
    if not prefix or not stripped.startswith(prefix):
        return None
    words = stripped[len(prefix) :]
    if not words or words[0].isspace():
        return None  # "! done" is punctuation in a sentence, not a command
    head, *rest_ = words.split(maxsplit=1)
    rest = rest_[0] if rest_ else ""
    name = head.lower()
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        return None
    return Parsed(name, " ".join(rest.split()))


class CommandSet:
    """An ordered collection of declared commands."""

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}
        self._names: dict[str, Command] = {}

    def command(
        self,
        name: str,
        help: str,
        *,
        args: Iterable[Arg] = (),
        aliases: Iterable[str] = (),
        role: Role = Role.NEWCOMER,
        enrolls: bool = True,
        private: bool = False,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            cmd = Command(name, help, handler, tuple(args), tuple(aliases), role, enrolls, private)
            check_signature(cmd)
            for key in (name, *cmd.aliases):
                if key in self._names:
                    raise ValueError(f"command name {key!r} declared twice")
                self._names[key] = cmd
            self._commands[name] = cmd
            return handler

        return register

    def extend(self, other: CommandSet) -> CommandSet:
        for cmd in other:
            for key in (cmd.name, *cmd.aliases):
                if key in self._names:
                    raise ValueError(f"command name {key!r} declared twice")
                self._names[key] = cmd
            self._commands[cmd.name] = cmd
        return self

    def __iter__(self) -> Any:
        return iter(self._commands.values())

    def get(self, name: str) -> Command | None:
        return self._names.get(name)

    def visible_to(self, role: Role) -> list[Command]:
        return [c for c in self if c.role <= role]

    def suggest(self, name: str, role: Role) -> list[str]:
        names = [n for n, c in self._names.items() if c.role <= role]
        return difflib.get_close_matches(name, names, n=3, cutoff=0.5)


def check_signature(cmd: Command) -> None:
    """The handler takes `ctx` and then exactly the declared arguments, each typed as its
    parser's value (`X | None` when optional): a mismatch fails at import, not at a message."""
    where = f"command {cmd.name!r} ({cmd.handler.__module__}.{cmd.handler.__qualname__})"
    hints = typing.get_type_hints(cmd.handler)
    params = list(inspect.signature(cmd.handler).parameters)
    declared = [a.name for a in cmd.args]
    if params[1:] != declared:
        raise TypeError(f"{where}: the handler takes {params[1:]}, the declaration {declared}")
    for arg in cmd.args:
        if hints.get(arg.name) != arg.type:
            raise TypeError(
                f"{where}: argument {arg.name!r} is parsed as {arg.type}, "
                f"but the handler declares {hints.get(arg.name)}"
            )


def help_reply(commands: CommandSet, role: Role, prefix: str) -> Reply:
    m = Message().line(texts.HELP_HEADING)
    m.bullets(texts.help_item(c.usage(prefix), c.help) for c in commands.visible_to(role))
    return m.line(*texts.HELP_STEP_NAMES).reply()


def unknown_command_reply(commands: CommandSet, name: str, role: Role, prefix: str) -> Reply:
    return texts.unknown_command(f"{prefix}{name}", commands.suggest(name, role), prefix)


class UsageError(Exception):
    """An argument that cannot be used; the reply explains why."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.body)
        self.reply = reply


async def _arguments(cmd: Command, ctx: Ctx, raw_args: str) -> dict[str, Any]:
    """Each declared argument's value, taken by its parser in the order declared (those that
    go `first` before the others)."""
    given = Arguments(cmd, ctx, raw_args)
    values = {}
    for arg in sorted(cmd.args, key=lambda a: not a.parser.first):
        values[arg.name] = await arg.parser.take(arg, given)
    given.check_all_taken()
    return values


async def invoke(cmd: Command, ctx: Ctx, raw_args: str) -> Outcome:
    """Resolves the declared arguments, then runs the handler; usage errors become replies."""
    try:
        values = await _arguments(cmd, ctx, raw_args)
    except UsageError as exc:
        return Outcome(exc.reply, outcome="usage")
    result = cmd.handler(ctx, **values)
    if inspect.isawaitable(result):
        result = await result
    assert isinstance(result, Outcome)
    return result
