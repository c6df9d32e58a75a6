"""Command throughput in process, no network: the Dispatcher on a real file-backed Store.

Many newcomers take turns with a 50/50 `!done`/`!next` mix on the real roadmap.yaml (a newcomer
about to finish says `!undo` instead of `!done`, so nobody runs out of steps). Two ways in, as
the bot gets commands: one at a time (`Dispatcher.handle`: a quiet room, one command a sync,
one commit each) and a sync's worth at once (`Dispatcher.handle_all`: what a busy homeserver
hands over, group-committed). Next to them: the floor, a bare aiosqlite `INSERT` + `COMMIT` per
command on the same kind of file (WAL, as durable as the store's commits). With --profile (or
below the target), a cProfile of the event-loop thread, one at a time, shows where the time
goes.

Run: .venv/bin/python -m bench.throughput [--commands 3000] [--newcomers 100] [--syncs 10,50]
No assertions. Target (brief/README): >= 2,000 commands/s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import sysconfig
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from bench._common import POLICY, REPO, Summary, run_alone
from bot.app import build_dispatcher
from bot.dispatch import Dispatcher, FloodGate, Incoming
from bot.roadmap import Roadmap, load_roadmap
from bot.store import Store
from bot.team import Team, TeamState

TARGET = 2000.0
PROFILED = 1000  # commands run under cProfile
ROOM = "!bench:example.org"


@dataclass
class Counters:
    """SQL statements the store's connection runs, by kind, while enabled."""

    statements: int = 0
    on: bool = False
    kinds: Counter[str] = field(default_factory=Counter)


def connection_of(store: Store) -> aiosqlite.Connection:
    """The store's connection, to observe it (never to write). The store does not hand it out,
    as nothing but these measurements needs it."""
    connection: aiosqlite.Connection = store._db  # noqa: SLF001
    return connection


async def count_statements(store: Store, counters: Counters) -> None:
    """Counts the statements of the store's connection through aiosqlite's public trace hook
    (the callback runs in aiosqlite's worker thread)."""

    def trace(sql: str) -> None:
        if counters.on:
            counters.statements += 1
            counters.kinds[sql.split(None, 1)[0].upper()] += 1

    await connection_of(store).set_trace_callback(trace)


SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


async def store_synchronous(folder: Path) -> str:
    """How durably the store commits (PRAGMA synchronous, a setting of each connection, so
    read from a store's own), for the floor to commit alike."""
    store = await Store.open(folder / "pragma.db")
    try:
        rows = list(await connection_of(store).execute_fetchall("PRAGMA synchronous"))
    finally:
        await store.close()
    return SYNCHRONOUS[int(rows[0][0])]


def dispatcher_for(store: Store, roadmap: Roadmap) -> Dispatcher:
    return build_dispatcher(
        store,
        Team(TeamState(roadmap, POLICY)),
        server_name="example.org",
        flood=FloodGate(limit=10**9),
    )


def workload(count: int, newcomers: int, steps: int) -> list[tuple[str, str]]:
    """(sender, body) in order: newcomers take turns; each alternates !done and !next."""
    plan: list[tuple[str, str]] = []
    dones = [0] * newcomers
    turns = [0] * newcomers
    for k in range(count):
        u = k % newcomers
        turn = turns[u]
        turns[u] += 1
        if turn % 2:
            body = "!next"
        elif dones[u] < steps - 2:
            body, dones[u] = "!done", dones[u] + 1
        else:
            body, dones[u] = "!undo", dones[u] - 1
        plan.append((f"@newcomer{u}:example.org", body))
    return plan


async def drive(
    dispatcher: Dispatcher,
    plan: list[tuple[str, str]],
    tag: str,
    timings: dict[str, list[float]] | None = None,
    per_sync: int = 1,
) -> float:
    """Runs the plan, `per_sync` commands a call; returns elapsed seconds.

    One at a time goes through `handle`, with per-command times in `timings`; more through
    `handle_all`, as the bot hands over one sync's commands.
    """
    started = time.perf_counter()
    for at in range(0, len(plan), per_sync):
        msgs = [
            Incoming(f"${tag}{i}", ROOM, sender, body)
            for i, (sender, body) in enumerate(plan[at : at + per_sync], at)
        ]
        t0 = time.perf_counter()
        if per_sync == 1:
            answered = [await dispatcher.handle(msgs[0])]
        else:
            answered = await dispatcher.handle_all(msgs)
        if timings is not None:
            timings.setdefault(msgs[0].body, []).append((time.perf_counter() - t0) * 1000)
        for msg, items in zip(msgs, answered, strict=True):
            if not items:
                raise RuntimeError(f"{msg.body} from {msg.sender} queued no reply")
    return time.perf_counter() - started


async def bare_inserts(path: Path, count: int, synchronous: str) -> float:
    """Commits per second of one INSERT + COMMIT each, same pragmas as the Store."""
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute(f"PRAGMA synchronous = {synchronous}")
        await db.execute(
            "CREATE TABLE handled (event_id TEXT PRIMARY KEY, room_id TEXT, at TEXT) WITHOUT ROWID"
        )
        for i in range(200):  # warm-up
            await db.execute("INSERT INTO handled VALUES (?, ?, ?)", (f"$w{i}", ROOM, "t"))
        started = time.perf_counter()
        for i in range(count):
            await db.execute("BEGIN IMMEDIATE")
            await db.execute("INSERT INTO handled VALUES (?, ?, ?)", (f"$e{i}", ROOM, "t"))
            await db.execute("COMMIT")
        return count / (time.perf_counter() - started)
    finally:
        await db.close()


@dataclass
class Mode:
    """One way of handing commands over, measured on its own fresh database."""

    per_sync: int
    rate: float = 0.0
    statements: float = 0.0
    cmd_ms: float = 0.0
    kinds: dict[str, float] = field(default_factory=dict)
    per_command: dict[str, Summary] = field(default_factory=dict)
    profile: str | None = None
    profiled: int = 0

    @property
    def name(self) -> str:
        if self.per_sync == 1:
            return "one at a time (Dispatcher.handle)"
        return f"syncs of {self.per_sync} (Dispatcher.handle_all)"


async def measure_mode(
    args: argparse.Namespace, folder: Path, roadmap: Roadmap, count: int, per_sync: int
) -> Mode:
    store = await Store.open(folder / f"bot-{per_sync}.db")
    mode = Mode(per_sync)
    try:
        dispatcher = dispatcher_for(store, roadmap)
        # Enroll everyone, then a warm-up round, neither timed.
        await drive(
            dispatcher,
            [(f"@newcomer{u}:example.org", "!start") for u in range(args.newcomers)],
            "enroll",
        )
        counted = min(count, 1000)
        plan = workload(200 + count + counted, args.newcomers, len(roadmap))
        await drive(dispatcher, plan[:200], "warm", per_sync=per_sync)
        timings: dict[str, list[float]] = {}
        elapsed = await drive(dispatcher, plan[200 : 200 + count], "run", timings, per_sync)
        mode.rate = count / elapsed
        # Counting statements slows SQLite down (a Python callback on every statement), so
        # it is a second pass of its own, after the timed one.
        counters = Counters()
        await count_statements(store, counters)
        counters.on = True
        spent = await drive(dispatcher, plan[200 + count :], "count", None, per_sync)
        counters.on = False
        mode.statements = counters.statements / counted
        mode.cmd_ms = spent * 1000 / counted
        mode.kinds = {k: v / counted for k, v in counters.kinds.most_common()}
        if per_sync == 1:
            mode.per_command = {body: Summary.of(ms) for body, ms in timings.items()}
            if args.profile or mode.rate < TARGET:
                mode.profile = await profile(dispatcher, plan, args.profile_top)
                mode.profiled = min(PROFILED, len(plan))
    finally:
        await store.close()
    return mode


async def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    count = 1000 if args.quick else args.commands
    roadmap = load_roadmap(REPO / "roadmap.yaml")
    sizes = [1, *(int(n) for n in args.syncs.split(",") if n.strip())]
    modes = [await measure_mode(args, folder, roadmap, count, n) for n in sizes]
    synchronous = await store_synchronous(folder)
    bare = statistics.median(
        [await bare_inserts(folder / f"bare{r}.db", count, synchronous) for r in range(3)]
    )
    return {
        "synchronous": synchronous,
        "count": count,
        "newcomers": args.newcomers,
        "steps": len(roadmap),
        "bare": bare,
        "modes": modes,
    }


async def profile(dispatcher: Dispatcher, plan: list[tuple[str, str]], top: int) -> str:
    """cProfile of the event-loop thread over up to PROFILED more commands of the same mix."""
    more = plan[:PROFILED]
    prof = cProfile.Profile()
    prof.enable()
    await drive(dispatcher, more, "prof")
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    out.write("\nbot/ functions by own time:\n")
    stats.sort_stats("tottime").print_stats(r"/bot/", top)
    return _trim(out.getvalue())


def _trim(text: str) -> str:
    """pstats output without its preamble, paths shortened, one column header per table."""
    stdlib = sysconfig.get_paths()["stdlib"] + "/"
    site = sysconfig.get_paths()["purelib"] + "/"
    keep: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("Ordered by", "List reduced")):
            continue
        if "function calls" in stripped and keep:
            continue
        for prefix in (site, stdlib, str(REPO) + "/"):
            line = line.replace(prefix, "")
        keep.append(line)
    return "\n".join(keep)


def report(r: dict[str, Any]) -> str:
    modes: list[Mode] = r["modes"]
    out = [
        f"Throughput: the Dispatcher on a real Store (file, WAL, "
        f"synchronous={r['synchronous']}), "
        f"roadmap.yaml ({r['steps']} steps), {r['count']:,} commands a row, "
        f"{r['newcomers']} newcomers taking turns, !done/!next 50/50",
        "",
        "| commands handed over | commands/s | ratio to bare | target | SQL statements a command |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for m in modes:
        out.append(
            f"| {m.name} | {m.rate:,.0f} | {m.rate / r['bare']:.2f} | >= {TARGET:,.0f} "
            f"| {m.statements:.1f} |"
        )
    out += [f"| bare aiosqlite INSERT + COMMIT | {r['bare']:,.0f} | 1.00 | | 3 |", ""]
    one = modes[0]
    out += [
        "One at a time, per command:",
        "",
        "| command | n | median ms | p95 ms | mean ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for body, s in sorted(one.per_command.items()):
        out.append(f"| {body} | {s.n} | {s.median:.3f} | {s.p95:.3f} | {s.mean:.3f} |")
    kinds = ", ".join(f"{k} {v:.1f}" for k, v in one.kinds.items())
    out.append(
        f"\none at a time: {one.statements:.1f} SQL statements a command ({kinds}); "
        f"{one.cmd_ms:.3f} ms a command in the counting pass (slower: a callback on every "
        "statement)"
    )
    if one.profile:
        out.append(
            f"\ncProfile of the event-loop thread, one at a time ({one.profiled:,} commands; "
            "SQLite runs in aiosqlite's worker thread: waiting for it is the epoll time):\n"
        )
        out.append(one.profile)
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--commands", type=int, default=3000)
    parser.add_argument("--newcomers", type=int, default=100)
    parser.add_argument(
        "--profile", action="store_true", help="profile even when the target is met"
    )
    parser.add_argument("--profile-top", type=int, default=15)
    parser.add_argument(
        "--syncs",
        default="10,50",
        help="commands a sync for the handle_all rows, comma-separated (default 10,50)",
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        return await measure(args, Path(tmp))


async def main() -> None:
    await run_alone(__doc__, add_arguments, "1,000 commands", run, report)


if __name__ == "__main__":
    asyncio.run(main())
