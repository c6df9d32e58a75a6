"""The integration tests' Synapse is the package's dev server (bot/devserver.py), re-exported,
and the tests' account convention on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

from bot.devserver import GENEROUS_RATE_LIMITS, MakeSynapse, Synapse, SynapseError

__all__ = [
    "GENEROUS_RATE_LIMITS",
    "MakeSynapse",
    "Synapse",
    "SynapseError",
    "account",
    "closing_all",
]


async def account(server: Synapse, localpart: str, *, admin: bool = False) -> tuple[str, str]:
    """A test user's id and password (``<localpart>-password``), registered on first use, so
    nio and Element devices of one account can live side by side."""
    password = f"{localpart}-password"
    user_id = server.mxid(localpart)
    if server.password_of(user_id) is None:
        await server.register(localpart, password, admin=admin)
    return user_id, password


class _Closable(Protocol):
    async def close(self) -> None: ...


C = TypeVar("C", bound=_Closable)


@asynccontextmanager
async def closing_all(
    make: Callable[..., Awaitable[C]],
) -> AsyncIterator[Callable[..., Awaitable[C]]]:
    """Wraps a factory of clients so that every client it made is closed on exit."""
    made: list[C] = []

    async def factory(*args: Any, **kwargs: Any) -> C:
        client = await make(*args, **kwargs)
        made.append(client)
        return client

    try:
        yield factory
    finally:
        for client in made:
            await client.close()
