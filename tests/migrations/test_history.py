"""The applied history: a row per step (failed ones too), checksums, and a migrator killed midway."""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from orchestrator import __version__
from orchestrator.db import create_engine
from orchestrator.migrations import MigrationFailedError, MigrationManager
from orchestrator.migrations import history
from orchestrator.migrations.history import ScriptsChangedError
from tests.fixtures import add_revision, command_runner, copy_scripts, head_of
from tests.schema import execute, scalar, seed_rows


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def run_here(monkeypatch, capsys):
    return command_runner(monkeypatch, capsys)


def manager_for(url: str, scripts: Path, **options) -> MigrationManager:
    return MigrationManager(url, script_location=str(scripts), lock_timeout=30, **options)


# -- what a step records ----------------------------------------------------------------------


def test_upgrade_records_each_step_with_checksum_operator_and_version(manager: MigrationManager):
    before = dt.datetime.now(dt.UTC)
    applied = manager.upgrade()
    after = dt.datetime.now(dt.UTC)
    entries = manager.applied_history()
    assert [e.revision for e in entries] == applied
    scripts = {info.revision: info.path for info in manager.history()}
    for entry in entries:
        assert entry.direction == "upgrade" and entry.success and entry.error is None
        assert entry.checksum == sha256(scripts[entry.revision])
        assert entry.os_user == getpass.getuser() and entry.host == socket.gethostname()
        assert entry.tool_version == __version__
        assert before <= entry.started_at <= after
    # Each step's own start and duration: one step ends before the next begins, and together
    # they fit in the upgrade (a cumulative duration, or every step stamped "now", would not).
    slack = dt.timedelta(milliseconds=5)  # stored timestamps may be rounded
    for step, following in zip(entries, entries[1:]):
        assert step.started_at < following.started_at
        assert step.started_at + dt.timedelta(seconds=step.duration) <= following.started_at + slack
    assert sum(e.duration for e in entries) <= (after - before).total_seconds()
    assert all(e.duration > 0 for e in entries)
    assert entries[0].as_dict()["started_at"] == entries[0].started_at.isoformat()


def test_downgrade_and_stamp_are_recorded(manager: MigrationManager):
    manager.upgrade()
    head = manager.get_head_revision()
    manager.downgrade("-1")
    manager.stamp("base")
    manager.stamp("head")
    last = manager.applied_history()[-3:]
    assert [(e.revision, e.direction, e.success) for e in last] == [
        (head, "downgrade", True),
        ("base", "stamp", True),
        (head, "stamp", True),
    ]
    # Stamping vouches for the script as it is; base has none.
    assert last[1].checksum is None
    assert last[2].checksum == sha256(manager.history()[-1].path)


def test_revisions_stamped_over_have_no_checksum_to_compare(sqlite_url: str):
    with MigrationManager(sqlite_url) as manager:
        manager.stamp("head")  # 001 .. head-1 never ran here: nothing to hold them to
        assert [e.revision for e in manager.applied_history()] == [manager.get_head_revision()]
        assert manager.changed_scripts() == []


def test_a_database_without_history_reads_as_empty(sqlite_url: str):
    manager = MigrationManager(sqlite_url)
    assert manager.applied_history() == []  # the file does not exist: nothing is created
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()
    execute(sqlite_url, "CREATE TABLE unrelated (id INTEGER PRIMARY KEY)")
    engine = create_engine(sqlite_url)
    with engine.connect() as connection:
        assert history.read(connection) == []
    engine.dispose()


def test_a_failed_step_is_recorded_although_its_transaction_rolled_back(db_url: str, tmp_path: Path):
    scripts = copy_scripts(tmp_path)
    good = add_revision(scripts, 'op.create_table("notes", sa.Column("id", sa.Integer(), primary_key=True))',
                        'op.drop_table("notes")')
    bad = add_revision(scripts, """
        op.execute("UPDATE tasks SET title = 'half-done'")
        raise RuntimeError("boom: the data is not what this migration expects")
    """)
    with manager_for(db_url, scripts) as manager:
        manager.upgrade(good)
        seed_rows(db_url)
        with pytest.raises(MigrationFailedError) as failure:
            manager.upgrade()
        assert failure.value.revision == bad
        assert f"migration {bad} failed: RuntimeError: boom" in str(failure.value)
        assert f"the database is at {good}" in str(failure.value)
        # Nothing of the failed step is left; the step before it stands.
        assert manager.get_current_revision() == good
        assert scalar(db_url, "SELECT count(*) FROM tasks WHERE title = 'half-done'") == 0
        last = manager.applied_history()[-1]
        assert (last.revision, last.direction, last.success) == (bad, "upgrade", False)
        assert last.error.startswith("RuntimeError: boom: the data is not")
        assert last.checksum == sha256(scripts / "versions" / f"{bad}_test_step.py")


# -- checksums ----------------------------------------------------------------------------------


def test_a_script_edited_after_it_was_applied_is_reported(db_url: str, tmp_path: Path):
    scripts = copy_scripts(tmp_path)
    with manager_for(db_url, scripts) as manager:
        assert manager.changed_scripts() == []  # nothing applied yet
        manager.upgrade("003")
        assert manager.changed_scripts() == []
        edited = next(scripts.glob("versions/002_*.py"))
        applied = sha256(edited)
        edited.write_text(edited.read_text() + "\n# an edit made after 002 was applied\n")
        # A pending script may change freely.
        next(scripts.glob("versions/004_*.py")).write_text(
            next(scripts.glob("versions/004_*.py")).read_text() + "\n# still pending\n"
        )
        [changed] = manager.changed_scripts()
        assert changed.revision == "002" and changed.path == str(edited)
        assert changed.applied_checksum == applied and changed.current_checksum == sha256(edited)
        assert changed.as_dict()["applied_at"] == changed.applied_at.isoformat()


def test_a_script_reapplied_after_its_edit_is_no_longer_reported(sqlite_url: str, tmp_path: Path):
    scripts = copy_scripts(tmp_path)
    with manager_for(sqlite_url, scripts) as manager:
        manager.upgrade("002")
        edited = next(scripts.glob("versions/002_*.py"))
        edited.write_text(edited.read_text() + "\n# reviewed wording\n")
        assert [c.revision for c in manager.changed_scripts()] == ["002"]
        manager.downgrade("001")
        assert manager.changed_scripts() == []  # no longer applied
        manager.upgrade("002")
        assert manager.changed_scripts() == []


def test_history_checksum_of_a_missing_file_is_none(tmp_path: Path):
    assert history.checksum(tmp_path / "gone.py") is None
    assert history.checksum(None) is None


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_upgrade_in_staging_and_production_refuses_edited_applied_scripts(
    sqlite_url: str, tmp_path: Path, environment: str
):
    scripts = copy_scripts(tmp_path)
    with manager_for(sqlite_url, scripts, environment=environment) as manager:
        manager.upgrade("002")
        edited = next(scripts.glob("versions/001_*.py"))
        edited.write_text(edited.read_text() + "\n# edited\n")
        with pytest.raises(ScriptsChangedError) as refused:
            manager.upgrade()
        message = str(refused.value)
        assert "001" in message and str(edited) in message and "--allow-changed" in message
        assert manager.get_current_revision() == "002"
        assert manager.upgrade("003", allow_changed=True) == ["003"]


def test_upgrade_in_development_does_not_refuse_edited_scripts(sqlite_url: str, tmp_path: Path):
    scripts = copy_scripts(tmp_path)
    with manager_for(sqlite_url, scripts) as manager:
        manager.upgrade("002")
        edited = next(scripts.glob("versions/001_*.py"))
        edited.write_text(edited.read_text() + "\n# edited\n")
        assert manager.upgrade("003") == ["003"]


def test_status_and_history_commands_report_edited_scripts(sqlite_url: str, run_here):
    MigrationManager(sqlite_url).upgrade()
    # The project's scripts must not be touched: make the database remember another checksum.
    execute(sqlite_url, "UPDATE migration_history SET checksum = 'feed' WHERE revision = '002'")
    status = run_here("db", "status", "--database-url", sqlite_url)
    assert status.returncode == 0
    assert "EDITED:   002" in status.stdout and "002_add_priority_level.py" in status.stdout
    as_json = run_here("db", "status", "--json", "--database-url", sqlite_url)
    import json

    [changed] = json.loads(as_json.stdout)["changed_scripts"]
    assert changed["revision"] == "002" and changed["applied_checksum"] == "feed"
    listing = run_here("db", "history", "--database-url", sqlite_url)
    assert "002  [applied, EDITED since applied]" in listing.stdout
    assert listing.stdout.splitlines()[-1].startswith("006  [applied, head]")
    refused = run_here("db", "upgrade", "--env", "staging", "--database-url", sqlite_url)
    assert refused.returncode == 0  # at head: nothing to apply, nothing refused


def test_upgrade_command_refuses_edited_scripts_in_staging_unless_allowed(sqlite_url: str, run_here):
    MigrationManager(sqlite_url).upgrade("002")
    execute(sqlite_url, "UPDATE migration_history SET checksum = 'feed' WHERE revision = '001'")
    env = {"BACKUP_BEFORE_MIGRATE": "false"}
    refused = run_here("db", "upgrade", "--env", "staging", "--database-url", sqlite_url, env=env)
    assert refused.returncode == 2
    assert refused.stderr.startswith("Error: applied migration scripts were edited after they ran: 001")
    allowed = run_here("db", "upgrade", "--env", "staging", "--allow-changed",
                      "--database-url", sqlite_url, env=env)
    assert allowed.returncode == 0, allowed.stderr


def test_history_command_shows_failures_and_an_empty_history(sqlite_url: str, run_here, tmp_path: Path):
    empty = run_here("db", "history", "--log", "--database-url", sqlite_url)
    assert empty.stdout.rstrip().endswith("No steps recorded yet.")
    scripts = copy_scripts(tmp_path)
    failing = add_revision(scripts, 'raise RuntimeError("disk on fire")')
    with manager_for(sqlite_url, scripts) as manager:
        with pytest.raises(MigrationFailedError):
            manager.upgrade()
    # The command shows the project's scripts; the failed step is in the full log.
    listing = run_here("db", "history", "--log", "--database-url", sqlite_url)
    lines = listing.stdout.splitlines()
    assert lines[0].startswith("001  [applied]  Initial schema") and "<- upgrade ok " in lines[0]
    assert f"{getpass.getuser()}@{socket.gethostname()}, v{__version__}" in lines[0]
    assert "Recorded steps, oldest first:" in lines
    assert lines[-1].startswith(f"  {failing}    upgrade FAILED ")
    assert lines[-1].endswith("RuntimeError: disk on fire")


# -- a migrator killed midway -----------------------------------------------------------------

_HANG = """
op.create_table("work_log", sa.Column("id", sa.Integer(), primary_key=True))
op.execute("INSERT INTO work_log (id) VALUES (1)")
op.execute("UPDATE tasks SET title = 'being migrated'")
marker = os.environ.get("ORCH_TEST_HANG_MARKER")
if marker:
    Path(marker).write_text("started")
    time.sleep(120)
"""


def test_a_migration_killed_midway_leaves_the_truth_and_a_usable_database(db_url: str, tmp_path: Path):
    scripts = copy_scripts(tmp_path)
    slow = add_revision(scripts, _HANG, 'op.drop_table("work_log")')
    with manager_for(db_url, scripts) as manager:
        manager.upgrade("004")
        seed_rows(db_url)
    marker = tmp_path / "started"
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from orchestrator.migrations import MigrationManager; "
         "MigrationManager(sys.argv[1], script_location=sys.argv[2]).upgrade()",
         db_url, str(scripts)],
        env={**os.environ, "ORCH_TEST_HANG_MARKER": str(marker)},
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "the migrator ended before reaching the slow step"
            assert time.monotonic() < deadline, "the migrator never reached the slow step"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    with manager_for(db_url, scripts) as manager:
        # `db status` tells the truth: 004 applied, the killed step pending and recorded as
        # started and not finished, nothing half-done (its transaction was rolled back).
        status = manager.status()
        assert (status.current, status.pending) == ("004", (slow,))
        assert (status.interrupted.revision, status.interrupted.running) == (slow, False)
        assert not status.up_to_date
        assert scalar(db_url, "SELECT count(*) FROM tasks WHERE title = 'being migrated'") == 0
        recorded = manager.applied_history()
        assert [e.revision for e in recorded] == ["001", "002", "003", "004", slow]
        assert recorded[-1].interrupted and recorded[-1].error == "interrupted"
        # The database is usable ...
        execute(db_url, "INSERT INTO agents (name) VALUES ('after-the-kill')")
        assert scalar(db_url, "SELECT count(*) FROM agents") == 2
        # ... and the upgrade completes (the lock died with its holder).
        assert manager.upgrade() == [slow]
        assert manager.status().up_to_date and manager.status().interrupted is None
        assert scalar(db_url, "SELECT count(*) FROM work_log") == 1
        done = manager.applied_history()[-1]
        assert (done.revision, done.success, done.error) == (slow, True, None)
    engine = create_engine(db_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM tasks")).scalar() == 2
    engine.dispose()


# -- plain `alembic` runs ---------------------------------------------------------------------


def _plain_alembic(scripts: Path, tmp_path: Path, monkeypatch, url: str, *args: str) -> None:
    """`alembic ARGS` with the repository's alembic.ini pointed at `scripts`."""
    from alembic.config import main as alembic_main

    from tests.conftest import ROOT

    ini = tmp_path / "alembic.ini"
    ini.write_text((ROOT / "alembic.ini").read_text().replace(
        "orchestrator.migrations:alembic", str(scripts)))
    monkeypatch.setenv("DATABASE_URL", url)
    alembic_main(["-c", str(ini), *args])


def test_plain_alembic_records_its_steps_like_the_manager(db_url, tmp_path, monkeypatch):
    scripts = copy_scripts(tmp_path)
    _plain_alembic(scripts, tmp_path, monkeypatch, db_url, "upgrade", "head")
    _plain_alembic(scripts, tmp_path, monkeypatch, db_url, "downgrade", "-2")
    _plain_alembic(scripts, tmp_path, monkeypatch, db_url, "stamp", "head")
    manager = manager_for(db_url, scripts)
    chain = [info.revision for info in manager.history()]
    paths = {info.revision: info.path for info in manager.history()}
    entries = manager.applied_history()
    assert [(e.revision, e.direction, e.success) for e in entries] == [
        *((revision, "upgrade", True) for revision in chain),
        (chain[-1], "downgrade", True),
        (chain[-2], "downgrade", True),
        (chain[-1], "stamp", True),
    ]
    assert all(e.checksum == sha256(paths[e.revision]) for e in entries)
    assert all(e.os_user == getpass.getuser() and e.tool_version == __version__ for e in entries)
    # The recorded checksums hold plain runs to their scripts as well.
    first = Path(paths[chain[0]])
    first.write_text(first.read_text() + "\n# edited after it ran\n")
    assert [c.revision for c in manager.changed_scripts()] == [chain[0]]


def test_plain_alembic_records_a_failed_step_and_keeps_the_last_good_one(
    db_url, tmp_path, monkeypatch
):
    scripts = copy_scripts(tmp_path)
    good = head_of(scripts)
    bad = add_revision(scripts, "raise RuntimeError('boom')")
    with pytest.raises(RuntimeError, match="boom"):
        _plain_alembic(scripts, tmp_path, monkeypatch, db_url, "upgrade", "head")
    manager = manager_for(db_url, scripts)
    assert manager.get_current_revision() == good
    last = manager.applied_history()[-1]
    assert (last.revision, last.direction, last.success) == (bad, "upgrade", False)
    assert "RuntimeError: boom" in last.error
    # The steps before the failure stay recorded as done.
    assert manager.applied_history()[-2].revision == good


def test_plain_alembic_records_a_failed_downgrade(db_url, tmp_path, monkeypatch):
    scripts = copy_scripts(tmp_path)
    bad = add_revision(scripts, "pass", downgrade="raise RuntimeError('no way back')")
    _plain_alembic(scripts, tmp_path, monkeypatch, db_url, "upgrade", "head")
    with pytest.raises(RuntimeError, match="no way back"):
        _plain_alembic(scripts, tmp_path, monkeypatch, db_url, "downgrade", "-1")
    last = manager_for(db_url, scripts).applied_history()[-1]
    assert (last.revision, last.direction, last.success) == (bad, "downgrade", False)


def test_plain_alembic_records_no_failure_when_no_step_ran(sqlite_url, tmp_path, monkeypatch):
    scripts = copy_scripts(tmp_path)
    _plain_alembic(scripts, tmp_path, monkeypatch, sqlite_url, "upgrade", "002")
    with pytest.raises(SystemExit):  # Alembic's "Can't locate revision identified by '999'"
        _plain_alembic(scripts, tmp_path, monkeypatch, sqlite_url, "upgrade", "999")
    assert [e.success for e in manager_for(sqlite_url, scripts).applied_history()] == [True, True]


def _code_config(scripts: Path, url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(scripts))
    config.set_main_option("sqlalchemy.url", url)
    return config


def test_alembic_called_from_code_records_its_steps_and_its_failure(sqlite_url, tmp_path):
    from alembic import command

    scripts = copy_scripts(tmp_path)
    bad = add_revision(scripts, "raise RuntimeError('boom')")
    with pytest.raises(RuntimeError, match="boom"):
        command.upgrade(_code_config(scripts, sqlite_url), "head")
    entries = manager_for(sqlite_url, scripts).applied_history()
    assert all(e.success and e.direction == "upgrade" for e in entries[:-1])
    assert (entries[-1].revision, entries[-1].success) == (bad, False)


def test_a_lent_connection_is_left_to_its_owner_when_a_step_fails(sqlite_url, tmp_path):
    """Alembic's connection-sharing recipe: the caller's transaction is not ended for a history
    row; the steps that succeeded are recorded in it, the failure is the caller's to handle."""
    from alembic import command

    scripts = copy_scripts(tmp_path)
    good = head_of(scripts)
    add_revision(scripts, "raise RuntimeError('boom')")
    engine = create_engine(sqlite_url)
    config = _code_config(scripts, sqlite_url)
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, good)
        connection.commit()
        with pytest.raises(RuntimeError, match="boom"):
            command.upgrade(config, "head")
    engine.dispose()
    entries = manager_for(sqlite_url, scripts).applied_history()
    assert [e.success for e in entries] == [True] * len(entries)
    assert entries[-1].revision == good


def test_plain_alembic_names_the_failed_step_of_a_relative_upgrade(sqlite_url, tmp_path,
                                                                   monkeypatch):
    scripts = copy_scripts(tmp_path)
    _plain_alembic(scripts, tmp_path, monkeypatch, sqlite_url, "upgrade", "head")
    passing = add_revision(scripts, "pass")
    failing = add_revision(scripts, "raise RuntimeError('boom')")
    add_revision(scripts, "pass")
    with pytest.raises(RuntimeError, match="boom"):
        _plain_alembic(scripts, tmp_path, monkeypatch, sqlite_url, "upgrade", "+3")
    entries = manager_for(sqlite_url, scripts).applied_history()
    assert [(e.revision, e.success) for e in entries[-2:]] == [(passing, True), (failing, False)]


def test_plain_alembic_records_no_failure_for_a_bad_downgrade_target(sqlite_url, tmp_path,
                                                                     monkeypatch):
    scripts = copy_scripts(tmp_path)
    _plain_alembic(scripts, tmp_path, monkeypatch, sqlite_url, "upgrade", "head")
    for target in ("999", "-9"):
        with pytest.raises(SystemExit):  # Alembic reports a bad target in one line
            _plain_alembic(scripts, tmp_path, monkeypatch, sqlite_url, "downgrade", target)
    assert all(e.success for e in manager_for(sqlite_url, scripts).applied_history())


def test_a_failure_that_cannot_be_recorded_leaves_the_migration_error(
    sqlite_url, tmp_path, monkeypatch, capfd
):
    scripts = copy_scripts(tmp_path)
    add_revision(scripts, "raise RuntimeError('boom')")

    def broken(*_args, **_kwargs):
        raise OSError("history unwritable")

    monkeypatch.setattr(history.Recorder, "step_failed", broken)
    with pytest.raises(RuntimeError, match="boom"):
        _plain_alembic(scripts, tmp_path, monkeypatch, sqlite_url, "upgrade", "head")
    # alembic.ini's logging prints the warning on stderr.
    assert "could not record the failed step in migration_history: history unwritable" in (
        capfd.readouterr().err
    )


def test_a_script_corrected_after_release_accepts_databases_that_applied_its_first_version(
    sqlite_url,
):
    """005 and 006 name their first release's checksum (`valid_checksums`): a database that
    applied that version is not told the script changed; any other checksum still is."""
    with MigrationManager(sqlite_url) as manager:
        manager.upgrade("head")
        first_release = {
            revision: sorted(history.valid_checksums(manager.script.get_revision(revision).path))
            for revision in ("005", "006")
        }
        assert all(len(sums) == 1 for sums in first_release.values()), first_release
        for revision, (old,) in first_release.items():
            execute(sqlite_url, f"UPDATE migration_history SET checksum = '{old}' "
                                f"WHERE revision = '{revision}'")
        assert manager.changed_scripts() == []

        execute(sqlite_url, "UPDATE migration_history SET checksum = 'edited' WHERE revision = '006'")
        assert [changed.revision for changed in manager.changed_scripts()] == ["006"]


def test_valid_checksums_are_read_without_importing_the_script(tmp_path):
    script = tmp_path / "007_x.py"
    script.write_text('import nothing_that_exists\nvalid_checksums: tuple = ("a", "b")\n')
    assert history.valid_checksums(script) == {"a", "b"}
    script.write_text("valid_checksums = compute()\n")
    assert history.valid_checksums(script) == frozenset()
    script.write_text("valid_checksums = 'abc'\n")
    assert history.valid_checksums(script) == frozenset()
    script.write_text("def broken(:\n")
    assert history.valid_checksums(script) == frozenset()
    assert history.valid_checksums(tmp_path / "missing.py") == frozenset()
    script.write_text("x = 1\n")
    assert history.valid_checksums(script) == frozenset()
