"""Shared pieces of the benchmarks: statistics, a Synapse, the bot as a process.

Built on the dev kit (bot/dev/) only, not tests.harness, so the benchmarks do not move when the
tests do.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import random
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from bot.dev.launcher import BotLauncher, bot_config
from bot.dev.synapse import DevSynapse
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


# --- statistics --------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ratio_interval(
    xs: Sequence[float],
    ys: Sequence[float],
    stat: Callable[[Sequence[float]], float],
    rounds: int = 1000,
    seed: int = 7,
) -> tuple[float, float]:
    """A 90 % bootstrap interval of stat(xs) / stat(ys), each resampled with replacement: how
    far the ratio could move on another run of the same machine, from these samples alone."""
    if not xs or not ys:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    ratios = sorted(
        stat(rng.choices(xs, k=len(xs))) / stat(rng.choices(ys, k=len(ys))) for _ in range(rounds)
    )
    return ratios[int(0.05 * rounds)], ratios[int(0.95 * rounds) - 1]


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


def bench_bot(
    workdir: Path,
    *,
    homeserver: str,
    user_id: str,
    password: str,
    roadmap: Path | None = None,
    extra: dict[str, Any] | None = None,
) -> BotLauncher:
    """The real bot as its own process (`python -m bot run --config ...`), as ops run it;
    benchmarks type faster than people, and greet nobody."""
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
    return BotLauncher(workdir, config)


# The bot's start-up is timed from spawn to its ready line: look for that line often.
READY_POLL_S = 0.005


@contextlib.asynccontextmanager
async def synapse_at(workdir: Path) -> AsyncIterator[DevSynapse]:
    """A throw-away Synapse with generous rate limits (the kit's default), stopped after."""
    server = DevSynapse(workdir)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# --- one benchmark alone: `python -m bench.<name>` ------------------------------------------

R = TypeVar("R")


async def run_alone(
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    quick: str,
    run: Callable[[argparse.Namespace], Awaitable[R]],
    report: Callable[[R], str],
    *,
    wall_time: str | None = None,
) -> None:
    """Reads the benchmark's own options and --quick (`quick` says what it shortens to), runs
    it and prints its report; with `wall_time`, then "<wall_time> wall time N s"."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    parser.add_argument("--quick", action="store_true", help=quick)
    args = parser.parse_args()
    began = time.perf_counter()
    print(report(await run(args)))
    if wall_time is not None:
        print(f"\n{wall_time} wall time {time.perf_counter() - began:.0f} s")
