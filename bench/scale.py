"""Scale benchmark: 100 vs 10,000 newcomers on a 200-step roadmap.

In process: nudge-sweep planning and !team rendering. As a process (the real bot on a
throw-away Synapse): start-up time from spawn to the bot's ready line (bot.logs.READY) with
the database already holding the newcomers (populated through the Store API), and the bot's
resident memory (VmRSS) after start-up.

Run: .venv/bin/python -m bench.scale [--quick] [--no-startup]
(prints tables; no assertions, machines are noisy). Targets (brief/README): sweep and
start-up grow < 3x from 100 to 10,000; memory < 100 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from bench._common import POLICY, READY_POLL_S, bench_bot, rss_mb, run_alone, synapse_at
from bot.app import build_dispatcher
from bot.clock import ServerClock
from bot.dev.launcher import BotLauncher
from bot.dev.synapse import DevSynapse
from bot.dispatch import Incoming
from bot.logs import READY
from bot.progress import Action, Change, State
from bot.roadmap import Roadmap, parse_roadmap
from bot.scheduler import Jobs
from bot.store import CommandRecord, Store
from bot.team import Team, TeamState

NOW = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)  # a Wednesday
MENTOR = "@mentor:example.org"


GROWTH_TARGET = 3.0
MEMORY_TARGET_MB = 100.0
POPULATE_BATCH = 500  # commands a commit while the database is filled
SETTLE_S = 1.0  # after "ready": the scheduler starts and catches up; then VmRSS is read


def synthetic_roadmap(steps: int, per_section: int = 20) -> Roadmap:
    return parse_roadmap(synthetic_roadmap_data(steps, per_section), Path("synthetic.yaml"))


def synthetic_roadmap_data(steps: int, per_section: int = 20) -> dict[str, Any]:
    sections: list[dict[str, Any]] = []
    for n in range(steps):
        s, t = divmod(n, per_section)
        if t == 0:
            sections.append(
                {"id": f"s{s + 1}", "number": s + 1, "title": f"Section {s + 1}", "steps": []}
            )
        sections[-1]["steps"].append(
            {
                "id": f"step-{n + 1}",
                "number": f"{s + 1}.{t + 1}",
                "title": f"Step {n + 1}",
                "resources": [{"title": "Docs", "url": f"https://example.org/{n}", "kind": "docs"}],
            }
        )
    return {"title": "Synthetic", "sections": sections}


IDLE = 20  # on a typical day a handful are idle; the rest worked on the roadmap recently


async def populate(store: Store, roadmap: Roadmap, count: int, idle: int | None) -> None:
    """Enrolls `count` newcomers (`idle` of them idle for a week; None: all of them), a sync's
    worth of commands to a commit (POPULATE_BATCH), as the bot commits a busy sync."""
    records = []
    for i in range(count):
        user = f"@newcomer{i}:example.org"
        is_idle = idle is None or i < idle
        at = NOW - (timedelta(days=7, hours=i % 7) if is_idle else timedelta(hours=1 + i % 20))
        done = roadmap.steps[i % 5]
        changes = (
            Change(Action.ENROLL, None, None, None, None, roadmap.steps[0].id),
            Change(Action.DONE, done.id, State.PENDING, State.DONE, None, roadmap.steps[5].id),
        )
        messages = ((f"t{i}", _send()),)
        records.append(CommandRecord(f"$e{i}", "!r:example.org", user, changes, (), messages, at))
        if len(records) == POPULATE_BATCH or i == count - 1:
            await store.commit_commands(records)
            records = []


def _send() -> Any:
    from bot.ops import Send

    return Send("reply", {"msgtype": "m.notice", "body": "ok"}, room_id="!r:example.org")


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
        team = Team(TeamState(roadmap, POLICY, configured_mentors=frozenset({MENTOR})))
        jobs = Jobs(
            store=store,
            team=team,
            prefix="!",
            clock=ServerClock(lambda: NOW),
        )
        dispatcher = build_dispatcher(
            store,
            team,
            server_name="example.org",
            mentor_commands_in_rooms=True,
            clock=lambda: NOW,
        )
        ops, _ = await jobs.plan_nudges(NOW)
        sweep_ms = await atimed(5, lambda: jobs.plan_nudges(NOW))
        counter = iter(range(10**9))

        async def team_command() -> None:
            await dispatcher.handle(
                Incoming(f"$team{next(counter)}", "!r:example.org", MENTOR, "!team", is_direct=True)
            )

        team_ms = await atimed(3, team_command)
        return {"sweep_ms": sweep_ms, "nudged": len(ops), "team_ms": team_ms}
    finally:
        await store.close()


async def startup(
    synapse: DevSynapse, folder: Path, steps: int, sizes: list[int], restarts: int
) -> dict[int, dict[str, Any]]:
    """The real bot as a process, once per size with its database already populated.

    The first start logs in (password) and uploads device keys; the restarts reuse the saved
    session, as every start after the first does in production. Sizes are interleaved so both
    share the machine's noise.
    """
    roadmap_path = folder / "roadmap-200.yaml"
    roadmap_path.write_text(yaml.safe_dump(synthetic_roadmap_data(steps)), encoding="utf-8")
    bots: dict[int, BotLauncher] = {}
    out: dict[int, dict[str, Any]] = {}
    for count in sizes:
        user_id = await synapse.register(f"scale-bot-{count}", "bot-password")
        bot = bench_bot(
            folder / f"bot-{count}",
            homeserver=synapse.url,
            user_id=user_id,
            password="bot-password",
            roadmap=roadmap_path,
        )
        bot.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / f"bench-{count}-{IDLE}.db", bot.data_dir / "bot.db")
        # populate() queued a reply per newcomer to a made-up room: as if delivered, empty the
        # outbox, or every sync would re-read (and skip) all of them.
        copy = await Store.open(bot.data_dir / "bot.db")
        try:
            await copy.outbox_sent([item.id for item in await copy.outbox()])
        finally:
            await copy.close()
        bots[count] = bot
        out[count] = {"first_s": 0.0, "restart_s": [], "rss": [], "hwm": []}
    try:
        for count, bot in bots.items():
            out[count]["first_s"] = await bot.start(poll=READY_POLL_S)
            await bot.stop()
        for _ in range(restarts):
            for count, bot in bots.items():
                out[count]["restart_s"].append(await bot.start(poll=READY_POLL_S))
                await asyncio.sleep(SETTLE_S)
                assert bot.pid is not None
                rss, hwm = rss_mb(bot.pid)
                out[count]["rss"].append(rss)
                out[count]["hwm"].append(hwm)
                await bot.stop()
    finally:
        for bot in bots.values():
            await bot.stop()
    for count in sizes:
        async_store = await Store.open(bots[count].data_dir / "bot.db")
        out[count]["enrolled"] = await async_store.count_newcomers()
        await async_store.close()
    return out


async def run(args: argparse.Namespace, synapse: DevSynapse | None = None) -> dict[str, Any]:
    restarts = 1 if args.quick else args.restarts
    roadmap = synthetic_roadmap(args.steps)
    results: dict[str, Any] = {"args": args, "restarts": restarts}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        folder = Path(tmp)
        results["small"] = await measure(args.small, roadmap, folder)
        results["large"] = await measure(args.large, roadmap, folder)
        results["worst"] = await measure(args.large, roadmap, folder, idle=None)
        results["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if not args.no_startup:
            async with contextlib.AsyncExitStack() as stack:
                if synapse is None:
                    synapse = await stack.enter_async_context(synapse_at(folder / "synapse"))
                results["startup"] = await startup(
                    synapse, folder, args.steps, [args.small, args.large], restarts
                )
    return results


def report(results: dict[str, Any]) -> str:
    args = results["args"]
    small, large, worst = results["small"], results["large"], results["worst"]
    out = [
        f"Scale: {args.steps}-step roadmap, file-backed SQLite, median of repeated runs",
        f"typical day: {IDLE} idle newcomers; worst case: all {args.large:,} idle at once\n",
        f"| figure | {args.small:,} | {args.large:,} | ratio | {args.large:,}, all idle |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, label in (("sweep_ms", "nudge sweep planning (ms)"), ("team_ms", "!team render (ms)")):
        out.append(
            f"| {label} | {small[key]:.1f} | {large[key]:.1f} | "
            f"{large[key] / small[key]:.1f}x | {worst[key]:.1f} |"
        )
    out.append(
        f"| newcomers due a nudge | {small['nudged']:.0f} | {large['nudged']:.0f} | | "
        f"{worst['nudged']:.0f} |"
    )
    out.append(f"\npeak resident memory of this process: {results['rss_mb']:.0f} MB")
    start = results.get("startup")
    if start:
        a, b = start[args.small], start[args.large]
        med = statistics.median
        out += [
            "",
            f"Start-up of the bot process (`python -m bot run`, {args.steps}-step roadmap, "
            f"database populated through the Store API), spawn -> {READY!r}; restarts reuse "
            f"the saved session (median of {results['restarts']}); memory {SETTLE_S:.0f} s "
            "after ready",
            "",
            f"| figure | {a['enrolled']:,} enrolled | {b['enrolled']:,} enrolled | ratio "
            "| target |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| first start: login + keys + first sync (s) | {a['first_s']:.2f} | "
            f"{b['first_s']:.2f} | {b['first_s'] / a['first_s']:.2f}x | |",
            f"| restart to first sync (s) | {med(a['restart_s']):.2f} | {med(b['restart_s']):.2f}"
            f" | {med(b['restart_s']) / med(a['restart_s']):.2f}x | < {GROWTH_TARGET:.0f}x |",
            f"| VmRSS after start-up (MB) | {med(a['rss']):.1f} | {med(b['rss']):.1f} | "
            f"{med(b['rss']) / med(a['rss']):.2f}x | < {MEMORY_TARGET_MB:.0f} MB |",
            f"| VmHWM, peak (MB) | {med(a['hwm']):.1f} | {med(b['hwm']):.1f} | | |",
        ]
        sweep = large["sweep_ms"] / small["sweep_ms"]
        out.append(f"\nsweep growth {sweep:.1f}x (target < {GROWTH_TARGET:.0f}x)")
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--restarts", type=int, default=3, help="timed restarts per size")
    parser.add_argument(
        "--no-startup",
        action="store_true",
        help="in-process figures only (no Synapse, no bot process)",
    )


async def main() -> None:
    await run_alone(__doc__, add_arguments, "one timed restart per size", run, report)


if __name__ == "__main__":
    asyncio.run(main())
