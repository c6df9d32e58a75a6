"""Knowledge checks as Matrix polls (MSC3381), as Element sends and reads them. Pure.

Element (matrix-react-sdk, through matrix-events-sdk) sends the unstable names: its
`UnstableValue.name` is the unstable one, so a poll it starts is `org.matrix.msc3381.poll.start`
with `org.matrix.msc1767.text` for text, and it reads both those and the stable `m.poll.*`
names. The bot sends what Element sends, with the text fallback in the poll (and in `body`),
and reads a vote under either name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

POLL_START = "org.matrix.msc3381.poll.start"
POLL_END = "org.matrix.msc3381.poll.end"
POLL_RESPONSE = frozenset({"org.matrix.msc3381.poll.response", "m.poll.response"})
TEXT = "org.matrix.msc1767.text"
DISCLOSED = "org.matrix.msc3381.poll.disclosed"


def poll_start(question: str, options: Sequence[str], fallback: str) -> dict[str, Any]:
    """A single-choice poll whose answers have the ids "1", "2", ... (what `!answer` takes)."""
    return {
        POLL_START: {
            "question": {TEXT: question},
            "kind": DISCLOSED,
            "max_selections": 1,
            "answers": [{"id": str(i), TEXT: option} for i, option in enumerate(options, 1)],
        },
        TEXT: fallback,
        "body": fallback,
    }


def poll_end(poll_event_id: str, text: str) -> dict[str, Any]:
    return {
        "m.relates_to": {"rel_type": "m.reference", "event_id": poll_event_id},
        POLL_END: {},
        TEXT: text,
        "body": text,
    }


def poll_vote(content: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """(the answer number voted for, the poll's event id) of a poll response's content; None
    where it has no such thing."""
    relates = content.get("m.relates_to")
    poll = relates.get("event_id") if isinstance(relates, Mapping) else None
    block = next(
        (
            content[k]
            for k in ("m.poll.response", "org.matrix.msc3381.poll.response")
            if k in content
        ),
        None,
    )
    answers = block.get("answers") if isinstance(block, Mapping) else None
    first = answers[0] if isinstance(answers, list) and answers else None
    number = int(first) if isinstance(first, str) and first.isdecimal() else None
    return number, poll if isinstance(poll, str) else None
