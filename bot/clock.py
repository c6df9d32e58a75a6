"""The time as the homeserver tells it, not as this machine's clock says.

Events carry the homeserver's timestamps; a bot whose clock runs ahead would drop commands as
"older than its join", store times from the future and count idle days nobody was idle. The
offset is measured from the homeserver's `Date` header at start and every hour; past
`MAX_SKEW` the bot warns, shows it in a metric, and holds nudges until the clocks agree again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import quote

from nio import AsyncClient

from bot.identity import api

log = logging.getLogger(__name__)

MAX_SKEW = timedelta(minutes=5)
# The Date header is truncated to the second and a round trip old: an offset within this is
# what the measurement cannot tell from zero, and applying it would only make every time the
# bot records jump by up to a second at each measurement (a restart included).
RESOLUTION = timedelta(seconds=2)
CHECK_EVERY_S = 3600.0


def offset_from(date_header: str, received: datetime) -> timedelta:
    """Server minus local time. The header is truncated to the second and was written before
    the answer arrived, so the offset errs towards the past: a time corrected by it is never
    ahead of the server's (by at most a second and a round trip behind)."""
    return parsedate_to_datetime(date_header).astimezone(UTC) - received


class ServerClock:
    def __init__(self, local: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.local = local
        self.offset = timedelta(0)
        self.checked_at: float | None = None  # time.monotonic() of the last measurement
        self.measured = False  # the homeserver's time is known (a Date header was read)

    def now(self) -> datetime:
        return self.local() + self.offset

    def now_ms(self) -> int:
        return int(self.now().timestamp() * 1000)

    @property
    def skewed(self) -> bool:
        return abs(self.offset) > MAX_SKEW

    def due(self) -> bool:
        return self.checked_at is None or time.monotonic() - self.checked_at >= CHECK_EVERY_S

    def observe(self, offset: timedelta) -> None:
        was = self.skewed
        self.checked_at = time.monotonic()
        self.measured = True
        self.offset = offset if abs(offset) > RESOLUTION else timedelta(0)
        if self.skewed and not was:
            log.warning(
                "this machine's clock is %+.0f s off the homeserver's: the bot goes by the "
                "homeserver's time and holds nudges until the clocks agree (fix NTP here)",
                -offset.total_seconds(),
            )
        elif was and not self.skewed:
            log.info("the clock agrees with the homeserver's again; nudges resume")

    async def check(self, client: AsyncClient) -> None:
        """Measures the offset from the homeserver's `Date` header (any endpoint has one)."""
        resp = await client.send("GET", "/_matrix/client/versions")
        async with resp:
            received = self.local()
            date = resp.headers.get("Date")
        if date:
            self.observe(offset_from(date, received))
        else:
            self.checked_at = time.monotonic()
            log.warning("the homeserver sends no Date header: cannot check this machine's clock")


async def join_time_ms(client: AsyncClient, room_id: str) -> int | None:
    """The homeserver's timestamp of the bot's own membership event in `room_id` (its join, or
    its creation of the room): commands older than it were not meant for the bot."""
    path = f"/rooms/{quote(room_id)}/state/m.room.member/{quote(str(client.user_id))}"
    status, event = await api(client, "GET", path + "?format=event")
    ts = event.get("origin_server_ts") if status == 200 else None
    return ts if isinstance(ts, int) else None
