"""Logging: secrets never reach the log, wherever in the line they would have been."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from bot.config import LoggingConfig
from bot.logs import setup_logging

PASSWORD = 'hunter2"secret\\'  # quotes and backslashes are escaped differently in JSON
TOKEN = "syt_bWVudG9y_abcdefghijkl_0a1b2c"


@pytest.fixture
def root_logging() -> Iterator[None]:
    """setup_logging replaces the root logger's handlers and level: put them back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def log_a_failure() -> None:
    log = logging.getLogger("bot.test")
    try:
        raise RuntimeError(f"login failed with {PASSWORD} at /login?access_token={TOKEN}")
    except RuntimeError:
        log.exception(
            "sync failed (token %s)", TOKEN, extra={"room": "!r:x.org", "sender": PASSWORD}
        )


@pytest.mark.parametrize("form", ["text", "json"])
def test_secrets_are_redacted_in_message_traceback_and_extra_fields(
    form: str, root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging(LoggingConfig(format=form), [PASSWORD])

    log_a_failure()

    out = capsys.readouterr().out
    assert "sync failed" in out and "RuntimeError: login failed with" in out
    assert "[redacted]" in out
    for secret in (PASSWORD, json.dumps(PASSWORD)[1:-1], TOKEN, "hunter2"):
        assert secret not in out
    if form == "json":
        entry = json.loads(out)
        assert entry["sender"] == "[redacted]"
        assert "access_token=[redacted]" in entry["exception"]
