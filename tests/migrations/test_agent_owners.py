"""005 and 006, the expand/contract pair that gives agents owners: rows survive up and down,
owners come from the agents' work, and every step works with data on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import sys

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from orchestrator.cli import main
from orchestrator.db import create_engine
from orchestrator.migrations import MigrationFailedError, MigrationManager, recipes
from tests.schema import content_hash, execute, scalar, snapshot


def _seed_at_004(url: str) -> None:
    """Two users; Bob's project; four agents: one whose latest task is Bob's, one whose older
    task is Bob's but latest is Ada's, one without tasks, one of the old code's after 005."""
    execute(
        url,
        "INSERT INTO users (email, name, created_at) VALUES "
        "('bob@example.com', 'Bob', '2026-01-02 00:00:00'), "
        "('ada@example.com', 'Ada', '2026-01-01 00:00:00')",
        "INSERT INTO projects (owner_id, name) VALUES (1, 'bobs'), (2, 'adas')",
        "INSERT INTO agents (name) VALUES ('w1'), ('w2'), ('idle')",
        "INSERT INTO tasks (project_id, agent_id, title, updated_at) VALUES "
        "(1, 1, 'a', '2026-02-01 00:00:00'), (2, 1, 'b', '2026-01-01 00:00:00'), "
        "(1, 2, 'c', '2026-01-01 00:00:00'), (2, 2, 'd', '2026-03-01 00:00:00'), "
        "(1, NULL, 'e', '2026-01-01 00:00:00')",
    )


def _owners(url: str) -> dict[str, int | None]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT name, owner_id FROM agents ORDER BY id")).all()
    engine.dispose()
    return dict(rows)


def test_agents_get_the_owner_of_their_latest_work_else_the_oldest_user(manager):
    url = manager.database_url
    manager.upgrade("004")
    _seed_at_004(url)
    assert manager.upgrade("005") == ["005"]
    # Ada (user 2) is the oldest user: the admin, and the owner of agents with no work.
    assert scalar(url, "SELECT id FROM users WHERE is_admin") == 2
    assert scalar(url, "SELECT count(*) FROM users WHERE is_admin") == 1
    assert _owners(url) == {"w1": 1, "w2": 2, "idle": 2}
    # The code of 004 keeps registering agents between 005 and 006; 006 gives them owners.
    execute(url, "INSERT INTO agents (name) VALUES ('late')")
    assert _owners(url)["late"] is None
    assert manager.upgrade("006") == ["006"]
    assert _owners(url) == {"w1": 1, "w2": 2, "idle": 2, "late": 2}
    with pytest.raises(IntegrityError):
        execute(url, "INSERT INTO agents (name) VALUES ('ownerless')")
    with pytest.raises(IntegrityError):
        execute(url, "INSERT INTO agents (name, owner_id) VALUES ('ghost', 99)")


def test_rows_and_schema_survive_up_and_down(manager):
    url = manager.database_url
    manager.upgrade("004")
    _seed_at_004(url)
    at_004, schema_004 = content_hash(url), snapshot(url)
    manager.upgrade("005")
    at_005, schema_005 = content_hash(url), snapshot(url)
    # Tasks keep their agents through both table copies on SQLite.
    assert at_005["tasks"] == at_004["tasks"]
    manager.upgrade("006")
    assert content_hash(url) == at_005
    assert manager.downgrade("005") == ["006"]
    assert content_hash(url) == at_005
    assert snapshot(url) == schema_005
    assert manager.downgrade("004") == ["005"]
    assert content_hash(url) == at_004
    assert snapshot(url) == schema_004


def test_deleting_a_user_deletes_their_agents_and_frees_their_tasks(manager):
    url = manager.database_url
    manager.upgrade("004")
    _seed_at_004(url)
    manager.upgrade()
    execute(url, "DELETE FROM users WHERE id = 1")
    assert _owners(url) == {"w2": 2, "idle": 2}
    assert scalar(url, "SELECT count(*) FROM tasks WHERE agent_id = 1") == 0


def test_the_contract_step_refuses_agents_nobody_can_own(manager):
    url = manager.database_url
    manager.upgrade("004")
    execute(url, "INSERT INTO agents (name) VALUES ('orphan')")
    manager.upgrade("005")
    with pytest.raises(MigrationFailedError, match="1 agent.s. have no owner and there is no user"):
        manager.upgrade("006")
    assert manager.get_current_revision() == "005"
    execute(url, "INSERT INTO users (email, name, is_admin) VALUES ('a@example.com', 'A', true)")
    assert manager.upgrade("006") == ["006"]
    assert _owners(url) == {"orphan": 1}


def test_the_backfill_runs_in_batches_with_progress_on_a_terminal(manager, monkeypatch):
    url = manager.database_url
    manager.upgrade("004")
    execute(url, "INSERT INTO users (email, name) VALUES ('a@example.com', 'A')",
            *[f"INSERT INTO agents (name) VALUES ('a{i}')" for i in range(7)])

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(recipes, "BATCH_SIZE", 3)
    monkeypatch.setattr(sys, "stderr", terminal)
    manager.upgrade("005")
    shown = terminal.getvalue()
    assert shown == ("\r005 agents.owner_id: ids 3 of 7 done\r005 agents.owner_id: ids 6 of 7 done"
                     "\r005 agents.owner_id: ids 7 of 7 done\n")
    assert scalar(url, "SELECT count(*) FROM agents WHERE owner_id = 1") == 7


@pytest.mark.postgres
def test_an_interrupted_concurrent_build_of_the_owner_index_is_rebuilt(postgres_url):
    manager = MigrationManager(postgres_url)
    manager.upgrade("004")
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_agents_owner_id'::regclass"
    with engine.connect() as connection:
        connection.execute(text("INSERT INTO agents (name) VALUES ('same'), ('same')"))
        with pytest.raises(Exception, match="could not create unique index"):
            connection.execute(
                text("CREATE UNIQUE INDEX CONCURRENTLY ix_agents_owner_id ON agents (name)")
            )
        assert connection.execute(text(valid)).scalar() is False
    execute(postgres_url, "INSERT INTO users (email, name) VALUES ('a@example.com', 'A')")
    manager.upgrade("005")
    with engine.connect() as connection:
        assert connection.execute(text(valid)).scalar() is True
    engine.dispose()


def test_offline_sql_batches_the_backfill_in_a_do_block(db_url, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["db", "upgrade", "004:head", "--sql", "--database-url", db_url])
    assert exited.value.code == 0
    sql = capsys.readouterr().out
    if db_url.startswith("sqlite"):
        assert "UPDATE agents SET owner_id = coalesce(" in sql
        assert "WHERE owner_id IS NULL" in sql
        return
    assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_agents_owner_id" in sql
    assert "REFERENCES users (id) ON DELETE CASCADE NOT VALID" in sql
    assert sql.count("DO $$") == 2 and sql.count("    COMMIT;") == 2
    assert "ADD CONSTRAINT ck_agents_owner_id_not_null CHECK (owner_id IS NOT NULL) NOT VALID" in sql
    assert sql.index("VALIDATE CONSTRAINT ck_agents_owner_id_not_null") < sql.index(
        "ALTER COLUMN owner_id SET NOT NULL")


@pytest.mark.postgres
def test_a_rerun_completes_an_expand_step_that_stopped_in_its_backfill(postgres_url):
    # What runs before 005's autocommit block (the columns, the foreign key) is committed when
    # the block starts; the run stopped in the backfill (here a trigger refuses the UPDATE, as
    # Ctrl-C or a lost connection would stop it), and the rerun must not trip over it.
    manager = MigrationManager(postgres_url)
    manager.upgrade("004")
    _seed_at_004(postgres_url)
    execute(
        postgres_url,
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$ "
        "LANGUAGE plpgsql",
        "CREATE TRIGGER refuse BEFORE UPDATE ON agents FOR EACH ROW EXECUTE FUNCTION refuse()",
    )
    with pytest.raises(MigrationFailedError, match="refused"):
        manager.upgrade("005")
    assert manager.get_current_revision() == "004"
    assert scalar(postgres_url, "SELECT count(*) FROM agents WHERE owner_id IS NULL") == 3
    execute(postgres_url, "DROP TRIGGER refuse ON agents")
    assert manager.upgrade("head") == ["005", "006"]
    assert _owners(postgres_url) == {"w1": 1, "w2": 2, "idle": 2}


@pytest.mark.postgres
def test_a_rerun_completes_a_contract_step_that_stopped_after_adding_its_check(postgres_url):
    manager = MigrationManager(postgres_url)
    manager.upgrade("004")
    _seed_at_004(postgres_url)
    manager.upgrade("005")
    # Where an interrupted 006 leaves it: the check added NOT VALID and committed.
    execute(postgres_url, "ALTER TABLE agents ADD CONSTRAINT ck_agents_owner_id_not_null "
                          "CHECK (owner_id IS NOT NULL) NOT VALID")
    assert manager.upgrade("006") == ["006"]
    assert scalar(postgres_url, "SELECT count(*) FROM pg_constraint "
                                "WHERE conname = 'ck_agents_owner_id_not_null'") == 0


@pytest.mark.postgres
def test_a_contract_step_whose_check_fails_leaves_no_check_behind(postgres_url):
    import threading

    manager = MigrationManager(postgres_url)
    manager.upgrade("004")
    _seed_at_004(postgres_url)
    manager.upgrade("005")
    # The previous code registers an agent without an owner while 006 runs: its transaction
    # is open before 006 starts and commits while 006 waits to add the check.
    engine = create_engine(postgres_url)
    late = engine.connect()
    late.execute(text("INSERT INTO agents (name) VALUES ('late')"))
    waiting = ("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
               "WHERE c.relname = 'agents' AND l.mode = 'AccessExclusiveLock' AND NOT l.granted")

    def commit_once_006_waits() -> None:
        for _ in range(500):
            if scalar(postgres_url, waiting):
                break
            threading.Event().wait(0.01)
        late.commit()

    committer = threading.Thread(target=commit_once_006_waits)
    committer.start()
    try:
        with pytest.raises(MigrationFailedError, match="ck_agents_owner_id_not_null"):
            manager.upgrade("006")
    finally:
        committer.join()
        late.close()
        engine.dispose()
    assert manager.get_current_revision() == "005"
    # The code that sets no owner keeps working until 006 is run again.
    execute(postgres_url, "INSERT INTO agents (name) VALUES ('later')")
    assert manager.upgrade("006") == ["006"]
