"""Logging to stdout: one line per event, as text or JSON lines, with room and sender if known."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

from bot.config import LoggingConfig

# The line that says the bot is up: the dev kit, the demo and the benchmarks wait for it.
READY = "first sync done; ready for commands"

CONTEXT_FIELDS = ("room", "sender")
# Synapse access tokens, and tokens in URLs, whatever logged them. A URL's token ends at a
# quote or backslash too: in a JSON line, the rest of the line has no whitespace.
TOKEN_PATTERNS = (
    re.compile(r"syt_[A-Za-z0-9_]+"),
    re.compile(r"(access_token=)[^&\s\"'\\]+"),
)


class Redact:
    """Never a password or token in the logs, even if a library prints one.

    Applied to the finished line, so a secret in a traceback or an extra field is caught too;
    a secret is also looked for as JSON writes it (quotes and backslashes escaped).
    """

    def __init__(self, secrets: list[str]) -> None:
        kept = [s for s in secrets if s and len(s) >= 4]
        escaped = [json.dumps(s, ensure_ascii=False)[1:-1] for s in kept]
        # Longest first: a secret inside another must not leave the rest of the longer one.
        self.secrets = sorted(set(kept + escaped), key=len, reverse=True)

    def __call__(self, line: str) -> str:
        for secret in self.secrets:
            line = line.replace(secret, "[redacted]")
        for pattern in TOKEN_PATTERNS:
            line = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", line)
        return line


class TextFormatter(logging.Formatter):
    def __init__(self, fmt: str, redact: Redact | None = None) -> None:
        super().__init__(fmt)
        self.redact = redact or Redact([])

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if hasattr(record, k)
        )
        return self.redact(f"{line} [{context}]" if context else line)


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redact | None = None) -> None:
        super().__init__()
        self.redact = redact or Redact([])

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
        return self.redact(json.dumps(entry, ensure_ascii=False))


def setup_logging(config: LoggingConfig, secrets: list[str] | None = None) -> None:
    handler = logging.StreamHandler(sys.stdout)
    redact = Redact(secrets or [])
    if config.format == "json":
        handler.setFormatter(JsonFormatter(redact))
    else:
        handler.setFormatter(
            TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", redact)
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level)
    # nio logs every retry itself, peewee every crypto-store query: keep them to warnings.
    for noisy in ("nio", "peewee", "aiosqlite"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
