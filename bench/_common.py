"""Shared pieces of the benchmarks: statistics, a Synapse, the bot as a process, a user client.

Built on bot.devserver only (not tests.harness), so the benchmarks do not move when the tests do.
"""

# Explicit timeouts and small blocking reads of log files are fine in a benchmark harness.
# ruff: noqa: ASYNC109, ASYNC240

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from bot.devserver import DevSynapse, bot_config, spawn, stop_process, wait_for_log
from bot.nudges import NudgePolicy
from bot.timeutil import DEFAULT_WORKING_DAYS, parse_timezone

REPO = Path(__file__).resolve().parents[1]
# Nudge after 3 working days in Berlin, no quiet hours, mentors told after 3 nudges.
POLICY = NudgePolicy(
    idle_after=timedelta(days=3),
    timezone=parse_timezone("Europe/Berlin"),
    working_days=DEFAULT_WORKING_DAYS,
    quiet=None,
    escalate_after=3,
    target="dm",
    team_room=None,
)
READY = "first sync done; ready for commands"
ECHO_READY = "echo bot ready"


# --- statistics --------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    p95: float
    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan)
        return cls(
            len(samples),
            statistics.median(samples),
            percentile(samples, 95),
            statistics.fmean(samples),
            min(samples),
            max(samples),
        )


def machine_header() -> str:
    return (
        f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
        f"{platform.machine()}, Linux {platform.release()}; "
        f"Python {platform.python_version()}; "
        f"date {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}"
    )


# --- processes ---------------------------------------------------------------------------


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MB (MiB)."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


class BotProc:
    """The real bot as its own process (`python -m bot run --config ...`), as ops run it."""

    def __init__(
        self,
        workdir: Path,
        *,
        homeserver: str,
        user_id: str,
        password: str,
        roadmap: Path | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "config.yaml"
        self.log_path = workdir / "bot.log"
        # Benchmarks type faster than people.
        defaults = {
            "logging": {"level": "INFO"},
            "bot": {"flood_limit": 100_000, "greeting": False},
        }
        config = bot_config(
            homeserver,
            user_id,
            password,
            defaults,
            extra or {},
            device_name="bench-bot",
            roadmap=roadmap or REPO / "roadmap.yaml",
        )
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def db_path(self) -> Path:
        return self.workdir / "data" / "bot.db"

    async def start(self, timeout: float = 120.0) -> float:
        """Starts the process; returns seconds from spawn to the "ready" log line."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        began = time.perf_counter()
        self.proc = spawn(
            [sys.executable, "-m", "bot", "run", "--config", str(self.config_path)],
            cwd=REPO,
            log_path=self.log_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        ready = await wait_for_log(
            self.log_path,
            READY,
            self.proc,
            offset=offset,
            timeout=timeout,
            poll=0.005,
            what="the bot",
        )
        return ready - began

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self) -> None:
        if self.proc is not None:
            await stop_process(self.proc)
            self.proc = None


@contextlib.asynccontextmanager
async def synapse_at(workdir: Path) -> AsyncIterator[DevSynapse]:
    """A throw-away Synapse with generous rate limits (devserver's default), stopped after."""
    server = DevSynapse(workdir)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
