"""The team room: where mentors are found by power level, pinned so nobody can squat it.

`rooms.team` may be an alias; it is resolved once and the room id stored, and a later change
of what the alias points to stops the bot at start. Power levels there make mentors only while
a configured admin is in the room with power 100 (or created it) and the bot is in it too.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

from nio import AsyncClient, RoomResolveAliasResponse, SyncResponse

from bot.identity import FatalMatrixError, api_any
from bot.store import Store

log = logging.getLogger(__name__)

PIN_KEY = "team_room"
MENTOR_POWER = 50
ADMIN_POWER = 100


def privileged_creators(create_event: dict[str, Any]) -> frozenset[str]:
    """Room version 12 on: the creators (sender and additional_creators) outrank every power
    level and have no entry in them. Earlier versions: none (their power is in the levels)."""
    content = create_event.get("content", {})
    version = str(content.get("room_version", "1"))
    if not (version.isdecimal() and int(version) >= 12) and "hydra" not in version:
        return frozenset()
    extra = content.get("additional_creators", [])
    return frozenset({str(create_event.get("sender", "")), *map(str, extra)} - {""})


def pin_problem(configured: str, resolved: str, pinned: dict[str, str] | None) -> str | None:
    """Why the resolved team room may not be used, or None."""
    if pinned is None or pinned.get("config") != configured or pinned.get("room_id") == resolved:
        return None
    return (
        f"rooms.team: {configured} now points to {resolved}, but the bot pinned "
        f"{pinned['room_id']} when it first resolved it; someone may have taken over the "
        f"alias. If the team really moved, set rooms.team to the new room id"
    )


async def read_pin(store: Store) -> dict[str, str] | None:
    value = await store.get_value(PIN_KEY)
    return json.loads(value) if value else None


async def resolve(client: AsyncClient, team: str) -> str | None:
    if not team.startswith("#"):
        return team
    resp = await client.room_resolve_alias(team)
    return str(resp.room_id) if isinstance(resp, RoomResolveAliasResponse) else None


class TeamRoom:
    def __init__(
        self, client: AsyncClient, store: Store, team: str | None, admins: frozenset[str]
    ) -> None:
        self.client, self.store, self.team, self.admins = client, store, team, admins
        self.room_id: str | None = None
        self.creators: frozenset[str] = frozenset()
        self._was_trusted: bool | None = None

    async def join(self) -> None:
        """Resolves (or reads the pin of) rooms.team, joins it, learns its creators."""
        if self.team is None:
            return
        pinned = await read_pin(self.store)
        room_id = await resolve(self.client, self.team)
        if room_id is None:
            if pinned is None or pinned.get("config") != self.team:
                log.error("rooms.team: cannot resolve %s", self.team)
                return
            room_id = pinned["room_id"]  # the alias is gone for now: the pinned room holds
        if problem := pin_problem(self.team, room_id, pinned):
            raise FatalMatrixError(problem)
        if pinned is None or pinned.get("config") != self.team:
            await self.store.set_value(
                PIN_KEY, json.dumps({"config": self.team, "room_id": room_id})
            )
        self.room_id = room_id
        if room_id not in self.client.rooms:
            resp = await self.client.join(room_id)
            if getattr(resp, "room_id", None) != room_id:
                log.error("rooms.team: cannot join %s (invite the bot first): %s", self.team, resp)
                return
        self.creators = await self._creators(room_id)
        self.trusted()  # says at start whether mentors come from this room

    async def _creators(self, room_id: str) -> frozenset[str]:
        status, events = await api_any(self.client, "GET", f"/rooms/{quote(room_id)}/state")
        if status != 200 or not isinstance(events, list):
            log.error("rooms.team: cannot read the state of %s (%s)", room_id, status)
            return frozenset()
        return next(
            (privileged_creators(e) for e in events if e.get("type") == "m.room.create"),
            frozenset(),
        )

    def _joined_level(self, user_id: str) -> int | None:
        room = self.client.rooms.get(self.room_id or "")
        if room is None or user_id not in room.users or user_id in room.invited_users:
            return None
        if user_id in self.creators:
            return ADMIN_POWER
        return int(room.power_levels.get_user_level(user_id))

    def trusted(self) -> bool:
        """Whether the room's power levels may make mentors: the bot is in it, and so is a
        configured admin with power 100 (or as its creator)."""
        me = str(self.client.user_id)
        ok = self._joined_level(me) is not None and any(
            (level := self._joined_level(admin)) is not None and level >= ADMIN_POWER
            for admin in self.admins
        )
        if ok != self._was_trusted:
            self._was_trusted = ok
            if not ok:
                log.error(
                    "rooms.team: no configured admin (people.admins) is in %s with power 100, "
                    "or the bot is not: nobody is a mentor by power level there",
                    self.room_id,
                )
        return ok

    def changed_in(self, resp: SyncResponse) -> bool:
        """Whether a sync brought anything from the team room (power levels, members)."""
        return self.room_id is not None and self.room_id in resp.rooms.join

    def mentors(self) -> frozenset[str]:
        """Members with power 50 or more (creators included), while the room is trusted."""
        room = self.client.rooms.get(self.room_id or "")
        if room is None or not self.trusted():
            return frozenset()
        me = str(self.client.user_id)
        return frozenset(
            user_id
            for user_id in {*room.users, *self.creators}
            if user_id != me and (self._joined_level(user_id) or 0) >= MENTOR_POWER
        )
