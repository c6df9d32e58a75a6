"""A person in the integration tests: the dev kit's Matrix client (bot/dev/client.py), whose
failed waits fail the test as an assert would."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bot.dev.client import MatrixUser, ReceivedMessage

__all__ = ["MakePerson", "Person", "ReceivedMessage"]


class Person(MatrixUser):
    """``await person.say(room, "!done")``, ``(await person.reply(room)).body``: an E2E user
    with a sync loop; what does not happen in time raises AssertionError."""

    failure = AssertionError


#: Type of the ``make_person`` fixture: ``await make_person("alice", admin=False, server=None)``.
MakePerson = Callable[..., Awaitable[Person]]
