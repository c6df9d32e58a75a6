"""Scale benchmark: nudge-sweep planning and !team rendering, 100 vs 10,000 newcomers.

Run: .venv/bin/python -m bench.scale   (prints a table; no assertions, machines are noisy)
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bot.commands import all_commands
from bot.commands.registry import Services
from bot.dispatch import Dispatcher, Incoming, People
from bot.nudges import NudgePolicy
from bot.progress import Action, Change, State
from bot.roadmap import Roadmap, parse_roadmap
from bot.scheduler import Jobs
from bot.store import Store
from bot.timeutil import DEFAULT_WORKING_DAYS, parse_timezone

NOW = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)  # a Wednesday
MENTOR = "@mentor:example.org"


def synthetic_roadmap(steps: int, per_section: int = 20) -> Roadmap:
    sections: list[dict[str, Any]] = []
    for n in range(steps):
        s, t = divmod(n, per_section)
        if t == 0:
            sections.append({"id": f"s{s + 1}", "number": s + 1, "title": f"Section {s + 1}",
                             "steps": []})
        sections[-1]["steps"].append({
            "id": f"step-{n + 1}", "number": f"{s + 1}.{t + 1}", "title": f"Step {n + 1}",
            "resources": [{"title": "Docs", "url": f"https://example.org/{n}", "kind": "docs"}],
        })
    return parse_roadmap({"title": "Synthetic", "sections": sections}, Path("synthetic.yaml"))


IDLE = 20  # on a typical day a handful are idle; the rest worked on the roadmap recently


async def populate(store: Store, roadmap: Roadmap, count: int, idle: int | None) -> float:
    """Enrolls `count` newcomers (`idle` of them idle for a week; None: all of them)."""
    started = time.perf_counter()
    for i in range(count):
        user = f"@newcomer{i}:example.org"
        is_idle = idle is None or i < idle
        at = NOW - (timedelta(days=7, hours=i % 7) if is_idle else timedelta(hours=1 + i % 20))
        done = roadmap.steps[i % 5]
        changes = [
            Change(Action.ENROLL, None, None, None, None, roadmap.steps[0].id),
            Change(Action.DONE, done.id, State.PENDING, State.DONE, None, roadmap.steps[5].id),
        ]
        await store.commit_command(
            event_id=f"$e{i}", room_id="!r:example.org", sender=user, changes=changes,
            messages=[(f"t{i}", _send())], at=at,
        )
    return count / (time.perf_counter() - started)


def _send() -> Any:
    from bot.ops import Send

    return Send("reply", {"msgtype": "m.notice", "body": "ok"}, room_id="!r:example.org")


def policy() -> NudgePolicy:
    return NudgePolicy(
        idle_after=timedelta(days=3), timezone=parse_timezone("Europe/Berlin"),
        working_days=DEFAULT_WORKING_DAYS, quiet=None, escalate_after=3, target="dm",
        team_room=None,
    )


def timed(repeats: int, func: Any) -> float:
    """Median wall time of `repeats` runs, in milliseconds."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        func()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def atimed(repeats: int, func: Any) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        await func()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def measure(
    count: int, roadmap: Roadmap, folder: Path, idle: int | None = IDLE
) -> dict[str, float]:
    store = await Store.open(folder / f"bench-{count}-{idle}.db")
    try:
        await populate(store, roadmap, count, idle)
        jobs = Jobs(store=store, roadmap=lambda: roadmap, policy=policy(),
                    mentors=lambda: frozenset({MENTOR}), prefix="!",
                    on_queued=_nothing, clock=lambda: NOW)
        services = Services(store=store, policy=policy(), mentors=frozenset({MENTOR}),
                            server_name="example.org", load_roadmap=lambda: roadmap)
        dispatcher = Dispatcher(roadmap=roadmap, commands=all_commands(), store=store,
                                people=People(frozenset({MENTOR})), services=services,
                                prefix="!", mentor_commands_in_rooms=True, clock=lambda: NOW)
        ops, _ = await jobs.plan_nudges(NOW)
        sweep_ms = await atimed(5, lambda: jobs.plan_nudges(NOW))
        counter = iter(range(10**9))

        async def team() -> None:
            await dispatcher.handle(Incoming(f"$team{next(counter)}", "!r:example.org", MENTOR,
                                             "!team", is_direct=True))

        team_ms = await atimed(3, team)
        return {"sweep_ms": sweep_ms, "nudged": len(ops), "team_ms": team_ms}
    finally:
        await store.close()


async def _nothing() -> None:
    return None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    roadmap = synthetic_roadmap(args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        small = await measure(args.small, roadmap, Path(tmp))
        large = await measure(args.large, roadmap, Path(tmp))
        worst = await measure(args.large, roadmap, Path(tmp), idle=None)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"Scale: {args.steps}-step roadmap, file-backed SQLite, median of repeated runs")
    print(f"typical day: {IDLE} idle newcomers; worst case: all {args.large:,} idle at once\n")
    print(f"| figure | {args.small:,} | {args.large:,} | ratio | {args.large:,}, all idle |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for key, label in (("sweep_ms", "nudge sweep planning (ms)"), ("team_ms", "!team render (ms)")):
        print(f"| {label} | {small[key]:.1f} | {large[key]:.1f} | "
              f"{large[key] / small[key]:.1f}x | {worst[key]:.1f} |")
    print(f"| newcomers due a nudge | {small['nudged']:.0f} | {large['nudged']:.0f} | | "
          f"{worst['nudged']:.0f} |")
    print(f"\npeak resident memory of this process: {rss_mb:.0f} MB")


if __name__ == "__main__":
    asyncio.run(main())
