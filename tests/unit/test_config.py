"""Configuration: the example loads, secrets come from the environment, one line a problem."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.app import nudge_policy
from bot.config import ConfigError, load_config
from bot.secret_storage import encode_recovery_key, new_key
from bot.timeutil import parse_duration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.yaml"


def minimal(**matrix: Any) -> dict[str, Any]:
    return {
        "matrix": {
            "homeserver": "https://matrix.example.org",
            "user_id": "@mentor-bot:example.org",
            **matrix,
        }
    }


def problem_lines(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return str(exc.value).splitlines()


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE, environ={})
    assert config.matrix.user_id == "@mentor-bot:example.org"
    assert config.matrix.homeserver == "https://matrix.example.org"
    assert config.matrix.password == "change-me"
    assert config.bot.command_prefix == "!"
    assert config.people.mentors == ["@alice:example.org"]
    assert config.roadmap == ROOT / "roadmap.yaml"
    assert config.database_path == ROOT / "data" / "bot.db"


@pytest.mark.parametrize(
    ("variable", "key"),
    [("ONBOARDING_BOT_PASSWORD", "password"), ("ONBOARDING_BOT_ACCESS_TOKEN", "access_token")],
)
def test_environment_overrides_the_file(variable: str, key: str) -> None:
    config = load_config(EXAMPLE, environ={variable: "from-the-environment"})
    assert getattr(config.matrix, key) == "from-the-environment"


def test_credentials_may_come_from_the_environment_alone(write_yaml) -> None:
    path = write_yaml(minimal(), "config.yaml")
    config = load_config(path, environ={"ONBOARDING_BOT_ACCESS_TOKEN": "syt_secret"})
    assert config.matrix.access_token == "syt_secret"
    assert config.matrix.password is None


def test_missing_credentials_are_an_error(write_yaml) -> None:
    path = write_yaml(minimal(), "config.yaml")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    [line] = problem_lines(exc)
    assert line.startswith(f"{path}: matrix: needs password, password_file, access_token")
    assert "ONBOARDING_BOT_PASSWORD" in line


def test_unknown_key_names_the_key(write_yaml) -> None:
    path = write_yaml(minimal(password="x", passwrd="typo"), "config.yaml")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    assert problem_lines(exc) == [
        f"{path}: matrix.passwrd: unknown key (check the spelling against config.example.yaml)"
    ]


@pytest.mark.parametrize("user_id", ["mentor-bot", "@mentor-bot", "mentor-bot:example.org"])
def test_bad_mxid_is_explained(write_yaml, user_id: str) -> None:
    path = write_yaml(minimal(password="x", user_id=user_id), "config.yaml")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    [line] = problem_lines(exc)
    assert line.startswith(f"{path}: matrix.user_id: ")
    assert "is not a Matrix user id like @name:example.org" in line


def test_several_problems_one_line_each(write_yaml) -> None:
    data = minimal(password="x", user_id="nobody")
    data["people"] = {"mentors": ["alice"]}
    data["colour"] = "blue"
    path = write_yaml(data, "config.yaml")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    lines = problem_lines(exc)
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert any("matrix.user_id" in line for line in lines)
    assert any("people.mentors" in line for line in lines)
    assert any("colour: unknown key" in line for line in lines)


def test_relative_paths_are_resolved_against_the_config_folder(
    write_yaml, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = minimal(password="x")
    data["roadmap"] = "maps/team.yaml"
    data["storage"] = {"data_dir": "state"}
    path = write_yaml(data, "etc/bot/config.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path, environ={})
    assert config.roadmap == tmp_path / "etc" / "bot" / "maps" / "team.yaml"
    assert config.database_path == tmp_path / "etc" / "bot" / "state" / "bot.db"


def test_absolute_paths_are_kept(write_yaml, tmp_path: Path) -> None:
    data = minimal(password="x")
    data["roadmap"] = str(tmp_path / "abs" / "roadmap.yaml")
    path = write_yaml(data, "etc/config.yaml")
    assert load_config(path, environ={}).roadmap == tmp_path / "abs" / "roadmap.yaml"


def test_invalid_yaml_is_one_line(write_yaml) -> None:
    path = write_yaml("matrix: [unclosed\n", "config.yaml")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    [line] = problem_lines(exc)
    assert line.startswith(f"{path}: line 2, column 1: not valid YAML")


def test_bad_max_event_age_is_a_config_error(write_yaml) -> None:
    data = minimal(password="x")
    data["bot"] = {"max_event_age": "3 days"}
    path = write_yaml(data, "config.yaml")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    [line] = problem_lines(exc)
    assert line.startswith(f"{path}: bot.max_event_age: ")
    assert "'3 days' is not a duration like 30s" in line


def test_the_manual_nudge_cooldown_is_a_duration_of_an_hour_by_default(write_yaml) -> None:
    data = minimal(password="x")
    assert load_config(write_yaml(data, "a.yaml"), environ={}).nudges.manual_cooldown == (
        timedelta(hours=1)
    )
    data["nudges"] = {"manual_cooldown": "15m"}
    config = load_config(write_yaml(data, "b.yaml"), environ={})
    assert config.nudges.manual_cooldown == timedelta(minutes=15)

    data["nudges"] = {"manual_cooldown": "soon"}
    path = write_yaml(data, "c.yaml")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    [line] = problem_lines(exc)
    assert line.startswith(f"{path}: nudges.manual_cooldown: ")


def test_behind_pace_after_is_a_duration_of_five_days_by_default(write_yaml) -> None:
    data = minimal(password="x")
    config = load_config(write_yaml(data, "a.yaml"), environ={})
    assert config.nudges.behind_pace_after == timedelta(days=5)
    assert nudge_policy(config).behind_pace_after == timedelta(days=5)
    assert load_config(EXAMPLE, environ={}).nudges.behind_pace_after == timedelta(days=5)

    data["nudges"] = {"behind_pace_after": "1w"}
    config = load_config(write_yaml(data, "b.yaml"), environ={})
    assert config.nudges.behind_pace_after == timedelta(weeks=1)
    assert nudge_policy(config).behind_pace_after == timedelta(weeks=1)

    for bad, problem in (
        ("5 days", "'5 days' is not a duration like 30s, 45m, 12h, 3d or 1w"),
        ("0d", "'0d' must be more than zero"),
    ):
        data["nudges"] = {"behind_pace_after": bad}
        path = write_yaml(data, "c.yaml")
        with pytest.raises(ConfigError) as exc:
            load_config(path, environ={})
        [line] = problem_lines(exc)
        assert line.startswith(f"{path}: nudges.behind_pace_after: {problem}")


def test_a_crontab_is_kept_as_its_trigger_in_the_sections_time_zone(write_yaml) -> None:
    data = minimal(password="x")
    data["nudges"] = {"schedule": "30 8 * * mon-fri", "timezone": "Europe/Berlin"}
    data["digest"] = {}
    config = load_config(write_yaml(data, "a.yaml"), environ={})
    assert str(config.nudges.trigger) == (
        "cron[month='*', day='*', day_of_week='mon-fri', hour='8', minute='30']"
    )
    assert str(config.nudges.trigger.timezone) == "Europe/Berlin"
    assert config.digest is not None
    assert str(config.digest.trigger) == (
        "cron[month='*', day='*', day_of_week='mon', hour='9', minute='0']"
    )

    data["nudges"] = {"schedule": "every morning"}
    path = write_yaml(data, "b.yaml")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    assert problem_lines(exc) == [
        f"{path}: nudges.schedule: 'every morning' is not a 5-field crontab expression like "
        "'0 10 * * mon-fri' (Wrong number of fields; got 2, expected 5)"
    ]


@pytest.mark.parametrize("text", ["3 days", "", "-1d", "0s", "3", "d", "3y"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="like 30s, 45m, 12h, 3d or 1w"):
        parse_duration(text)


def test_recovery_key_env_wins_over_file_and_file_over_value(write_yaml, tmp_path: Path) -> None:
    from_value, from_file, from_env = (encode_recovery_key(new_key()) for _ in range(3))
    (tmp_path / "recovery.txt").write_text(from_file + "\n")
    path = write_yaml(
        minimal(password="pw", recovery_key=from_value, recovery_key_file="recovery.txt"),
        "config.yaml",
    )
    assert load_config(path, environ={}).matrix.recovery_key == from_file
    env = {"ONBOARDING_BOT_RECOVERY_KEY": from_env}
    assert load_config(path, environ=env).matrix.recovery_key == from_env
    path = write_yaml(minimal(password="pw", recovery_key=from_value), "config.yaml")
    assert load_config(path, environ={}).matrix.recovery_key == from_value
    assert load_config(path, environ={}).matrix.exclude_insecure_devices is True


def test_a_mistyped_recovery_key_is_refused_without_echoing_it(write_yaml) -> None:
    key = encode_recovery_key(new_key())
    typo = key[:-1] + ("a" if key[-1] != "a" else "b")
    path = write_yaml(minimal(password="pw", recovery_key=typo), "config.yaml")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    [line] = problem_lines(exc)
    assert line.startswith(f"{path}: matrix.recovery_key: not a recovery key")
    assert typo not in line and typo.replace(" ", "") not in line
