"""The bot in the integration tests: the dev kit's launcher (bot/dev/launcher.py) with the
tests' config, and the conversation that opens a chat with it."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bot.dev.launcher import BotLauncher, bot_config
from bot.identity import Session, read_session
from bot.logs import READY
from tests.harness.person import Person
from tests.harness.synapse import Synapse

__all__ = ["READY", "REPO", "BotProcess", "new_bot", "open_chat", "running"]

REPO = Path(__file__).resolve().parents[2]


class BotProcess(BotLauncher):
    """`python -m bot run --config PATH`, exactly as ops run it, with a test's config: DEBUG
    logging, no flood limit to speak of, the repository's roadmap unless `extra` names one."""

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
        super().__init__(workdir, config, env=env)
        self.user_id = user_id

    async def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, as a container runtime would; returns the exit status. A bot that needs
        SIGKILL after `timeout` seconds fails the test."""
        was_running = self.running
        status = await super().stop(timeout)
        assert status is not None, "bot never started"
        if was_running and status == -signal.SIGKILL:
            raise AssertionError(f"bot did not stop within {timeout}s of SIGTERM")
        return status

    def session(self) -> Session:
        """The session the bot saved (its access token and device); the test fails if none."""
        session = read_session(self.data_dir)
        assert session is not None, "the bot saved no session"
        return session

    def reset_identity(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`onboarding-bot reset-identity` on this bot's config, as ops would run it."""
        return subprocess.run(
            [sys.executable, "-m", "bot", "reset-identity", "--config", str(self.config_path)]
            + list(args),
            stdin=subprocess.DEVNULL,  # no one to answer the confirmation
            capture_output=True,
            text=True,
            timeout=60,
            env=self.environment(),
            cwd=self.workdir,
            check=False,
        )


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
