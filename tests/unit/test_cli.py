"""`onboarding-bot check`: exit 0 on a good config and roadmap, 2 and one line a problem if not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV_VARS = ("ONBOARDING_BOT_PASSWORD", "ONBOARDING_BOT_ACCESS_TOKEN")


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", "check", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def config_data(roadmap: str = "roadmap.yaml", **matrix: Any) -> dict[str, Any]:
    return {
        "matrix": {
            "homeserver": "https://matrix.example.org",
            "user_id": "@mentor-bot:example.org",
            "password": "x",
            **matrix,
        },
        "roadmap": roadmap,
    }


@pytest.fixture(autouse=True)
def no_secrets_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def test_check_accepts_the_example_config() -> None:
    result = check(ROOT / "config.example.yaml")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "52 steps in 14 sections, 74 links" in result.stdout
    assert result.stderr == ""


def test_check_reports_each_config_problem_on_its_own_line(write_yaml) -> None:
    data = config_data(user_id="mentor-bot", passwrd="typo")
    data["bot"] = {"command_prefix": "x"}
    path = write_yaml(data, "config.yaml")
    result = check(path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 3, result.stderr
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert any("matrix.user_id" in line for line in lines)
    assert any("matrix.passwrd: unknown key" in line for line in lines)
    assert any("bot.command_prefix" in line for line in lines)
    assert result.stdout == ""


def test_check_reports_each_roadmap_problem_on_its_own_line(write_yaml, small_data) -> None:
    alpha = small_data["sections"][0]["steps"]
    alpha[1]["id"] = "a-one"  # duplicate id
    alpha[2]["estimate"] = "soon"
    roadmap = write_yaml(small_data, "team-roadmap.yaml")
    result = check(write_yaml(config_data(roadmap="team-roadmap.yaml"), "config.yaml"))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert all(line.startswith(f"{roadmap}: ") for line in lines)
    assert any("step a-one: duplicate step id" in line for line in lines)
    assert any("step a-three: estimate 'soon'" in line for line in lines)


def test_check_reports_invalid_roadmap_yaml_on_one_line(write_yaml) -> None:
    write_yaml("title: x\nsections: [\n  - id: broken\n", "team-roadmap.yaml")
    result = check(write_yaml(config_data(roadmap="team-roadmap.yaml"), "config.yaml"))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
