"""A migration stopped midway (Ctrl-C, a kill) leaves the truth behind: the step is recorded as
started and not finished, every command that reads the status says so and names the command
that completes it, and that command does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.migrations import MigrationManager
from orchestrator.migrations.validate import validate
from tests.fixtures import add_revision, cli_argv, command_runner, copy_scripts
from tests.schema import scalar, seed_rows

# Half of its work done when it stops: on PostgreSQL an index built CONCURRENTLY stays built
# (outside any transaction), as 003's do when it is interrupted; SQLite rolls its step back.
_TWO_INDEXES = """
marker = os.environ.get("ORCH_TEST_MARKER")
if op.get_context().dialect.name == "postgresql":
    with op.get_context().autocommit_block():
        op.create_index("ix_tasks_title", "tasks", ["title"], postgresql_concurrently=True,
                        if_not_exists=True)
        if marker:
            Path(marker).write_text("half done")
            op.execute("SELECT pg_sleep(120)")  # the second, long index build
        op.create_index("ix_tasks_updated", "tasks", ["updated_at"],
                        postgresql_concurrently=True, if_not_exists=True)
else:
    op.create_index("ix_tasks_title", "tasks", ["title"])
    if marker:
        Path(marker).write_text("half done")
        time.sleep(120)
    op.create_index("ix_tasks_updated", "tasks", ["updated_at"])
"""
_UNDO = """
op.drop_index("ix_tasks_updated", table_name="tasks")
op.drop_index("ix_tasks_title", table_name="tasks")
"""


def stopped_midway(db_url: str, tmp_path: Path, stop: signal.Signals):
    """(scripts, the stopped revision, the finished process, its output, its errors) after
    `orchestrator db upgrade` got `stop` halfway through the revision's work."""
    scripts = copy_scripts(tmp_path)
    revision = add_revision(scripts, _TWO_INDEXES, _UNDO, doc="Index titles and updates.")
    with MigrationManager(db_url, script_location=str(scripts)) as manager:
        manager.upgrade("004")
    seed_rows(db_url)
    marker = tmp_path / "half-done"
    process = subprocess.Popen(
        cli_argv(scripts, "db", "upgrade", "--database-url", db_url),
        env={**os.environ, "ORCH_TEST_MARKER": str(marker)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the migration never got halfway"
            time.sleep(0.05)
        process.send_signal(stop)
        output, errors = process.communicate(timeout=60)
    finally:
        process.kill()
    return scripts, revision, process, output, errors


def test_ctrl_c_midway_ends_with_interrupted_exit_130_and_the_next_upgrade_completes(
    db_url, tmp_path
):
    scripts, revision, process, output, errors = stopped_midway(db_url, tmp_path, signal.SIGINT)
    assert process.returncode == 130, errors
    # Not "migration 005 failed: PendingRollbackError ... fix the script": nothing to fix.
    assert errors == "Interrupted.\n"
    assert "Applied" not in output
    with MigrationManager(db_url, script_location=str(scripts)) as manager:
        status = manager.status()
        assert (status.current, status.pending) == ("004", (revision,))
        assert status.interrupted.revision == revision and not status.interrupted.running
        last = manager.applied_history()[-1]
        assert (last.revision, last.success, last.error) == (revision, False, "interrupted")
        assert manager.upgrade() == [revision]
        assert manager.status().up_to_date
        done = manager.applied_history()[-1]
        assert (done.revision, done.success) == (revision, True)
    if manager.dialect == "postgresql":
        # The query the interrupt cut short was cancelled on the server too.
        assert scalar(db_url, "SELECT count(*) FROM pg_stat_activity "
                              "WHERE query LIKE 'SELECT pg_sleep(120)%'") == 0


@pytest.mark.postgres
def test_a_step_killed_midway_is_reported_by_every_command_until_it_is_completed(
    postgres_url, tmp_path, monkeypatch, capsys
):
    scripts, revision, process, _, _ = stopped_midway(postgres_url, tmp_path, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    # Half of its work is there, which the schema alone cannot tell from a change by hand.
    assert scalar(postgres_url, "SELECT count(*) FROM pg_indexes "
                                "WHERE indexname = 'ix_tasks_title'") == 1
    from orchestrator.migrations import MigrationManager as Manager

    real = Manager.from_settings.__func__
    monkeypatch.setattr(Manager, "from_settings", classmethod(
        lambda cls, settings, **options: real(cls, settings, script_location=str(scripts),
                                              **options)))
    run = command_runner(monkeypatch, capsys)
    told = (f"upgrade of {revision} started at 20")
    complete = ("and did not finish (interrupted); run `orchestrator db upgrade` to complete it")

    status = run("db", "status", "--database-url", postgres_url)
    assert status.returncode == 0
    [line] = [line for line in status.stdout.splitlines() if line.startswith("INTERRUPTED:")]
    assert line.startswith(f"INTERRUPTED: {told}") and line.endswith(complete)
    checked = run("db", "check", "--database-url", postgres_url)
    assert checked.returncode == 1
    described = json.loads(run("db", "status", "--json", "--database-url", postgres_url).stdout)
    assert described["up_to_date"] is False and described["interrupted"]["revision"] == revision
    assert described["interrupted"]["started_at"].startswith("20")
    history = run("db", "history", "--log", "--database-url", postgres_url)
    assert history.stdout.splitlines()[-1].endswith(complete)
    assert any(line.startswith(f"  {revision}    upgrade started 20") and
               "did not finish (interrupted)" in line for line in history.stdout.splitlines())
    report = validate(postgres_url, script_location=str(scripts), rules=["MIG005"])
    [drift] = report.findings
    assert "ix_tasks_title" in drift.message and drift.fix.endswith(complete)

    done = run("db", "upgrade", "--database-url", postgres_url)
    assert done.returncode == 0, done.stderr
    after = run("db", "status", "--database-url", postgres_url)
    assert "INTERRUPTED" not in after.stdout and "state:    up to date" in after.stdout
    assert validate(postgres_url, script_location=str(scripts), rules=["MIG005"]).findings == []


def test_a_step_still_running_is_not_called_interrupted(sqlite_url, tmp_path):
    """While the migrator runs, its recorded start is not a dead one: the lock says so."""
    scripts = copy_scripts(tmp_path)
    revision = add_revision(scripts, _TWO_INDEXES, _UNDO)
    with MigrationManager(sqlite_url, script_location=str(scripts)) as manager:
        manager.upgrade("004")
    marker = tmp_path / "half-done"
    process = subprocess.Popen(
        cli_argv(scripts, "db", "upgrade", "--database-url", sqlite_url),
        env={**os.environ, "ORCH_TEST_MARKER": str(marker)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        with MigrationManager(sqlite_url, script_location=str(scripts)) as manager:
            step = manager.status().interrupted
        assert (step.revision, step.running) == (revision, True)
        assert "another process holds the migration lock and may still be running it" in (
            step.describe())
        assert step.remedy == "wait for the process that holds the migration lock"
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("how", [
    "raise KeyboardInterrupt",
    # What SQLAlchemy and Alembic do when a statement was interrupted: their cleanup fails in
    # turn (PendingRollbackError), with the interrupt as its context.
    'try:\n    raise KeyboardInterrupt\nfinally:\n    raise RuntimeError("cleanup failed")',
], ids=["directly", "during-cleanup"])
def test_an_interrupt_is_recorded_as_such_not_as_a_failure_of_the_script(db_url, tmp_path, how):
    scripts = copy_scripts(tmp_path)
    revision = add_revision(scripts, how)
    with MigrationManager(db_url, script_location=str(scripts)) as manager:
        manager.upgrade("004")
        with pytest.raises(KeyboardInterrupt):
            manager.upgrade()
        last = manager.applied_history()[-1]
        assert (last.revision, last.success, last.error) == (revision, False, "interrupted")
        assert manager.status().interrupted.revision == revision


def test_an_interrupted_downgrade_at_head_is_not_told_to_upgrade(sqlite_url, monkeypatch,
                                                                 capsys):
    """Ctrl-C during `db downgrade 001` from head (an operator's trial, 1,000,000 tasks on
    SQLite): the run was rolled back, the database is still at head and nothing is pending.
    `db status` said "pending: " (nothing) and "migrations pending; run `orchestrator db
    upgrade`" (which does nothing) under the line that says to run the downgrade again."""
    from orchestrator.db import create_engine
    from orchestrator.migrations import history

    with MigrationManager(sqlite_url) as manager:
        manager.upgrade()
    engine = create_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            history.record(connection, revision="002", direction=history.DOWNGRADE,
                           duration=0.0, success=False, error=history.INTERRUPTED)
            connection.commit()
    finally:
        engine.dispose()
    status = command_runner(monkeypatch, capsys)("db", "status", "--database-url", sqlite_url)
    assert status.returncode == 0
    lines = status.stdout.splitlines()
    assert "run the same `orchestrator db downgrade` again to complete it" in lines[3]
    assert not any(line.startswith("pending:") for line in lines)
    assert lines[-1] == ("state:    a step did not finish; run the same `orchestrator db "
                         "downgrade` again to complete it (see INTERRUPTED above)")


def test_ctrl_c_while_the_command_loads_is_interrupted_not_a_traceback(monkeypatch, capsys):
    """An operator's Ctrl-C a second after starting `db downgrade` (pydantic still importing)
    printed a 30-line traceback."""
    import sys

    from orchestrator import cli

    class Interrupting:
        def find_spec(self, name, path=None, target=None):
            if name == "orchestrator.settings":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "orchestrator.settings", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    with pytest.raises(SystemExit) as exited:
        cli.main(["db", "status"])
    assert exited.value.code == 130
    assert capsys.readouterr().err == "Interrupted.\n"
