"""`orchestrator users create|promote|demote|token`: users, roles and tokens, at head only."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from orchestrator import accounts
from orchestrator.cli import main
from orchestrator.db import create_engine
from orchestrator.migrations import MigrationManager


@pytest.fixture
def users(capsys):
    """Run `orchestrator users ...` in-process; returns (exit code, out, err)."""

    def run(url: str, *args: str):
        with pytest.raises(SystemExit) as exited:
            main(["users", *args, "--database-url", url])
        captured = capsys.readouterr()
        return exited.value.code, captured.out, captured.err

    return run


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
    assert "Created user 1 <ada@example.com>, an admin" in out
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


def _is_admin(url: str, email: str) -> bool:
    engine = create_engine(url)
    with engine.connect() as connection:
        value = connection.execute(
            text("SELECT is_admin FROM users WHERE email = :email"), {"email": email}
        ).scalar()
    engine.dispose()
    return bool(value)


def test_the_first_user_is_an_admin_later_ones_members_unless_asked(db_url, users):
    with MigrationManager(db_url) as manager:
        manager.upgrade()
    assert "an admin" in users(db_url, "create", "--email", "a@example.com", "--name", "A")[1]
    assert "a member" in users(db_url, "create", "--email", "b@example.com", "--name", "B")[1]
    made = users(db_url, "create", "--email", "c@example.com", "--name", "C", "--admin")
    assert made[0] == 0 and "an admin" in made[1]
    assert [_is_admin(db_url, f"{x}@example.com") for x in "abc"] == [True, False, True]


def test_promote_and_demote_keep_one_admin(db_url, users):
    with MigrationManager(db_url) as manager:
        manager.upgrade()
    users(db_url, "create", "--email", "a@example.com", "--name", "A")
    users(db_url, "create", "--email", "b@example.com", "--name", "B")
    code, out, _ = users(db_url, "promote", "B@example.com")
    assert code == 0 and out == "User 2 <b@example.com> is now an admin.\n"
    assert users(db_url, "promote", "b@example.com")[1].endswith("was already an admin.\n")
    assert users(db_url, "demote", "a@example.com")[0] == 0
    code, _, err = users(db_url, "demote", "b@example.com")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "user 2 is the only admin and cannot be demoted" in err
    assert (_is_admin(db_url, "a@example.com"), _is_admin(db_url, "b@example.com")) == (
        False, True)


def test_token_issues_a_new_token_for_an_existing_user(db_url, users):
    with MigrationManager(db_url) as manager:
        manager.upgrade()
    first = users(db_url, "create", "--email", "a@example.com", "--name", "A")[1]
    code, out, _ = users(db_url, "token", "A@example.com", "--name", "laptop")
    assert code == 0 and "Issued token 2 for user 1 <a@example.com>" in out
    token = out.strip().splitlines()[-1]
    assert _owner_of(db_url, token) == "a@example.com"
    # The first token keeps working.
    assert _owner_of(db_url, first.strip().splitlines()[-1]) == "a@example.com"


@pytest.mark.parametrize(
    ("args", "message"),
    [(("token", "nobody@example.com"), "no user has email nobody@example.com"),
     (("promote", "nobody@example.com"), "`orchestrator users create` makes one"),
     (("demote", "not-an-email"), "not an email address"),
     (("token", "a@example.com", "--name", " "), "--name")],
)
def test_unknown_or_bad_users_are_one_line_errors(sqlite_url, users, args, message):
    with MigrationManager(sqlite_url) as manager:
        manager.upgrade()
    users(sqlite_url, "create", "--email", "a@example.com", "--name", "A")
    code, _, err = users(sqlite_url, *args)
    assert code == 2 and err.startswith("Error: ") and len(err.strip().splitlines()) == 1
    assert message in err
