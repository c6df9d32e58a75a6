"""Logging to stdout: one line per event, as text or JSON lines, with room and sender if known."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

from bot.config import LoggingConfig

CONTEXT_FIELDS = ("room", "sender")
# Synapse access tokens, and tokens in URLs, whatever logged them.
TOKEN_PATTERNS = (re.compile(r"syt_[A-Za-z0-9_]+"), re.compile(r"(access_token=)[^&\s]+"))


class Redact(logging.Filter):
    """Never a password or token in the logs, even if a library prints one."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = message
        for secret in self.secrets:
            clean = clean.replace(secret, "[redacted]")
        for pattern in TOKEN_PATTERNS:
            clean = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", clean)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if hasattr(record, k)
        )
        return f"{line} [{context}]" if context else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: getattr(record, k) for k in CONTEXT_FIELDS if hasattr(record, k)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(config: LoggingConfig, secrets: list[str] | None = None) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(Redact(secrets or []))
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level)
    # nio logs every retry itself, peewee every crypto-store query: keep them to warnings.
    for noisy in ("nio", "peewee", "aiosqlite"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
