"""A throwaway Synapse homeserver on loopback, for the demo, the integration tests and the
benchmarks. Synapse runs as a child process (`python -m synapse.app.homeserver`), never imported
here, so only the `demo` (or `test`) extra has to be installed, not loaded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bot.dev.process import LOG_TAIL_LINES, spawn, stop_process, tail

_READY_TIMEOUT_S = 60.0

_GENEROUS: dict[str, float] = {"per_second": 10_000, "burst_count": 100_000}

#: Every ``rc_*`` rate limiter Synapse 1.163 reads, opened up wide so tests never hit a 429.
_GENEROUS_RATE_LIMITS: dict[str, Any] = {
    "rc_message": _GENEROUS,
    "rc_registration": _GENEROUS,
    "rc_registration_token_validity": _GENEROUS,
    "rc_login": {"address": _GENEROUS, "account": _GENEROUS, "failed_attempts": _GENEROUS},
    "rc_admin_redaction": _GENEROUS,
    "rc_joins": {"local": _GENEROUS, "remote": _GENEROUS},
    "rc_joins_per_room": _GENEROUS,
    "rc_key_requests": _GENEROUS,
    "rc_3pid_validation": _GENEROUS,
    "rc_invites": {"per_room": _GENEROUS, "per_user": _GENEROUS, "per_issuer": _GENEROUS},
    "rc_third_party_invite": _GENEROUS,
    "rc_media_create": _GENEROUS,
    "rc_presence": {"per_user": _GENEROUS},
    "rc_delayed_event_mgmt": _GENEROUS,
    "rc_room_creation": _GENEROUS,
    "rc_reports": _GENEROUS,
    "rc_user_directory": _GENEROUS,
    "rc_profile": _GENEROUS,
}


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _signing_key_line() -> str:
    # Synapse's key file format: "<algorithm> <version> <unpadded base64 of the ed25519 seed>".
    seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"ed25519 a_dev {seed}\n"


class SynapseError(RuntimeError):
    """Synapse failed to start, stop or answer an admin request."""


class DevSynapse:
    """One Synapse homeserver (server_name ``localhost``) with its data in ``workdir``.

    The TCP port is chosen once, so ``stop()`` followed by ``start()`` brings the same
    server back on the same URL with the same SQLite database, keys and media. A workdir
    that already holds a homeserver.yaml (an earlier run) keeps its secrets and, while it
    is free, its port.
    """

    server_name = "localhost"

    def __init__(self, workdir: Path, *, rc_message: dict[str, float] | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.rc_message = rc_message
        self.config_path = self.workdir / "homeserver.yaml"
        self.log_path = self.workdir / "homeserver.log"
        self.stdout_path = self.workdir / "synapse.stdout.log"
        self.pid_path = self.workdir / "homeserver.pid"
        earlier = self._earlier_config()
        port = self._earlier_port(earlier)
        self.port = port if port is not None and _port_is_free(port) else _free_port()
        self.registration_shared_secret = str(
            earlier.get("registration_shared_secret") or secrets.token_hex(32)
        )
        self._macaroon_secret = str(earlier.get("macaroon_secret_key") or secrets.token_hex(32))
        self._form_secret = str(earlier.get("form_secret") or secrets.token_hex(32))
        self._proc: subprocess.Popen[bytes] | None = None

    def _earlier_config(self) -> dict[str, Any]:
        try:
            data = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _earlier_port(config: dict[str, Any]) -> int | None:
        try:
            return int(config["listeners"][0]["port"])
        except (KeyError, IndexError, TypeError, ValueError):
            return None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def mxid(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    # ------------------------------------------------------------------ config

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "media_store").mkdir(exist_ok=True)
        signing_key = self.workdir / "localhost.signing.key"
        if not signing_key.exists():
            signing_key.write_text(_signing_key_line(), encoding="ascii")

        log_config = self.workdir / "log_config.yaml"
        log_config.write_text(
            yaml.safe_dump(
                {
                    "version": 1,
                    "formatters": {
                        "precise": {
                            "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s"
                            " - %(request)s - %(message)s"
                        }
                    },
                    "handlers": {
                        "file": {
                            "class": "logging.FileHandler",
                            "formatter": "precise",
                            "filename": str(self.log_path),
                            "encoding": "utf8",
                        }
                    },
                    "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
                    "root": {"level": "INFO", "handlers": ["file"]},
                    "disable_existing_loggers": False,
                }
            )
        )

        config: dict[str, Any] = {
            "server_name": self.server_name,
            "pid_file": str(self.pid_path),
            "public_baseurl": self.url + "/",
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {
                "name": "sqlite3",
                "args": {"database": str(self.workdir / "homeserver.db")},
            },
            "log_config": str(log_config),
            "media_store_path": str(self.workdir / "media_store"),
            "signing_key_path": str(signing_key),
            "registration_shared_secret": self.registration_shared_secret,
            "macaroon_secret_key": self._macaroon_secret,
            "form_secret": self._form_secret,
            "enable_registration": False,
            "report_stats": False,
            "enable_metrics": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "presence": {"enabled": False},
            "url_preview_enabled": False,
            "experimental_features": {},
            **_GENEROUS_RATE_LIMITS,
        }
        if self.rc_message is not None:
            config["rc_message"] = dict(self.rc_message)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    # --------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start Synapse and return once ``/_matrix/client/versions`` answers 200."""
        if self.running:
            raise SynapseError(f"Synapse at {self.url} is already running")
        self._write_config()
        began = time.monotonic()
        self._proc = spawn(
            [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            cwd=self.workdir,
            log_path=self.stdout_path,
        )
        try:
            await self._wait_until_ready(began + _READY_TIMEOUT_S)
        except BaseException:
            await self.stop()
            raise

    async def _wait_until_ready(self, deadline: float) -> None:
        assert self._proc is not None
        probe = f"{self.url}/_matrix/client/versions"
        last_problem = "no answer yet"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                if self._proc.poll() is not None:
                    raise self._failure(f"exited with code {self._proc.returncode} during startup")
                try:
                    async with http.get(probe) as resp:
                        if resp.status == 200:
                            return
                        last_problem = f"HTTP {resp.status}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last_problem = repr(exc)
                if time.monotonic() > deadline:
                    raise self._failure(
                        f"not ready after {_READY_TIMEOUT_S:.0f}s (last probe: {last_problem})"
                    )
                await asyncio.sleep(0.1)

    def _failure(self, what: str) -> SynapseError:
        return SynapseError(
            f"Synapse ({self.config_path}) {what}.\n"
            f"--- last {LOG_TAIL_LINES} lines of {self.log_path} ---\n{tail(self.log_path)}\n"
            f"--- last lines of {self.stdout_path} ---\n{tail(self.stdout_path, 20)}"
        )

    async def stop(self) -> None:
        """SIGTERM the process group, wait up to 15 s, then SIGKILL. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            await stop_process(proc)

    # ------------------------------------------------------------------ admin

    async def register(self, localpart: str, password: str, admin: bool = False) -> str:
        """Create a user through the shared-secret admin API and return its MXID."""
        return await self._register(localpart, password, admin, exist_ok=False)

    async def ensure_user(self, localpart: str, password: str, admin: bool = False) -> str:
        """Like ``register``, but an account that already exists is fine (its password is kept)."""
        return await self._register(localpart, password, admin, exist_ok=True)

    async def _register(self, localpart: str, password: str, admin: bool, *, exist_ok: bool) -> str:
        endpoint = f"{self.url}/_synapse/admin/v1/register"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.get(endpoint) as resp:
                if resp.status != 200:
                    raise SynapseError(f"GET {endpoint}: HTTP {resp.status} {await resp.text()}")
                nonce = (await resp.json())["nonce"]
            mac = hmac.new(self.registration_shared_secret.encode(), digestmod=hashlib.sha1)
            mac.update(
                b"\x00".join(
                    [
                        nonce.encode(),
                        localpart.encode(),
                        password.encode(),
                        b"admin" if admin else b"notadmin",
                    ]
                )
            )
            body = {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            }
            async with http.post(endpoint, json=body) as resp:
                if resp.status == 200:
                    return str((await resp.json())["user_id"])
                text = await resp.text()
                if exist_ok and resp.status == 400 and "M_USER_IN_USE" in text:
                    return self.mxid(localpart)
                raise SynapseError(f"registering {localpart!r}: HTTP {resp.status} {text}")
