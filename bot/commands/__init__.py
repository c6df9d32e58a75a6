"""Every command the bot knows, gathered from the modules that declare them."""

from bot.commands import checks, mentor, newcomer
from bot.commands.registry import CommandSet


def all_commands() -> CommandSet:
    return CommandSet().extend(newcomer.commands).extend(checks.commands).extend(mentor.commands)
