"""The bot's container image, built with `make image` and run with podman (or docker), as ops
run it: host network, the volume /data, a read-only root filesystem, no capabilities."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/onboarding-bot:local"
UID = 10001
BUILD_TIMEOUT_S = 900


def engine() -> str:
    """podman, else docker; a test that needs one fails loudly when neither is there."""
    found = shutil.which("podman") or shutil.which("docker")
    assert found, "no container engine: install podman (.ci/run does: apt-get install podman)"
    return found


def build_image() -> float:
    """`make image`, as the README says; returns the seconds it took."""
    began = time.monotonic()
    done = subprocess.run(
        ["make", "image", f"IMAGE={IMAGE}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"make image failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return time.monotonic() - began


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [engine(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


class Container:
    """One container of the bot's image, by name: `start()` runs it detached on the volume
    `data` (one compose started is only looked at), `remove()` removes it."""

    def __init__(
        self, name: str, data: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.name, self.data, self.env = name, data, env or {}

    def start(self) -> None:
        assert self.data is not None, "a container to start needs its /data volume"
        env_args = [arg for key, value in self.env.items() for arg in ("-e", f"{key}={value}")]
        started = run(
            "run",
            "-d",
            "--name",
            self.name,
            "--network",
            "host",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "-v",
            f"{self.data}:/data",
            *env_args,
            IMAGE,
        )
        assert started.returncode == 0, f"{self.name} did not start: {started.stderr}"

    def logs(self) -> str:
        done = run("logs", self.name)
        return done.stdout + done.stderr

    async def wait_for_log(self, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.logs():
            state = self.inspect("{{.State.Status}}")
            assert state == "running", f"{self.name} is {state}:\n{self.logs()[-4000:]}"
            assert time.monotonic() < deadline, f"no {text!r} in {timeout}s:\n{self.logs()[-4000:]}"
            await asyncio.sleep(0.5)

    def inspect(self, template: str) -> str:
        return run("inspect", "--format", template, self.name).stdout.strip()

    def healthy(self) -> bool:
        """The image's own HEALTHCHECK, run now (there is no systemd timer to run it here)."""
        return run("healthcheck", "run", self.name).returncode == 0

    async def wait_health(self, healthy: bool, timeout: float = 120) -> float:
        began = time.monotonic()
        while self.healthy() is not healthy:
            assert time.monotonic() - began < timeout, (
                f"{self.name} not {'healthy' if healthy else 'unhealthy'} within {timeout}s:\n"
                f"{self.logs()[-3000:]}"
            )
            await asyncio.sleep(1)
        return time.monotonic() - began

    def stop(self, grace: int = 10) -> tuple[int, float]:
        """`stop -t grace`: the engine's exit status and how long it took."""
        began = time.monotonic()
        done = run("stop", "-t", str(grace), self.name, timeout=grace + 30)
        return done.returncode, time.monotonic() - began

    def remove(self) -> None:
        run("rm", "-f", self.name)
