"""The integration tests' Synapse: the dev kit's (bot/dev/synapse.py) with one cross-signing
identity per account, and the tests' account convention on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from bot.cross_signing import CrossSigningKeys
from bot.dev.synapse import DevSynapse, SynapseError

__all__ = [
    "MakeSynapse",
    "Synapse",
    "SynapseError",
    "account",
    "closing_all",
]


class Synapse(DevSynapse):
    """A throwaway Synapse that remembers each account's cross-signing keys."""

    def __init__(self, workdir: Path, *, rc_message: dict[str, float] | None = None) -> None:
        super().__init__(workdir, rc_message=rc_message)
        self._cross_signing: dict[str, CrossSigningKeys] = {}

    def cross_signing_keys(self, user_id: str) -> CrossSigningKeys:
        """The account's cross-signing keys, made on first use, so that every device logged in
        for it here is signed by one identity (as a person's Element sessions are)."""
        return self._cross_signing.setdefault(user_id, CrossSigningKeys.generate())


#: Type of the ``make_synapse`` fixture: ``await make_synapse(rc_message={...})``.
MakeSynapse = Callable[..., Awaitable[Synapse]]


async def account(server: Synapse, localpart: str, *, admin: bool = False) -> tuple[str, str]:
    """A test user's id and password (``<localpart>-password``), registered on first use, so
    nio and Element devices of one account can live side by side."""
    password = f"{localpart}-password"
    return await server.ensure_user(localpart, password, admin=admin), password


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
