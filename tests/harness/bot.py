"""Runs the bot as its own process, exactly as ops would: `python -m bot run --config PATH`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from bot.devserver import bot_config, wait_for_log
from tests.harness.person import Person
from tests.harness.synapse import Synapse

REPO = Path(__file__).resolve().parents[2]
READY = "first sync done; ready for commands"


class BotProcess:
    def __init__(
        self,
        workdir: Path,
        *,
        homeserver: str,
        user_id: str,
        password: str,
        mentors: list[str] | None = None,
        admins: list[str] | None = None,
        extra: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.user_id = user_id
        self.config_path = workdir / "config.yaml"
        self.log_path = workdir / "bot.log"
        defaults: dict[str, Any] = {
            "people": {"mentors": mentors or [], "admins": admins or []},
            "logging": {"level": "DEBUG"},
            # Tests type faster than people: flood control has a test of its own.
            "bot": {"flood_limit": 1000},
        }
        config = bot_config(
            homeserver,
            user_id,
            password,
            defaults,
            extra or {},
            device_name="test-bot",
            roadmap=REPO / "roadmap.yaml",
        )
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    async def start(self, timeout: float = 60.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "bot already running"
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child process owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "run", "--config", str(self.config_path)],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        log.close()
        await self.wait_for_log(READY, timeout)

    async def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        """Until the log says `text` (since the last start); NotReady if the bot exits first."""
        assert self.proc is not None, "bot never started"
        await wait_for_log(
            self.log_path, text, self.proc, offset=self._log_offset, timeout=timeout, what="bot"
        )

    async def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, as a container runtime would; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.kill()
            raise AssertionError(f"bot did not stop within {timeout}s of SIGTERM")
        return self.proc.returncode

    def reset_identity(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`onboarding-bot reset-identity` on this bot's config, as ops would run it."""
        return subprocess.run(
            [sys.executable, "-m", "bot", "reset-identity", "--config", str(self.config_path)]
            + list(args),
            stdin=subprocess.DEVNULL,  # no one to answer the confirmation
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **self.env},
            cwd=self.workdir,
            check=False,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


async def open_chat(person: Person, bot_user_id: str, *, encrypted: bool = False) -> str:
    """The person invites the bot, as from Element (encrypted means a direct chat); returns
    the room once the bot's greeting has arrived and been read."""
    room = await person.create_room(invite=[bot_user_id], encrypted=encrypted, direct=encrypted)
    await person.wait_for_join(room, bot_user_id, timeout=30)
    greeting = await person.reply(room, timeout=30)
    assert "onboarding mentor" in greeting.body
    return room


async def new_bot(
    synapse: Synapse, workdir: Path, name: str, *, env: dict[str, str] | None = None, **extra: Any
) -> BotProcess:
    """A bot account of its own on `synapse` and its process, not started yet."""
    user_id = await synapse.ensure_user(name, f"{name}-password")
    return BotProcess(
        workdir,
        homeserver=synapse.url,
        user_id=user_id,
        password=f"{name}-password",
        extra=extra,
        env=env,
    )


@contextlib.asynccontextmanager
async def running(bot: BotProcess) -> AsyncIterator[BotProcess]:
    """The bot started for the block, and killed after it whatever happens."""
    await bot.start()
    try:
        yield bot
    finally:
        bot.kill()
