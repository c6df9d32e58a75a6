"""The one launcher of the bot as its own process, as ops run it (`python -m bot run --config`),
for the demo, the benchmarks and the tests: started, awaited until ready, always stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

import bot
from bot.config import ENV_PREFIX
from bot.dev.process import STOP_GRACE_S, kill_process, spawn, stop_process, wait_for_log
from bot.logs import READY

READY_TIMEOUT_S = 120.0
# The folder that holds the bot package (the repository, for an editable install): the child
# imports this very package even where it is not installed.
SOURCE_ROOT = Path(bot.__file__).resolve().parent.parent


def bot_config(
    homeserver: str,
    user_id: str,
    password: str,
    *layers: dict[str, Any],
    device_name: str,
    roadmap: Path,
) -> dict[str, Any]:
    """A bot config for a local homeserver (the demo, the tests, the benchmarks).

    Each layer is merged in, in order: a mapping updates that section, anything else replaces.
    """
    config: dict[str, Any] = {
        "matrix": {
            "homeserver": homeserver,
            "user_id": user_id,
            "password": password,
            "device_name": device_name,
        },
        "storage": {"data_dir": "data"},
        "roadmap": str(roadmap),
    }
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict):
                config.setdefault(key, {}).update(value)
            else:
                config[key] = value
    return config


class BotLauncher:
    """One bot in `workdir`: its config.yaml (written here), its log bot.log (appended to by
    every start) and, while it runs, its process.

    `env` is added to the bot's environment at each start; any ONBOARDING_BOT_* variable of
    this process is not passed on, so a shell set up for a real deployment cannot leak in.
    """

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        *,
        env: dict[str, str] | None = None,
        header: str = "",
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "config.yaml"
        self.log_path = workdir / "bot.log"
        self.data_dir = workdir / config["storage"]["data_dir"]
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.config_path.write_text(
            header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8"
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def environment(self) -> dict[str, str]:
        """The bot's environment: this process's, less ONBOARDING_BOT_*, plus `env`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), env.get("PYTHONPATH")]))
        return env | self.env

    async def start(self, timeout: float = READY_TIMEOUT_S, *, poll: float = 0.05) -> float:  # noqa: ASYNC109 - named in the error
        """Starts the bot and waits until it logs READY; returns the seconds that took.

        Raises NotReady, with the log's tail, if it exits first or runs out of time; the
        process is killed then (and on cancellation), so a failed start leaves nothing behind.
        """
        if self.running:
            raise RuntimeError(f"the bot in {self.workdir} is already running")
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        began = time.perf_counter()
        self.proc = spawn(
            [sys.executable, "-m", "bot", "run", "--config", str(self.config_path)],
            cwd=self.workdir,
            log_path=self.log_path,
            env=self.environment(),
        )
        try:
            ready = await self.wait_for_log(READY, timeout, poll=poll)
        except BaseException:
            self.kill()
            raise
        return ready - began

    async def wait_for_log(self, text: str, timeout: float = 30.0, *, poll: float = 0.05) -> float:  # noqa: ASYNC109 - named in the error
        """Until the log says `text` (since the last start); returns time.perf_counter() then.
        NotReady if the bot exits first or time runs out."""
        if self.proc is None:
            raise RuntimeError(f"the bot in {self.workdir} was never started")
        return await wait_for_log(
            self.log_path,
            text,
            self.proc,
            offset=self._log_offset,
            timeout=timeout,
            poll=poll,
            what="the bot",
        )

    async def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, as a container runtime sends; SIGKILL after `grace` seconds. Returns the
        exit status (-9 if it had to be killed), None if it was never started. Idempotent."""
        if self.proc is None:
            return None
        return await stop_process(self.proc, grace)

    def kill(self) -> None:
        """SIGKILL, at once (a crash, as the fault tests make them). Idempotent."""
        if self.proc is not None:
            kill_process(self.proc)
