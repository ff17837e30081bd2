"""`orchestrator users create`: a new user and their first token, on a database at head only."""

from __future__ import annotations

import pytest

from orchestrator import accounts
from orchestrator.cli import main
from orchestrator.db import create_engine
from orchestrator.migrations import MigrationManager


@pytest.fixture
def users_create(capsys):
    """Run `orchestrator users create ...` in-process; returns (exit code, out, err)."""

    def run(url: str, *args: str):
        with pytest.raises(SystemExit) as exited:
            main(["users", "create", *args, "--database-url", url])
        captured = capsys.readouterr()
        return exited.value.code, captured.out, captured.err

    return run


def _owner_of(url: str, token: str) -> str | None:
    engine = create_engine(url)
    with engine.connect() as connection:
        caller = accounts.caller_for_token(connection, token)
    engine.dispose()
    return caller.email if caller else None


def test_users_create_prints_a_token_that_authenticates_the_user(db_url, users_create):
    with MigrationManager(db_url) as manager:
        manager.upgrade()
    code, out, _ = users_create(db_url, "--email", "Ada@Example.com", "--name", "Ada")
    assert code == 0
    assert "Created user 1 <ada@example.com>" in out
    token = out.strip().splitlines()[-1]
    assert token.startswith(accounts.TOKEN_PREFIX)
    assert _owner_of(db_url, token) == "ada@example.com"


def test_users_create_refuses_a_database_behind_head(sqlite_url, users_create):
    with MigrationManager(sqlite_url) as manager:
        manager.upgrade("003")
        head = manager.get_head_revision()
    code, _, err = users_create(sqlite_url, "--email", "ada@example.com", "--name", "Ada")
    assert code == 2
    assert f"the database is at 003, not at head {head}" in err
    assert "orchestrator db upgrade" in err


def test_users_create_refuses_a_missing_database(sqlite_url, users_create):
    code, _, err = users_create(sqlite_url, "--email", "ada@example.com", "--name", "Ada")
    assert code == 2
    assert "orchestrator db upgrade" in err


def test_users_create_refuses_a_duplicate_email(sqlite_url, users_create):
    with MigrationManager(sqlite_url) as manager:
        manager.upgrade()
    assert users_create(sqlite_url, "--email", "ada@example.com", "--name", "Ada")[0] == 0
    code, _, err = users_create(sqlite_url, "--email", "ADA@example.com", "--name", "Ada")
    assert code == 2
    assert "Error: a user with email ada@example.com already exists" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--email", "nope", "--name", "Ada"), "not an email address"),
     (("--email", "ada@example.com", "--name", "  "), "--name")],
)
def test_users_create_refuses_bad_input_in_one_line(sqlite_url, users_create, args, message):
    with MigrationManager(sqlite_url) as manager:
        manager.upgrade()
    code, _, err = users_create(sqlite_url, *args)
    assert code == 2
    assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1
    assert message in err
    assert "Traceback" not in err
