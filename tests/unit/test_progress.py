"""Progress rules on a five-step roadmap: alpha (a-one, a-two, a-three), beta (b-one, b-two)."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import UTC, datetime

import pytest

from bot import progress as rules
from bot.progress import Action, Change, Progress, State, Undoable, UndoRefused
from bot.roadmap import Roadmap

USER = "@newbie:example.org"


def enrolled(small: Roadmap, current: str | None = "a-one", **states: State) -> Progress:
    """A newcomer with the pointer on `current` and the given states (ids with _ for -)."""
    p = rules.apply(Progress(USER), rules.enroll(small, Progress(USER)))
    return replace(
        p, current_id=current, states={k.replace("_", "-"): v for k, v in states.items()}
    )


def after(progress: Progress, change: Change | UndoRefused | None, entry_id: int = 1) -> Progress:
    """The snapshot the store would load back: the change applied, done/skip made undoable."""
    assert isinstance(change, Change), change
    p = rules.apply(progress, change)
    if change.action in rules.UNDOABLE:
        p = replace(p, last_undoable=rules.undoable(change, entry_id))
    elif change.action == Action.UNDO:
        p = replace(p, last_undoable=None)
    return p


def current(small: Roadmap, progress: Progress) -> str | None:
    step = rules.current_step(small, progress)
    return step.id if step else None


# --- current step ----------------------------------------------------------------------------


def test_enrolling_points_at_the_first_step(small: Roadmap) -> None:
    change = rules.enroll(small, Progress(USER))
    assert change is not None
    assert change.action == Action.ENROLL
    assert change.new_current == "a-one"
    assert rules.enroll(small, rules.apply(Progress(USER), change)) is None


def test_current_step_is_the_pointer(small: Roadmap) -> None:
    assert current(small, enrolled(small, current="b-one")) == "b-one"


def test_without_a_pointer_current_is_the_first_unfinished(small: Roadmap) -> None:
    p = enrolled(small, current=None, a_one=State.DONE, a_two=State.SKIPPED)
    assert current(small, p) == "a-three"


def test_pointer_to_a_removed_step_falls_back_to_first_unfinished(small: Roadmap) -> None:
    p = enrolled(small, current="gone-from-roadmap", a_one=State.DONE)
    assert current(small, p) == "a-two"


# --- done and skip ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "action"), [(State.DONE, Action.DONE), (State.SKIPPED, Action.SKIP)]
)
def test_finishing_the_current_step_moves_to_the_next(
    small: Roadmap, state: State, action: Action
) -> None:
    p = enrolled(small)
    change = rules.finish(small, p, small.get("a-one"), state)
    assert change == Change(action, "a-one", State.PENDING, state, "a-one", "a-two")
    p = after(p, change)
    assert p.state("a-one") == state
    assert current(small, p) == "a-two"


def test_next_step_skips_over_finished_ones(small: Roadmap) -> None:
    p = enrolled(small, a_two=State.DONE, a_three=State.SKIPPED)
    p = after(p, rules.finish(small, p, small.get("a-one"), State.DONE))
    assert current(small, p) == "b-one"


def test_finishing_a_named_other_step_keeps_the_current_one(small: Roadmap) -> None:
    p = enrolled(small, current="a-two")
    change = rules.finish(small, p, small.get("b-one"), State.DONE)
    assert change is not None
    assert (change.step_id, change.new_current) == ("b-one", "a-two")
    p = after(p, change)
    assert p.state("b-one") == State.DONE
    assert current(small, p) == "a-two"


def test_after_the_last_step_it_wraps_to_an_earlier_unfinished_one(small: Roadmap) -> None:
    p = enrolled(small, current="b-two", a_one=State.DONE, a_three=State.DONE, b_one=State.SKIPPED)
    change = rules.finish(small, p, small.get("b-two"), State.DONE)
    assert change is not None
    assert change.new_current == "a-two"
    assert current(small, after(p, change)) == "a-two"


def test_finishing_the_only_unfinished_step_finishes_the_roadmap(small: Roadmap) -> None:
    p = enrolled(
        small,
        current="a-three",
        a_one=State.DONE,
        a_two=State.SKIPPED,
        b_one=State.DONE,
        b_two=State.DONE,
    )
    assert not rules.is_finished(small, p)
    change = rules.finish(small, p, small.get("a-three"), State.DONE)
    assert change is not None and change.new_current is None
    p = after(p, change)
    assert rules.is_finished(small, p)
    assert rules.current_step(small, p) is None


def test_finishing_twice_changes_nothing(small: Roadmap) -> None:
    p = enrolled(small, current="a-two", a_one=State.DONE)
    assert rules.finish(small, p, small.get("a-one"), State.DONE) is None


def test_a_done_step_may_be_turned_into_skipped(small: Roadmap) -> None:
    p = enrolled(small, current="a-two", a_one=State.DONE)
    change = rules.finish(small, p, small.get("a-one"), State.SKIPPED)
    assert change is not None
    assert (change.from_state, change.to_state, change.new_current) == (
        State.DONE,
        State.SKIPPED,
        "a-two",
    )


# --- undo ------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.DONE, State.SKIPPED])
def test_undo_restores_state_and_pointer(small: Roadmap, state: State) -> None:
    before = enrolled(small, current="a-two", a_one=State.DONE)
    p = after(before, rules.finish(small, before, small.get("a-two"), state), entry_id=7)
    assert current(small, p) == "a-three"

    change = rules.undo(p)
    assert isinstance(change, Change)
    assert (change.action, change.undoes) == (Action.UNDO, 7)
    p = after(p, change)
    assert p.state("a-two") == State.PENDING
    assert current(small, p) == "a-two"
    assert p.states == {**before.states, "a-two": State.PENDING}


def test_undo_gives_back_the_learning_state(small: Roadmap) -> None:
    p = enrolled(small, a_one=State.LEARNING)
    p = after(p, rules.finish(small, p, small.get("a-one"), State.DONE))
    p = after(p, rules.undo(p))
    assert p.state("a-one") == State.LEARNING
    assert current(small, p) == "a-one"


def test_undo_with_nothing_done_is_refused(small: Roadmap) -> None:
    refused = rules.undo(enrolled(small))
    assert isinstance(refused, UndoRefused)
    assert "nothing to undo" in refused.reason


def test_undo_is_refused_when_the_step_changed_since(small: Roadmap) -> None:
    p = enrolled(small)
    p = after(p, rules.finish(small, p, small.get("a-one"), State.DONE))
    p = rules.apply(p, rules.start_learning(small, p, small.get("a-one")))
    refused = rules.undo(p)
    assert isinstance(refused, UndoRefused)
    assert "now learning, not done" in refused.reason


# --- goto and doing --------------------------------------------------------------------------


def test_goto_moves_the_pointer_and_keeps_states(small: Roadmap) -> None:
    p = enrolled(small, a_one=State.DONE)
    change = rules.goto(small, p, small.get("b-two"))
    assert change is not None
    p2 = rules.apply(p, change)
    assert current(small, p2) == "b-two"
    assert p2.states == p.states | {"b-two": State.PENDING}
    assert rules.goto(small, p2, small.get("b-two")) is None


def test_goto_a_finished_step_keeps_it_finished(small: Roadmap) -> None:
    p = enrolled(small, current="a-two", a_one=State.DONE)
    p = rules.apply(p, rules.goto(small, p, small.get("a-one")))
    assert current(small, p) == "a-one"
    assert p.state("a-one") == State.DONE


def test_doing_marks_learning_and_makes_it_current(small: Roadmap) -> None:
    p = enrolled(small)
    change = rules.start_learning(small, p, small.get("b-one"))
    assert change is not None and change.action == Action.DOING
    p = rules.apply(p, change)
    assert p.state("b-one") == State.LEARNING
    assert current(small, p) == "b-one"
    assert rules.start_learning(small, p, small.get("b-one")) is None


# --- totals ----------------------------------------------------------------------------------


def test_totals_count_done_and_skipped_of_this_roadmap_only(small: Roadmap) -> None:
    p = enrolled(
        small,
        a_one=State.DONE,
        a_two=State.SKIPPED,
        b_one=State.DONE,
        b_two=State.LEARNING,
        removed_step=State.DONE,
    )
    assert rules.totals(small, p) == (2, 1, 5)


def test_section_progress_counts_per_section(small: Roadmap) -> None:
    p = enrolled(small, a_one=State.DONE, a_two=State.SKIPPED, b_two=State.DONE)
    rows = [
        (sp.section.id, sp.done, sp.skipped, sp.total) for sp in rules.section_progress(small, p)
    ]
    assert rows == [("alpha", 1, 1, 3), ("beta", 1, 0, 2)]


def test_apply_carries_over_every_field_the_change_does_not_touch(small: Roadmap) -> None:
    at = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    before = Progress(
        USER,
        enrolled_at=datetime(2026, 11, 1, tzinfo=UTC),
        current_id="a-one",
        states={"a-one": State.LEARNING},
        last_undoable=Undoable(7, "b-one", State.PENDING, State.DONE, "b-one", "b-two"),
        last_activity_at=datetime(2026, 11, 1, 12, tzinfo=UTC),
        mentor="@mentor:example.org",
        timezone="Europe/Berlin",
    )
    moved = rules.apply(before, Change(Action.GOTO, "a-two", None, None, "a-one", "a-two"), at)
    assert (moved.current_id, moved.states, moved.last_activity_at) == (
        "a-two",
        before.states,
        at,
    )
    touched = {"current_id", "states", "last_activity_at"}
    for f in fields(Progress):
        if f.name not in touched:
            assert getattr(moved, f.name) == getattr(before, f.name), f.name
