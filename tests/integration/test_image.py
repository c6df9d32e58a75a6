"""The image, built and run for real (`make image`, podman): a newcomer answered in an encrypted
direct chat by the bot in a read-only, unprivileged container; its state in /data with the right
owner and modes; healthy, unhealthy while the homeserver is down, healthy again; a clean stop;
and a new container on the same volume that is still the same bot with the same progress."""

from __future__ import annotations

import os
import socket
import stat
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from bot.identity import read_session
from tests.harness import MakePerson, MakeSynapse, Synapse
from tests.harness.bot import READY, open_chat
from tests.harness.container import IMAGE, UID, Container, build_image, run

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PASSWORD = "image-bot-password"
REPO = Path(__file__).resolve().parents[2]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def image() -> str:
    seconds = build_image()
    size = run("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip()
    print(f"\nmake image: {seconds:.0f}s, {int(size) / 1e6:.0f} MB")  # for the README figures
    return IMAGE


@pytest_asyncio.fixture(loop_scope="session")
async def own_synapse(make_synapse: MakeSynapse) -> Synapse:
    """A homeserver of this test's own: it is stopped and started again."""
    return await make_synapse()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def volume(tmp_path: Path, synapse: Synapse, user_id: str) -> Path:
    """/data as ops prepare it: owned by the image's user, the config inside."""
    data = tmp_path / "data"
    data.mkdir()
    config = yaml.safe_load((REPO / "deploy" / "config.yaml").read_text())
    config["matrix"].update(homeserver=synapse.url, user_id=user_id)
    config["http"]["listen"] = f"127.0.0.1:{free_port()}"  # host network: no fixed port
    config["logging"]["level"] = "DEBUG"
    (data / "config.yaml").write_text(yaml.safe_dump(config))
    for path in (data, data / "config.yaml"):
        os.chown(path, UID, UID)
    return data


@pytest_asyncio.fixture(loop_scope="session")
async def containers() -> AsyncIterator[list[Container]]:
    made: list[Container] = []
    yield made
    for container in made:
        container.remove()


async def test_without_a_config_it_exits_2_with_one_clear_line(image: str, tmp_path: Path) -> None:
    result = run("run", "--rm", "--no-healthcheck", "-v", f"{tmp_path}:/data", image)
    assert result.returncode == 2, result
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("/data/config.yaml: cannot read the config"), line


async def test_check_accepts_the_compose_config(image: str) -> None:
    # Its homeserver, http://synapse:8008, is unreachable here: `check` never connects.
    config = REPO / "deploy" / "config.yaml"
    result = run(
        "run", "--rm", "--no-healthcheck", "-e", "ONBOARDING_BOT_PASSWORD=from-compose",
        "-v", f"{config}:/data/config.yaml:ro", image, "check",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "@mentor-bot:localhost" in result.stdout
    assert "/app/roadmap.yaml" in result.stdout  # the roadmap shipped in the image


async def test_the_image_runs_the_bot_unprivileged_read_only_and_replaceable(
    image: str,
    own_synapse: Synapse,
    make_person: MakePerson,
    containers: list[Container],
    tmp_path: Path,
) -> None:
    bot_id = await own_synapse.register("image-bot", PASSWORD)
    data = volume(tmp_path, own_synapse, bot_id)

    def new_container() -> Container:
        container = Container(
            f"onboarding-{uuid.uuid4().hex[:8]}", data, {"ONBOARDING_BOT_PASSWORD": PASSWORD}
        )
        containers.append(container)
        container.start()
        return container

    began = time.monotonic()
    first = new_container()
    await first.wait_for_log(READY)
    print(f"\nfirst start to ready: {time.monotonic() - began:.1f}s")  # README figures
    # Unprivileged, read-only, without capabilities.
    assert first.inspect("{{.Config.User}}") == f"{UID}:{UID}"
    assert first.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    assert run("exec", first.name, "id", "-u").stdout.strip() == str(UID)
    assert run("exec", first.name, "touch", "/app/x").returncode != 0  # read-only root
    await first.wait_health(True)

    # A newcomer's encrypted direct chat, answered.
    nina = await make_person("image-nina", server=own_synapse)
    room = await open_chat(nina, bot_id, encrypted=True)
    await nina.say(room, "!start")
    assert "step 1 of" in (await nina.reply(room, timeout=30)).body

    # Everything the bot keeps is in /data, the image user's, readable by nobody else.
    for name in ("bot.db", "session.json", "cross-signing.json", "recovery-key.txt"):
        info = (data / name).stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (UID, 0o600), name
    crypto = (data / "crypto").stat()
    assert (crypto.st_uid, stat.S_IMODE(crypto.st_mode)) == (UID, 0o700)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700

    # Unhealthy while the homeserver is away, healthy again when it is back.
    await own_synapse.stop()
    await first.wait_health(False)
    await own_synapse.start()
    await first.wait_health(True)

    # A command answered, then a clean stop within the grace period: exit 0.
    await nina.say(room, "!done")
    assert "Done: 1.1" in (await nina.reply(room, timeout=60)).body
    status, seconds = first.stop(grace=10)
    assert status == 0 and seconds < 10, f"stop -t 10: status {status} after {seconds:.1f}s"
    print(f"stop -t 10: {seconds:.1f}s")
    assert first.inspect("{{.State.ExitCode}}") == "0", first.logs()[-3000:]
    device = read_session(data)
    assert device is not None

    # Replaced by a new container on the same volume: the same device, the same progress.
    first.remove()
    began = time.monotonic()
    second = new_container()
    await second.wait_for_log(READY)
    print(f"replacement container to ready: {time.monotonic() - began:.1f}s")
    after = read_session(data)
    assert after is not None and after.device_id == device.device_id
    await nina.say(room, "!progress")
    assert "1 done, 0 skipped, of 52 steps" in (await nina.reply(room, timeout=60)).body
    assert "logged in as" not in second.logs()  # no new login: the saved session was used
