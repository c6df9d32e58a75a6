"""What a command or a job asks the store to do, besides progress changes. Plain data.

Handlers return these; the store applies them with the handled event and the queued messages
in one transaction, so a crash leaves either all of it or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class SetMentor:
    user_id: str
    mentor: str | None


@dataclass(frozen=True)
class SetPause:
    user_id: str
    until: datetime | None  # None: not paused; PAUSED_FOREVER: until !resume


@dataclass(frozen=True)
class SetTimezone:
    user_id: str
    timezone: str


@dataclass(frozen=True)
class RecordNudge:
    user_id: str
    kind: str  # "nudge" or "escalation"
    step_id: str | None
    actor: str  # the mentor who asked, or "scheduler"


@dataclass(frozen=True)
class MarkFinishAnnounced:
    """The mentors were told this newcomer finished: never again, whatever !undo does after."""

    user_id: str


@dataclass(frozen=True)
class AskCheck:
    """A knowledge check put to a newcomer: the one `!answer` (or a poll response) answers."""

    user_id: str
    step_id: str
    check: int  # the check's index in its step
    room_id: str


@dataclass(frozen=True)
class AnswerCheck:
    """A newcomer's answer to the check they were asked: kept, and the question closed."""

    user_id: str
    step_id: str
    check: int
    correct: bool


Op = SetMentor | SetPause | SetTimezone | RecordNudge | MarkFinishAnnounced | AskCheck | AnswerCheck


@dataclass(frozen=True)
class Mark:
    """What a message is, once it has an event id: it shows `step_id` to `user_id` (kind
    "step": reactions on it act on that step), or asks them check `check` of it ("quiz": poll
    responses to it answer that check)."""

    kind: str
    user_id: str
    step_id: str
    check: int | None = None


BACKGROUND_KINDS = frozenset({"nudge", "escalation", "digest", "shortcut"})


@dataclass(frozen=True)
class Send:
    """A message besides the reply: to a room, or to a user's direct chat with the bot.

    `key` makes its transaction id unique and repeatable for the event or job that sends it.
    """

    key: str
    content: dict[str, Any]
    room_id: str | None = None
    to_user: str | None = None
    # False only for what must reach a device that gets no room keys (it says nothing private).
    encrypted: bool = True
    event_type: str = "m.room.message"
    mark: Mark | None = None

    @property
    def background(self) -> bool:
        """Scheduled follow-ups wait behind the replies people are waiting for."""
        return self.key in BACKGROUND_KINDS


PAUSED_FOREVER = datetime.fromisoformat("9999-12-31T00:00:00+00:00")
