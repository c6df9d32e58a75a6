"""Reaction shortcuts: the keys the bot puts under a message that shows a step, and the command
a newcomer's reaction with one of them stands for. Pure."""

from __future__ import annotations

import hashlib

from bot.ops import Send

VARIATION_SELECTOR = "\ufe0f"
# The key as the bot sends it -> the command it stands for, on the step the message shows.
SHORTCUTS: dict[str, str] = {"✅": "done", "⏭️": "skip", "📚": "resources"}
SHORTCUT_TXN = "shortcut-"  # how the transaction ids of the bot's shortcut reactions begin
_BY_KEY = {key.replace(VARIATION_SELECTOR, ""): name for key, name in SHORTCUTS.items()}


def command_for(key: str) -> str | None:
    """The command a reaction key stands for, with or without U+FE0F; None: no shortcut."""
    return _BY_KEY.get(key.replace(VARIATION_SELECTOR, ""))


def shortcut_target(event_type: str, content: dict[str, object], txn_id: str) -> str | None:
    """The message a queued shortcut reaction of the bot's goes under; None: not one."""
    if event_type != "m.reaction" or not txn_id.startswith(SHORTCUT_TXN):
        return None
    relation = content.get("m.relates_to")
    target = relation.get("event_id") if isinstance(relation, dict) else None
    return target if isinstance(target, str) else None


def shortcut_reactions(room_id: str, event_id: str) -> list[tuple[str, Send]]:
    """The bot's own reactions on the message `event_id`, each with a transaction id of its own
    (so a repeat after a crash is deduplicated), queued behind the replies people wait for."""
    out = []
    for key in SHORTCUTS:
        txn = SHORTCUT_TXN + hashlib.sha256(f"{event_id}/{key}".encode()).hexdigest()[:32]
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
        out.append((txn, Send("shortcut", content, room_id=room_id, event_type="m.reaction")))
    return out
