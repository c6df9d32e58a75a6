"""`onboarding-bot demo`: a throw-away local Synapse, the bot as a child process, a chat with it.

Everything lives in one folder (default `demo-data/`); running the demo again reuses it, so
progress survives. When the demo ends, nothing it started is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bot.chat import ChatError, quiet_library_logs, run_chat, state_dir_for
from bot.dev.launcher import SOURCE_ROOT, BotLauncher, bot_config
from bot.dev.process import NotReady
from bot.dev.synapse import DevSynapse, SynapseError
from bot.identity import RECOVERY_KEY_FILE

EXIT_OK, EXIT_FAILURE = 0, 1


@dataclass(frozen=True)
class Account:
    localpart: str
    password: str
    role: str


BOT = Account("mentor-bot", "mentor-bot-password", "the bot")
NEWCOMER = Account("newcomer", "newcomer-password", "a newcomer: this terminal chats as them")
MENTOR = Account("mentor", "mentor-password", "a mentor: try !team and !status newcomer")


class DemoError(RuntimeError):
    """The demo cannot start; the message says why and what to do."""


def find_roadmap() -> Path:
    """The repository's roadmap.yaml, next to the package (editable install) or in cwd."""
    for candidate in (SOURCE_ROOT / "roadmap.yaml", Path.cwd() / "roadmap.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    raise DemoError(
        f"no roadmap.yaml next to the package ({SOURCE_ROOT}) or in {Path.cwd()}; "
        "run the demo from the repository"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Demo:
    """The demo's folder and the two processes it runs there."""

    def __init__(self, workdir: Path, roadmap: Path) -> None:
        self.workdir = workdir.resolve()
        # Which processes belong to this run: for `ps`, for a second demo, and for the tests.
        self.pids_path = self.workdir / "pids.json"
        self._claim()
        self.synapse = DevSynapse(self.workdir / "synapse")
        self.bot = BotLauncher(
            self.workdir,
            bot_config(
                self.synapse.url,
                self.synapse.mxid(BOT.localpart),
                BOT.password,
                {
                    "people": {"mentors": [self.synapse.mxid(MENTOR.localpart)]},
                    "nudges": {"enabled": True},
                    "logging": {"level": "INFO"},
                },
                device_name="onboarding-bot demo",
                roadmap=roadmap,
            ),
            header="# Written by `onboarding-bot demo` on every start; edits are overwritten.\n",
        )
        self._write_pids()

    def _claim(self) -> None:
        """Refuses to share the folder (and its databases) with a demo that is still running."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError, ValueError):
            earlier = json.loads(self.pids_path.read_text(encoding="utf-8"))
            pid = int(earlier.get("demo", 0))
            if pid and pid != os.getpid() and _alive(pid):
                raise DemoError(
                    f"another demo (pid {pid}) is running in {self.workdir}; stop it first "
                    "or use --dir"
                )

    def _write_pids(self) -> None:
        pids = {"demo": os.getpid(), "synapse": self.synapse.pid, "bot": self.bot.pid}
        self.pids_path.write_text(json.dumps(pids), encoding="utf-8")

    async def start_synapse(self) -> None:
        await self.synapse.start()
        for account in (BOT, NEWCOMER, MENTOR):
            await self.synapse.ensure_user(account.localpart, account.password)
        self._write_pids()

    async def start_bot(self) -> None:
        try:
            await self.bot.start()
        finally:
            self._write_pids()

    async def stop(self) -> None:
        """Bot first (it may still be sending), then Synapse; each SIGTERM, then SIGKILL."""
        await self.bot.stop()
        await self.synapse.stop()

    def instructions(self, seconds: float) -> str:
        s = self.synapse
        width = max(len(s.mxid(a.localpart)) for a in (BOT, NEWCOMER, MENTOR))
        users = "\n".join(
            f"    {s.mxid(a.localpart):<{width}}  password {a.password:<20}  {a.role}"
            for a in (NEWCOMER, MENTOR, BOT)
        )
        return (
            f"Demo ready in {seconds:.1f}s. Everything lives in {self.workdir} "
            "(delete it to start over).\n"
            f"  Homeserver: {s.url}\n"
            "  In Element (desktop, or app.element.io in this machine's browser): Sign in →\n"
            "  Edit the homeserver → the URL above, then sign in as one of\n"
            f"{users}\n"
            "  Or chat as the mentor from another terminal:\n"
            f"    {sys.executable} -m bot chat --config {self.bot.config_path} "
            f"--as {s.mxid(MENTOR.localpart)} --password {MENTOR.password}\n"
            f"  Bot log: {self.bot.log_path}\n"
            f"  The bot's recovery key (to open its account in Element, or to bring it back "
            f"with its identity): {self.recovery_key_path}\n"
        )

    @property
    def recovery_key_path(self) -> Path:
        return self.bot.data_dir / RECOVERY_KEY_FILE


async def run_demo(workdir: Path) -> None:
    began = time.monotonic()
    roadmap = find_roadmap()
    if importlib.util.find_spec("synapse") is None:
        raise DemoError(
            "matrix-synapse is not installed: run `make demo`, or pip install -e '.[demo]'"
        )
    demo = Demo(workdir, roadmap)
    # Ctrl-C, SIGTERM and SIGHUP (terminal closed) all end the demo through the cleanup below,
    # even when a shell started it in the background with SIGINT ignored.
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    cleaning = asyncio.Event()

    def stop() -> None:
        # Cancel again until it takes (a library may swallow one), but never the cleanup.
        if not task.done() and not cleaning.is_set():
            task.cancel()
            loop.call_later(1.0, stop)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop)
    try:
        print(f"Starting a local Synapse homeserver in {demo.synapse.workdir} …", flush=True)
        await demo.start_synapse()
        print(f"Starting the bot (log: {demo.bot.log_path}) …", flush=True)
        await demo.start_bot()
        print(demo.instructions(time.monotonic() - began), flush=True)
        newcomer = demo.synapse.mxid(NEWCOMER.localpart)
        await run_chat(
            demo.synapse.url,
            demo.synapse.mxid(BOT.localpart),
            newcomer,
            NEWCOMER.password,
            state_dir_for(demo.bot.data_dir, newcomer),
        )
    finally:
        cleaning.set()
        print("\nStopping the bot and Synapse …", flush=True)
        await demo.stop()
        print(f"Stopped. Run the demo again to carry on where you left off ({demo.workdir}).")


def main(workdir: Path) -> int:
    """`onboarding-bot demo`: exit 0 after Ctrl-C or Ctrl-D, 1 when it cannot start."""
    quiet_library_logs()
    try:
        asyncio.run(run_demo(workdir))
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except (DemoError, SynapseError, NotReady, ChatError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
