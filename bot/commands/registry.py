"""Commands are declared once: name, aliases, arguments, role and one-line help.

The router, `!help`, usage errors and "did you mean" suggestions all read these declarations.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, IntEnum
from typing import TYPE_CHECKING, Any

from bot.mentions import Resolved, resolve_users
from bot.ops import Op, Send
from bot.progress import Change, Progress
from bot.render import Code, Message, Reply, echo, render_candidates, text
from bot.roadmap import Roadmap, find_step
from bot.timeutil import BadValue, parse_duration, parse_timezone

if TYPE_CHECKING:
    from bot.nudges import NudgePolicy
    from bot.store import Store

MAX_COMMAND_LENGTH = 2000


class Role(IntEnum):
    NEWCOMER = 0
    MENTOR = 1
    ADMIN = 2


class ArgKind(Enum):
    STEP = "step"  # a step id, number or title fragment; takes the rest of the line
    TEXT = "text"  # free text; takes the rest of the line
    USER = "user"  # an MXID, a mention pill or an unambiguous localpart; one word
    DURATION = "duration"  # 30s, 45m, 12h, 3d, 1w; one word
    TIMEZONE = "timezone"  # Area/City; one word
    FLAG = "flag"  # --name anywhere in the arguments: True if given


ONE_WORD = (ArgKind.DURATION, ArgKind.TIMEZONE)


@dataclass(frozen=True)
class Arg:
    name: str
    kind: ArgKind
    required: bool = False

    def usage(self) -> str:
        if self.kind is ArgKind.FLAG:
            return f"[--{self.name}]"
        return f"<{self.name}>" if self.required else f"[{self.name}]"


@dataclass
class Services:
    """What handlers may read beyond their snapshot. Handlers read; only the store writes."""

    store: Store
    policy: NudgePolicy
    mentors: frozenset[str]
    server_name: str
    load_roadmap: Callable[[], Roadmap]


@dataclass(frozen=True)
class Ctx:
    """What a command handler may look at. It reads; the store writes the returned changes."""

    roadmap: Roadmap
    prefix: str
    sender: str
    room_id: str
    now: datetime
    role: Role
    progress: Progress
    commands: CommandSet
    services: Services
    # Anyone's role as the dispatcher judges it (config, or power in the team room).
    role_of: Callable[[str], Role]
    formatted_body: str | None = None


@dataclass(frozen=True)
class Outcome:
    reply: Reply
    changes: tuple[Change, ...] = ()
    ops: tuple[Op, ...] = ()
    messages: tuple[Send, ...] = ()
    new_roadmap: Roadmap | None = None
    outcome: str = "ok"  # for metrics: ok, usage, refused, unknown, too_long


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


def help_reply(commands: CommandSet, role: Role, prefix: str) -> Reply:
    m = Message().line("Here is what I can do for you:")
    m.bullets([Code(c.usage(prefix)), f" — {c.help}"] for c in commands.visible_to(role))
    return m.line(
        "A step can be named by its number (",
        Code("2.8"),
        "), its id (",
        Code("web-server"),
        ") or a piece of its title.",
    ).reply()


def unknown_command_reply(commands: CommandSet, name: str, role: Role, prefix: str) -> Reply:
    close = commands.suggest(name, role)
    parts: list[Any] = ["I don't know the command ", echo(f"{prefix}{name}"), ". "]
    if close:
        parts.append("Did you mean ")
        for i, c in enumerate(close):
            parts += [", " if i else "", Code(f"{prefix}{c}")]
        parts.append("? ")
    parts += ["Say ", Code(f"{prefix}help"), " for the list of commands."]
    return text(*parts)


class UsageError(Exception):
    """An argument that cannot be used; the reply explains why."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.body)
        self.reply = reply


async def _resolve_users(cmd: Command, ctx: Ctx, raw_args: str) -> list[Resolved]:
    count = sum(1 for a in cmd.args if a.kind is ArgKind.USER)
    if not count:
        return []
    known = set(await ctx.services.store.known_users()) | set(ctx.services.mentors)
    return resolve_users(
        raw_args,
        ctx.formatted_body,
        count=count,
        known_users=known,
        default_server=ctx.services.server_name,
    )


def _person(found: Resolved) -> str:
    if found.user_id is None:
        raise UsageError(found.problem or text("I don't know who that is."))
    return found.user_id


def _word(arg: Arg, word: str) -> Any:
    try:
        if arg.kind is ArgKind.DURATION:
            return parse_duration(word)
        return parse_timezone(word).key
    except BadValue as exc:
        raise UsageError(text(echo(word), f" {exc.problem}.")) from None


def _flags(cmd: Command, raw_args: str) -> tuple[dict[str, bool], str]:
    """The declared --flags given (wherever written), and the arguments without them."""
    names = {f"--{a.name}": a.name for a in cmd.args if a.kind is ArgKind.FLAG}
    if not names:
        return {}, raw_args
    words = raw_args.split(" ")
    given = {names[w.lower()] for w in words if w.lower() in names}
    rest = " ".join(w for w in words if w.lower() not in names)
    return {name: name in given for name in names.values()}, rest


async def _arguments(cmd: Command, ctx: Ctx, raw_args: str) -> dict[str, Any]:
    flags, raw_args = _flags(cmd, raw_args)
    values: dict[str, Any] = dict(flags)
    users = await _resolve_users(cmd, ctx, raw_args)
    rest = raw_args
    for arg in cmd.args:
        if arg.kind is ArgKind.FLAG:
            continue
        if arg.kind is ArgKind.USER:
            # People are named by MXID, pill or localpart, in the order written.
            if users:
                values[arg.name] = _person(users.pop(0))
            elif arg.required:
                raise UsageError(text("Usage: ", Code(cmd.usage(ctx.prefix)), f" — {cmd.help}"))
            else:
                values[arg.name] = None
            rest = ""
            continue
        if not rest:
            if arg.required:
                raise UsageError(text("Usage: ", Code(cmd.usage(ctx.prefix)), f" — {cmd.help}"))
            values[arg.name] = None
            continue
        if arg.kind is ArgKind.STEP:
            found = find_step(ctx.roadmap, rest)
            if found.step is None:
                raise UsageError(
                    render_candidates(rest, found.candidates, found.ambiguous, ctx.prefix)
                )
            values[arg.name] = found.step
            rest = ""
        elif arg.kind in ONE_WORD:
            word, _, rest = rest.partition(" ")
            values[arg.name] = _word(arg, word)
        else:
            values[arg.name] = rest
            rest = ""
    if rest or users:
        raise UsageError(text("That is more than I expected. Usage: ", Code(cmd.usage(ctx.prefix))))
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
