"""nio's key store as the bot configures it: a sync that brings no newly encrypted room does not
touch the database (nio read its account row in a transaction of its own on every sync, on the
event loop, between a command's arrival and its reply)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nio.crypto import OlmAccount

from bot.identity import CryptoStore


def test_no_new_encrypted_room_no_statement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CryptoStore("@bot:example.org", "BOTDEVICE", str(tmp_path))
    store.save_account(OlmAccount())
    statements: list[str] = []
    execute_sql = store.database.execute_sql

    def counted(sql: str, *args: Any, **kwargs: Any) -> Any:
        statements.append(sql)
        return execute_sql(sql, *args, **kwargs)

    monkeypatch.setattr(store.database, "execute_sql", counted)

    store.save_encrypted_rooms(set())
    assert statements == []

    store.save_encrypted_rooms({"!room:example.org"})
    assert statements  # a new encrypted room is saved as nio saves it
    assert store.load_encrypted_rooms() == {"!room:example.org"}
