"""The team state's rules: who mentors, and who hears about a newcomer."""

from __future__ import annotations

from bot.roadmap import load_roadmap
from bot.team import Role, TeamState
from tests.unit.common import POLICY, ROADMAP_FILE

ZOE = "@zoe:x.org"
POWER = "@power:x.org"
OWN = "@own:x.org"


def state() -> TeamState:
    return TeamState(
        load_roadmap(ROADMAP_FILE),
        POLICY,
        admins=frozenset({"@admin:x.org"}),
        configured_mentors=frozenset({ZOE}),
        mentors_by_power=frozenset({POWER}),
    )


def test_a_newcomer_with_a_mentor_is_told_about_to_that_mentor_only() -> None:
    assert state().told_about(OWN) == [OWN]


def test_a_newcomer_without_a_mentor_is_told_about_to_every_mentor_in_order() -> None:
    assert state().told_about(None) == [POWER, ZOE]


def test_nobody_is_told_when_the_team_has_no_mentors() -> None:
    empty = TeamState(load_roadmap(ROADMAP_FILE), POLICY)
    assert empty.told_about(None) == []


def test_mentors_by_power_level_count_as_mentors() -> None:
    team = state()
    assert team.role_of(POWER) == Role.MENTOR
    assert team.role_of(ZOE) == Role.MENTOR
    assert team.role_of("@admin:x.org") == Role.ADMIN
    assert team.role_of(OWN) == Role.NEWCOMER
