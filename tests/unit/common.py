"""Shared data for the unit tests: the real roadmap file and a typical nudge policy."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from bot.nudges import NudgePolicy
from bot.timeutil import DEFAULT_WORKING_DAYS, parse_quiet_hours

ROADMAP_FILE = Path(__file__).resolve().parents[2] / "roadmap.yaml"
BERLIN = ZoneInfo("Europe/Berlin")

# Idle after one working day in Berlin, quiet 20:00-08:00, mentors told after 3 nudges.
POLICY = NudgePolicy(
    idle_after=timedelta(days=1),
    timezone=BERLIN,
    working_days=DEFAULT_WORKING_DAYS,
    quiet=parse_quiet_hours("20:00-08:00"),
    escalate_after=3,
    target="dm",
    team_room=None,
)
