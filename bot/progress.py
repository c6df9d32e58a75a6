"""Progress rules: which step is current, what done/skip/undo/goto change. Pure functions.

A newcomer's progress is a snapshot (states per step id plus a "current" pointer). Every rule
returns the `Change` it makes; the store persists changes as the append-only activity log and
`apply` gives the snapshot after them, so a reply can be rendered without reading back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from bot import texts
from bot.roadmap import Roadmap, Section, Step


class State(StrEnum):
    PENDING = "pending"
    LEARNING = "learning"
    DONE = "done"
    SKIPPED = "skipped"

    @property
    def finished(self) -> bool:
        return self in (State.DONE, State.SKIPPED)


class Action(StrEnum):
    ENROLL = "enroll"
    DONE = "done"
    DOING = "doing"
    SKIP = "skip"
    UNDO = "undo"
    GOTO = "goto"


UNDOABLE = (Action.DONE, Action.SKIP)


@dataclass(frozen=True)
class Change:
    """One entry of the activity log and the state change it stands for."""

    action: Action
    step_id: str | None
    from_state: State | None
    to_state: State | None
    prev_current: str | None
    new_current: str | None
    undoes: int | None = None  # id of the activity entry an undo reverts


@dataclass(frozen=True)
class Undoable:
    """The newest done/skip entry that has not been undone yet."""

    entry_id: int
    step_id: str
    from_state: State
    to_state: State
    prev_current: str | None
    new_current: str | None


@dataclass(frozen=True)
class Progress:
    user_id: str
    enrolled_at: datetime | None = None
    current_id: str | None = None
    states: Mapping[str, State] = field(default_factory=dict)
    last_undoable: Undoable | None = None
    last_activity_at: datetime | None = None
    mentor: str | None = None
    timezone: str | None = None
    finish_announced_at: datetime | None = None  # when mentors were told of the finish

    @property
    def enrolled(self) -> bool:
        return self.enrolled_at is not None

    def state(self, step_id: str) -> State:
        return self.states.get(step_id, State.PENDING)


def current_step(roadmap: Roadmap, progress: Progress) -> Step | None:
    """The pointer if it names a step of this roadmap, else the first unfinished step."""
    pointed = roadmap.get(progress.current_id)
    if pointed is not None:
        return pointed
    return next((s for s in roadmap if not progress.state(s.id).finished), None)


def next_unfinished(roadmap: Roadmap, progress: Progress, after: Step | None) -> Step | None:
    """The first unfinished step after `after`, wrapping round to the start; None when all are."""
    steps = roadmap.steps
    start = after.index + 1 if after is not None else 0
    for step in steps[start:] + steps[:start]:
        if not progress.state(step.id).finished:
            return step
    return None


def is_finished(roadmap: Roadmap, progress: Progress) -> bool:
    states = progress.states
    if len(states) < len(roadmap):
        return False  # a step with no entry is pending
    return all(states.get(s.id, State.PENDING).finished for s in roadmap)


def enroll(roadmap: Roadmap, progress: Progress) -> Change | None:
    if progress.enrolled:
        return None
    return Change(Action.ENROLL, None, None, None, None, roadmap.steps[0].id)


def finish(roadmap: Roadmap, progress: Progress, step: Step, state: State) -> Change | None:
    """Marks `step` done or skipped; the pointer moves on only if `step` was the current one."""
    assert state.finished
    before = progress.state(step.id)
    if before == state:
        return None
    current = current_step(roadmap, progress)
    after = apply(progress, Change(Action.DONE, step.id, before, state, None, None))
    if current is None or current.id == step.id or after.state(current.id).finished:
        nxt = next_unfinished(roadmap, after, step)
        new_current = nxt.id if nxt else None
    else:
        new_current = current.id
    action = Action.DONE if state == State.DONE else Action.SKIP
    return Change(action, step.id, before, state, progress.current_id, new_current)


def start_learning(roadmap: Roadmap, progress: Progress, step: Step) -> Change | None:
    before = progress.state(step.id)
    if before == State.LEARNING and progress.current_id == step.id:
        return None
    return Change(Action.DOING, step.id, before, State.LEARNING, progress.current_id, step.id)


def goto(roadmap: Roadmap, progress: Progress, step: Step) -> Change | None:
    if progress.current_id == step.id:
        return None
    before = progress.state(step.id)
    return Change(Action.GOTO, step.id, before, before, progress.current_id, step.id)


@dataclass(frozen=True)
class UndoRefused:
    reason: str  # texts.NOTHING_TO_UNDO or texts.undo_overtaken(...)


def undo(progress: Progress) -> Change | UndoRefused:
    last = progress.last_undoable
    if last is None:
        return UndoRefused(texts.NOTHING_TO_UNDO)
    now = progress.state(last.step_id)
    if now != last.to_state:
        return UndoRefused(texts.undo_overtaken(now, last.to_state))
    # The pointer goes back only if that change moved it and nothing has moved it since.
    moved = last.new_current != last.prev_current and progress.current_id == last.new_current
    restored = (last.prev_current or last.step_id) if moved else progress.current_id
    return Change(
        Action.UNDO,
        last.step_id,
        last.to_state,
        last.from_state,
        progress.current_id,
        restored,
        undoes=last.entry_id,
    )


def apply(progress: Progress, change: Change, at: datetime | None = None) -> Progress:
    """The snapshot after `change` (the last-undoable entry is left for the store to recompute).

    Builds the snapshot field by field (this runs for every command): keep it in step with
    `Progress` (tests/unit/test_progress.py checks that every other field is carried over)."""
    states = dict(progress.states)
    if change.step_id is not None and change.to_state is not None:
        states[change.step_id] = change.to_state
    enrolled_at = progress.enrolled_at
    if change.action == Action.ENROLL and enrolled_at is None:
        enrolled_at = at or datetime.min
    return Progress(
        user_id=progress.user_id,
        enrolled_at=enrolled_at,
        current_id=change.new_current,
        states=states,
        last_undoable=progress.last_undoable,
        last_activity_at=at or progress.last_activity_at,
        mentor=progress.mentor,
        timezone=progress.timezone,
        finish_announced_at=progress.finish_announced_at,
    )


def undoable(change: Change, entry_id: int) -> Undoable | None:
    """What a done/skip change becomes once logged as activity entry `entry_id`."""
    if change.action not in UNDOABLE or change.from_state is None or change.to_state is None:
        return None
    assert change.step_id is not None
    return Undoable(
        entry_id,
        change.step_id,
        change.from_state,
        change.to_state,
        change.prev_current,
        change.new_current,
    )


@dataclass(frozen=True)
class SectionProgress:
    section: Section
    done: int
    skipped: int

    @property
    def total(self) -> int:
        return len(self.section.steps)


def section_progress(roadmap: Roadmap, progress: Progress) -> list[SectionProgress]:
    out = []
    for section in roadmap.sections:
        states = [progress.state(s.id) for s in section.steps]
        out.append(SectionProgress(section, states.count(State.DONE), states.count(State.SKIPPED)))
    return out


def totals(roadmap: Roadmap, progress: Progress) -> tuple[int, int, int]:
    """(done, skipped, total) over the steps of this roadmap only."""
    states = [progress.state(s.id) for s in roadmap]
    return states.count(State.DONE), states.count(State.SKIPPED), len(states)


@dataclass(frozen=True)
class ActivityEntry:
    """One row of the append-only activity log."""

    id: int
    user_id: str
    actor: str
    action: str
    step_id: str | None
    from_state: str | None
    to_state: str | None
    at: datetime


@dataclass(frozen=True)
class NewcomerInfo:
    """One newcomer as mentors see them; done/skipped count only the given roadmap's steps."""

    user_id: str
    enrolled_at: datetime
    current_step: str | None
    last_activity_at: datetime
    mentor: str | None
    paused_until: datetime | None
    timezone: str | None
    finished_at: datetime | None
    last_nudged_at: datetime | None
    nudges_in_row: int
    nudges_total: int
    done: int
    skipped: int


@dataclass(frozen=True)
class OpenCheck:
    """The knowledge check a newcomer was asked last and has not answered yet."""

    step_id: str
    check: int
    room_id: str
    poll_event_id: str | None  # None until the poll is sent (or if it was not a poll)


@dataclass(frozen=True)
class CheckAnswer:
    step_id: str
    check: int
    correct: bool
    at: datetime
