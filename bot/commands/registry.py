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
from enum import Enum
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


class Width(Enum):
    """How much of a command's arguments a parser reads."""

    WORD = "word"  # one word
    REST = "rest"  # the rest of the line
    FLAG = "flag"  # --name anywhere in the arguments
    PERSON = "person"  # an MXID, a mention pill or an unambiguous localpart, in the order written


class Parser:
    """Turns its share of a command's arguments into the value the handler gets (`type`), or
    raises UsageError with a reply that says why not."""

    width: Width = Width.REST
    type: Any = str

    async def parse(self, raw: str, ctx: Ctx) -> Any:
        return raw


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


class DurationParser(Parser):
    """30s, 45m, 12h, 3d, 1w."""

    width, type = Width.WORD, timedelta

    async def parse(self, raw: str, ctx: Ctx) -> timedelta:
        try:
            return parse_duration(raw)
        except BadValue as exc:
            raise UsageError(texts.bad_value(raw, exc.problem)) from None


class TimezoneParser(Parser):
    """Area/City; the handler gets the zone's key."""

    width = Width.WORD

    async def parse(self, raw: str, ctx: Ctx) -> str:
        try:
            return parse_timezone(raw).key
        except BadValue as exc:
            raise UsageError(texts.bad_value(raw, exc.problem)) from None


class NumberParser(Parser):
    """A whole number, 1 or more."""

    width, type = Width.WORD, int

    async def parse(self, raw: str, ctx: Ctx) -> int:
        if not raw.isdigit() or int(raw) < 1:
            raise UsageError(texts.not_a_number(raw))
        return int(raw)


class FlagParser(Parser):
    width, type = Width.FLAG, bool


class PersonParser(Parser):
    """A user id; people are resolved together (see `_people`), since a pill's text may hold
    spaces."""

    width = Width.PERSON


STEP, TEXT, DURATION, TIMEZONE = StepParser(), TextParser(), DurationParser(), TimezoneParser()
FLAG, PERSON, NUMBER = FlagParser(), PersonParser(), NumberParser()


@dataclass(frozen=True)
class Arg:
    name: str
    parser: Parser
    required: bool = False

    def usage(self) -> str:
        if self.parser.width is Width.FLAG:
            return f"[--{self.name}]"
        return f"<{self.name}>" if self.required else f"[{self.name}]"

    @property
    def type(self) -> Any:
        """The type the handler's parameter must declare."""
        base = self.parser.type
        return base if self.required or self.parser.width is Width.FLAG else base | None


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


def _usage(cmd: Command, ctx: Ctx) -> UsageError:
    return UsageError(texts.usage(cmd.usage(ctx.prefix), cmd.help))


async def _people(cmd: Command, ctx: Ctx, raw_args: str) -> list[Resolved]:
    """Every person named, in the order written. A name without a server is looked up among
    the mentors and the newcomers with that localpart, never in the whole list."""
    count = sum(1 for a in cmd.args if a.parser.width is Width.PERSON)
    if not count:
        return []
    known = set(ctx.team.mentors)
    for word in {w.removeprefix("@").lower() for w in raw_args.split()}:
        if word and ":" not in word:
            known.update(await ctx.reader.users_with_localpart(word))
    return resolve_users(
        raw_args,
        ctx.formatted_body,
        count=count,
        known_users=known,
        default_server=ctx.server_name,
    )


def _flags(cmd: Command, raw_args: str) -> tuple[dict[str, bool], str]:
    """The declared --flags given (wherever written), and the arguments without them."""
    names = {f"--{a.name}": a.name for a in cmd.args if a.parser.width is Width.FLAG}
    if not names:
        return {}, raw_args
    words = raw_args.split(" ")
    given = {names[w.lower()] for w in words if w.lower() in names}
    rest = " ".join(w for w in words if w.lower() not in names)
    return {name: name in given for name in names.values()}, rest


async def _arguments(cmd: Command, ctx: Ctx, raw_args: str) -> dict[str, Any]:
    flags, rest = _flags(cmd, raw_args)
    values: dict[str, Any] = dict(flags)
    people = await _people(cmd, ctx, rest)
    for arg in cmd.args:
        width = arg.parser.width
        if width is Width.FLAG:
            continue
        if width is Width.PERSON:
            if people:
                found = people.pop(0)
                if found.user_id is None:
                    raise UsageError(found.problem or texts.UNKNOWN_PERSON)
                values[arg.name] = found.user_id
            elif arg.required:
                raise _usage(cmd, ctx)
            else:
                values[arg.name] = None
            rest = ""
            continue
        if not rest:
            if arg.required:
                raise _usage(cmd, ctx)
            values[arg.name] = None
            continue
        if width is Width.WORD:
            word, _, rest = rest.partition(" ")
        else:
            word, rest = rest, ""
        values[arg.name] = await arg.parser.parse(word, ctx)
    if rest or people:
        raise UsageError(texts.more_than_expected(cmd.usage(ctx.prefix)))
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
