"""parse(): which messages are commands, and what name and arguments they carry."""

from __future__ import annotations

import pytest

from bot.commands import all_commands
from bot.commands.registry import (
    DURATION,
    PERSON,
    STEP,
    Arg,
    CommandSet,
    Ctx,
    Outcome,
    Parsed,
    Role,
    help_reply,
    parse,
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("!next", Parsed("next", "")),
        ("!done 2.8", Parsed("done", "2.8")),
        ("!DONE 2.8", Parsed("done", "2.8")),
        ("!Goto Docker", Parsed("goto", "Docker")),  # the name is lowered, arguments are not
        ("   !done   web    server  ", Parsed("done", "web server")),
        ("!done 2.8\n", Parsed("done", "2.8")),
    ],
)
def test_commands_are_recognised(body: str, expected: Parsed) -> None:
    assert parse(body, "!") == expected


@pytest.mark.parametrize(
    "body", ["hello", "", "   ", "!", "! done", "!!!", "done!", "!?x", "x !done"]
)
def test_other_text_is_not_a_command(body: str) -> None:
    assert parse(body, "!") is None


def test_a_non_ascii_name_is_a_mistyped_command_not_chatter() -> None:
    # "!dóne" gets an answer ("Did you mean !done?") rather than being ignored.
    assert parse("!dóne", "!") == Parsed("dóne", "")


@pytest.mark.parametrize("body", ["!done\t2.8", "!done\n2.8"])
def test_any_whitespace_separates_name_and_arguments(body: str) -> None:
    assert parse(body, "!") == Parsed("done", "2.8")


@pytest.mark.parametrize(
    ("body", "prefix", "expected"),
    [
        ("?next", "?", Parsed("next", "")),
        ("!next", "?", None),
        ("!!done 1.1", "!!", Parsed("done", "1.1")),
        ("!done 1.1", "!!", None),
    ],
)
def test_custom_prefix(body: str, prefix: str, expected: Parsed | None) -> None:
    assert parse(body, prefix) == expected


def test_help_is_generated_from_the_declarations_with_the_prefix() -> None:
    commands = all_commands()
    body = help_reply(commands, Role.NEWCOMER, "?").body
    for cmd in commands.visible_to(Role.NEWCOMER):
        assert f"?{cmd.name}" in body
        assert cmd.help in body
    assert "?goto <step>" in body
    assert "?done [step]" in body


def test_newcomers_help_leaves_out_mentor_commands() -> None:
    commands = all_commands()
    mentor_only = [c for c in commands if c.role > Role.NEWCOMER]
    assert mentor_only, "expected some mentor or admin commands"
    body = help_reply(commands, Role.NEWCOMER, "!").body
    for cmd in mentor_only:
        assert f"!{cmd.name} " not in body + " "


def test_a_name_declared_twice_is_refused() -> None:
    commands = CommandSet()
    commands.command("next", "one")(lambda ctx: None)
    with pytest.raises(ValueError, match="'next' declared twice"):
        commands.command("current", "two", aliases=("next",))(lambda ctx: None)


# --- parsers are checked against the handler when a command is declared ----------------------


def test_a_handler_missing_a_declared_argument_fails_at_declaration() -> None:
    commands = CommandSet()
    with pytest.raises(TypeError, match=r"command 'go'.*takes \[\], the declaration \['step'\]"):

        @commands.command("go", "go somewhere", args=[Arg("step", STEP)])
        def go(ctx: Ctx) -> Outcome:
            raise AssertionError("never run")


def test_a_handler_typed_unlike_its_parser_fails_at_declaration() -> None:
    commands = CommandSet()
    with pytest.raises(TypeError, match=r"argument 'for_how_long' is parsed as"):

        @commands.command("nap", "nap", args=[Arg("for_how_long", DURATION)])
        def nap(ctx: Ctx, for_how_long: str | None) -> Outcome:  # a timedelta, in truth
            raise AssertionError("never run")


def test_a_required_argument_is_not_optional_in_the_handler() -> None:
    commands = CommandSet()
    with pytest.raises(TypeError, match=r"argument 'who'"):

        @commands.command("poke", "poke", args=[Arg("who", PERSON, required=True)])
        def poke(ctx: Ctx, who: str | None) -> Outcome:
            raise AssertionError("never run")
