"""Revision 004 adds api_tokens (hashes only, unique, cascading with the user) and takes it back."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from orchestrator.migrations import MigrationManager
from tests.schema import execute, scalar, seed_rows, snapshot

TOKEN_ROW = (
    "INSERT INTO api_tokens (user_id, name, token_hash, prefix) "
    "VALUES (1, 'first token', :hash, 'orch_abcdefg')"
)


def test_004_adds_api_tokens_and_its_downgrade_removes_only_that(manager: MigrationManager):
    manager.upgrade("003")
    seed_rows(manager.database_url)
    before = snapshot(manager.database_url)
    assert manager.upgrade("004") == ["004"]
    tokens = snapshot(manager.database_url)["api_tokens"]
    assert [c[0] for c in tokens["columns"]] == [
        "id", "user_id", "name", "token_hash", "prefix", "created_at", "updated_at"
    ]
    assert ("ix_api_tokens_user_id", ("user_id",), False) in tokens["indexes"]
    assert tokens["foreign_keys"] == [("fk_api_tokens_user_id_users", ("user_id",), "users")]
    assert manager.downgrade("003") == ["004"]
    assert snapshot(manager.database_url) == before
    assert scalar(manager.database_url, "SELECT count(*) FROM tasks") == 2


def test_token_hashes_are_unique_and_go_with_their_user(manager: MigrationManager):
    manager.upgrade("004")
    seed_rows(manager.database_url)
    execute(manager.database_url, TOKEN_ROW, params={"hash": "a" * 64})
    with pytest.raises(IntegrityError):
        execute(manager.database_url, TOKEN_ROW, params={"hash": "a" * 64})
    execute(manager.database_url, "DELETE FROM users WHERE id = 1")
    assert scalar(manager.database_url, "SELECT count(*) FROM api_tokens") == 0
