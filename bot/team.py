"""The team as the bot knows it now: roadmap, nudge policy, admins, mentors, the team room.

Built once at start and handed to whoever reads it (the dispatcher, the jobs, the gauges);
`Team.swap` is the one place it changes: a roadmap reload, the team room joined, its power
levels changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

from bot.nudges import NudgePolicy
from bot.roadmap import Roadmap

log = logging.getLogger(__name__)


class Role(IntEnum):
    NEWCOMER = 0
    MENTOR = 1
    ADMIN = 2


@dataclass(frozen=True)
class TeamState:
    roadmap: Roadmap
    policy: NudgePolicy
    admins: frozenset[str] = frozenset()
    configured_mentors: frozenset[str] = frozenset()  # people.mentors
    # Power 50 or more in rooms.team, while that room may make mentors (see team_room.py).
    mentors_by_power: frozenset[str] = frozenset()
    checks_required: bool = False  # checks.required: !done asks a step's checks first

    @property
    def mentors(self) -> frozenset[str]:
        """Everyone who mentors: told when a newcomer finishes or is stuck, listed by !mentor."""
        return self.configured_mentors | self.mentors_by_power

    def told_about(self, mentor: str | None) -> list[str]:
        """Who hears of a newcomer finishing or being stuck: their own mentor if they have one,
        else every mentor of the team, in a stable order."""
        return [mentor] if mentor else sorted(self.mentors)

    @property
    def team_room(self) -> str | None:
        return self.policy.team_room

    def role_of(self, user_id: str) -> Role:
        if user_id in self.admins:
            return Role.ADMIN
        if user_id in self.mentors:
            return Role.MENTOR
        return Role.NEWCOMER


class Team:
    """Holds the current `TeamState`. Readers take `team.state` when they start a piece of
    work and use that one snapshot to its end."""

    def __init__(self, state: TeamState) -> None:
        self.state = state

    def swap(self, **changes: Any) -> TeamState:
        """The state with `changes` (TeamState's fields, or `team_room` for the policy's)."""
        state = self.state
        if "team_room" in changes:
            room = changes.pop("team_room")
            changes["policy"] = replace(changes.get("policy", state.policy), team_room=room)
        new = replace(state, **changes)
        if new.mentors_by_power != state.mentors_by_power:
            log.info("mentors by power level in the team room: %d", len(new.mentors_by_power))
        self.state = new
        return new
