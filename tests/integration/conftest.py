"""Generic fixtures for integration tests: a real Synapse and matrix-nio people on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import pytest_asyncio

from tests.harness import MakePerson, MakeSynapse, Person, Synapse
from tests.harness.element import MakeElementPerson, element_people
from tests.harness.synapse import account, closing_all


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def make_synapse(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MakeSynapse]:
    """Factory for extra, independent Synapse servers: ``await make_synapse(rc_message=...)``.

    Every server it starts is stopped at the end of the session.
    """
    started: list[Synapse] = []

    async def factory(*, rc_message: dict[str, float] | None = None) -> Synapse:
        server = Synapse(tmp_path_factory.mktemp("synapse"), rc_message=rc_message)
        started.append(server)
        await server.start()
        return server

    yield factory
    for server in reversed(started):
        await server.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def synapse(make_synapse: MakeSynapse) -> Synapse:
    """The session's shared Synapse (generous rate limits). Tests that stop it must restart it."""
    return await make_synapse()


@asynccontextmanager
async def _people(
    synapse: Synapse, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[MakePerson]:
    async def login(
        localpart: str,
        *,
        admin: bool = False,
        server: Synapse | None = None,
        cross_signed: bool = True,
    ) -> Person:
        server = server or synapse
        user_id, password = await account(server, localpart, admin=admin)
        return await Person.login(
            server.url,
            user_id,
            password,
            tmp_path_factory.mktemp(f"store-{localpart}"),
            cross_signing=server.cross_signing_keys(user_id) if cross_signed else None,
        )

    async with closing_all(login) as factory:
        yield factory


@pytest_asyncio.fixture(loop_scope="session")
async def make_person(
    synapse: Synapse, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[MakePerson]:
    """Factory for logged-in E2E users: ``await make_person("alice", admin=False, server=None)``.

    The account is registered on first use (password ``<localpart>-password``); asking for
    the same localpart again logs in a new device. Devices are cross-signed by their account,
    as Element's are, unless ``cross_signed=False``. Every Person is closed after the test.
    """
    async with _people(synapse, tmp_path_factory) as factory:
        yield factory


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def make_person_module(
    synapse: Synapse, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[MakePerson]:
    """The same, for module-scoped fixtures: people closed at the end of the module."""
    async with _people(synapse, tmp_path_factory) as factory:
        yield factory


@pytest_asyncio.fixture(loop_scope="session")
async def make_element(
    synapse: Synapse, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[MakeElementPerson]:
    """Element-like users (matrix-js-sdk + Rust crypto, tests/element/):
    ``await make_element("alice", isolation="only_signed", cross_sign=True)``."""
    async with element_people(synapse, tmp_path_factory) as factory:
        yield factory
