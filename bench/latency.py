"""Reply latency over a real homeserver: the bot against a bare matrix-nio echo bot.

One Synapse on loopback; the real bot as its own process; bench/echo_bot.py as another; one
user client (matrix-nio, E2E-capable) with a room per bot, unencrypted and encrypted. The user
sends the same command to each bot in turn (ABBA order, so both share the machine's noise) and
times command sent -> reply received (the user's sync delivers it). The echo bot is the floor
any matrix-nio bot on this machine pays; the ratio of medians is the bot's own overhead.

Run: .venv/bin/python -m bench.latency [--n 100] [--warmup 5] [--quick]
No assertions: machines are shared and noisy. Target (brief/README): median ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import ECHO_READY, READY_POLL_S, REPO, Summary, bench_bot, synapse_at
from bot.cross_signing import CrossSigningKeys
from bot.dev.client import MatrixUser, MatrixUserError
from bot.dev.process import spawn, stop_process, wait_for_log
from bot.dev.synapse import DevSynapse

TARGET_RATIO = 1.10
COMMAND = "!next"
REPLY_TIMEOUT_S = 20.0


async def round_trip(user: MatrixUser, room_id: str, text: str, expect: str) -> float:
    """Sends `text`; seconds until the reply from `expect` to that very event arrives (other
    messages, such as a late duplicate, are passed over)."""
    began = time.perf_counter()
    # The room was opened with open_direct_chat, which made sure of the members' devices.
    event_id = await user.send(room_id, {"msgtype": "m.text", "body": text}, share_keys=False)
    deadline = began + REPLY_TIMEOUT_S
    while True:
        message = await user.reply(room_id, max(0.0, deadline - time.perf_counter()))
        answers = message.content.get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id")
        if message.sender == expect and answers == event_id:
            return message.arrived - began


async def measure_pair(
    user: MatrixUser, rooms: dict[str, tuple[str, str]], n: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """rooms: name -> (room_id, bot user id). ABBA order; the first `warmup` rounds dropped."""
    samples: dict[str, list[float]] = {name: [] for name in rooms}
    failures = dict.fromkeys(rooms, 0)
    names = list(rooms)
    for i in range(warmup + n):
        for name in names if i % 2 == 0 else reversed(names):
            room_id, expect = rooms[name]
            try:
                seconds = await round_trip(user, room_id, COMMAND, expect)
            except MatrixUserError:
                failures[name] += 1
                continue
            if i >= warmup:
                samples[name].append(seconds * 1000)
    return samples, failures


async def run(args: argparse.Namespace, synapse: DevSynapse | None = None) -> dict[str, Any]:
    n, warmup = (20, 3) if args.quick else (args.n, args.warmup)
    logging.getLogger("nio").setLevel(logging.ERROR)  # "Missing session for device" and such
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        work = Path(tmp)
        async with contextlib.AsyncExitStack() as stack:
            if synapse is None:
                synapse = await stack.enter_async_context(synapse_at(work / "synapse"))
            bot_id = await synapse.register("lat-bot", "bot-password")
            echo_id = await synapse.register("lat-echo", "echo-password")
            user_id = await synapse.register("lat-user", "user-password")

            bot = bench_bot(
                work / "bot",
                homeserver=synapse.url,
                user_id=bot_id,
                password="bot-password",
                extra={"nudges": {"enabled": False}},
            )
            stack.push_async_callback(bot.stop)
            await bot.start(poll=READY_POLL_S)

            echo_log = work / "echo.log"
            (work / "echo-store").mkdir()
            echo = spawn(
                [
                    sys.executable,
                    "-m",
                    "bench.echo_bot",
                    "--homeserver",
                    synapse.url,
                    "--user",
                    echo_id,
                    "--password",
                    "echo-password",
                    "--store",
                    str(work / "echo-store"),
                ],
                cwd=REPO,
                log_path=echo_log,
            )
            stack.push_async_callback(stop_process, echo)
            await wait_for_log(echo_log, ECHO_READY, echo, timeout=60, poll=0.005, what="echo bot")

            user = await MatrixUser.login(
                synapse.url,
                user_id,
                "user-password",
                work / "user-store",
                device_name="bench-user",
                # The bot answers cross-signed devices only, as Element's users have.
                cross_signing=CrossSigningKeys.generate(),
                sync_timeout_ms=30_000,
                notice=lambda text: print(f"  (user: {text})", file=sys.stderr),
            )
            stack.push_async_callback(user.close)

            results: dict[str, Any] = {"n": n, "warmup": warmup, "rows": {}}
            for label, encrypted in (("unencrypted", False), ("encrypted", True)):
                rooms = {
                    "bot": (await user.open_direct_chat(bot_id, encrypted=encrypted), bot_id),
                    "echo": (await user.open_direct_chat(echo_id, encrypted=encrypted), echo_id),
                }
                samples, failures = await measure_pair(user, rooms, n, warmup)
                for name in rooms:
                    results["rows"][(label, name)] = (Summary.of(samples[name]), failures[name])
    return results


def report(results: dict[str, Any]) -> str:
    rows = results["rows"]
    out = [
        f"Reply latency: command sent -> reply received, {results['n']} round trips per row "
        f"after {results['warmup']} warm-up rounds each",
        f"command {COMMAND!r}; bot = `python -m bot run` (INFO logging), echo = "
        "bench/echo_bot.py (bare matrix-nio); same Synapse, same user, ABBA order",
        "",
        "| room | bot | n | median ms | p95 ms | mean ms | max ms | failed | median ratio "
        f"(target <= {TARGET_RATIO:.2f}) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label in ("unencrypted", "encrypted"):
        bot_s, _ = rows[(label, "bot")]
        echo_s, _ = rows[(label, "echo")]
        ratio = bot_s.median / echo_s.median if echo_s.median else float("nan")
        for name in ("bot", "echo"):
            s, failed = rows[(label, name)]
            cell = f"{ratio:.2f}" if name == "bot" else ""
            out.append(
                f"| {label} | {name} | {s.n} | {s.median:.1f} | {s.p95:.1f} | {s.mean:.1f} | "
                f"{s.high:.1f} | {failed} | {cell} |"
            )
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=100, help="round trips per bot and room kind")
    parser.add_argument("--warmup", type=int, default=5, help="round trips not counted")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="20 round trips, 3 warm-up")
    args = parser.parse_args()
    print(report(await run(args)))


if __name__ == "__main__":
    asyncio.run(main())
