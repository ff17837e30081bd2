"""The `orchestrator` command: every db command, its output and its exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from tests.conftest import ROOT
from tests.schema import execute


@pytest.fixture
def cli(capsys, sqlite_url):
    """Run `orchestrator ...` in-process against `sqlite_url`; returns (exit code, out, err)."""

    def run(*args: str, url: str | None = sqlite_url):
        argv = list(args) + (["--database-url", url] if url and args[:1] == ("db",) else [])
        with pytest.raises(SystemExit) as exited:
            main(argv)
        captured = capsys.readouterr()
        return exited.value.code, captured.out, captured.err

    return run


def test_check_on_a_missing_database_exits_1_and_creates_nothing(cli, sqlite_url):
    code, out, _ = cli("db", "check")
    assert code == 1
    assert "pending:  001, 002, 003" in out and "does not exist yet" in out
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


def test_check_exits_0_when_up_to_date(cli):
    assert cli("db", "upgrade")[0] == 0
    code, out, _ = cli("db", "check")
    assert code == 0 and "up to date" in out


def test_check_exits_1_when_migrations_are_pending(cli):
    cli("db", "upgrade", "002")
    code, out, _ = cli("db", "check")
    assert code == 1 and "current:  002" in out and "pending:  003" in out


def test_check_json_output(cli):
    import json

    cli("db", "upgrade")
    code, out, _ = cli("db", "check", "--json")
    body = json.loads(out)
    assert code == 0 and body["up_to_date"] and body["current"] == body["head"]


def test_check_on_a_database_ahead_exits_2(cli, sqlite_url):
    cli("db", "upgrade")
    execute(sqlite_url, "UPDATE alembic_version SET version_num = '999'")
    code, out, err = cli("db", "check")
    assert code == 2 and "AHEAD" in out
    assert err.startswith("Error: the database is at revision 999, which this code does not know")


def test_check_on_an_unversioned_database_exits_2_and_suggests_stamp(cli, sqlite_url):
    execute(sqlite_url, "CREATE TABLE legacy (id INTEGER)")
    code, _, err = cli("db", "check")
    assert code == 2 and "has tables but no migration revision" in err and "orchestrator db stamp" in err


@pytest.mark.parametrize("emptied_by", ["db stamp base", "hand"])
def test_an_emptied_version_table_over_tables_is_unversioned_not_empty(cli, sqlite_url,
                                                                      tmp_path, emptied_by):
    """Not "empty database, pending 001...": upgrading would fail on "table users already
    exists", and staging would not even back it up first."""
    cli("db", "upgrade")
    execute(sqlite_url, "INSERT INTO users (email, name) VALUES ('kept@example.com', 'Kept')")
    if emptied_by == "hand":
        execute(sqlite_url, "DELETE FROM alembic_version")
    else:
        assert cli("db", "stamp", "base")[0] == 0
    code, out, err = cli("db", "check")
    assert code == 2 and "state:    tables exist but no revision is recorded" in out
    assert "has tables but no migration revision" in err
    code, out, err = cli("db", "upgrade", "--env", "staging")
    assert code == 2 and "has tables but no migration revision" in err
    assert "`orchestrator db stamp <revision>`" in err
    assert not (tmp_path / "backups").exists()  # refused before anything, backups included
    assert cli("db", "stamp", "head")[0] == 0
    assert cli("db", "check")[0] == 0


@pytest.mark.postgres
def test_status_says_when_new_sessions_are_read_only(capsys, postgres_url):
    """As a PostgreSQL restore killed midway leaves the database (see test_restore_window)."""
    from sqlalchemy.engine import make_url

    name = make_url(postgres_url).database
    execute(postgres_url, f"ALTER DATABASE {name} SET default_transaction_read_only = true")
    with pytest.raises(SystemExit) as exited:
        main(["db", "status", "--database-url", postgres_url])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert ("READ-ONLY: new sessions of this database cannot write (default_transaction_read_only"
            " is on); if that is left from a restore of an earlier version that was killed, run "
            "`BEGIN READ WRITE; "
            f"ALTER DATABASE {name} RESET default_transaction_read_only; COMMIT` as its owner"
            ) in out


def test_check_on_an_unreachable_database_exits_3_with_a_masked_url(cli):
    code, _, err = cli("db", "check", url="postgresql://ada:s3cret@127.0.0.1:1/app")
    assert code == 3
    assert "s3cret" not in err and "ada:***@" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_verbose_adds_the_traceback(cli):
    code, _, err = cli("db", "check", "--verbose", url="postgresql://ada:s3cret@127.0.0.1:1/app")
    assert code == 3 and "Traceback" in err


def test_current_and_status(cli):
    assert cli("db", "current")[1].strip() == "none (the database does not exist yet)"
    cli("db", "upgrade", "001")
    assert cli("db", "current")[1].strip() == "001"
    code, out, _ = cli("db", "status")
    assert code == 0 and "current:  001" in out and "pending:  002, 003" in out


def test_upgrade_prints_each_revision_and_is_idempotent(cli):
    code, out, _ = cli("db", "upgrade", "003")
    assert code == 0
    assert "001" in out and "Add tasks.priority_level" in out and "Applied 001, 002, 003" in out
    code, out, _ = cli("db", "upgrade", "003")
    assert code == 0 and "nothing to apply" in out


def test_upgrade_to_an_unknown_revision_is_one_line(cli):
    code, out, err = cli("db", "upgrade", "zzz")
    assert code == 2 and out == ""
    assert err == (
        "Error: unknown revision 'zzz' (known: "
        + err.split("(known: ")[1].split(")")[0]
        + "); see `orchestrator db history`\n"
    )


def test_upgrade_sql_prints_without_touching_the_database(cli, sqlite_url):
    code, out, _ = cli("db", "upgrade", "001:003", "--sql")
    assert code == 0 and "ALTER TABLE tasks ADD COLUMN priority_level" in out
    assert "CREATE TABLE users" not in out
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


def test_downgrade_lists_what_it_undoes(cli):
    cli("db", "upgrade", "003")
    code, out, _ = cli("db", "downgrade", "-1")
    assert code == 0 and "this undoes:\n  003  Add the indexes" in out and "Undid 003" in out
    code, out, _ = cli("db", "downgrade", "base")
    assert code == 0 and "  002  " in out and "  001  " in out
    assert "nothing to undo" in cli("db", "downgrade", "base")[1]


def test_downgrade_sql(cli):
    cli("db", "upgrade", "003")
    code, out, _ = cli("db", "downgrade", "001", "--sql")
    assert code == 0 and "DROP COLUMN priority_level" in out
    assert cli("db", "current")[1].strip() == "003"


def test_relative_sql_counts_from_the_start(cli, sqlite_url):
    cli("db", "upgrade", "003")
    code, out, _ = cli("db", "downgrade", "-1", "--sql")  # from the database's 003
    assert code == 0 and "Running downgrade 003 -> 002" in out and "002 -> 001" not in out
    code, out, _ = cli("db", "downgrade", "003:-2", "--sql")
    assert code == 0 and "Running downgrade 002 -> 001" in out and "001 -> " not in out
    code, out, _ = cli("db", "upgrade", "001:+1", "--sql")
    assert code == 0 and "Running upgrade 001 -> 002" in out and "002 -> 003" not in out
    code, _, err = cli("db", "upgrade", "003:+9", "--sql")
    assert code == 2 and "+9 goes past the head from 003" in err
    assert cli("db", "current")[1].strip() == "003"


def test_production_downgrade_refuses_without_a_terminal(cli):
    cli("db", "upgrade", "003")
    code, _, err = cli("db", "downgrade", "-1", "--env", "production")
    assert code == 2 and "pass --yes" in err
    assert cli("db", "current")[1].strip() == "003"
    code, out, _ = cli("db", "downgrade", "-1", "--env", "production", "--yes")
    assert code == 0 and "Undid 003" in out


def test_production_downgrade_asks_on_a_terminal(cli, monkeypatch):
    cli("db", "upgrade", "003")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr("click.confirm", lambda *a, **k: (_ for _ in ()).throw(__import__("click").Abort()))
    code, _, err = cli("db", "downgrade", "-1", "--env", "production")
    assert code == 1 and err.splitlines()[-1] == "Error: not confirmed; nothing was changed"
    assert cli("db", "current")[1].strip() == "003"


def test_history_marks_applied_and_head(cli):
    cli("db", "upgrade", "001")
    code, out, _ = cli("db", "history")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].startswith("001  [applied]") and lines[1].startswith("002  [pending]")
    assert "head" in lines[-1]


def test_history_of_a_database_ahead_does_not_guess(cli, sqlite_url):
    cli("db", "upgrade")
    execute(sqlite_url, "UPDATE alembic_version SET version_num = '999'")
    code, out, _ = cli("db", "history")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("The database is at 999, which these scripts do not")
    assert lines[1].startswith("001  [?]") and "pending" not in out


def test_create_refuses_when_not_at_head(cli):
    code, _, err = cli("db", "create", "-m", "x")
    assert code == 2 and "run `orchestrator db upgrade` first" in err


def test_create_refuses_an_empty_autogenerate(cli):
    cli("db", "upgrade")
    code, _, err = cli("db", "create", "-m", "nothing")
    assert code == 2 and "--empty" in err


def test_stamp(cli, sqlite_url):
    code, out, _ = cli("db", "stamp", "002")
    assert code == 0 and "at 002" in out
    assert cli("db", "current")[1].strip() == "002"
    code, out, _ = cli("db", "stamp", "-1")  # relative, as for upgrade and downgrade
    assert code == 0 and "at 001" in out


def test_options_on_the_group_and_on_the_command(cli, sqlite_url, tmp_path):
    other = f"sqlite:///{tmp_path}/other.db"
    cli("db", "upgrade", "001", url=other)
    # Given on `orchestrator` itself...
    assert main_output(cli, "--database-url", other, "db", "current") == "001"
    # ...and the command's own option wins over the group's.
    assert main_output(cli, "--database-url", sqlite_url, "db", "current", "--database-url", other) == "001"


def main_output(cli, *args):
    code, out, _ = cli(*args, url=None)
    assert code == 0
    return out.strip()


def test_production_without_database_url_is_one_line(cli):
    code, _, err = cli("db", "check", "--env", "production", url=None)
    assert code == 2 and err.startswith("Error: DATABASE_URL is required")


def test_bad_environment_variable(cli, monkeypatch):
    monkeypatch.setenv("ENVIRONMENT", "qa")
    code, _, err = cli("db", "check")
    assert code == 2 and "ENVIRONMENT='qa' is not valid" in err


def test_usage_errors_exit_2(cli):
    assert cli("db", "downgrade", url=None)[0] == 2
    assert cli("db", "nope", url=None)[0] == 2


def test_a_group_without_its_command_is_one_usage_line(cli):
    for args, where, names in ((("db",), "orchestrator db", "backup, backups"),
                               ((), "orchestrator", "db, serve, users")):
        code, out, err = cli(*args, url=None)
        assert code == 2 and out == ""
        assert err.startswith(f"Error: missing a command (one of: {names}")
        assert err.endswith(f"; see `{where} --help`\n") and err.count("\n") == 1


def test_the_backup_bar_stops_before_the_backup_is_said(sqlite_url):
    # On a terminal, `db downgrade` wrote "Backed up first, at 006: ..." into the line of the
    # backup's progress bar, which went on redrawing under the steps' output.
    from types import SimpleNamespace

    from orchestrator.cli.db.changing import _Steps

    said = []
    bar = SimpleNamespace(close=lambda: said.append("bar closed"))
    manager = SimpleNamespace(backup_progress=bar,
                              last_backup=SimpleNamespace(revision="006", path="/b.dump"))
    steps = _Steps(manager, each_step=False, say=said.append)
    steps("006", 0.5)
    steps("005", 0.5)
    assert said == ["bar closed", "Backed up first, at 006: /b.dump"]


def test_help_exits_0(cli):
    code, out, _ = cli("--help", url=None)
    assert code == 0 and "db" in out and "serve" in out


def test_db_check_does_not_import_the_web_layer(sqlite_url):
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette')"
        " if m in sys.modules), file=sys.stderr))\n"
        "from orchestrator.cli import main\n"
        f"main(['db', 'check', '--database-url', {sqlite_url!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "[]"


def test_console_script_and_module_entry_point(run_cli, sqlite_url):
    result = run_cli("db", "upgrade", "--database-url", sqlite_url)
    assert result.returncode == 0, result.stderr
    result = run_cli("db", "check", "--database-url", sqlite_url)
    assert result.returncode == 0 and "up to date" in result.stdout


# -- scripts/run_migrations.py (the seed's interface) -------------------------------------------


def run_script(*args: str, url: str):
    import os

    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run_migrations.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "DATABASE_URL": url},
    )


def test_seed_script_keeps_its_interface(sqlite_url):
    assert run_script("check", url=sqlite_url).returncode == 1
    assert run_script("upgrade", "-r", "002", url=sqlite_url).returncode == 0
    assert run_script("current", url=sqlite_url).stdout.strip() == "002"
    assert run_script("upgrade", url=sqlite_url).returncode == 0
    assert run_script("check", url=sqlite_url).returncode == 0
    assert run_script("downgrade", "-r", "-1", "-e", "staging", url=sqlite_url).returncode == 0
    assert run_script("check", url=sqlite_url).returncode == 1


def test_seed_script_usage_errors(sqlite_url):
    result = run_script("downgrade", url=sqlite_url)
    assert result.returncode == 2 and "needs -r REV" in result.stderr
    result = run_script("create", url=sqlite_url)
    assert result.returncode == 2 and "needs -m MESSAGE" in result.stderr


def test_seed_script_builds_orchestrator_arguments():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from run_migrations import build_argv
    finally:
        sys.path.pop(0)
    assert build_argv(["create", "-m", "add x", "-e", "staging"]) == [
        "db", "create", "-m", "add x", "--env", "staging"]
    assert build_argv(["upgrade", "-r", "003"]) == ["db", "upgrade", "003"]


def test_a_file_it_cannot_use_is_one_line_exit_2(cli, monkeypatch):
    """Any OSError the commands do not word themselves (here a read-only mount, which root, who
    runs CI, cannot be stopped by otherwise) is one line naming the file."""
    import errno

    from orchestrator.migrations import MigrationManager

    def read_only(self, output=None, progress=None):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/backups/b.sqlite")

    monkeypatch.setattr(MigrationManager, "backup", read_only)
    code, _, err = cli("db", "backup")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("Error: cannot use /mnt/backups/b.sqlite: Read-only file system; ")


def test_a_database_that_refuses_writes_is_one_line_exit_3(cli, sqlite_url, monkeypatch):
    """A read-only database file: root (which runs CI) can write any file, so the refusal SQLite
    gives for one is raised where the stamp would write."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from orchestrator.migrations import MigrationManager

    def read_only(self, revision):
        raise OperationalError("UPDATE alembic_version", {},
                               sqlite3.OperationalError("attempt to write a readonly database"))

    monkeypatch.setattr(MigrationManager, "stamp", read_only)
    code, _, err = cli("db", "stamp", "002")
    assert code == 3 and len(err.strip().splitlines()) == 1
    assert err.startswith("Error: the database refused: attempt to write a readonly database;")


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_lock_timeout_must_be_a_finite_number_of_seconds(cli, sqlite_url, value):
    code, _, err = cli("db", "upgrade", "--lock-timeout", value)
    assert code == 2 and "Invalid value for '--lock-timeout'" in err
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


def test_other_database_errors_stay_unexpected(cli, monkeypatch):
    """Only SQLite refusing to write its file is the machine's doing; anything else is a bug."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from orchestrator.migrations import MigrationManager

    def broken(self, revision):
        raise OperationalError("SELECT nope", {}, sqlite3.OperationalError("no such table: nope"))

    monkeypatch.setattr(MigrationManager, "stamp", broken)
    code, _, err = cli("db", "stamp", "002")
    assert code == 70 and err.startswith("Error: unexpected OperationalError")


def test_a_closed_pipe_ends_the_command_quietly(monkeypatch, capsys, sqlite_url):
    """`orchestrator db history | head -1`: the reader leaves, no error or traceback follows."""

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    with pytest.raises(SystemExit) as exited:
        main(["db", "history", "--database-url", sqlite_url])
    assert exited.value.code == 141 and capsys.readouterr().err == ""
