"""Fixtures for unit tests: the real roadmap, small roadmaps written to disk, a real Store and an
in-process conversation with the Dispatcher (no Matrix, no mocks)."""

from __future__ import annotations

import copy
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from bot.app import build_dispatcher, nudge_policy
from bot.config import Config
from bot.dispatch import Dispatcher, Incoming
from bot.roadmap import Roadmap, load_roadmap, parse_roadmap
from bot.store import OutboxItem, Store
from bot.team import Team, TeamState

ROOT = Path(__file__).resolve().parents[2]
ROADMAP_FILE = ROOT / "roadmap.yaml"
EXAMPLE_CONFIG = ROOT / "config.example.yaml"

NEWCOMER = "@newbie:example.org"
MENTOR = "@mentor:example.org"
ROOM = "!dm:example.org"
# A Monday morning, so nothing time-of-week related gets in the way.
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def roadmap() -> Roadmap:
    """The real roadmap.yaml."""
    return load_roadmap(ROADMAP_FILE)


SMALL_ROADMAP: dict[str, Any] = {
    "version": 1,
    "title": "Small Roadmap",
    "sections": [
        {
            "id": "alpha",
            "number": 1,
            "title": "Alpha",
            "steps": [
                {
                    "id": "a-one",
                    "number": "1.1",
                    "title": "First Step",
                    "estimate": "2d",
                    "resources": [
                        {"title": "Docs", "url": "https://example.org/one", "kind": "docs"}
                    ],
                },
                {"id": "a-two", "number": "1.2", "title": "Second Step"},
                {"id": "a-three", "number": "1.3", "title": "Third Step"},
            ],
        },
        {
            "id": "beta",
            "number": 2,
            "title": "Beta",
            "steps": [
                {"id": "b-one", "number": "2.1", "title": "Fourth Step"},
                {"id": "b-two", "number": "2.2", "title": "Fifth Step"},
            ],
        },
    ],
}


@pytest.fixture
def small_data() -> dict[str, Any]:
    """A fresh, valid roadmap as plain data, for tests that break one thing in it."""
    return copy.deepcopy(SMALL_ROADMAP)


@pytest.fixture
def small() -> Roadmap:
    """Five steps: alpha (a-one, a-two, a-three) then beta (b-one, b-two)."""
    return parse_roadmap(copy.deepcopy(SMALL_ROADMAP), Path("small.yaml"))


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[[Any, str], Path]:
    """Writes data (or raw text) as a YAML file under tmp_path and returns its path."""

    def write(data: Any, name: str = "roadmap.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "data" / "bot.db")
    yield s
    await s.close()


def make_dispatcher(store: Store, roadmap: Roadmap, prefix: str = "!") -> Dispatcher:
    """Wired as bot.app wires it, with the config's default nudge policy and a stepping clock."""
    config = Config.model_validate(
        {
            "matrix": {
                "homeserver": "https://matrix.example.org",
                "user_id": "@mentor-bot:example.org",
                "password": "unused",
            }
        }
    )
    ticks = itertools.count()
    team = Team(TeamState(roadmap, nudge_policy(config), configured_mentors=frozenset({MENTOR})))
    return build_dispatcher(
        store,
        team,
        server_name="example.org",
        prefix=prefix,
        clock=lambda: START + timedelta(minutes=next(ticks)),
    )


class Chat:
    """One newcomer talking to the bot: `await chat.say("!done")` returns the reply's body."""

    def __init__(self, dispatcher: Dispatcher, sender: str = NEWCOMER) -> None:
        self.dispatcher = dispatcher
        self.sender = sender
        self.last_event_id = ""
        self.last: dict[str, Any] = {}

    async def send(self, body: str, event_id: str | None = None) -> list[OutboxItem] | None:
        self.last_event_id = event_id or f"${uuid.uuid4().hex}"
        return await self.dispatcher.handle(Incoming(self.last_event_id, ROOM, self.sender, body))

    async def say(self, body: str, event_id: str | None = None) -> str:
        items = await self.send(body, event_id)
        assert items, f"no reply to {body!r}"
        self.last = items[0].content
        return str(self.last["body"])

    async def progress(self) -> Any:
        return await self.dispatcher.store.load_progress(self.sender)


@pytest.fixture
def chat(store: Store, roadmap: Roadmap) -> Chat:
    return Chat(make_dispatcher(store, roadmap))


@pytest.fixture
def chat_on(roadmap: Roadmap) -> Callable[[Store], Chat]:
    """A conversation on a store the test opens itself (to close and reopen it)."""
    return lambda store: Chat(make_dispatcher(store, roadmap))
