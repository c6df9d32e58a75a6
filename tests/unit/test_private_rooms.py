"""Where private answers may go, and whom the team room's power levels may make mentors:
the pure rules (the attacker's side is in tests/integration/test_security.py)."""

from __future__ import annotations

import pytest
from nio import MatrixRoom

from bot.outbox import is_private_with
from bot.team_room import pin_problem, privileged_creators

BOT, ANA, EVE = "@bot:example.org", "@ana:example.org", "@eve:example.org"


def room(*, joined: tuple[str, ...], invited: tuple[str, ...] = (), history: str) -> MatrixRoom:
    r = MatrixRoom("!r:example.org", BOT)
    for user in joined:
        r.add_member(user, None, None)
    for user in invited:
        r.add_member(user, None, None, invited=True)
    r.history_visibility = history
    return r


@pytest.mark.parametrize("history", ["invited", "joined"])
def test_the_bot_and_the_person_alone_with_no_later_readers_is_private(history: str) -> None:
    assert is_private_with(room(joined=(BOT, ANA), history=history), BOT, ANA)
    assert is_private_with(room(joined=(BOT,), invited=(ANA,), history=history), BOT, ANA)


@pytest.mark.parametrize(
    ("joined", "invited", "history"),
    [
        ((BOT, ANA), (), "shared"),  # whoever joins later reads it all
        ((BOT, ANA), (), "world_readable"),  # anyone reads it without joining
        ((BOT, ANA, EVE), (), "joined"),  # a third member
        ((BOT, ANA), (EVE,), "joined"),  # a third invited
        ((BOT, EVE), (), "joined"),  # two members, but not the person
        ((BOT,), (), "joined"),  # the person left
    ],
)
def test_anything_else_is_not_private(
    joined: tuple[str, ...], invited: tuple[str, ...], history: str
) -> None:
    assert not is_private_with(room(joined=joined, invited=invited, history=history), BOT, ANA)
    assert not is_private_with(None, BOT, ANA)


def create(version: str, sender: str = ANA, **content: object) -> dict[str, object]:
    return {
        "type": "m.room.create",
        "sender": sender,
        "content": {"room_version": version, **content},
    }


def test_room_version_12_creators_outrank_power_levels() -> None:
    assert privileged_creators(create("12", additional_creators=[EVE])) == {ANA, EVE}
    assert privileged_creators(create("10", additional_creators=[EVE])) == frozenset()
    assert privileged_creators(create("1")) == frozenset()


def test_a_pinned_team_room_may_not_move() -> None:
    pin = {"config": "#team:example.org", "room_id": "!a:example.org"}
    assert pin_problem("#team:example.org", "!a:example.org", pin) is None
    assert pin_problem("#team:example.org", "!a:example.org", None) is None
    problem = pin_problem("#team:example.org", "!b:example.org", pin)
    assert problem is not None and problem.startswith("rooms.team: #team:example.org now points")
    assert "!a:example.org" in problem and "room id" in problem
    # A new configured value is pinned afresh.
    assert pin_problem("#other:example.org", "!b:example.org", pin) is None
