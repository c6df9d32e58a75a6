"""Child processes of the kit (Synapse, the bot, a benchmark's echo bot): started in a group of
their own, awaited by their log, stopped with SIGTERM then SIGKILL, and never left behind."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

STOP_GRACE_S = 15.0
LOG_TAIL_LINES = 60

# Every child process group we started and have not yet reaped; killed at interpreter exit.
_LIVE_PROCESSES: dict[int, subprocess.Popen[bytes]] = {}


class NotReady(RuntimeError):
    """A child process exited, or ran out of time, before logging what it was awaited for."""


def _child_setup() -> None:
    """Runs in the child before exec: die with the parent even if the parent is SIGKILLed."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def spawn(
    argv: Sequence[str], *, cwd: Path, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Starts a child in its own process group, output appended to `log_path`.

    Call it from the main thread: the child's parent-death signal fires when the *thread*
    that started it ends.
    """
    with log_path.open("ab") as out:
        # Popen (not asyncio's) so the child does not depend on a running loop.
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_child_setup,
        )
    _LIVE_PROCESSES[proc.pid] = proc
    return proc


async def stop_process(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> int:
    """SIGTERM the child's process group, wait up to `grace` seconds, then SIGKILL.
    Idempotent; returns the exit status (-9 when it had to be killed)."""
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 5)
    finally:
        kill_process(proc)  # and anything else left in its group
    return proc.returncode


def kill_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's process group and reap the child, at once. Idempotent."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    _LIVE_PROCESSES.pop(proc.pid, None)


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE_PROCESSES.values()):
        kill_process(proc)


async def wait_for_log(
    log_path: Path,
    text: str,
    proc: subprocess.Popen[bytes],
    *,
    timeout: float,  # noqa: ASYNC109 - the deadline is named in the error
    offset: int = 0,
    poll: float = 0.05,
    what: str = "the process",
) -> float:
    """Polls `log_path` past byte `offset` until `text` appears; returns time.perf_counter()
    then. Raises NotReady, with the log's last lines, if `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    needle = text.encode()
    while True:
        with contextlib.suppress(FileNotFoundError), log_path.open("rb") as f:
            f.seek(offset)
            if needle in f.read():
                return time.perf_counter()
        if proc.poll() is not None:
            raise NotReady(
                f"{what} exited with {proc.returncode} before logging {text!r}; "
                f"last lines of {log_path}:\n{tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise NotReady(
                f"{what} did not log {text!r} within {timeout:.0f}s; "
                f"last lines of {log_path}:\n{tail(log_path)}"
            )
        await asyncio.sleep(poll)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"<{path.name} does not exist>"
