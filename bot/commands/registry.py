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
from typing import Any

from bot.progress import Change, Progress
from bot.render import Code, Message, Reply, render_candidates, text
from bot.roadmap import Roadmap, find_step

MAX_COMMAND_LENGTH = 2000


class Role(IntEnum):
    NEWCOMER = 0
    MENTOR = 1
    ADMIN = 2


class ArgKind(Enum):
    STEP = "step"  # a step id, number or title fragment; takes the rest of the line
    TEXT = "text"  # free text; takes the rest of the line


@dataclass(frozen=True)
class Arg:
    name: str
    kind: ArgKind
    required: bool = False

    def usage(self) -> str:
        return f"<{self.name}>" if self.required else f"[{self.name}]"


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


@dataclass(frozen=True)
class Outcome:
    reply: Reply
    changes: tuple[Change, ...] = ()


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
    head, _, rest = stripped[len(prefix) :].partition(" ")
    name = head.strip().lower()
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
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            cmd = Command(name, help, handler, tuple(args), tuple(aliases), role, enrolls)
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
    parts: list[Any] = [f"I don't know the command “{prefix}{name}”. "]
    if close:
        parts.append("Did you mean ")
        for i, c in enumerate(close):
            parts += [", " if i else "", Code(f"{prefix}{c}")]
        parts.append("? ")
    parts += ["Say ", Code(f"{prefix}help"), " for the list of commands."]
    return text(*parts)


async def invoke(cmd: Command, ctx: Ctx, raw_args: str) -> Outcome:
    """Resolves the declared arguments, then runs the handler; usage errors become replies."""
    values: dict[str, Any] = {}
    rest = raw_args
    for arg in cmd.args:
        if not rest:
            if arg.required:
                return Outcome(text("Usage: ", Code(cmd.usage(ctx.prefix)), f" — {cmd.help}"))
            values[arg.name] = None
            continue
        if arg.kind is ArgKind.STEP:
            found = find_step(ctx.roadmap, rest)
            if found.step is None:
                return Outcome(
                    render_candidates(rest, found.candidates, found.ambiguous, ctx.prefix)
                )
            values[arg.name] = found.step
        else:
            values[arg.name] = rest
        rest = ""
    if rest:
        return Outcome(
            text(
                f"{ctx.prefix}{cmd.name} takes no arguments. Usage: ",
                Code(cmd.usage(ctx.prefix)),
            )
        )
    result = cmd.handler(ctx, **values)
    if inspect.isawaitable(result):
        result = await result
    assert isinstance(result, Outcome)
    return result
