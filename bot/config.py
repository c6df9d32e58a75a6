"""Configuration: the YAML file, validated by pydantic, with secrets from the environment.

Every problem becomes one line naming the file, the key and what would be valid.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import UTC, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import yaml
from apscheduler.triggers.cron import CronTrigger
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from bot import timeutil
from bot.roadmap import yaml_problem
from bot.secret_storage import decode_recovery_key

MXID = re.compile(r"^@[^:\s]+:[A-Za-z0-9.\-]+(:\d+)?$")
ENV_PASSWORD = "ONBOARDING_BOT_PASSWORD"
ENV_ACCESS_TOKEN = "ONBOARDING_BOT_ACCESS_TOKEN"
ENV_RECOVERY_KEY = "ONBOARDING_BOT_RECOVERY_KEY"
ENV_PREFIX = "ONBOARDING_BOT_"  # ONBOARDING_BOT_MATRIX__HOMESERVER overrides matrix.homeserver


class ConfigError(ValueError):
    """One or more problems with the configuration, one per line."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


def _parsed(parse: Any) -> BeforeValidator:
    """Validation that keeps what it parsed: a value given as text becomes the parsed value
    (a default is given parsed already)."""
    return BeforeValidator(lambda value: parse(value) if isinstance(value, str | list) else value)


# Values as the rest of the bot uses them; written in the YAML as "3d", "Europe/Berlin", ...
Duration = Annotated[timedelta, _parsed(timeutil.parse_duration)]
Zone = Annotated[ZoneInfo, _parsed(timeutil.parse_timezone)]
WorkingDays = Annotated[frozenset[int], _parsed(timeutil.parse_working_days)]
QuietHours = Annotated[timeutil.QuietHours | None, _parsed(timeutil.parse_quiet_hours)]


def _check_mxid(value: str) -> str:
    if not MXID.match(value):
        raise ValueError(f"{value!r} is not a Matrix user id like @name:example.org")
    return value


class MatrixConfig(_Section):
    homeserver: str
    user_id: str
    password: str | None = None
    access_token: str | None = None
    # Docker/Kubernetes secrets: read the secret from this file (relative to the config).
    password_file: Path | None = None
    access_token_file: Path | None = None
    device_name: str = "onboarding-bot"
    encryption: bool = True
    # Opens the account's Secret Storage, where the cross-signing keys are kept (Element's
    # "recovery key"). None: generated on first start into data_dir/recovery-key.txt.
    recovery_key: str | None = None
    recovery_key_file: Path | None = None
    # As Element does since 2026: room keys only for devices their owner cross-signed, and
    # no commands from the others, in encrypted rooms.
    exclude_insecure_devices: bool = True

    @field_validator("homeserver")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"{value!r} must be a URL like https://matrix.example.org")
        return value.rstrip("/")

    @field_validator("user_id")
    @classmethod
    def _user(cls, value: str) -> str:
        return _check_mxid(value)

    @field_validator("recovery_key")
    @classmethod
    def _recovery_key(cls, value: str | None) -> str | None:
        if value is not None:
            decode_recovery_key(value)
        return value

    @property
    def server_name(self) -> str:
        return self.user_id.split(":", 1)[1]


class StorageConfig(_Section):
    data_dir: Path = Path("data")


class BotConfig(_Section):
    command_prefix: str = Field(default="!", min_length=1, max_length=5)
    allowed_servers: list[str] = Field(default_factory=list)
    greeting: bool = True
    # Commands older than this are not answered (the bot was down far longer than anyone waits).
    max_event_age: Duration = timedelta(days=7)
    # Mentor answers (!status, !history, !team) in a room where non-mentors read along go to
    # the mentor's direct chat instead, unless this is true.
    mentor_commands_in_rooms: bool = False
    # Flood control per sender: at most flood_limit commands per flood_window; then one
    # "slow down" notice and silence until the window has passed.
    flood_limit: int = Field(default=10, ge=1)
    flood_window: Duration = timedelta(seconds=10)
    # Invites beyond these are declined: rooms one non-mentor may bring the bot into, and
    # rooms in all.
    max_rooms_per_inviter: int = Field(default=5, ge=0)
    max_rooms: int = Field(default=1000, ge=1)
    # The bot puts ✅ ⏭️ 📚 under every message that shows a step; the newcomer's tap acts on
    # that step as !done, !skip or !resources would.
    reaction_shortcuts: bool = True

    @field_validator("command_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if any(c.isspace() or c.isalnum() for c in value):
            raise ValueError(f"{value!r} must be punctuation without spaces, e.g. '!'")
        return value


class RoomsConfig(_Section):
    # The team room: where mentors are found by power level, digests and team nudges go.
    team: str | None = None

    @field_validator("team")
    @classmethod
    def _room(cls, value: str | None) -> str | None:
        # Room ids carry no server name from room version 12 on; aliases always do.
        if value is not None and not re.match(
            r"^(#[^:\s]+:[A-Za-z0-9.\-]+(:\d+)?|![^\s]+)$", value
        ):
            raise ValueError(f"{value!r} must be a room alias like #team:example.org or an id")
        return value


_TEXT = TypeAdapter(str)


class _Scheduled(_Section):
    """A job's crontab, read once, in its time zone, into the trigger the scheduler runs on."""

    timezone: Zone = ZoneInfo("UTC")  # declared before `schedule`, which is read in it
    schedule: CronTrigger

    @field_validator("schedule", mode="before")
    @classmethod
    def _crontab(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, CronTrigger):
            return value
        text = _TEXT.validate_python(value)  # not text: the same problem a `str` field reports
        zone = info.data.get("timezone", UTC)  # a bad time zone is reported on its own line
        try:
            return CronTrigger.from_crontab(text, timezone=zone)
        except ValueError as exc:
            raise ValueError(
                f"{text!r} is not a 5-field crontab expression like '0 10 * * mon-fri' ({exc})"
            ) from None

    @property
    def trigger(self) -> CronTrigger:
        return self.schedule


class NudgesConfig(_Scheduled):
    enabled: bool = True
    # Given as text, and parsed in the configured time zone like a crontab written in the YAML.
    schedule: CronTrigger = Field(default="0 10 * * mon-fri", validate_default=True)
    idle_after: Duration = timedelta(days=3)
    # Working time behind the roadmap's estimates past which !status flags a newcomer.
    behind_pace_after: Duration = timedelta(days=5)
    target: Literal["dm", "team"] = "dm"
    escalate_after: int = Field(default=3, ge=1, le=100)
    working_days: WorkingDays = timeutil.DEFAULT_WORKING_DAYS
    quiet_hours: QuietHours = timeutil.parse_quiet_hours("20:00-08:00")
    # A mentor's !nudge of the same newcomer at most once per this long.
    manual_cooldown: Duration = timedelta(hours=1)


class DigestConfig(_Scheduled):
    schedule: CronTrigger = Field(default="0 9 * * mon", validate_default=True)


class PeopleConfig(_Section):
    mentors: list[str] = Field(default_factory=list)
    admins: list[str] = Field(default_factory=list)

    @field_validator("mentors", "admins")
    @classmethod
    def _users(cls, value: list[str]) -> list[str]:
        return [_check_mxid(v) for v in value]


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class HttpConfig(_Section):
    # host:port of the health and metrics listener; unset: no listener.
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdecimal() or not 0 < int(port) < 65536:
                raise ValueError(f"{value!r} must be host:port, e.g. 127.0.0.1:9100")
        return value

    @property
    def host_port(self) -> tuple[str, int] | None:
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class ChecksConfig(_Section):
    # With true, !done on a step with knowledge checks asks them first; the step is done
    # once they are answered right.
    required: bool = False


class Config(_Section):
    matrix: MatrixConfig
    storage: StorageConfig = Field(default_factory=StorageConfig)
    roadmap: Path = Path("roadmap.yaml")
    bot: BotConfig = Field(default_factory=BotConfig)
    people: PeopleConfig = Field(default_factory=PeopleConfig)
    rooms: RoomsConfig = Field(default_factory=RoomsConfig)
    nudges: NudgesConfig = Field(default_factory=NudgesConfig)
    digest: DigestConfig | None = None
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)

    @property
    def allowed_servers(self) -> frozenset[str]:
        return frozenset(self.bot.allowed_servers or [self.matrix.server_name])

    @property
    def database_path(self) -> Path:
        return self.storage.data_dir / "bot.db"


def _describe(error: Mapping[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "top level"
    kind = error["type"]
    if kind == "missing":
        return f"{where}: required key is missing"
    if kind == "extra_forbidden":
        return f"{where}: unknown key (check the spelling against config.example.yaml)"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Reads, validates and completes the config; raises ConfigError with one line a problem."""
    environ = os.environ if environ is None else environ
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {yaml_problem(exc)}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level: must be a mapping (see config.example.yaml)")
    problems = apply_env_overrides(raw, environ)
    base = path.resolve().parent
    matrix = raw.get("matrix")
    if isinstance(matrix, dict):
        problems += _read_secrets(matrix, base, environ)
    if problems:
        raise ConfigError("\n".join(f"{path}: {p}" for p in problems))
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{path}: {_describe(e)}" for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
    if not config.matrix.password and not config.matrix.access_token:
        raise ConfigError(
            f"{path}: matrix: needs password, password_file, access_token or "
            f"access_token_file (or the {ENV_PASSWORD} / {ENV_ACCESS_TOKEN} environment variables)"
        )
    return config.model_copy(
        update={
            "roadmap": base / config.roadmap,
            "storage": StorageConfig(data_dir=base / config.storage.data_dir),
        }
    )


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """ONBOARDING_BOT_<KEY>__<SUBKEY>=value sets raw[key][subkey]; values are read as YAML.

    Only names whose first part is a config section count, so ONBOARDING_BOT_PASSWORD and
    ONBOARDING_BOT_CONFIG keep their own meanings. Returns problems, one line each.
    """
    problems = []
    sections = set(Config.model_fields)
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = name[len(ENV_PREFIX) :].lower().split("__")
        if keys[0] not in sections or not all(keys):
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        node = raw
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                problems.append(f"{name}: {'.'.join(keys[:-1])} is not a section")
                break
            node = child
        else:
            node[keys[-1]] = value
    return problems


def _read_secrets(matrix: dict[str, Any], base: Path, environ: Mapping[str, str]) -> list[str]:
    """Fills password, access_token and recovery_key from the environment, else from their
    *_file; returns problems."""
    problems = []
    for key, env in (
        ("password", ENV_PASSWORD),
        ("access_token", ENV_ACCESS_TOKEN),
        ("recovery_key", ENV_RECOVERY_KEY),
    ):
        file_key = f"{key}_file"
        if environ.get(env):
            matrix[key] = environ[env]
        elif matrix.get(file_key):
            secret_path = base / str(matrix[file_key])
            try:
                secret = secret_path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or exc
                problems.append(f"matrix.{file_key}: cannot read {secret_path}: {reason}")
                continue
            if not secret:
                problems.append(f"matrix.{file_key}: {secret_path} is empty")
            matrix[key] = secret
    return problems
