"""migrations/scratch.py: finding a server that answers, and scratch databases that go away."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Connection, make_url

from orchestrator.migrations.scratch import (
    DatabaseNotCreated,
    answering_server,
    create_database,
    drop_database,
    scratch_database,
)
from tests.conftest import require_postgres
from tests.schema import scalar

NOBODY_LISTENS = "postgresql+psycopg://postgres@127.0.0.1:1/postgres"


def test_a_server_that_does_not_answer_is_passed_over():
    assert answering_server([NOBODY_LISTENS]) is None
    assert answering_server([]) is None


@pytest.mark.postgres
def test_the_first_server_that_answers_is_chosen():
    admin = require_postgres()
    assert answering_server([NOBODY_LISTENS, admin, NOBODY_LISTENS]) == admin


@pytest.mark.postgres
def test_a_scratch_database_exists_inside_the_block_only():
    admin = require_postgres()
    with scratch_database(admin, "orch_scratch_test") as url:
        name = make_url(url).database
        assert name.startswith("orch_scratch_test_")
        assert scalar(url, "SELECT current_database()") == name
    assert scalar(admin, f"SELECT count(*) FROM pg_database WHERE datname = '{name}'") == 0


@pytest.mark.postgres
def test_a_refused_create_names_the_database_and_the_reason():
    admin = require_postgres()
    url = create_database(admin, "orch_scratch_test")
    name = make_url(url).database
    try:
        with pytest.raises(DatabaseNotCreated) as refused:
            create_database(admin, "orch_scratch_test", template="no_such_template_db")
        assert refused.value.name.startswith("orch_scratch_test_")
        assert "no_such_template_db" in str(refused.value)
    finally:
        drop_database(admin, url)
    assert scalar(admin, f"SELECT count(*) FROM pg_database WHERE datname = '{name}'") == 0


def test_a_sqlite_scratch_database_is_a_file_in_a_folder_removed_after(tmp_path):
    with scratch_database(f"sqlite:///{tmp_path / 'original.db'}", "orch_scratch_test") as url:
        folder = Path(make_url(url).database).parent
        assert folder.name.startswith("orch-scratch-test-")
        assert folder.is_dir()
    assert not folder.exists()


@pytest.mark.postgres
def test_a_create_interrupted_before_its_comment_leaves_no_database(monkeypatch):
    """Ctrl-C or SIGTERM between CREATE DATABASE and the comment that names its maker would
    leave a database nothing sweeps: it is dropped on the way out."""
    admin = require_postgres()
    made = []
    real = Connection.exec_driver_sql

    def interrupted_at_the_comment(self, statement, *args, **kwargs):
        if statement.startswith("COMMENT ON DATABASE"):
            made.append(statement.split('"')[1])
            raise KeyboardInterrupt
        return real(self, statement, *args, **kwargs)

    monkeypatch.setattr(Connection, "exec_driver_sql", interrupted_at_the_comment)
    with pytest.raises(KeyboardInterrupt):
        create_database(admin, "orch_scratch_test", comment="{}")
    monkeypatch.undo()
    assert made and not scalar(admin, "SELECT count(*) FROM pg_database WHERE datname = "
                                      f"'{made[0]}'")
