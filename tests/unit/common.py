"""Shared data for the unit tests: the real roadmap file and a typical nudge policy."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from nio import MatrixRoom

from bot.clock import ServerClock
from bot.e2e import DeviceTrust
from bot.metrics import Metrics
from bot.nudges import NudgePolicy
from bot.outbox import Outbox
from bot.store import Store
from bot.timeutil import DEFAULT_WORKING_DAYS, parse_quiet_hours

ROADMAP_FILE = Path(__file__).resolve().parents[2] / "roadmap.yaml"
BERLIN = ZoneInfo("Europe/Berlin")

# Idle after one working day in Berlin, quiet 20:00-08:00, mentors told after 3 nudges.
POLICY = NudgePolicy(
    idle_after=timedelta(days=1),
    timezone=BERLIN,
    working_days=DEFAULT_WORKING_DAYS,
    quiet=parse_quiet_hours("20:00-08:00"),
    escalate_after=3,
    target="dm",
    team_room=None,
)


class _Response:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status, self.body = status, body

    async def __aenter__(self) -> _Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def json(self, content_type: str | None = None) -> dict[str, Any]:
        return self.body


class ForgetfulHomeserver:
    """The bot's client as the outbox uses it (unencrypted rooms), against a homeserver that
    has forgotten every transaction id (Synapse does after a while): each PUT posts a new
    event, `$posted<n>`. `puts` are the paths, `bodies` what was sent, in order."""

    def __init__(self, user_id: str, *rooms: str) -> None:
        self.user_id = user_id
        self.access_token = "syt_test"
        self.rooms = {room: MatrixRoom(room, user_id) for room in rooms}
        self.puts: list[str] = []
        self.bodies: list[dict[str, Any]] = []

    async def send(self, method: str, path: str, data: str | None = None, **_: Any) -> _Response:
        assert method == "PUT", path
        self.puts.append(path)
        self.bodies.append(json.loads(data) if data else {})
        return _Response(200, {"event_id": f"$posted{len(self.puts)}"})

    def outbox(self, store: Store) -> Outbox:
        """The bot's outbox, sending to this homeserver."""
        return Outbox(
            self,  # type: ignore[arg-type]
            store,
            Metrics(),
            DeviceTrust(self, exclude_insecure=False),  # type: ignore[arg-type]
            encrypt_new_rooms=False,
            stopping=asyncio.Event(),
            e2e_lock=asyncio.Lock(),
            clock=ServerClock(),
        )
