"""`orchestrator db rehearse`: the pending migrations run on a throwaway copy, measured.

Every test runs real migrations over real rows, on SQLite files and on PostgreSQL, and checks
that the database rehearsed for is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import text

from orchestrator.db import create_engine
from orchestrator.migrations import MigrationManager, scratch
from orchestrator.migrations.rehearse import rehearse, render_text
from orchestrator.migrations.rehearse import copies
from orchestrator.migrations.rehearse.locks import MODES, blocks, conflicts
from tests.conftest import require_postgres, scratch_postgres_database
from tests.fixtures import add_revision, command_runner, copy_scripts
from tests.schema import content_hash, execute, scalar, seed_rows, snapshot

PLAIN_INDEX = 'op.create_index("ix_tasks_title", "tasks", ["title"])'
# int -> bigint rewrites the table on PostgreSQL; SQLite's batch mode copies it.
RETYPE = """
with op.batch_alter_table("tasks") as batch:
    batch.alter_column("project_id", type_=sa.BigInteger(), existing_nullable=False)
"""
SET_NOT_NULL = """
with op.batch_alter_table("tasks") as batch:
    batch.alter_column("agent_id", existing_type=sa.Integer(), nullable=False)
"""


@pytest.fixture
def run_here(monkeypatch, capsys):
    return command_runner(monkeypatch, capsys)


@pytest.fixture
def unique_sqlite_url(tmp_path: Path) -> str:
    """A SQLite file whose name no other test's copies share (copies are named after it)."""
    return f"sqlite:///{tmp_path / f'rehearsed_{os.urandom(4).hex()}.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request) -> str:
    if request.param == "sqlite":
        return request.getfixturevalue("unique_sqlite_url")
    return request.getfixturevalue("postgres_url")


def add_tasks(url: str, count: int) -> None:
    """`count` more tasks (project 1), a third of them without an agent."""
    execute(url, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < "
                 f"{int(count)}) INSERT INTO tasks (project_id, agent_id, title, status) "
                 "SELECT 1, CASE WHEN i % 3 = 0 THEN NULL ELSE 1 END, 'task ' || i, 'pending' "
                 "FROM n")


def manager_at(url: str, scripts: Path, revision: str = "head") -> MigrationManager:
    manager = MigrationManager(url, script_location=str(scripts), lock_timeout=30)
    manager.upgrade(revision)
    return manager


def state(manager: MigrationManager) -> dict:
    """Everything a rehearsal must leave alone: schema, revision, history and rows."""
    found = {
        "schema": snapshot(manager.database_url),
        "revision": manager.get_current_revision(),
        "history": [(e.revision, e.direction, e.success, e.started_at)
                    for e in manager.applied_history()],
        "rows": content_hash(manager.database_url),
    }
    path = manager.database_url.removeprefix("sqlite:///")
    if manager.dialect == "sqlite":
        found["bytes"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return found


def copy_exists(manager: MigrationManager, name: str) -> bool:
    if manager.dialect == "sqlite":
        return Path(name).exists()
    return bool(scalar(manager.database_url,
                       f"SELECT count(*) FROM pg_database WHERE datname = '{name}'"))


def statement_of(rehearsal, revision: str, fragment: str):
    step = next(s for s in rehearsal.steps if s.revision == revision)
    return next(s for s in step.statements if fragment in s.sql)


# -- what is measured -------------------------------------------------------------------------


def test_a_plain_index_holds_sharelock_blocking_writes_and_the_database_is_untouched(
        url, tmp_path):
    scripts = copy_scripts(tmp_path)
    with manager_at(url, scripts) as manager:
        seed_rows(url)
        add_tasks(url, 2000)
        revision = add_revision(scripts, PLAIN_INDEX, 'op.drop_index("ix_tasks_title")')
        manager._reload_scripts()
        before = state(manager)
        rehearsal = rehearse(manager, max_blocking=0.0)
        assert state(manager) == before
        assert not copy_exists(manager, rehearsal.copy.name)
    assert [step.revision for step in rehearsal.steps] == [revision]
    statement = statement_of(rehearsal, revision, "ix_tasks_title")
    if manager.dialect == "postgresql":
        lock = next(lock for lock in statement.locks if lock.relation == "tasks"
                    and lock.mode == "ShareLock")
        assert [p.code for p in statement.predicted] == ["MIG013"]
    else:
        lock = statement.locks[0]
        assert (lock.relation, lock.mode) == ("(whole database)", "write lock")
        assert rehearsal.steps[0].write_lock_s > 0
        assert rehearsal.steps[0].file_growth_bytes > 0
    assert lock.blocks == "writes" and lock.had_rows and lock.held_s > 0
    assert statement.duration_s > 0 and statement.lines
    # Any blocking at all is too much with --max-blocking 0: the verdict names the step.
    assert rehearsal.exit_code == 1
    assert rehearsal.problems()[0].startswith(f"{revision} held {lock.mode} on {lock.relation}")
    report = render_text(rehearsal)
    assert "Verdict: FAIL" in report and "ix_tasks_title" in report
    # A failing verdict does not read as the rule it broke ("... for at most 0s").
    assert "Verdict: FAIL:" in report.splitlines() and "at most" not in report
    rehearsal.max_blocking_s = 3600
    assert rehearsal.exit_code == 0 and ("Verdict: PASS (every step ran; nothing blocked writes "
                                         "on a table with rows for more than 3600s)"
                                         in render_text(rehearsal).splitlines())


def test_003s_concurrent_builds_take_share_update_exclusive_locks_that_block_nothing(
        url, tmp_path):
    scripts = copy_scripts(tmp_path)
    with manager_at(url, scripts, "002") as manager:
        seed_rows(url)
        add_tasks(url, 100_000)
        before = state(manager)
        rehearsal = rehearse(manager, "003")
        assert state(manager) == before
    assert (rehearsal.from_revision, rehearsal.to_revision) == ("002", "003")
    builds = [s for s in rehearsal.steps[0].statements if s.sql.startswith("CREATE INDEX")]
    assert len(builds) == 5
    if manager.dialect == "sqlite":
        assert rehearsal.steps[0].write_lock_s > 0
        return
    for build in builds:
        assert "CONCURRENTLY" in build.sql and not build.in_transaction
        modes = {(lock.relation, lock.mode, lock.blocks) for lock in build.locks}
        assert modes == {("tasks", "ShareUpdateExclusiveLock", "none")}, build.sql
    assert rehearsal.exit_code == 0
    report = render_text(rehearsal)
    assert "Verdict: PASS" in report and "Worst first" not in report  # nothing blocked


def test_a_rewriting_type_change_is_reported_as_a_rewrite(url, tmp_path):
    scripts = copy_scripts(tmp_path)
    with manager_at(url, scripts) as manager:
        seed_rows(url)
        add_tasks(url, 500)
        revision = add_revision(scripts, RETYPE)
        manager._reload_scripts()
        before = state(manager)
        rehearsal = rehearse(manager)
        assert state(manager) == before
    step = rehearsal.steps[0]
    assert step.revision == revision and step.ok
    rewriting = [s for s in step.statements if s.rewrites]
    assert [s.rewrites for s in rewriting] == [["tasks"]]
    if manager.dialect == "postgresql":
        assert "ALTER COLUMN project_id TYPE BIGINT" in rewriting[0].sql
        assert ("AccessExclusiveLock", "reads+writes") in [
            (lock.mode, lock.blocks) for lock in rewriting[0].locks if lock.relation == "tasks"]
        assert "MIG017" in {p.code for p in rewriting[0].predicted}
    else:  # the copy is renamed into place under the write lock taken at the step's start
        assert "RENAME TO tasks" in rewriting[0].sql
        copied = next(s for s in step.statements if s.sql.startswith("INSERT INTO"))
        assert copied.rows == 502
    assert "rewrites tasks" in render_text(rehearsal)


def test_set_not_null_over_a_null_fails_on_the_copy_and_the_database_is_unchanged(
        url, tmp_path):
    scripts = copy_scripts(tmp_path)
    with manager_at(url, scripts) as manager:
        seed_rows(url)  # one of its tasks has no agent
        failing = add_revision(scripts, SET_NOT_NULL)
        following = add_revision(scripts, PLAIN_INDEX)
        manager._reload_scripts()
        before = state(manager)
        rehearsal = rehearse(manager)
        assert state(manager) == before
        assert not copy_exists(manager, rehearsal.copy.name)
    step = rehearsal.steps[0]
    assert step.revision == failing and not step.ok
    assert "NOT NULL" in step.error.upper() or "null value" in step.error
    assert rehearsal.not_run == [following]
    assert rehearsal.exit_code == 1
    assert rehearsal.problems() == [f"{failing} failed on the copy: {step.error}"]
    document = rehearsal.as_dict()
    assert document["verdict"] == "fail" and document["steps"][0]["ok"] is False
    assert f"{failing}  FAILED" in render_text(rehearsal)


# -- the copy ---------------------------------------------------------------------------------


def test_keep_leaves_the_copy_and_later_rehearsals_do_not_remove_it(url, tmp_path):
    scripts = copy_scripts(tmp_path)
    with manager_at(url, scripts, "003") as manager:
        seed_rows(url)
        rehearsal = rehearse(manager, keep=True)
        try:
            assert rehearsal.copy.kept and copy_exists(manager, rehearsal.copy.name)
            assert "kept" in render_text(rehearsal)
            # Nothing sweeps a kept copy: the report says how to remove it when done.
            remove = (f"rm -r {Path(rehearsal.copy.name).parent}" if manager.dialect == "sqlite"
                      else f'DROP DATABASE "{rehearsal.copy.name}"')
            assert (f"  kept: remove it when done (`{remove}`); nothing sweeps a kept copy"
                    in render_text(rehearsal).splitlines())
            copies.remove_stale(url)
            assert copy_exists(manager, rehearsal.copy.name)
            copy_url = (f"sqlite:///{rehearsal.copy.name}" if manager.dialect == "sqlite"
                        else manager.database_url.rsplit("/", 1)[0] + "/" + rehearsal.copy.name)
            assert MigrationManager(copy_url, script_location=str(scripts)
                                    ).get_current_revision() == rehearsal.to_revision
        finally:
            if manager.dialect == "sqlite":
                import shutil

                shutil.rmtree(Path(rehearsal.copy.name).parent)
            else:
                copies.drop_database(url, rehearsal.copy.name)


_KILLED = """
import sys, time
from orchestrator.migrations.rehearse import copies
with copies.scratch_copy(sys.argv[1]) as copy:
    print(copy.name, flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("sweeper", ["rehearse", "validate"])
def test_a_copy_left_by_a_killed_rehearsal_is_removed_by_the_next_one(url, tmp_path, sweeper,
                                                                     run_here):
    scripts = copy_scripts(tmp_path)
    with manager_at(url, scripts) as manager:
        seed_rows(url)
        process = subprocess.Popen([sys.executable, "-c", _KILLED, url], stdout=subprocess.PIPE,
                                   text=True)
        name = process.stdout.readline().strip()
        assert name and copy_exists(manager, name)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stdout.close()
        assert copy_exists(manager, name)  # SIGKILL gave it no chance to clean up
        dumps = set(Path(tempfile.gettempdir()).glob(f"{copies.FOLDER_PREFIX}*-dump-*"))
        if sweeper == "rehearse":
            assert run_here("db", "rehearse", "--database-url", url).returncode == 0
        else:
            run_here("db", "validate", "--database-url", url)
        assert not copy_exists(manager, name)
        # PostgreSQL: nor is the folder its dump was written to.
        assert not [d for d in dumps if d.exists() and
                    json.loads((d / copies.OWNER_FILE).read_text())["pid"] == process.pid]


def test_ctrl_c_during_the_rehearsal_drops_the_copy(url, tmp_path):
    scripts = copy_scripts(tmp_path)
    with manager_at(url, scripts) as manager:
        seed_rows(url)
        add_revision(scripts, "raise KeyboardInterrupt")
        manager._reload_scripts()
        before = state(manager)
        made = []
        real = copies.scratch_copy

        def spy(*args, **kwargs):
            with real(*args, **kwargs) as copy:
                made.append(copy.name)
                yield copy

        import contextlib

        copies.scratch_copy = contextlib.contextmanager(spy)
        try:
            with pytest.raises(KeyboardInterrupt):
                rehearse(manager)
        finally:
            copies.scratch_copy = real
        assert made and not copy_exists(manager, made[0])
        assert state(manager) == before


def test_from_backup_rehearses_on_the_backup_without_reading_the_database(url, tmp_path):
    scripts = copy_scripts(tmp_path)
    with manager_at(url, scripts, "003") as manager:
        seed_rows(url)
        backup = manager.backup(tmp_path / ("nightly.db" if manager.dialect == "sqlite"
                                            else "nightly.dump"))
        manager.upgrade()  # the database moved on since the backup
        rehearsal = rehearse(manager, from_backup=backup.path)
    assert rehearsal.from_revision == "003" and rehearsal.steps
    assert rehearsal.copy.source == f"backup {backup.path}"


def test_a_backup_of_another_database_is_named_in_the_report_and_nothing_says_copying_it(
        url, tmp_path):
    # A backup made on a replica is fine to rehearse on, but one of the wrong database (an empty
    # staging one) would pass on no rows: the report names the database it was taken of, and
    # the note says the backup is restored, not that the database is copied.
    scripts = copy_scripts(tmp_path)
    with contextlib.ExitStack() as stack:
        other = (f"sqlite:///{tmp_path / 'staging.db'}" if url.startswith("sqlite")
                 else stack.enter_context(scratch_postgres_database(require_postgres())))
        with manager_at(other, scripts, "003") as staging:
            backup = staging.backup(tmp_path / ("staging.db.bak" if staging.dialect == "sqlite"
                                                else "staging.dump"))
        notes = []
        with manager_at(url, scripts, "003") as manager:
            rehearsal = rehearse(manager, from_backup=backup.path, notify=notes.append)
    assert rehearsal.copy.source.startswith(f"backup {backup.path} of ")
    assert other.rsplit("/", 1)[1] in rehearsal.copy.source
    assert notes[0] == f"Restoring {backup.path} to rehearse on it…"


def test_nothing_pending_makes_no_copy(url, tmp_path):
    scripts = copy_scripts(tmp_path)
    with manager_at(url, scripts) as manager:
        rehearsal = rehearse(manager)
    assert rehearsal.steps == [] and rehearsal.copy is None and rehearsal.exit_code == 0
    assert "Nothing to rehearse" in render_text(rehearsal)


# -- the commands -----------------------------------------------------------------------------


def test_rehearse_json_has_the_documented_shape_and_exit_code(url, tmp_path, run_here,
                                                              monkeypatch):
    scripts = copy_scripts(tmp_path)
    with manager_at(url, scripts, "002") as manager:
        seed_rows(url)
    result = run_here("db", "rehearse", "--database-url", url, "--format", "json",
                      "--max-blocking", "0")
    document = json.loads(result.stdout)
    assert set(document) >= {"database", "engine", "from", "to", "steps", "verdict"}
    assert (document["from"], document["engine"]) == ("002", manager.dialect)
    statement = document["steps"][0]["statements"][0]
    assert set(statement) >= {"sql", "duration_s", "locks", "rewrites", "rows"}
    for step in document["steps"]:
        assert set(step) >= {"revision", "duration_s", "ok", "error", "statements"}
        for statement in step["statements"]:
            for lock in statement["locks"]:
                assert set(lock) >= {"relation", "mode", "held_s", "blocks"}
                assert lock["blocks"] in ("reads+writes", "writes", "none")
    # SQLite's plain index builds hold the write lock over tasks with rows; PostgreSQL's 004
    # locks users (with a row) for its foreign key: both block writes for more than 0s.
    assert (result.returncode, document["verdict"]) == (1, "fail")
    assert manager.get_current_revision() == "002"


def test_upgrade_rehearse_migrates_only_when_the_rehearsal_passes(url, tmp_path, run_here,
                                                                  monkeypatch):
    scripts = copy_scripts(tmp_path)
    with manager_at(url, scripts) as manager:
        seed_rows(url)
        failing = add_revision(scripts, SET_NOT_NULL)
        head = manager.get_current_revision()
    real = MigrationManager.from_settings.__func__
    monkeypatch.setattr(MigrationManager, "from_settings", classmethod(
        lambda cls, settings, **options: real(cls, settings, script_location=str(scripts),
                                              **options)))
    argv = ["db", "upgrade", "--rehearse", "--database-url", url]
    refused = run_here(*argv)
    assert refused.returncode == 1
    assert f"Not upgrading: the rehearsal failed ({failing} failed on the copy" in refused.stderr
    assert MigrationManager(url, script_location=str(scripts)).get_current_revision() == head
    execute(url, "UPDATE tasks SET agent_id = 1")
    passed = run_here(*argv)
    assert passed.returncode == 0, passed.stderr
    assert "Verdict: PASS" in passed.stdout and f"Applied {failing}" in passed.stdout
    assert MigrationManager(url, script_location=str(scripts)).get_current_revision() == failing


def test_rehearse_refuses_rehearse_with_sql(run_here, unique_sqlite_url):
    result = run_here("db", "upgrade", "--rehearse", "--sql", "--database-url",
                      unique_sqlite_url)
    assert result.returncode == 2 and "cannot go with --sql" in result.stderr


# -- the conflict table -----------------------------------------------------------------------


def test_lock_modes_block_what_postgresqls_conflict_table_says():
    assert {mode: blocks(mode) for mode in MODES} == {
        "AccessShareLock": "none",
        "RowShareLock": "none",
        "RowExclusiveLock": "none",
        "ShareUpdateExclusiveLock": "none",
        "ShareLock": "writes",
        "ShareRowExclusiveLock": "writes",
        "ExclusiveLock": "writes",
        "AccessExclusiveLock": "reads+writes",
    }
    # The table is symmetric, as PostgreSQL's is.
    assert all(conflicts(a, b) == conflicts(b, a) for a in MODES for b in MODES)


# -- failures, and what else the report says --------------------------------------------------

UNIQUE_CONCURRENTLY = """
with op.get_context().autocommit_block():
    op.create_index("uq_tasks_title", "tasks", ["title"], unique=True,
                    postgresql_concurrently=True)
"""


@pytest.mark.postgres
def test_a_unique_index_over_duplicates_fails_outside_a_transaction_too(postgres_url, tmp_path):
    scripts = copy_scripts(tmp_path)
    with manager_at(postgres_url, scripts) as manager:
        seed_rows(postgres_url)
        add_tasks(postgres_url, 20_000)
        add_tasks(postgres_url, 10)  # 'task 1' … 'task 10' twice
        revision = add_revision(scripts, UNIQUE_CONCURRENTLY)
        manager._reload_scripts()
        before = state(manager)
        rehearsal = rehearse(manager)
        assert state(manager) == before
    step = rehearsal.steps[0]
    assert step.revision == revision and not step.ok
    build = statement_of(rehearsal, revision, "uq_tasks_title")
    assert not build.in_transaction and "UniqueViolation" in build.error
    assert step.error == build.error and rehearsal.exit_code == 1


def test_a_script_that_raises_before_any_statement_is_reported_with_its_error(url, tmp_path):
    scripts = copy_scripts(tmp_path)
    with manager_at(url, scripts) as manager:
        revision = add_revision(scripts, 'raise RuntimeError("tasks need a cleanup first")')
        manager._reload_scripts()
        rehearsal = rehearse(manager)
    step = rehearsal.steps[0]
    assert (step.revision, step.ok, step.statements) == (revision, False, [])
    assert "RuntimeError: tasks need a cleanup first" in step.error
    assert f"{revision}  FAILED" in render_text(rehearsal)


def test_a_dropped_table_is_named_in_its_lock(url, tmp_path):
    scripts = copy_scripts(tmp_path)
    add_revision(scripts, 'op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True))'
                          '\nop.execute("INSERT INTO notes (id) VALUES (1)")')
    with manager_at(url, scripts) as manager:
        add_revision(scripts, 'op.drop_table("notes")')
        manager._reload_scripts()
        rehearsal = rehearse(manager)
    locks = {(lock.relation, lock.mode, lock.had_rows)
             for lock in rehearsal.steps[0].statements[0].locks}
    if manager.dialect == "postgresql":
        assert ("notes", "AccessExclusiveLock", True) in locks
    else:
        assert locks == {("(whole database)", "write lock", True)}


def test_the_report_lists_the_worst_first_and_says_how_many_more(url, tmp_path):
    scripts = copy_scripts(tmp_path)
    with manager_at(url, scripts) as manager:
        seed_rows(url)
        for index in range(3):
            add_revision(scripts, PLAIN_INDEX.replace("ix_tasks_title", f"ix_tasks_title_{index}"))
        add_revision(scripts, RETYPE)
        manager._reload_scripts()
        rehearsal = rehearse(manager)
    report = render_text(rehearsal, limit=2)
    worst = report.split("Worst first:\n")[1].split("\n\n")[0].splitlines()
    assert len(worst) == 3 and worst[-1].startswith("  … and ")
    assert "more (--format json lists all)" in worst[-1]


def test_unobserved_runs_the_same_migration_without_measuring(url, tmp_path):
    scripts = copy_scripts(tmp_path)
    with manager_at(url, scripts, "002") as manager:
        rehearsal = rehearse(manager, observe=False)
        assert manager.get_current_revision() == "002"
    assert rehearsal.steps and all(step.ok and not step.statements for step in rehearsal.steps)


def test_a_backup_already_at_the_target_needs_no_rehearsal(url, tmp_path):
    scripts = copy_scripts(tmp_path)
    with manager_at(url, scripts) as manager:
        backup = manager.backup(tmp_path / ("at-head.db" if manager.dialect == "sqlite"
                                            else "at-head.dump"))
        rehearsal = rehearse(manager, from_backup=backup.path)
    assert rehearsal.steps == [] and rehearsal.from_revision == rehearsal.to_revision
    assert rehearsal.copy is not None and not copy_exists(manager, rehearsal.copy.name)


def test_a_missing_sqlite_file_is_an_error_naming_it(run_here, unique_sqlite_url):
    result = run_here("db", "rehearse", "--database-url", unique_sqlite_url)
    path = unique_sqlite_url.removeprefix("sqlite:///")
    assert result.returncode == 3
    assert result.stderr.splitlines()[-1].startswith(
        f"Error: {path} does not exist: there is nothing to rehearse")
    assert not Path(path).exists()


def test_a_target_behind_the_database_or_the_backup_says_so_and_advises_no_downgrade(
        run_here, unique_sqlite_url, tmp_path):
    # `db rehearse` rehearses upgrades: a target already passed is not a cue to downgrade the
    # production database, least of all when it is the backup that is past it.
    with MigrationManager(unique_sqlite_url) as manager:
        manager.upgrade("004")
        ahead = manager.backup(tmp_path / "at-004.db").path
        manager.downgrade("002")
    behind = run_here("db", "rehearse", "001", "--database-url", unique_sqlite_url)
    assert behind.returncode == 2
    assert behind.stderr.splitlines()[-1] == (
        "Error: cannot rehearse up to 001: the database is already at 002, past it; "
        "`db rehearse` rehearses upgrades (to see what a downgrade would undo: "
        "`orchestrator db downgrade 001 --dry-run`)")
    from_backup = run_here("db", "rehearse", "003", "--from-backup", str(ahead),
                           "--database-url", unique_sqlite_url)
    assert from_backup.returncode == 2
    assert from_backup.stderr.splitlines()[-1] == (
        f"Error: cannot rehearse up to 003 on {ahead}: the backup is already at 004, past it; "
        "pick an older backup (`orchestrator db backups`) or a later revision")
    assert "downgrade" not in from_backup.stderr
    assert not list(Path(tempfile.gettempdir()).glob(
        f"{copies.FOLDER_PREFIX}{Path(unique_sqlite_url).stem}-*"))


@pytest.mark.postgres
def test_a_role_that_cannot_create_databases_gets_a_one_line_error(postgres_url, tmp_path,
                                                                   run_here):
    from sqlalchemy.engine import make_url

    scripts = copy_scripts(tmp_path)
    manager_at(postgres_url, scripts, "003").close()
    role = f"orch_rehearse_{os.urandom(4).hex()}"
    database = make_url(postgres_url).database
    execute(postgres_url, f"CREATE ROLE {role} LOGIN", f'GRANT ALL ON DATABASE "{database}" '
            f"TO {role}", f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}",
            f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    try:
        as_role = make_url(postgres_url).set(username=role, password=None)
        result = run_here("db", "rehearse", "--database-url",
                          as_role.render_as_string(hide_password=False))
    finally:
        execute(postgres_url, f"REASSIGN OWNED BY {role} TO CURRENT_USER",
                f"DROP OWNED BY {role}", f"DROP ROLE {role}")
    assert result.returncode == 3, result.stderr
    assert "cannot create the rehearsal copy" in result.stderr and "CREATEDB" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("Error: cannot create the rehearsal copy")
    assert "Traceback" not in result.stderr


@pytest.mark.postgres
def test_a_copy_that_cannot_be_created_for_another_reason_is_not_blamed_on_createdb(
        postgres_url, tmp_path, monkeypatch, run_here):
    # A name already taken (or a full disk, or no free connection): CREATEDB is not the cure.
    import uuid

    from sqlalchemy.engine import make_url

    scripts = copy_scripts(tmp_path)
    manager_at(postgres_url, scripts, "003").close()
    fixed = uuid.uuid4()
    monkeypatch.setattr(scratch.uuid, "uuid4", lambda: fixed)
    taken = (f"{copies.DATABASE_PREFIX}{copies._slug(make_url(postgres_url).database)}_"
             f"{fixed.hex[:8]}")
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{taken}"')
        result = run_here("db", "rehearse", "--database-url", postgres_url)
    finally:
        copies.drop_database(postgres_url, taken)
        engine.dispose()
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        f"Error: cannot create the rehearsal copy {taken} beside ")
    assert "already exists" in result.stderr and "CREATEDB" not in result.stderr


def test_stale_means_made_here_by_a_process_that_is_gone_and_not_kept():
    import socket

    here = socket.gethostname()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert scratch.is_stale({"host": here, "pid": gone.pid})
    assert not scratch.is_stale({"host": here, "pid": os.getpid()})
    assert not scratch.is_stale({"host": here, "pid": gone.pid, "kept": True})
    assert not scratch.is_stale({"host": f"not-{here}", "pid": gone.pid})
    assert not scratch.is_stale({"host": here, "pid": "?"})


@pytest.mark.postgres
def test_sweeping_leaves_databases_it_did_not_mark_and_survives_an_unreachable_server(
        postgres_url):
    name = f"{copies.DATABASE_PREFIX}unmarked_{os.urandom(4).hex()}"
    execute_autocommit(postgres_url, f'CREATE DATABASE "{name}"')
    try:
        copies.remove_stale(postgres_url)
        assert scalar(postgres_url, f"SELECT count(*) FROM pg_database WHERE datname = '{name}'")
    finally:
        copies.drop_database(postgres_url, name)
    assert copies.remove_stale("postgresql+psycopg://nobody@127.0.0.1:1/none") == []


def execute_autocommit(url: str, statement: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def test_the_text_shows_the_strongest_lock_per_table_and_the_json_every_one():
    from orchestrator.migrations.rehearse.report import Lock, Rehearsal, Statement, Step

    statement = Statement("ALTER TABLE tasks …", (10,), True, 0.5, locks=[
        Lock("tasks", "AccessExclusiveLock", "reads+writes", True, held_s=0.5),
        Lock("tasks", "AccessShareLock", "none", True, held_s=0.5),
        Lock("users", "ShareRowExclusiveLock", "writes", False, held_s=0.5)])
    rehearsal = Rehearsal("sqlite:///x.db", "postgresql", "001", "002", 1.0,
                          steps=[Step("002", [statement], 0.6)])
    report = render_text(rehearsal)
    assert "AccessExclusiveLock on tasks held 0.500s, blocks reads+writes" in report
    assert "AccessShareLock" not in report
    assert "ShareRowExclusiveLock on users (no rows)" in report
    assert len(rehearsal.as_dict()["steps"][0]["statements"][0]["locks"]) == 3


def test_sweeping_leaves_folders_without_an_owner_file(unique_sqlite_url):
    folder = Path(tempfile.mkdtemp(prefix=f"{copies.FOLDER_PREFIX}unmarked-"))
    try:
        copies.remove_stale(unique_sqlite_url)
        assert folder.exists()
    finally:
        folder.rmdir()
