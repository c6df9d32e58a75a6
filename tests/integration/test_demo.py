"""`onboarding-bot demo` end to end: a person types into the demo's terminal chat, the bot answers.

The demo runs as its own process, stdin a pipe, exactly as `make demo` would start it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BANNER = "Chatting with @mentor-bot:localhost as @newcomer:localhost. Type !help."
START_TIMEOUT_S = 120.0
ANSWER_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 20.0


def _processes_mentioning(text: str) -> dict[int, str]:
    """Live (non-zombie) processes whose command line contains `text`."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found[int(entry.name)] = cmdline.strip()
    return found


class DemoRun:
    """One `python -m bot demo --dir DIR` process and everything it printed."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "demo", "--dir", str(workdir)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        self._output = bytearray()
        self._lock = threading.Lock()
        self._seen = 0  # expect() looks only at output after what it matched last
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(4096):
            with self._lock:
                self._output.extend(chunk)

    @property
    def output(self) -> str:
        with self._lock:
            return self._output.decode(errors="replace")

    def diagnostics(self) -> str:
        log = self.workdir / "bot.log"
        tail = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else ["<none>"]
        return f"--- demo output ---\n{self.output}\n--- bot.log tail ---\n" + "\n".join(tail)

    def expect(self, text: str, timeout: float = ANSWER_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.output.find(text, self._seen)
            if found >= 0:
                self._seen = found + len(text)
                return
            if self.proc.poll() is not None and self.output.find(text, self._seen) < 0:
                pytest.fail(
                    f"demo exited ({self.proc.returncode}) without printing {text!r}\n"
                    + self.diagnostics()
                )
            time.sleep(0.05)
        pytest.fail(f"demo did not print {text!r} within {timeout}s\n" + self.diagnostics())

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_exit(self) -> int:
        try:
            return self.proc.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"demo still running {EXIT_TIMEOUT_S}s after it was told to stop\n"
                + self.diagnostics()
            )

    def pids(self) -> dict[str, int]:
        data = json.loads((self.workdir / "pids.json").read_text())
        return {name: pid for name, pid in data.items() if pid}

    def assert_nothing_left(self) -> None:
        pids = self.pids()
        assert set(pids) == {"demo", "synapse", "bot"}, pids
        alive = {name: pid for name, pid in pids.items() if Path(f"/proc/{pid}").exists()}
        leftovers = _processes_mentioning(str(self.workdir))
        assert not leftovers, f"left running: {leftovers} (pids of the run: {pids}, alive {alive})"

    def kill_everything(self) -> None:
        """Cleanup after a failed test: the demo's group, then anything naming its folder."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in _processes_mentioning(str(self.workdir)):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue


def _start(workdir: Path, started: list[DemoRun]) -> DemoRun:
    run = DemoRun(workdir)
    started.append(run)
    run.expect(BANNER, START_TIMEOUT_S)
    return run


def test_demo_chat_then_eof_then_sigint_on_a_second_run(tmp_path: Path) -> None:
    workdir = tmp_path / "demo-data"
    started: list[DemoRun] = []
    try:
        run = _start(workdir, started)
        run.type("!start")
        run.expect("step 1 of 52")
        run.type("!done")
        run.expect("Done: 1.1 Bash/Terminal")
        run.type("!progress")
        run.expect("1 done, 0 skipped, of 52 steps")
        assert "bot> " in run.output
        key_file = workdir / "data" / "recovery-key.txt"
        assert "recovery key (to open its account in Element" in run.output
        assert str(key_file) in run.output and key_file.read_text().startswith("Es")

        assert run.proc.stdin is not None
        run.proc.stdin.close()  # Ctrl-D
        assert run.wait_exit() == 0, run.diagnostics()
        run.assert_nothing_left()
        first_pids = run.pids()

        # A second demo in the same folder reuses the accounts, the room and the progress,
        # and Ctrl-C stops it as cleanly as end of input.
        again = _start(workdir, started)
        again.type("!progress")
        again.expect("1 done, 0 skipped, of 52 steps")
        again.proc.send_signal(signal.SIGINT)
        assert again.wait_exit() == 0, again.diagnostics()
        again.assert_nothing_left()
        assert again.pids()["synapse"] != first_pids["synapse"]
    finally:
        for each in started:
            each.kill_everything()
