"""Admin tasks from the command line, on the bot's own database and config.

They work while the bot is stopped, and while it runs (SQLite in WAL mode lets readers in).
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from nio import AsyncClient, AsyncClientConfig, LoginResponse, LogoutResponse, WhoamiResponse

from bot.app import nudge_policy
from bot.config import Config
from bot.identity import Identity, bot_client, read_session
from bot.reports import render_status, render_team
from bot.roadmap import Roadmap
from bot.store import Store
from bot.team_room import pin_problem, read_pin, resolve

EXPORT_TABLES = ("newcomers", "progress", "activity")


async def export(config: Config, fmt: str, table: str) -> str:
    """All progress and the activity log, as JSON (every table) or CSV (one table)."""
    store = await Store.open(config.database_path)
    try:
        data = await store.export()
    finally:
        await store.close()
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    rows = data[table]
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


async def quarantine(config: Config) -> str:
    """The quarantined events: what was sent, by whom, and the error it kept failing with."""
    store = await Store.open(config.database_path)
    try:
        events = await store.quarantined()
    finally:
        await store.close()
    if not events:
        return "no quarantined events\n"
    lines = [f"{len(events)} quarantined event(s):"]
    for e in events:
        lines += [
            f"- {e.event_id} in {e.room_id} from {e.sender}, {e.failures} failures, "
            f"last {e.last_failed_at.isoformat(timespec='seconds')}",
            f"  message: {e.body[:200]!r}",
            f"  error: {e.error}",
        ]
    return "\n".join(lines) + "\n"


async def status(config: Config, roadmap: Roadmap, user_id: str | None) -> str:
    """The same view as the chat's !status @user (or !team without a user), as plain text."""
    store = await Store.open(config.database_path)
    try:
        now = datetime.now(UTC)
        policy = nudge_policy(config)
        step_ids = [s.id for s in roadmap]
        if user_id is None:
            infos = await store.newcomers(step_ids)
            states = await store.states_of(i.user_id for i in infos)
            return render_team(roadmap, infos, policy, now, states=states).body + "\n"
        found = await store.newcomers(step_ids, user_id)
        if not found:
            raise LookupError(f"{user_id} has not enrolled in the roadmap")
        progress = await store.load_progress(user_id)
        answers = await store.check_answers(user_id)
        prefix = config.bot.command_prefix
        status = render_status(
            roadmap, found[0], progress, policy, now, prefix=prefix, answers=answers
        )
        return status.body + "\n"
    finally:
        await store.close()


async def backup(config: Config, target: Path) -> None:
    store = await Store.open(config.database_path)
    try:
        await store.backup(target)
    finally:
        await store.close()


async def healthcheck(config: Config) -> tuple[bool, str]:
    """Asks the running bot's /healthz (for the container's HEALTHCHECK)."""
    listen = config.http.host_port
    if listen is None:
        return False, "http.listen is not set, so the bot has no health endpoint"
    host, port = listen
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    url = f"http://{host}:{port}/healthz"
    try:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as resp:
            body = (await resp.text()).strip()
            return resp.status == 200, f"{url}: {resp.status} {body}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return False, f"{url}: not reachable ({exc.__class__.__name__}: {exc})"


async def online_check(config: Config) -> list[str]:
    """Reaches the homeserver and logs in as the bot; returns problems (empty: all good).

    With a saved session or an access token it asks whoami; with a password it logs in a
    throwaway device and logs that device out again (never the bot's own device).
    """
    m = config.matrix
    url = f"{m.homeserver}/_matrix/client/versions"
    try:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as resp:
            if resp.status != 200:
                return [f"matrix.homeserver: {url} answered {resp.status}; is it a Matrix server?"]
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return [f"matrix.homeserver: cannot reach {m.homeserver}: {exc.__class__.__name__}: {exc}"]
    session = read_session(config.storage.data_dir)
    token = session.access_token if session is not None else m.access_token
    # No encryption: this client only checks credentials and must not touch the crypto store.
    client = AsyncClient(
        m.homeserver, m.user_id, config=AsyncClientConfig(encryption_enabled=False)
    )
    try:
        if token:
            return await _token_problems(config, client, token) or await _team_room_problems(
                config, client
            )
        return await _password_problems(config, client)
    finally:
        await client.close()


async def _token_problems(config: Config, client: AsyncClient, token: str) -> list[str]:
    m = config.matrix
    client.access_token = token
    who = await client.whoami()
    if not isinstance(who, WhoamiResponse):
        return [f"matrix.access_token: refused by {m.homeserver}: {who}"]
    if who.user_id != m.user_id:
        return [f"matrix.user_id: the token belongs to {who.user_id}, not {m.user_id}"]
    return []


async def _password_problems(config: Config, client: AsyncClient) -> list[str]:
    """Logs a temporary device in, checks with it, and logs it out again."""
    m = config.matrix
    resp = await client.login(m.password, device_name="onboarding-bot check (temporary)")
    if not isinstance(resp, LoginResponse):
        why = getattr(resp, "message", resp)
        return [f"matrix.password: login as {m.user_id} on {m.homeserver} failed: {why}"]
    problems = await _team_room_problems(config, client)
    logout = await client.logout()
    if not isinstance(logout, LogoutResponse):
        problems.append(f"logged in, but could not log the temporary device out: {logout}")
    return problems


async def _team_room_problems(config: Config, client: AsyncClient) -> list[str]:
    """rooms.team still resolves to the room the bot pinned (see team_room.py)."""
    team = config.rooms.team
    if team is None:
        return []
    resolved = await resolve(client, team)
    if resolved is None:
        return [f"rooms.team: cannot resolve {team}"]
    if not config.database_path.exists():
        return []
    store = await Store.open(config.database_path)
    try:
        problem = pin_problem(team, resolved, await read_pin(store))
    finally:
        await store.close()
    return [problem] if problem else []


async def reset_identity(config: Config) -> Path | None:
    """A new cross-signing identity for the bot's account (stop the bot first: this uses its
    device). Returns where a generated recovery key was written."""
    client = bot_client(config)
    try:
        identity = Identity(client, config.matrix, config.storage.data_dir)
        await identity.login()
        return await identity.reset()
    finally:
        await client.close()
