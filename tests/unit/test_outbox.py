"""The outbox's order of sending, against a fake homeserver (the homeserver's own behaviour is
the integration tests'): a step's reaction shortcuts come after the replies people wait for,
and those of a message that a newer one in its room has replaced are not sent at all."""

from __future__ import annotations

from bot.dispatch import Incoming
from bot.roadmap import Roadmap
from bot.shortcuts import SHORTCUTS
from bot.store import Store
from tests.unit.common import ForgetfulHomeserver
from tests.unit.conftest import NEWCOMER, ROOM, make_dispatcher

BOT = "@mentor-bot:example.org"


def sent(homeserver: ForgetfulHomeserver) -> list[tuple[str, str]]:
    """(event type, what it is: a reply's body start or the event a reaction is on), in order."""
    out = []
    for path, body in zip(homeserver.puts, homeserver.bodies, strict=True):
        event_type = path.split("/send/")[1].split("/")[0]
        what = body.get("m.relates_to", {}).get("event_id") or body.get("body", "")[:12]
        out.append((event_type, what))
    return out


async def test_a_step_shown_gets_its_shortcuts_after_the_reply(
    store: Store, roadmap: Roadmap
) -> None:
    homeserver = ForgetfulHomeserver(BOT, ROOM)
    outbox = homeserver.outbox(store)
    await make_dispatcher(store, roadmap).handle_all([Incoming("$1", ROOM, NEWCOMER, "!start")])
    await outbox.flush()
    await outbox.flush()  # the shortcuts, queued once the reply's event id was known
    kinds = [kind for kind, _ in sent(homeserver)]
    assert kinds == ["m.room.message"] + ["m.reaction"] * len(SHORTCUTS)
    assert {what for kind, what in sent(homeserver) if kind == "m.reaction"} == {"$posted1"}
    assert await store.outbox() == []


async def test_shortcuts_a_newer_step_message_replaced_are_not_sent(
    store: Store, roadmap: Roadmap
) -> None:
    # Two replies that show a step wait at once (the homeserver was slow): the first goes, then
    # the second before the first's shortcuts (replies first); by then only the newest
    # message's shortcuts are worth sending.
    homeserver = ForgetfulHomeserver(BOT, ROOM)
    outbox = homeserver.outbox(store)
    dispatcher = make_dispatcher(store, roadmap)
    await dispatcher.handle_all([Incoming("$1", ROOM, NEWCOMER, "!start")])
    await dispatcher.handle_all([Incoming("$2", ROOM, NEWCOMER, "!next")])
    await outbox.flush()
    await outbox.flush()
    replies = [what for kind, what in sent(homeserver) if kind == "m.room.message"]
    reactions = [what for kind, what in sent(homeserver) if kind == "m.reaction"]
    assert len(replies) == 2
    assert reactions == ["$posted2"] * len(SHORTCUTS)  # under the second reply only
    assert await store.outbox() == []  # the first's were taken out, not left waiting
    # A reaction on the first message still stands for its step.
    first = await store.marked("$posted1")
    assert first is not None and first.mark.kind == "step"
