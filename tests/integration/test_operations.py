"""What ops rely on, against a real Synapse: health, metrics, env overrides and secret files,
the admin CLI on a live database, graceful shutdown, credential checks and JSON logs."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from bot.identity import read_session
from bot.logs import READY
from tests.harness import MakePerson, MakeSynapse, Person, Synapse, conversation
from tests.harness.bot import BotProcess, new_bot
from tests.harness.listener import free_port, metric

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], capture_output=True, text=True, timeout=60, env=env
    )


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


@dataclass
class Ops:
    synapse: Synapse  # this module's own server: the tests stop and start it
    bot: BotProcess
    base: str  # http://127.0.0.1:PORT


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ops(
    make_synapse: MakeSynapse, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Ops]:
    synapse = await make_synapse()
    bot_id = await synapse.register("ops-bot", "ops-password")
    workdir = tmp_path_factory.mktemp("ops-bot")
    (workdir / "password.txt").write_text("ops-password\n")
    port = free_port()
    bot = BotProcess(
        workdir,
        homeserver="http://placeholder.invalid",  # replaced by the environment below
        user_id=bot_id,
        password="",
        extra={
            "matrix": {"password": None, "password_file": "password.txt"},
            "http": {"listen": f"127.0.0.1:{port}"},
            "logging": {"format": "json", "level": "INFO"},
        },
        env={"ONBOARDING_BOT_MATRIX__HOMESERVER": synapse.url},
    )
    await bot.start()
    yield Ops(synapse, bot, f"http://127.0.0.1:{port}")
    bot.kill()


async def chat(person: Person, bot: BotProcess) -> str:
    room = await person.create_room(invite=[bot.user_id], encrypted=True, direct=True)
    await person.wait_for_join(room, bot.user_id, timeout=30)
    await person.reply(room, timeout=30)  # greeting
    return room


# The next message after each command, whatever it answers.
ask = partial(conversation.ask, threaded=False)


async def test_env_override_and_password_file_are_enough_to_log_in(ops: Ops) -> None:
    # The config names an unreachable homeserver and no password; the environment and the
    # secret file supply them, and the bot is up (the fixture waited for its first sync).
    assert "placeholder.invalid" in ops.bot.config_path.read_text()
    status, body = await get(f"{ops.base}/healthz")
    assert status == 200 and body.strip() == "ok"


async def test_logs_are_json_lines_without_secrets(ops: Ops) -> None:
    lines = [line for line in ops.bot.log_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any(e["message"] == READY for e in entries)
    session = read_session(ops.bot.data_dir)
    assert session is not None
    log = ops.bot.log_text()
    assert "ops-password" not in log and session.access_token not in log


async def test_metrics_after_a_conversation(ops: Ops, make_person: MakePerson) -> None:
    uma = await make_person("uma", server=ops.synapse)
    room = await chat(uma, ops.bot)
    assert "step 1 of 52" in (await ask(uma, room, "!start")).body
    assert "step 2 of 52" in (await ask(uma, room, "!done")).body
    assert "Did you mean" in (await ask(uma, room, "!dnoe")).body
    assert "for mentors only" in (await ask(uma, room, "!team")).body

    status, text = await get(f"{ops.base}/metrics")
    assert status == 200
    assert metric(text, 'onboarding_commands_total{command="start",outcome="ok"}') == 1
    assert metric(text, 'onboarding_commands_total{command="done",outcome="ok"}') == 1
    assert metric(text, 'onboarding_commands_total{command="unknown",outcome="unknown"}') == 1
    assert metric(text, 'onboarding_commands_total{command="team",outcome="refused"}') == 1
    assert metric(text, "onboarding_reply_latency_seconds_count") >= 4
    assert metric(text, 'onboarding_newcomers{state="enrolled"}') >= 1
    assert metric(text, 'onboarding_newcomers{state="finished"}') == 0
    assert metric(text, "onboarding_database_bytes") > 0
    assert metric(text, "onboarding_sync_failures_total") == 0
    for name in (
        "onboarding_send_failures_total",
        "onboarding_send_retries_total",
        'onboarding_nudges_total{kind="nudge"}',
    ):
        assert name.split("{")[0] in text


async def test_a_burst_is_committed_together_and_each_command_answered(
    ops: Ops, make_person: MakePerson
) -> None:
    people = [await make_person(name, server=ops.synapse) for name in ("xena", "yuri", "zoe")]
    rooms = [await chat(person, ops.bot) for person in people]
    for person, room in zip(people, rooms, strict=True):
        assert "step 1 of 52" in (await ask(person, room, "!start")).body
    _, before = await get(f"{ops.base}/metrics")
    # Frozen, the bot cannot sync: the three commands reach it in at most two syncs (the
    # long poll in flight may carry the first one alone).
    assert ops.bot.proc is not None
    ops.bot.proc.send_signal(signal.SIGSTOP)
    try:
        for person, room in zip(people, rooms, strict=True):
            await person.say(room, "!done")
    finally:
        ops.bot.proc.send_signal(signal.SIGCONT)
    for person, room in zip(people, rooms, strict=True):
        assert "step 2 of 52" in (await person.reply(room, timeout=30)).body
        await person.no_more_replies(room, wait=1.0)
    _, after = await get(f"{ops.base}/metrics")

    def delta(name: str) -> float:
        return metric(after, name) - metric(before, name)

    assert delta("onboarding_commands_per_commit_sum") == 3
    assert delta("onboarding_commands_per_commit_count") < 3, "no two commands committed together"


async def test_admin_cli_reads_the_live_database(ops: Ops, make_person: MakePerson) -> None:
    vera = await make_person("vera", server=ops.synapse)
    room = await chat(vera, ops.bot)
    await ask(vera, room, "!start")
    await ask(vera, room, "!done")
    await ask(vera, room, "!skip")
    config = str(ops.bot.config_path)
    env = {"ONBOARDING_BOT_MATRIX__HOMESERVER": ops.synapse.url, "PATH": "/usr/bin:/bin"}

    result = cli("export", "--config", config, "--format", "csv", "--table", "progress", env=env)
    assert result.returncode == 0, result.stderr
    rows = [r for r in csv.DictReader(io.StringIO(result.stdout)) if r["user_id"] == vera.user_id]
    assert {(r["step_id"], r["state"]) for r in rows} == {
        ("bash-terminal", "done"),
        ("basic-internet", "skipped"),
    }
    data = json.loads(cli("export", "--config", config, env=env).stdout)
    actions = [a["action"] for a in data["activity"] if a["user_id"] == vera.user_id]
    assert actions == ["enroll", "done", "skip"]

    result = cli("status", "--config", config, vera.user_id, env=env)
    assert result.returncode == 0, result.stderr
    assert "1 done, 1 skipped, of 52 steps" in result.stdout
    assert cli("status", "--config", config, "@nobody:localhost", env=env).returncode == 1

    backup = ops.bot.workdir / "backup.db"
    result = cli("backup", "--config", config, "--to", str(backup), env=env)
    assert result.returncode == 0, result.stderr
    copy = sqlite3.connect(backup)
    assert copy.execute(
        "SELECT count(*) FROM activity WHERE user_id = ?", (vera.user_id,)
    ).fetchone() == (3,)

    assert cli("healthcheck", "--config", config, env=env).returncode == 0


async def test_check_online_says_what_is_wrong(ops: Ops, tmp_path: Path) -> None:
    config = str(ops.bot.config_path)
    env = {"ONBOARDING_BOT_MATRIX__HOMESERVER": ops.synapse.url, "PATH": "/usr/bin:/bin"}
    good = cli("check", "--online", "--config", config, env=env)
    assert good.returncode == 0, good.stderr
    assert "logged in as @ops-bot:localhost" in good.stdout

    env_bad = {**env, "ONBOARDING_BOT_PASSWORD": "wrong"}
    fresh = tmp_path / "config.yaml"  # no saved session, so the password is really tried
    fresh.write_text(
        ops.bot.config_path.read_text().replace("data_dir: data", "data_dir: elsewhere")
    )
    (tmp_path / "password.txt").write_text("irrelevant")
    bad = cli("check", "--online", "--config", str(fresh), env=env_bad)
    assert bad.returncode == 2
    assert "matrix.password: login as @ops-bot:localhost" in bad.stderr

    down = cli(
        "check",
        "--online",
        "--config",
        str(fresh),
        env={**env, "ONBOARDING_BOT_MATRIX__HOMESERVER": f"http://127.0.0.1:{free_port()}"},
    )
    assert down.returncode == 2 and "cannot reach" in down.stderr


async def test_health_is_503_while_the_homeserver_is_down(ops: Ops) -> None:
    await ops.synapse.stop()
    try:
        deadline = time.monotonic() + 45
        status = 200
        while status == 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            status, body = await get(f"{ops.base}/healthz")
        assert status == 503, "health stayed 200 with the homeserver down"
        assert "sync" in body
    finally:
        await ops.synapse.start()
    deadline = time.monotonic() + 90
    while status != 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        status, body = await get(f"{ops.base}/healthz")
    assert status == 200, f"health did not recover: {body}"
    _, text = await get(f"{ops.base}/metrics")
    assert metric(text, "onboarding_sync_failures_total") >= 1


async def test_sigterm_mid_conversation_loses_nothing(ops: Ops, make_person: MakePerson) -> None:
    walt = await make_person("walt", server=ops.synapse)
    room = await chat(walt, ops.bot)
    assert "step 1 of 52" in (await ask(walt, room, "!start")).body
    sent = [await walt.say(room, "!done") for _ in range(5)]
    await asyncio.sleep(0.3)  # some are being handled right now
    assert ops.bot.proc is not None
    ops.bot.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert await ops.bot.stop(timeout=10) == 0
    assert time.monotonic() - started < 10
    await ops.bot.start()

    replies = await walt.replies(room, len(sent), timeout=60)
    answered = [r.content["m.relates_to"]["m.in_reply_to"]["event_id"] for r in replies]
    assert sorted(answered) == sorted(sent), "every command exactly one reply"
    await walt.no_more_replies(room, wait=3)
    assert "5 done, 0 skipped, of 52 steps" in (await ask(walt, room, "!progress")).body


async def test_a_nudge_signal_during_start_up_waits_for_the_scheduler(
    synapse: Synapse, tmp_path: Path
) -> None:
    """SIGUSR1's default action ends a process: one that comes before the scheduler exists
    must not kill the bot (ops, or a restart script, may send it at any time)."""
    bot = await new_bot(synapse, tmp_path / "bot", "early-signal-bot")
    starting = asyncio.create_task(bot.start())
    while bot.proc is None:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # the process runs, but is far from its first sync
    bot.proc.send_signal(signal.SIGUSR1)
    try:
        await starting  # NotReady if the signal ended it
        await bot.wait_for_log("nudge sweep:", timeout=30)  # and the sweep ran once ready
    finally:
        await bot.stop()
