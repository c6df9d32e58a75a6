"""docker-compose.yml brought up for real with podman-compose, as deploy/README.md tells ops to:
Synapse first, the bot's account registered, then the bot, which answers a newcomer's encrypted
direct chat; `down -v` leaves no container, pod, network or volume behind. No container registry
is reachable here, so tests/compose/override.yml swaps the official Synapse image for one built
from PyPI's matrix-synapse (tests/compose/synapse.Dockerfile) and takes the bot's image from
`make image`."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.cross_signing import CrossSigningKeys
from tests.harness import Person
from tests.harness.bot import READY, open_chat
from tests.harness.container import IMAGE, REPO, Container, build_image, run

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

COMPOSE_DIR = REPO / "tests" / "compose"
SYNAPSE_IMAGE = "localhost/onboarding-synapse:test"
# Made by `make image` where python:3.11-slim-bookworm cannot be pulled (deploy/build-image.sh).
LOCAL_BASE = "localhost/onboarding-base:bookworm"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# !override in the override file; 1.0.x (Debian bookworm's) would append to the lists instead.
PODMAN_COMPOSE_MIN = (1, 1)
INSTALL = "install it: python3 -m pip install 'podman-compose==1.6.0' (Debian's 1.0.3 is too old)"
BOT = "@mentor-bot:localhost"  # user_id in deploy/config.yaml
NEWCOMER, NEWCOMER_PASSWORD = "newcomer", "newcomer-password"


def podman_compose() -> str:
    """The podman-compose command, on PATH or installed next to this Python (.venv/bin)."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (apt-get install podman)")
    # The test extra's (PyPI) first: a distribution's older one may be on PATH too.
    found = shutil.which("podman-compose", path=str(Path(sys.executable).parent)) or shutil.which(
        "podman-compose"
    )
    if found is None:
        pytest.fail(f"podman-compose is not installed; {INSTALL}")
    version = subprocess.run(
        [found, "version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    number = re.search(r"podman-compose version (\d+)\.(\d+)", version)
    if number is None or (int(number[1]), int(number[2])) < PODMAN_COMPOSE_MIN:
        pytest.fail(f"{found} is too old or unknown ({version.strip()!r}); {INSTALL}")
    return found


def build_synapse_image() -> None:
    """The override's Synapse image. Built on the bot's local base where there is one (no
    registry), with the host's CA bundle at build time only (TLS to PyPI may be intercepted)."""
    args = ["build", "--format", "docker", "-t", SYNAPSE_IMAGE]
    if run("image", "exists", LOCAL_BASE).returncode == 0:
        args += ["--from", LOCAL_BASE]
    if CA_BUNDLE.is_file():
        args += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    args += ["-f", str(COMPOSE_DIR / "synapse.Dockerfile"), str(COMPOSE_DIR)]
    built = run(*args, timeout=600)
    assert built.returncode == 0, f"building {SYNAPSE_IMAGE} failed:\n{built.stderr[-4000:]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Project:
    """One compose project of docker-compose.yml with tests/compose/override.yml, under a
    name of its own so that it cannot touch anyone else's containers."""

    def __init__(self, command: str, bot_password: str) -> None:
        self.name = f"onboarding-test-{secrets.token_hex(4)}"
        self.port = free_port()
        self.bot_password = bot_password
        self._command = [
            command,
            "-p",
            self.name,
            "-f",
            str(REPO / "docker-compose.yml"),
            "-f",
            str(COMPOSE_DIR / "override.yml"),
        ]
        # Set here, not read from a .env: the shell's own values would win over a file's.
        self._env = {
            **os.environ,
            "ONBOARDING_BOT_PASSWORD": bot_password,
            "SYNAPSE_PORT": str(self.port),
            "SYNAPSE_SERVER_NAME": "localhost",
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __call__(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run(
            [*self._command, *args],
            cwd=REPO,
            env=self._env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, (
            f"podman-compose {' '.join(args)} exited {done.returncode}:\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
        return done.stdout

    def container(self, service: str) -> Container:
        """The service's container, for its logs and its health check (there is no systemd
        here to run health checks on a timer; `Container.healthy` runs one now)."""
        (name,) = self.ps(f"label=com.docker.compose.service={service}")
        return Container(name)  # started by compose, not by Container

    def register(self, localpart: str, password: str) -> None:
        """As deploy/README.md says: Synapse's own script, with the shared secret in its
        homeserver.yaml."""
        self(
            "exec",
            "-T",
            "synapse",
            "register_new_matrix_user",
            "-c",
            "/data/homeserver.yaml",
            "-u",
            localpart,
            "-p",
            password,
            "--no-admin",
            "http://localhost:8008",
        )

    def ps(self, *filters: str) -> list[str]:
        args = [f"--filter=label=com.docker.compose.project={self.name}"]
        args += [f"--filter={f}" for f in filters]
        return sorted(run("ps", "-a", *args, "--format", "{{.Names}}").stdout.split())

    def resources(self) -> dict[str, list[str]]:
        """Whatever podman holds for this project, by kind."""
        label = f"--filter=label=com.docker.compose.project={self.name}"

        def names(*args: str) -> list[str]:
            listed = run(*args)
            assert listed.returncode == 0, listed.stderr
            return sorted(listed.stdout.split())

        return {
            "containers": self.ps(),
            "pods": names("pod", "ps", f"--filter=name=^pod_{self.name}$", "--format", "{{.Name}}"),
            "networks": names("network", "ls", label, "--format", "{{.Name}}"),
            "volumes": names("volume", "ls", label, "--format", "{{.Name}}"),
        }


@pytest.fixture
def project() -> Iterator[Project]:
    command = podman_compose()
    build_image()  # cached: a second or two when `make image` ran already
    build_synapse_image()
    compose = Project(command, bot_password=secrets.token_urlsafe(16))
    try:
        yield compose
    finally:
        # Also when the test failed half way; a no-op when it went down already.
        compose("down", "-v", "-t", "10")


async def test_compose_comes_up_answers_a_newcomer_and_goes_down_without_a_trace(
    project: Project, tmp_path: Path
) -> None:
    # deploy/README.md: Synapse first (its generate step writes homeserver.yaml), the bot's
    # account, then everything. Podman 4.3 cannot wait for `service_healthy`, so this waits.
    project("up", "-d", "--no-build", "synapse")
    await project.container("synapse").wait_health(True, timeout=90)
    project.register("mentor-bot", project.bot_password)
    project.register(NEWCOMER, NEWCOMER_PASSWORD)
    project("up", "-d", "--no-build")
    bot = project.container("bot")
    assert bot.inspect("{{.ImageName}}") == IMAGE
    await bot.wait_for_log(READY, timeout=90)
    await bot.wait_health(True, timeout=30)

    newcomer = await Person.login(
        project.url,
        f"@{NEWCOMER}:localhost",
        NEWCOMER_PASSWORD,
        tmp_path / "newcomer",
        cross_signing=CrossSigningKeys.generate(),
    )
    try:
        room = await open_chat(newcomer, BOT, encrypted=True)
        await newcomer.say(room, "!start")
        assert "step 1 of" in (await newcomer.reply(room, timeout=30)).body
    finally:
        await newcomer.close()

    name = project.name
    assert project.resources() == {
        "containers": sorted(f"{name}_{s}_1" for s in ("bot", "synapse", "synapse-generate")),
        "pods": [f"pod_{name}"],
        "networks": [f"{name}_matrix"],
        "volumes": [f"{name}_bot-data", f"{name}_synapse-data"],
    }
    project("down", "-v", "-t", "10")
    assert project.resources() == {"containers": [], "pods": [], "networks": [], "volumes": []}
