"""The command line keeps its contract (issue 20): right answers, one line per error, output
said once, exit codes of their own, and output a script can read (`--json`, `--quiet`,
`db show`, shell completion)."""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator.migrations import MigrationManager, UnknownRevisionError
from tests.conftest import ROOT
from tests.fixtures import command_runner
from tests.schema import execute, scalar

DOCS = ROOT / "docs" / "migrations.md"
BIN = Path(sys.executable).parent  # the environment's `orchestrator` console script
COMPLETE_VAR = "_ORCHESTRATOR_COMPLETE"  # Click's documented name for the `orchestrator` command


@pytest.fixture
def run_here(monkeypatch, capsys):
    return command_runner(monkeypatch, capsys)


def orchestrator(*args: str, env: dict | None = None, **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})}, **options,
    )


def on_a_terminal(*args: str, answer: str, env: dict | None = None,
                  end: str = "\n") -> tuple[int, str, str]:
    """Run `orchestrator ...` with a terminal as stdin, answering its question with `answer`."""
    controller, terminal = pty.openpty()
    try:
        process = orchestrator(*args, env=env, stdin=terminal)
        os.write(controller, (answer + end).encode())  # the terminal keeps it until read
        out, err = process.communicate(timeout=120)
    finally:
        os.close(terminal)
        os.close(controller)
    return process.returncode, out, err


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    return lines[0]


# -- wrong answers, now right ---------------------------------------------------------------------


def test_create_on_a_database_ahead_says_deploy_or_stamp_as_upgrade_does(run_here, sqlite_url):
    """They used to send the user to each other: create said "run `db upgrade` first"."""
    MigrationManager(sqlite_url).upgrade()
    execute(sqlite_url, "UPDATE alembic_version SET version_num = '999'")
    for args in (("db", "create", "-m", "x"), ("db", "upgrade")):
        result = run_here(*args, "--database-url", sqlite_url)
        line = one_error_line(result.stderr)
        assert result.returncode == 2
        assert "the database is at revision 999, which this code does not know" in line
        assert "deploy the code that has 999" in line and "orchestrator db stamp 006" in line
        assert "db upgrade` first" not in line


@pytest.mark.parametrize("target", ["001", "-1", "base"])
def test_upgrade_to_a_revision_behind_the_database_is_an_error_naming_downgrade(
    run_here, db_url, target
):
    MigrationManager(db_url).upgrade("002")
    result = run_here("db", "upgrade", target, "--database-url", db_url)
    assert result.returncode == 2 and result.stdout == ""
    assert one_error_line(result.stderr) == (
        f"Error: cannot upgrade to {target}: it is older than the database's revision 002; "
        f"use `orchestrator db downgrade {target}`"
    )
    with MigrationManager(db_url) as manager:
        with pytest.raises(UnknownRevisionError, match="older than the database's revision"):
            manager.upgrade(target)
        assert manager.get_current_revision() == "002"
        assert manager.plan_upgrade("002") == [] and manager.plan_upgrade() == ["003", "004", "005", "006"]


def test_sql_ranges_go_the_way_their_command_says(run_here, sqlite_url):
    backwards = run_here("db", "upgrade", "003:001", "--sql", "--database-url", sqlite_url)
    assert backwards.returncode == 2 and backwards.stdout == ""
    assert one_error_line(backwards.stderr) == (
        "Error: 003:001 is a downgrade, not an upgrade; use `orchestrator db downgrade 003:001 --sql`"
    )
    forwards = run_here("db", "downgrade", "001:003", "--sql", "--database-url", sqlite_url)
    assert forwards.returncode == 2 and forwards.stdout == ""
    assert "001:003 is an upgrade, not a downgrade; use `orchestrator db upgrade 001:003 --sql`" in (
        forwards.stderr)
    # Each the right way round still prints its SQL, and an empty range prints none.
    assert "DROP COLUMN priority_level" in run_here(
        "db", "downgrade", "003:001", "--sql", "--database-url", sqlite_url).stdout
    assert "ADD COLUMN priority_level" in run_here(
        "db", "upgrade", "001:003", "--sql", "--database-url", sqlite_url).stdout
    same = run_here("db", "downgrade", "002:002", "--sql", "--database-url", sqlite_url)
    assert same.returncode == 0 and "Running" not in same.stdout
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


@pytest.mark.postgres
@pytest.mark.parametrize(("value", "shown"), [("5", "5s"), ("0.1ms", "1ms"), ("0", "0"),
                                              ("1min", "1min"), ("250ms", "250ms")])
def test_db_lock_timeout_in_seconds_reaches_postgresql(postgres_url, tmp_path, monkeypatch,
                                                       value, shown):
    """DB_LOCK_TIMEOUT=5 is 5 seconds, not PostgreSQL's 5 ms; a fraction of a millisecond is
    1 ms, not the 0 (wait forever) PostgreSQL would round it to."""
    from orchestrator.settings import load_settings
    from tests.fixtures import add_revision, copy_scripts

    scripts = copy_scripts(tmp_path)
    revision = add_revision(scripts, "op.execute(\"CREATE TABLE seen AS SELECT "
                                     "current_setting('lock_timeout') AS lock_timeout\")",
                            "op.execute('DROP TABLE seen')")
    monkeypatch.setenv("DB_LOCK_TIMEOUT", value)
    settings = load_settings(database_url=postgres_url)
    with MigrationManager.from_settings(settings, script_location=str(scripts)) as manager:
        assert manager.upgrade()[-1] == revision
    assert scalar(postgres_url, "SELECT lock_timeout FROM seen") == shown


def test_lock_timeout_option_takes_the_same_durations(run_here, sqlite_url):
    done = run_here("db", "upgrade", "001", "--lock-timeout", "1min", "--database-url", sqlite_url)
    assert done.returncode == 0, done.stderr
    bad = run_here("db", "upgrade", "--lock-timeout", "1h", "--database-url", sqlite_url)
    assert bad.returncode == 2
    assert "'1h' is not a duration" in one_error_line(bad.stderr)


def test_stamp_in_production_refuses_without_a_terminal_unless_yes(run_here, sqlite_url):
    MigrationManager(sqlite_url).upgrade("002")
    refused = run_here("db", "stamp", "004", "--env", "production", "--database-url", sqlite_url)
    assert refused.returncode == 2
    assert one_error_line(refused.stderr).startswith(
        "Error: refusing to stamp production without confirmation; run it on a terminal or pass --yes")
    assert MigrationManager(sqlite_url).get_current_revision() == "002"
    wrong = run_here("db", "stamp", "zzz", "--env", "production", "--database-url", sqlite_url)
    assert wrong.returncode == 2 and "unknown revision 'zzz'" in wrong.stderr  # before asking
    done = run_here("db", "stamp", "004", "--yes", "--env", "production",
                    "--database-url", sqlite_url)
    assert done.returncode == 0 and "at 004" in done.stdout
    assert MigrationManager(sqlite_url).get_current_revision() == "004"
    # Elsewhere nothing is asked.
    assert run_here("db", "stamp", "003", "--database-url", sqlite_url).returncode == 0


def test_stamp_in_production_asks_on_a_terminal(sqlite_url):
    MigrationManager(sqlite_url).upgrade("002")
    args = ("db", "stamp", "003", "--env", "production", "--database-url", sqlite_url)
    code, out, err = on_a_terminal(*args, answer="n")
    assert code == 1, err
    assert "its recorded revision goes from 002 to 003, and no migration runs" in out
    assert "Change the production database's recorded revision? [y/N]" in err
    assert err.splitlines()[-1] == "Error: not confirmed; nothing was changed"
    assert MigrationManager(sqlite_url).get_current_revision() == "002"
    code, out, err = on_a_terminal(*args, answer="y")
    assert code == 0, err
    assert MigrationManager(sqlite_url).get_current_revision() == "003"


def test_a_declined_downgrade_is_one_error_line_and_changes_nothing(sqlite_url):
    MigrationManager(sqlite_url).upgrade()
    code, out, err = on_a_terminal("db", "downgrade", "-1", "--env", "production",
                                   "--database-url", sqlite_url, answer="no",
                                   env={"BACKUP_DIR": str(Path(sqlite_url[10:]).parent / "b")})
    assert code == 1
    assert "Downgrade the production database? [y/N]" in err
    assert err.splitlines()[-1] == "Error: not confirmed; nothing was changed"
    assert "Aborted" not in err and "Undid" not in out
    assert MigrationManager(sqlite_url).get_current_revision() == "006"


def test_end_of_input_or_ctrl_c_at_the_question_is_a_no_on_a_line_of_its_own(sqlite_url):
    MigrationManager(sqlite_url).upgrade("002")
    args = ("db", "stamp", "003", "--env", "production", "--database-url", sqlite_url)
    code, _, err = on_a_terminal(*args, answer="\x04", end="")  # Ctrl-D
    assert code == 1
    assert [line.rstrip() for line in err.splitlines()[-2:]] == [
        "Change the production database's recorded revision? [y/N]:",
        "Error: not confirmed; nothing was changed"]
    controller, terminal = pty.openpty()
    try:
        process = orchestrator(*args, stdin=terminal)
        asked = b""
        while b"[y/N]" not in asked:
            asked += os.read(process.stderr.fileno(), 1)
        # Ctrl-C as a person types it: once the command waits for the answer, blocked in its
        # read of the terminal (Python cannot see a signal that lands just before that read).
        blocked_in = Path(f"/proc/{process.pid}/wchan")
        for _ in range(1000):
            if blocked_in.read_text() == "wait_woken":
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        os.close(terminal)
        os.close(controller)
    assert process.returncode == 1 and err.splitlines() == [
        ": ", "Error: not confirmed; nothing was changed"]  # the rest of the question's line
    assert MigrationManager(sqlite_url).get_current_revision() == "002"


# -- the wait for the lock is not migration time ------------------------------------------------


def _hold_lock(db_url: str, stop: threading.Event, held: threading.Event) -> None:
    from tests.migrations.test_lock import migration_lock

    with migration_lock(db_url, timeout=5):
        held.set()
        stop.wait(60)


def test_upgrade_reports_the_wait_for_another_migrator_apart(db_url):
    stop, held = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(db_url, stop, held))
    holder.start()
    try:
        assert held.wait(10)
        process = orchestrator("db", "upgrade", "--database-url", db_url)
        assert "waiting for the migration lock" in process.stderr.readline()
        time.sleep(1.0)  # the lock stays held at least this long after the waiter said it waits
    finally:
        stop.set()
        holder.join()
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    summary = out.splitlines()[-1]
    found = re.fullmatch(r"Applied 001, 002, 003, 004, 005, 006 in (\d+\.\d\d)s, after waiting "
                         r"(\d+\.\d\d)s for another migrator\.", summary)
    assert found, summary
    # It waited at least as long as the lock was held after it said it waits.
    assert float(found[2]) >= 1.0
    # Uncontended, nothing is said about waiting.
    MigrationManager(db_url).downgrade("003")
    alone = orchestrator("db", "upgrade", "--database-url", db_url)
    out, _ = alone.communicate(timeout=120)
    assert re.fullmatch(r"Applied 004, 005, 006 in \d+\.\d\ds\.", out.splitlines()[-1]), out


def waiter_while_another_migrates(db_url: str, args: tuple[str, ...], version: str):
    """Run `orchestrator db ARGS` while the lock is held; once it waits, the database is moved
    to `version` (as another migrator would have moved it), then the lock is let go."""
    stop, held = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(db_url, stop, held))
    holder.start()
    try:
        assert held.wait(10)
        process = orchestrator(*args, "--database-url", db_url)
        assert "waiting for the migration lock" in process.stderr.readline()
        execute(db_url, f"UPDATE alembic_version SET version_num = '{version}'")
    finally:
        stop.set()
        holder.join()
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def test_a_waiter_whose_target_was_passed_meanwhile_has_nothing_to_do(db_url):
    MigrationManager(db_url).upgrade("001")
    code, out, err = waiter_while_another_migrates(db_url, ("db", "upgrade", "002"), "004")
    assert code == 0, err
    assert out.splitlines()[0].endswith("from 001 to 002:")
    assert re.fullmatch(r"Nothing to do: another migrator already did it while we waited "
                        r"\(\d+\.\d\ds\)\.", out.splitlines()[-1])
    assert MigrationManager(db_url).get_current_revision() == "004"


def while_waiting(db_url: str, migrate, version: str):
    """Run `migrate()` in a thread while the lock is held; once it says it waits, move the
    database to `version` (as another migrator would), let the lock go; its result."""
    stop, held, waiting = threading.Event(), threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(db_url, stop, held))
    holder.start()
    outcome = {}
    try:
        assert held.wait(10)
        worker = threading.Thread(target=lambda: outcome.update(result=migrate(waiting.set)))
        worker.start()
        assert waiting.wait(60)
        execute(db_url, f"UPDATE alembic_version SET version_num = '{version}'")
    finally:
        stop.set()
        holder.join()
    worker.join(120)
    return outcome["result"]


def test_a_manager_whose_target_was_passed_while_it_waited_applies_nothing(db_url):
    MigrationManager(db_url).upgrade("001")

    def upgrade(waiting):
        with MigrationManager(db_url, notify=lambda _: waiting()) as manager:
            return manager.upgrade("002"), manager.lock_wait

    applied, waited = while_waiting(db_url, upgrade, "006")
    assert applied == [] and waited > 0
    assert MigrationManager(db_url).get_current_revision() == "006"

    def downgrade(waiting):
        with MigrationManager(db_url, notify=lambda _: waiting()) as manager:
            return manager.downgrade("003")

    assert while_waiting(db_url, downgrade, "001") == []
    assert MigrationManager(db_url).get_current_revision() == "001"


def test_start_up_that_waited_for_another_replica_says_who_migrated(sqlite_url, caplog):
    import logging

    from orchestrator.migrations.startup import prepare_database
    from orchestrator.settings import load_settings

    MigrationManager(sqlite_url).upgrade("001")
    caplog.set_level(logging.INFO, logger="orchestrator")

    def start(waiting):
        settings = load_settings(database_url=sqlite_url)
        with MigrationManager.from_settings(settings, notify=lambda _: waiting()) as manager:
            mine = manager.progress = lambda revision, seconds: None
            report = prepare_database(settings, manager)
            assert manager.progress is mine  # handed back as it was
            return report

    report = while_waiting(sqlite_url, start, "006")
    assert report.applied == [] and report.status.up_to_date
    assert "another process migrated the database to 006 while this one waited" in caplog.text
    assert "applied" not in caplog.text


def test_a_relative_downgrade_undoes_only_what_it_listed(db_url):
    """`db downgrade -1` listed 006; another migrator undid 006 while it waited: it must not
    go on to undo 005, which nobody was shown."""
    MigrationManager(db_url).upgrade()
    code, out, err = waiter_while_another_migrates(db_url, ("db", "downgrade", "-1"), "005")
    assert code == 0, err
    assert out.splitlines()[:2] == [
        f"Downgrading {out.split()[1]} from 006 to 005; this undoes:",
        "  006  Agents get owners (contract): every agent has an owner, enforced by the "
        "database."]
    assert out.splitlines()[-1].startswith("Nothing to do: another migrator already did it")
    assert MigrationManager(db_url).get_current_revision() == "005"


# -- exit codes of their own ----------------------------------------------------------------------


def test_a_closed_pipe_exits_141_not_1_which_means_pending(sqlite_url):
    """`orchestrator db check | head -0`: 1 would read as "migrations pending"."""
    reader, writer = os.pipe()
    os.close(reader)  # the reader has gone before the command writes a word
    try:
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator", "db", "check", "--database-url", sqlite_url],
            stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120,
        )
    finally:
        os.close(writer)
    assert result.returncode == 141 and result.stderr == ""


def test_output_to_a_full_disk_is_one_error_line(sqlite_url):
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "orchestrator", "db", "status", "--json",
                                 "--database-url", sqlite_url],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 2
    assert one_error_line(result.stderr) == (
        "Error: cannot write: No space left on device; check the path, its permissions and free "
        "space")


def test_a_damaged_sqlite_file_is_called_damaged_with_the_way_back(run_here, tmp_path):
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"this is no SQLite header" + bytes(range(256)) * 40)
    result = run_here("db", "status", "--database-url", f"sqlite:///{damaged}")
    assert result.returncode == 3
    line = one_error_line(result.stderr)
    assert f"the database file {damaged} is damaged (file is not a database)" in line
    assert "`orchestrator db restore FILE`" in line and "server" not in line


@pytest.mark.parametrize(("args", "reason"), [
    (["db", "nope"], "No such command 'nope'; see `orchestrator db --help`"),
    (["db", "upgrade", "--frob"], "No such option '--frob'; see `orchestrator db upgrade --help`"),
    (["db", "upgrade", "-x"], "No such option '-x'; see `orchestrator db upgrade --help`"),
    (["db", "downgrade"], "Missing argument 'REVISION'; see `orchestrator db downgrade --help`"),
    (["db", "upgrade", "001", "002"], "Got unexpected extra argument (002)"),
    (["--env", "qa", "db", "current"], "Invalid value for '--env'"),
    (["db", "current", "--json", "--quiet"], "--json and --quiet cannot be combined"),
    (["db", "show", "001", "--sql", "--down"], "give one of them"),
    (["db", "show", "001", "--sql", "--json"], "give one or the other"),
    (["db", "current", "--database-url", ""], "Invalid value for '--database-url': it is empty"),
    (["--database-url", " ", "db", "current"], "leave the option out to use DATABASE_URL"),
])
def test_every_usage_error_is_one_line_beginning_error(run_here, args, reason):
    result = run_here(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert reason in one_error_line(result.stderr)


# -- output said once -----------------------------------------------------------------------------


def test_downgrade_names_each_revision_once_and_its_backup_before_the_result(
    run_here, sqlite_url, tmp_path
):
    MigrationManager(sqlite_url).upgrade("004")
    result = run_here("db", "downgrade", "002", "--env", "staging", "--database-url", sqlite_url,
                      env={"BACKUP_DIR": str(tmp_path / "b")})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "Downgrading " + f"{sqlite_url} from 004 to 002; this undoes:",
        "  004  Add api_tokens: the bearer tokens that authenticate API requests.",
        "  003  Add the indexes that task queries use.",
    ]
    # What it destroys (docs/migrations.md, "What a downgrade destroys"): empty here.
    assert lines[3:6] == ["It destroys:", "  table api_tokens: 0 rows (004)",
                          "They hold no data; a backup is taken first (BACKUP_BEFORE_MIGRATE)."]
    assert lines[6].startswith("Backed up first, at 004: ")
    assert re.fullmatch(r"Undid 004, 003 in \d+\.\d\ds\.", lines[7]) and len(lines) == 8


def test_upgrade_says_where_it_backed_up_before_its_steps(run_here, sqlite_url, tmp_path):
    MigrationManager(sqlite_url).upgrade("002")
    result = run_here("db", "upgrade", "004", "--env", "staging", "--database-url", sqlite_url,
                      env={"BACKUP_DIR": str(tmp_path / "b")})
    lines = result.stdout.splitlines()
    assert lines[0] == f"Upgrading {sqlite_url} from 002 to 004:"
    assert lines[1].startswith("Backed up first, at 002: ")
    assert lines[2].startswith("  003 ") and lines[3].startswith("  004 ")
    assert lines[4].startswith("Applied 003, 004 in ") and len(lines) == 5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_until_started(url: str, environment: str) -> str:
    """Start `orchestrator serve`, stop it once started; its log (stderr)."""
    process = orchestrator("serve", "--port", str(free_port()), "--env", environment,
                           "--database-url", url)
    log = []
    try:
        for line in process.stderr:
            log.append(line)
            if "Application startup complete" in line or "Error" in line:
                break
    finally:
        process.terminate()
        process.communicate(timeout=60)
    return "".join(log)


def test_serve_logs_each_migration_step_once(sqlite_url):
    log = serve_until_started(sqlite_url, "development")
    assert "Application startup complete" in log, log
    for revision in ("001", "002", "003", "004", "005", "006"):
        assert len(re.findall(rf"\b{revision}\b", log)) == (1 if revision != "006" else 2), log
        assert re.search(rf"orchestrator.startup: applied {revision} in \d+\.\d\ds\n", log)
    assert "orchestrator.startup: migrated the database from base to 006" in log
    assert "Running upgrade" not in log and "Initial schema" not in log


def test_serve_warns_once_about_a_schema_behind_in_staging(sqlite_url):
    MigrationManager(sqlite_url).upgrade("003")
    log = serve_until_started(sqlite_url, "staging")
    assert "Application startup complete" in log, log
    assert log.count("schema is behind") == 1, log


# -- scriptable output ----------------------------------------------------------------------------


def test_current_quiet_prints_the_bare_revision(run_here, sqlite_url):
    assert run_here("db", "current", "--quiet", "--database-url", sqlite_url).stdout == ""
    MigrationManager(sqlite_url).upgrade("002")
    quiet = run_here("db", "current", "-q", "--database-url", sqlite_url)
    assert quiet.returncode == 0 and quiet.stdout == "002\n"
    execute(sqlite_url, "UPDATE alembic_version SET version_num = '999'")
    assert run_here("db", "current", "--quiet", "--database-url", sqlite_url).stdout == "999\n"


def test_check_json_lists_applied_scripts_edited_since(run_here, sqlite_url):
    MigrationManager(sqlite_url).upgrade()
    clean = json.loads(run_here("db", "check", "--json", "--database-url", sqlite_url).stdout)
    assert clean["changed_scripts"] == [] and clean["up_to_date"] is True
    # What an edit of 001's file after it ran looks like: the checksums no longer agree.
    execute(sqlite_url, "UPDATE migration_history SET checksum = 'edited' WHERE revision = '001'")
    result = run_here("db", "check", "--json", "--database-url", sqlite_url)
    changed = json.loads(result.stdout)["changed_scripts"]
    assert result.returncode == 0
    assert [(c["revision"], c["applied_checksum"]) for c in changed] == [("001", "edited")]
    assert changed[0]["path"].endswith("001_initial_schema.py")
    text = run_here("db", "check", "--database-url", sqlite_url).stdout
    assert "EDITED:   001" in text


def documented_json() -> tuple[dict[str, set[str]], dict[str, set[str]], set[str]]:
    """From docs/migrations.md: the fields of each command's JSON, of each object inside it,
    and the fields whose meaning is written down."""
    section = DOCS.read_text().split("## Output for scripts", 1)[1].split("\n## ", 1)[0]
    commands, objects, explained = {}, {}, set()
    for row in re.findall(r"^\| (.+?) \| (.+?) \|", section, flags=re.MULTILINE):
        names = set(re.findall(r"`([a-z_]+)`", row[1]))
        for command in re.findall(r"`(db [a-z]+)[^`]*--json`", row[0]):
            commands[command] = names
        if row[0].startswith("a ") or row[0].startswith("an "):
            objects[row[0]] = names
        if re.fullmatch(r"`[a-z_]+`", row[0]):
            explained.add(row[0].strip("`"))
    return commands, objects, explained


def test_every_reporting_command_prints_the_json_its_documentation_describes(
    run_here, sqlite_url, tmp_path
):
    commands, objects, explained = documented_json()
    assert set(commands) == {"db current", "db status", "db check", "db history", "db show",
                             "db backups", "db validate", "db rehearse",
                             "db downgrade"}
    backups = str(tmp_path / "b")
    MigrationManager(sqlite_url, backup_dir=backups).upgrade("003")
    execute(sqlite_url, "UPDATE migration_history SET checksum = 'edited' WHERE revision = '001'")
    assert run_here("db", "backup", "--database-url", sqlite_url,
                    env={"BACKUP_DIR": backups}).returncode == 0
    outputs = {
        command: json.loads(run_here(*command.split(), *extra, "--json",
                                     "--database-url", sqlite_url).stdout)
        for command, extra in [("db current", ()), ("db status", ()), ("db check", ()),
                               ("db history", ()), ("db show", ("001",)), ("db backups", ()),
                               ("db validate", ()), ("db rehearse", ("--max-blocking", "3600")),
                               ("db downgrade", ("002", "--dry-run"))]
    }
    as_format = run_here("db", "validate", "--format", "json", "--database-url", sqlite_url)
    assert json.loads(as_format.stdout) == outputs["db validate"]
    assert isinstance(outputs["db backups"], list) and commands["db backups"] == set()
    for command, document in outputs.items():
        if command != "db backups":
            assert set(document) == commands[command], command
    from orchestrator.migrations.rehearse.report import Prediction

    rehearsed = outputs["db rehearse"]["steps"][0]
    inner = {
        "a copy": outputs["db rehearse"]["copy"],
        "a rehearsed step": rehearsed,
        "a statement": rehearsed["statements"][0],
        "a lock": rehearsed["statements"][0]["locks"][0],
        "a prediction": Prediction("MIG013", "index-not-concurrent", "m").as_dict(),
        "a changed script": outputs["db status"]["changed_scripts"][0],
        "a revision": outputs["db history"]["revisions"][0],
        "a step": outputs["db show"]["steps"][0],
        "a backup": outputs["db backups"][0],
        "a skipped rule": {"code": "", "rule": "", "reason": ""},  # none skip here: asdict()
    }
    from orchestrator.migrations.manager import InterruptedStep
    from orchestrator.migrations.validate import Finding

    inner["a finding"] = Finding("MIG000", "r", "error", "m", "f").as_dict()
    from orchestrator.migrations.preview import DroppedColumn, DroppedTable, UnknownDrops

    preview = outputs["db downgrade"]["destroys"]
    inner.update({
        "an undone revision": outputs["db downgrade"]["undoes"][0],
        "a downgrade preview": preview,
        # 003's downgrade drops only indexes: the others as the preview renders them.
        "a dropped table": vars(DroppedTable("004", "api_tokens", 0)),
        "a dropped column": vars(DroppedColumn("002", "tasks", "priority_level", 0)),
        "an unknown drop": vars(UnknownDrops("002", "why")),
    })
    inner["an interrupted step"] = InterruptedStep(
        "001", "upgrade", dt.datetime.now(dt.timezone.utc)).as_dict()
    assert set(objects) == set(inner)
    for name, example in inner.items():
        assert set(example) == objects[name], name
    every_field = set().union(*commands.values(), *objects.values())
    assert every_field <= explained, every_field - explained


def test_history_json_says_what_each_revision_is(run_here, sqlite_url):
    MigrationManager(sqlite_url).upgrade("002")
    document = json.loads(run_here("db", "history", "--json", "--database-url", sqlite_url).stdout)
    assert (document["current"], document["head"]) == ("002", "006")
    assert [(r["revision"], r["state"], r["is_head"]) for r in document["revisions"]] == [
        ("001", "applied", False), ("002", "applied", False), ("003", "pending", False),
        ("004", "pending", False), ("005", "pending", False), ("006", "pending", True)]
    assert document["revisions"][1]["last_step"]["direction"] == "upgrade"
    assert document["revisions"][2]["last_step"] is None
    assert [step["revision"] for step in document["steps"]] == ["001", "002"]
    execute(sqlite_url, "UPDATE alembic_version SET version_num = '999'")
    ahead = json.loads(run_here("db", "history", "--json", "--database-url", sqlite_url).stdout)
    assert {r["state"] for r in ahead["revisions"]} == {"unknown"}


# -- db show --------------------------------------------------------------------------------------


def test_show_describes_a_revision_and_what_the_database_recorded(run_here, sqlite_url):
    MigrationManager(sqlite_url).upgrade("003")
    MigrationManager(sqlite_url).downgrade("002")
    result = run_here("db", "show", "003", "--database-url", sqlite_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == ["revision: 003", "parent:   002",
                         "file:     " + str(ROOT / "src/orchestrator/migrations/alembic/versions/"
                                            "003_add_task_indexes.py")]
    assert lines[3] == f"state:    pending in {sqlite_url}"
    assert lines[4].startswith("recorded: upgrade ok ") and lines[5].startswith("          downgrade ok")
    assert "    Add the indexes that task queries use." in lines
    head = run_here("db", "show", "head", "--database-url", sqlite_url).stdout.splitlines()
    assert head[0] == "revision: 006 (head)" and head[4] == "recorded: none"
    relative = run_here("db", "show", "-1", "--database-url", sqlite_url).stdout
    assert relative.startswith("revision: 001\n")  # counted from the database's 002
    applied = json.loads(run_here("db", "show", "002", "--json", "--database-url", sqlite_url).stdout)
    assert applied["state"] == "applied" and applied["down_revision"] == "001"


def test_show_of_a_database_missing_or_ahead_says_so(run_here, sqlite_url):
    missing = run_here("db", "show", "001", "--database-url", sqlite_url).stdout
    assert f"state:    pending (the database does not exist yet) in {sqlite_url}" in missing
    MigrationManager(sqlite_url).upgrade()
    execute(sqlite_url, "UPDATE alembic_version SET version_num = '999'")
    ahead = run_here("db", "show", "001", "--database-url", sqlite_url).stdout
    assert "state:    unknown (the database is at 999, which these scripts do not know)" in ahead
    execute(sqlite_url, "DELETE FROM alembic_version")
    execute(sqlite_url, "DROP TABLE alembic_version")
    unversioned = run_here("db", "show", "001", "--database-url", sqlite_url).stdout
    assert "state:    unknown (the database has tables but no revision)" in unversioned


def test_show_sql_needs_no_database(run_here, tmp_path):
    """The SQL of one revision, as Django's sqlmigrate gives it: offline, here for PostgreSQL
    at an address where nothing listens."""
    url = "postgresql://ada:s3cret@127.0.0.1:1/app"
    up = run_here("db", "show", "003", "--sql", "--database-url", url)
    assert up.returncode == 0, up.stderr
    assert "Running upgrade 002 -> 003" in up.stdout and "CREATE INDEX CONCURRENTLY" in up.stdout
    assert "002 -> 001" not in up.stdout and "003 -> 004" not in up.stdout
    down = run_here("db", "show", "003", "--down", "--database-url", url)
    assert "Running downgrade 003 -> 002" in down.stdout and "DROP INDEX" in down.stdout
    first = run_here("db", "show", "001", "--sql", "--database-url", f"sqlite:///{tmp_path}/x.db")
    assert "CREATE TABLE users" in first.stdout and "CREATE TABLE alembic_version" in first.stdout
    assert not (tmp_path / "x.db").exists()
    undo_first = run_here("db", "show", "001", "--down", "--database-url", url).stdout
    assert "Running downgrade 001 -> " in undo_first and "DROP TABLE users" in undo_first


@pytest.mark.parametrize(("revision", "message"), [
    ("zzz", "unknown revision 'zzz'"),
    ("00", "unknown revision '00'"),  # a prefix of every revision names none of them
    ("base", "base is the state before any revision, not a revision"),
])
def test_show_of_no_single_revision_is_one_error_line(run_here, sqlite_url, revision, message):
    result = run_here("db", "show", revision, "--sql", "--database-url", sqlite_url)
    assert result.returncode == 2 and message in one_error_line(result.stderr)


def test_show_of_an_unreachable_database_shows_the_script_then_the_error(run_here):
    result = run_here("db", "show", "002", "--database-url", "postgresql://ada:s3cret@127.0.0.1:1/app")
    assert result.returncode == 3
    assert result.stdout.startswith("revision: 002\nparent:   001\nfile:     ")
    assert "cannot reach the database at postgresql+psycopg://ada:***@" in (
        one_error_line(result.stderr))


# -- shell completion -----------------------------------------------------------------------------


def completion_env(**extra: str) -> dict[str, str]:
    # Completion runs `orchestrator` as the user typed it: from PATH. No settings are needed
    # for it, not even production's required DATABASE_URL.
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "ENVIRONMENT": "production", **extra}


def completion_script(shell: str) -> str:
    result = subprocess.run([str(BIN / "orchestrator")], capture_output=True, text=True,
                            env=completion_env(**{COMPLETE_VAR: f"{shell}_source"}), timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout


def bash_completes(script: str, words: list[str]) -> list[str]:
    """What bash offers, through the completion function it was given, after `words`."""
    driver = (
        f"{script}\n"
        f"COMP_WORDS=({' '.join(words)}); COMP_CWORD={len(words) - 1}\n"
        "_orchestrator_completion orchestrator\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", driver], capture_output=True,
                            text=True, env=completion_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_bash_completes_commands_options_and_revisions():
    script = completion_script("bash")
    assert "complete " in script and "_orchestrator_completion" in script
    assert {"db", "serve", "users"} <= set(bash_completes(script, ["orchestrator", "''"]))
    assert bash_completes(script, ["orchestrator", "db", "up"]) == ["upgrade"]
    assert bash_completes(script, ["orchestrator", "db", "current", "--q"]) == ["--quiet"]
    assert bash_completes(script, ["orchestrator", "--env", "''"]) == [
        "development", "staging", "production"]
    assert bash_completes(script, ["orchestrator", "db", "downgrade", "00"]) == [
        "001", "002", "003", "004", "005", "006"]
    assert bash_completes(script, ["orchestrator", "db", "show", "he"]) == ["head"]


def test_zsh_completes_with_revision_titles():
    # What the zsh function asks `orchestrator` (Click's zsh protocol): type, value, help.
    asked = subprocess.run(
        [str(BIN / "orchestrator")], capture_output=True, text=True, timeout=60,
        env=completion_env(**{COMPLETE_VAR: "zsh_complete",
                              "COMP_WORDS": "orchestrator db stamp 00", "COMP_CWORD": "3"}),
    )
    assert asked.returncode == 0
    assert asked.stdout.splitlines()[:3] == [
        "plain", "001", "Initial schema: users, projects, agents and tasks."]
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed (.ci/run installs it): its script was not sourced")
    script = completion_script("zsh")
    registered = subprocess.run(
        ["zsh", "-f", "-c", f"autoload -U compinit && compinit -u\n{script}\n"
                            "print -r -- ${_comps[orchestrator]}"],
        capture_output=True, text=True, env=completion_env(), timeout=60,
    )
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.strip() == "_orchestrator_completion"


# -- scripts/run_migrations.py from any Python ----------------------------------------------------


def test_seed_script_runs_from_a_python_that_cannot_import_the_project(sqlite_url):
    """`python scripts/run_migrations.py current`, as the README writes it, with a Python that
    has none of the project's packages (-S: no site-packages)."""
    MigrationManager(sqlite_url).upgrade("002")
    script = str(ROOT / "scripts" / "run_migrations.py")
    env = {**os.environ, "DATABASE_URL": sqlite_url}
    env.pop("ORCHESTRATOR_RUN_MIGRATIONS_REEXEC", None)
    result = subprocess.run([sys.executable, "-S", script, "current"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "002\n"
    # Handed over once only: an environment that cannot import it either is one error line.
    again = subprocess.run([sys.executable, "-S", script, "current"], capture_output=True,
                           text=True, env={**env, "ORCHESTRATOR_RUN_MIGRATIONS_REEXEC": "1"},
                           timeout=120)
    assert again.returncode == 2
    assert "cannot import 'orchestrator'" in one_error_line(again.stderr) and "uv sync" in again.stderr
    usage = subprocess.run([sys.executable, "-S", script, "downgrade"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert usage.returncode == 2 and "needs -r REV" in one_error_line(usage.stderr)
