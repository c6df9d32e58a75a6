"""Reply latency over a real homeserver: the bot against a bare matrix-nio echo bot.

One Synapse on loopback; the real bot as its own process; bench/echo_bot.py as another; one
user client (matrix-nio, E2E-capable) with a room per bot, unencrypted and encrypted. The user
sends the same command to each bot in turn (ABBA order, so both share the machine's noise) and
times command sent -> reply received (the user's sync delivers it). The echo bot is the floor
any matrix-nio bot on this machine pays; the ratio of medians is the bot's own overhead.

Run: .venv/bin/python -m bench.latency [--n 100] [--warmup 5] [--quick]
No assertions: machines are shared and noisy. Target (brief/README): median ratio <= 1.10.
"""

# ruff: noqa: ASYNC240

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

from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinedMembersResponse,
    LoginResponse,
    MatrixRoom,
    MegolmEvent,
    RoomCreateResponse,
    RoomMessage,
    RoomSendResponse,
    SyncResponse,
)

from bench._common import ECHO_READY, REPO, BotProc, Summary, synapse_at
from bot.cross_signing import CrossSigningKeys
from bot.devserver import DevSynapse, spawn, stop_process, wait_for_log
from bot.e2e import maintain_keys
from bot.identity import cross_sign
from bot.outbox import encrypted_room_state

TARGET_RATIO = 1.10
COMMAND = "!next"
REPLY_TIMEOUT_S = 20.0


class User:
    """A matrix-nio user with a background long-poll sync; replies land in per-room queues."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.inbox: dict[str, asyncio.Queue[tuple[float, str, dict[str, Any]]]] = {}
        self.lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def login(cls, url: str, user_id: str, password: str, store: Path) -> User:
        store.mkdir(parents=True, exist_ok=True)
        config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False)
        client = AsyncClient(url, user_id, store_path=str(store), config=config)
        resp = await client.login(password, device_name="bench-user")
        if not isinstance(resp, LoginResponse):
            raise RuntimeError(f"login of {user_id} failed: {resp}")
        if client.should_upload_keys:
            await client.keys_upload()
        # The bot answers cross-signed devices only, as Element's users have.
        await cross_sign(client, CrossSigningKeys.generate(), password)
        first = await client.sync(timeout=0, full_state=True)
        if not isinstance(first, SyncResponse):
            raise RuntimeError(f"first sync of {user_id} failed: {first}")
        user = cls(client)
        client.add_event_callback(user._on_event, (RoomMessage, MegolmEvent))
        user.task = asyncio.create_task(user._sync_forever())
        return user

    def _queue(self, room_id: str) -> asyncio.Queue[tuple[float, str, dict[str, Any]]]:
        return self.inbox.setdefault(room_id, asyncio.Queue())

    async def _on_event(self, room: MatrixRoom, event: Any) -> None:
        arrived = time.perf_counter()
        if event.sender == self.client.user_id:
            return
        content = event.source.get("content", {}) if isinstance(event, RoomMessage) else {}
        self._queue(room.room_id).put_nowait((arrived, event.sender, content))

    async def _sync_forever(self) -> None:
        while True:
            try:
                resp = await self.client.sync(timeout=30_000)
                if not isinstance(resp, SyncResponse):
                    raise RuntimeError(str(resp))
                async with self.lock:
                    await maintain_keys(self.client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a benchmark keeps going
                print(f"  (user sync error, retrying: {exc!r})", file=sys.stderr)
                await asyncio.sleep(0.25)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.client.close()

    async def room_with(self, other: str, encrypted: bool) -> str:
        """A private room with `other` invited; returns once `other` has joined."""
        state = encrypted_room_state() if encrypted else []
        resp = await self.client.room_create(invite=[other], initial_state=state, is_direct=True)
        if not isinstance(resp, RoomCreateResponse):
            raise RuntimeError(f"room_create failed: {resp}")
        room_id = resp.room_id
        self._queue(room_id)
        deadline = time.monotonic() + 30
        while True:
            room = self.client.rooms.get(room_id)
            if room is not None and other in room.users and other not in room.invited_users:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{other} did not join {room_id} within 30 s")
            await asyncio.sleep(0.05)
        if encrypted:
            await self._know_devices(room_id)
        return room_id

    async def _know_devices(self, room_id: str) -> None:
        """Wait until the other members' devices are known, so the room key reaches them."""
        members = await self.client.joined_members(room_id)
        if not isinstance(members, JoinedMembersResponse):
            raise RuntimeError(f"joined_members failed: {members}")
        others = {m.user_id for m in members.members} - {self.client.user_id}
        deadline = time.monotonic() + 30
        while True:
            async with self.lock:
                if self.client.should_query_keys:
                    await self.client.keys_query()
            missing = {
                u
                for u in others
                if next(self.client.device_store.active_user_devices(u), None) is None
            }
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no device keys for {sorted(missing)} after 30 s")
            assert self.client.olm is not None
            self.client.olm.users_for_key_query.update(missing)
            await asyncio.sleep(0.25)

    async def round_trip(self, room_id: str, text: str, expect: str) -> float:
        """Sends `text`; seconds until the reply from `expect` to that very event arrives."""
        queue = self._queue(room_id)
        while not queue.empty():  # stale messages (a greeting, a late duplicate)
            queue.get_nowait()
        began = time.perf_counter()
        async with self.lock:
            resp = await self.client.room_send(
                room_id,
                "m.room.message",
                {"msgtype": "m.text", "body": text},
                ignore_unverified_devices=True,
            )
        if not isinstance(resp, RoomSendResponse):
            raise RuntimeError(f"room_send failed: {resp}")
        deadline = began + REPLY_TIMEOUT_S
        while True:
            arrived, sender, content = await asyncio.wait_for(
                queue.get(), max(0.0, deadline - time.perf_counter())
            )
            answers = content.get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id")
            if sender == expect and answers == resp.event_id:
                return arrived - began


async def measure_pair(
    user: User, rooms: dict[str, tuple[str, str]], n: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """rooms: name -> (room_id, bot user id). ABBA order; the first `warmup` rounds dropped."""
    samples: dict[str, list[float]] = {name: [] for name in rooms}
    failures = dict.fromkeys(rooms, 0)
    names = list(rooms)
    for i in range(warmup + n):
        for name in names if i % 2 == 0 else reversed(names):
            room_id, expect = rooms[name]
            try:
                seconds = await user.round_trip(room_id, COMMAND, expect)
            except TimeoutError:
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

            bot = BotProc(
                work / "bot",
                homeserver=synapse.url,
                user_id=bot_id,
                password="bot-password",
                extra={"nudges": {"enabled": False}},
            )
            await bot.start()
            stack.push_async_callback(bot.stop)

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

            user = await User.login(synapse.url, user_id, "user-password", work / "user-store")
            stack.push_async_callback(user.close)

            results: dict[str, Any] = {"n": n, "warmup": warmup, "rows": {}}
            for label, encrypted in (("unencrypted", False), ("encrypted", True)):
                rooms = {
                    "bot": (await user.room_with(bot_id, encrypted), bot_id),
                    "echo": (await user.room_with(echo_id, encrypted), echo_id),
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
