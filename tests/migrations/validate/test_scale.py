"""The validator on a mature project's chain (issue 17): the same verdicts at scale, snapshots
that match a fresh reflection, `--since` / `--since-git`, and progress."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from orchestrator.db import create_engine
from orchestrator.migrations import MigrationManager, UnknownRevisionError
from orchestrator.migrations.validate import (
    RULES,
    GitRefError,
    Progress,
    SchemaReader,
    newest_revision_on_git_ref,
    schema_snapshot,
    validate,
)
from tests.fixtures import add_revision, copy_scripts, revisions_after
from tests.fixtures.long_chain import add_revisions, long_chain, long_chain_metadata
from tests.schema import scalar

ALL_CODES = [rule.code for rule in RULES]
# The project's chain: its head, and the revision before it.
*_, BEFORE_HEAD, HEAD = revisions_after("000")
LINT_CODES = [code for code in ALL_CODES if code >= "MIG009"]


def check(url: str, scripts, **options):
    return validate(url, script_location=str(scripts), metadata=long_chain_metadata(scripts),
                    **options)


def test_a_long_chain_passes_strict_validation_with_every_rule(db_url, tmp_path):
    scripts = long_chain(tmp_path, 25, through=None)  # 005 and 006 too, as the models are
    MigrationManager(db_url, script_location=str(scripts)).upgrade()
    report = check(db_url, scripts, strict=True)
    assert report.findings == [] and report.skipped == []
    assert report.passed == ALL_CODES and report.since is None


def test_the_round_trip_still_finds_a_downgrade_that_leaves_a_table_deep_in_the_chain(
    db_url, tmp_path
):
    scripts = long_chain(tmp_path, 20)
    [middle] = (scripts / "versions").glob("014_*.py")
    middle.write_text(middle.read_text().replace(
        '    op.drop_table("extra_14")\n', ""))
    report = check(db_url, scripts, rules=["MIG008"])
    [finding] = report.findings
    assert finding.message == ("revision 014: downgrade does not restore the schema of 013: "
                               "table extra_14 is extra")
    assert finding.file == str(middle)


CHANGES = [
    "CREATE TABLE parent (id INTEGER PRIMARY KEY, code VARCHAR(10) NOT NULL UNIQUE)",
    "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent (id) "
    "ON DELETE CASCADE, n INTEGER DEFAULT 3 CHECK (n > 0))",
    "CREATE INDEX ix_child_n ON child (n)",
    "CREATE VIEW parent_ids AS SELECT id FROM parent",
    "ALTER TABLE child ADD COLUMN note VARCHAR(20)",
    "ALTER TABLE parent RENAME COLUMN code TO label",
    "DROP INDEX ix_child_n",
    "CREATE UNIQUE INDEX ix_child_n ON child (n, parent_id)",
    "ALTER TABLE child RENAME TO kid",
    "DROP TABLE kid",
]


def test_cached_snapshots_equal_a_fresh_reflection_after_every_change(db_url):
    reader = SchemaReader()
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            for statement in CHANGES:
                connection.execute(text(statement))
                connection.commit()
                cached = reader.snapshot(connection)
                connection.rollback()
                assert cached == schema_snapshot(db_url), statement
    finally:
        engine.dispose()


def test_a_sqlite_foreign_key_without_columns_follows_the_referred_primary_key(sqlite_url):
    reader = SchemaReader()
    engine = create_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            for statement in ("CREATE TABLE a (id INTEGER PRIMARY KEY)",
                              "CREATE TABLE b (a_id INTEGER REFERENCES a)"):
                connection.exec_driver_sql(statement)
            connection.commit()
            before = reader.snapshot(connection)
            connection.exec_driver_sql("DROP TABLE a")
            connection.exec_driver_sql("CREATE TABLE a (code TEXT PRIMARY KEY)")
            connection.commit()
            after = reader.snapshot(connection)
            connection.rollback()
    finally:
        engine.dispose()
    assert before["b"]["foreign keys"][0][3] == ("id",)
    assert after["b"]["foreign keys"][0][3] == ("code",)


def test_a_reader_shared_with_another_database_reuses_only_what_is_the_same(db_url):
    """The drift rule reads the live database with the scratch database's reflections: a table
    whose catalog entry is the same is not reflected again, one that differs is."""
    from orchestrator.migrations.scratch import scratch_database

    statements = CHANGES[:3]
    reader = SchemaReader()
    with scratch_database(db_url, "orchestrator_test_share") as other_url:
        for url in (db_url, other_url):
            engine = create_engine(url)
            try:
                with engine.connect() as connection:
                    for statement in statements:
                        connection.execute(text(statement))
                    connection.commit()
            finally:
                engine.dispose()
        first = schema_snapshot(other_url, reader)
        engine = create_engine(db_url)
        try:
            with engine.connect() as connection:
                before = reader.snapshot(connection)
                connection.rollback()
        finally:
            engine.dispose()
        assert before == first == schema_snapshot(db_url)
        assert all(before[table] is first[table] for table in before)
        engine = create_engine(other_url)
        try:
            with engine.connect() as connection:
                connection.execute(text("ALTER TABLE child ADD COLUMN note VARCHAR(20)"))
                connection.commit()
        finally:
            engine.dispose()
        changed = schema_snapshot(other_url, reader)
        assert changed == schema_snapshot(other_url) != before
        assert changed["parent"] is before["parent"] and changed["child"] != before["child"]


# -- --since ----------------------------------------------------------------------------------------


def chain_with_dangers(tmp_path):
    """Extra revisions 005-012; 006 builds an index on users without CONCURRENTLY (MIG013) and
    010's downgrade leaves its table's index behind (MIG008 on PostgreSQL and SQLite alike)."""
    scripts = copy_scripts(tmp_path)
    add_revisions(scripts, 1)
    add_revision(scripts, 'op.create_index("ix_users_name_006", "users", ["name"])',
                 'op.drop_index("ix_users_name_006", table_name="users")')
    add_revisions_after(scripts, 6)
    [bad] = (scripts / "versions").glob("010_*.py")
    bad.write_text(bad.read_text().replace(
        'op.drop_table("extra_10")', 'op.drop_table("extra_10")\n    op.create_table('
        '"debris", sa.Column("id", sa.Integer(), primary_key=True))'))
    return scripts


def add_revisions_after(scripts, count):
    """As add_revisions, after a head that is not one of them."""
    from tests.fixtures.long_chain import _TEMPLATE, project_head

    parent = project_head(scripts)
    for number in range(int(parent) + 1, int(parent) + 1 + count):
        revision = f"{number:03d}"
        (scripts / "versions" / f"{revision}_add_extra_{number}.py").write_text(
            _TEMPLATE.format(number=number, revision=revision, parent=parent))
        parent = revision


def test_since_judges_the_round_trip_and_the_linter_only_after_the_revision(sqlite_url, tmp_path):
    scripts = chain_with_dangers(tmp_path)
    everything = validate(sqlite_url, script_location=str(scripts), rules=["MIG008", "MIG013"])
    assert everything.codes() == {"MIG008", "MIG013"}

    after_the_index = validate(sqlite_url, script_location=str(scripts),
                               rules=["MIG008", "MIG013"], since="006")
    assert after_the_index.codes() == {"MIG008"}
    assert after_the_index.findings[0].message.startswith("revision 010:")
    narrowed = after_the_index.since
    assert narrowed.revision == "006" and narrowed.rules == ["MIG008", "MIG013"]
    assert narrowed.checked == ["007", "008", "009", "010", "011", "012"]
    assert narrowed.not_checked == ["001", "002", "003", "004", "005", "006"]
    assert "MIG006" in narrowed.reason
    assert after_the_index.as_dict()["since"]["checked"][0] == "007"

    after_both = validate(sqlite_url, script_location=str(scripts),
                          rules=["MIG008", "MIG013"], since="010")
    assert after_both.findings == [] and after_both.passed == ["MIG008", "MIG013"]


def test_since_keeps_the_chain_rules_and_the_models_on_every_revision(sqlite_url, tmp_path):
    scripts = long_chain(tmp_path, 4)
    [first] = (scripts / "versions").glob("005_*.py")
    first.write_text(first.read_text().replace(
        'op.drop_table("extra_5")', "pass").replace(
        'op.drop_index(op.f("ix_extra_5_name"), table_name="extra_5")', "pass"))
    report = validate(sqlite_url, script_location=str(scripts), since="007")
    # MIG003 (a downgrade that does nothing) is a chain rule; MIG004 still sees every table.
    assert {"MIG003", "MIG004"} <= report.codes() and "MIG008" not in report.codes()


def test_since_the_head_checks_no_revision_and_says_so(sqlite_url, tmp_path):
    report = validate(sqlite_url, since=HEAD, rules=["MIG008"])
    assert report.passed == ["MIG008"]
    assert report.since.describe().startswith(f"since {HEAD}: MIG008 checked 0 revisions (none) "
                                              f"and skipped {int(HEAD)} (001-{HEAD})")


def test_since_beside_a_database_these_scripts_do_not_describe(sqlite_url, tmp_path):
    scripts = long_chain(tmp_path, 3)
    with create_engine(sqlite_url).begin() as connection:
        connection.exec_driver_sql("CREATE TABLE someone_elses (id INTEGER)")
    report = validate(sqlite_url, script_location=str(scripts), since="006",
                      rules=["MIG005", "MIG008"])
    assert report.passed == ["MIG008"] and [s.code for s in report.skipped] == ["MIG005"]


def test_since_with_a_revision_the_chain_lacks_is_refused(sqlite_url, tmp_path):
    with pytest.raises(UnknownRevisionError, match="--since 999: no such revision"):
        validate(sqlite_url, since="999")


def test_since_on_a_live_database_below_it_still_compares_drift(sqlite_url, tmp_path):
    scripts = long_chain(tmp_path, 6)
    MigrationManager(sqlite_url, script_location=str(scripts)).upgrade("006")
    with create_engine(sqlite_url).begin() as connection:
        connection.exec_driver_sql("CREATE INDEX ix_hand_made ON users (name)")
    report = validate(sqlite_url, script_location=str(scripts), since="009",
                      metadata=long_chain_metadata(scripts), rules=["MIG005", "MIG008"])
    [drift] = report.findings
    assert drift.code == "MIG005" and "ix_hand_made" in drift.message
    assert report.passed == ["MIG008"]


# -- --since-git ------------------------------------------------------------------------------------


def git(folder, *args):
    subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t",
                    *args], check=True, capture_output=True)


def test_since_git_is_the_newest_revision_whose_script_is_on_the_ref(sqlite_url, tmp_path):
    scripts = long_chain(tmp_path, 3)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "main")
    git(tmp_path, "branch", "main-before")
    add_revisions_after(scripts, 2)  # a feature branch's new revisions, not committed
    assert newest_revision_on_git_ref("main-before", sqlite_url, str(scripts)) == "007"
    assert newest_revision_on_git_ref("HEAD", sqlite_url, str(scripts)) == "007"
    with pytest.raises(GitRefError, match="--since-git origin/nowhere: no such branch, tag or "
                                          "commit in .*; fetch it first"):
        newest_revision_on_git_ref("origin/nowhere", sqlite_url, str(scripts))


def test_since_git_without_git_says_so(sqlite_url, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GitRefError, match="--since-git HEAD: git is not installed"):
        newest_revision_on_git_ref("HEAD", sqlite_url)


def test_since_git_outside_a_checkout_says_so(sqlite_url, tmp_path):
    scripts = copy_scripts(tmp_path)
    with pytest.raises(GitRefError, match="is not in a git checkout; give the revision with "
                                          "--since REV"):
        newest_revision_on_git_ref("HEAD", sqlite_url, str(scripts))


def test_since_git_with_a_ref_that_has_none_of_the_revisions_checks_everything(sqlite_url,
                                                                               tmp_path):
    scripts = copy_scripts(tmp_path)
    git(tmp_path, "init", "-q")
    (tmp_path / "README").write_text("before the migrations\n")
    git(tmp_path, "add", "README")
    git(tmp_path, "commit", "-q", "-m", "first")
    assert newest_revision_on_git_ref("HEAD", sqlite_url, str(scripts)) is None


# -- the command ------------------------------------------------------------------------------------


@pytest.fixture
def run_here(monkeypatch, capsys):
    from tests.fixtures import command_runner

    return command_runner(monkeypatch, capsys)


def test_validate_since_prints_what_it_left_out(sqlite_url, run_here):
    MigrationManager(sqlite_url).upgrade()
    result = run_here("db", "validate", "--since", BEFORE_HEAD, "--database-url", sqlite_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (f"narrowed since {BEFORE_HEAD}: MIG008, " in result.stdout
            and f"checked 1 revision ({HEAD}) and skipped {int(BEFORE_HEAD)} "
                f"(001-{BEFORE_HEAD}): they are {BEFORE_HEAD} and older" in result.stdout)


def test_validate_with_a_bad_since_or_git_ref_is_one_line_and_exit_2(sqlite_url, run_here):
    unknown = run_here("db", "validate", "--since", "999", "--database-url", sqlite_url)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        unknown.stderr.strip()] and "--since 999: no such revision" in unknown.stderr
    bad_ref = run_here("db", "validate", "--since-git", "no/such-ref", "--database-url",
                       sqlite_url)
    assert bad_ref.returncode == 2 and bad_ref.stdout == ""
    assert bad_ref.stderr.startswith("Error: --since-git no/such-ref: ")
    assert len(bad_ref.stderr.strip().splitlines()) == 1 and "Traceback" not in bad_ref.stderr
    both = run_here("db", "validate", "--since", "003", "--since-git", "HEAD",
                    "--database-url", sqlite_url)
    assert both.returncode == 2 and "give one of them" in both.stderr


def test_validate_since_git_head_in_the_checkout(sqlite_url, run_here):
    MigrationManager(sqlite_url).upgrade()
    result = run_here("db", "validate", "--since-git", "HEAD", "--json",
                      "--database-url", sqlite_url)
    import json

    document = json.loads(result.stdout)
    assert document["since_git"] == {"ref": "HEAD", "revision": HEAD}
    assert document["since"]["not_checked"][-1] == HEAD


def test_validate_prints_a_line_per_rule_when_not_on_a_terminal(sqlite_url, run_here):
    MigrationManager(sqlite_url).upgrade()
    result = run_here("db", "validate", "--database-url", sqlite_url)
    lines = result.stderr.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ALL_CODES
    assert lines[6].startswith("MIG008 round-trip: passed (") and lines[6].endswith(" s)")


class TerminalOutput(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_validate_draws_a_bar_of_migration_steps_on_a_terminal(sqlite_url, tmp_path, monkeypatch):
    from orchestrator.cli.progress import ValidationProgress

    output = TerminalOutput()
    monkeypatch.setattr(sys, "stderr", output)
    progress = ValidationProgress()
    report = validate(sqlite_url, script_location=str(long_chain(tmp_path, 3)),
                      progress=progress, rules=["MIG008"])
    progress.close()
    assert report.passed == ["MIG008"]
    drawn = output.getvalue()
    assert "MIG008 round-trip" in drawn and "migration steps" in drawn
    assert "MIG008 round-trip: passed" not in drawn  # the bar, not the per-rule lines


def test_progress_counts_every_scratch_step(sqlite_url, tmp_path):
    seen = []

    class Recorder(Progress):
        def step(self, done: int, total: int) -> None:
            seen.append((done, total))

    validate(sqlite_url, script_location=str(long_chain(tmp_path, 2)), progress=Recorder(),
             rules=["MIG008"])
    chain = 6
    assert seen[-1] == (4 * chain, 4 * chain)
    validate(sqlite_url, script_location=str(long_chain(tmp_path, 2)), progress=Recorder(),
             rules=["MIG008"], since="005")
    assert seen[-1] == (chain + 3, chain + 3)


# -- a validation killed midway -----------------------------------------------------------------

_KILLED = """
import sys, time
from orchestrator.migrations.scratch import scratch_database
from orchestrator.migrations.validate.context import SCRATCH_PREFIX
with scratch_database(sys.argv[1], SCRATCH_PREFIX) as url:
    print(url, flush=True)
    time.sleep(600)
"""


def _exists(scratch_url: str) -> bool:
    if scratch_url.startswith("sqlite"):
        return Path(make_url(scratch_url).database).parent.exists()
    admin = scratch_url.rsplit("/", 1)[0] + "/postgres"
    return bool(scalar(admin, "SELECT count(*) FROM pg_database WHERE datname = "
                       f"'{make_url(scratch_url).database}'"))


def test_the_scratch_database_of_a_killed_validation_is_dropped_by_the_next_one(db_url):
    """SIGKILL (or a CI job cancelled hard) gives a validation no chance to drop its scratch
    database: the next validation beside the same server drops it, and only it."""
    process = subprocess.Popen([sys.executable, "-c", _KILLED, db_url], stdout=subprocess.PIPE,
                               text=True)
    scratch_url = process.stdout.readline().strip()
    assert scratch_url and _exists(scratch_url)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()
    assert _exists(scratch_url)
    MigrationManager(db_url).upgrade()
    validate(db_url, rules=["MIG001"])
    assert not _exists(scratch_url)


_HELD = """
import sys, time
from orchestrator.migrations.validate import roundtrip
from orchestrator.cli.entry import main

def held(self, stops):
    print(self.url, flush=True)
    time.sleep(600)

roundtrip.Scratch.climb = held
main(["db", "validate", "--database-url", sys.argv[1]])
"""


def test_sigterm_ends_a_validation_as_ctrl_c_does_and_drops_its_scratch_database(db_url):
    """A cancelled CI job or `docker stop` sends SIGTERM: the scratch database is dropped,
    `Interrupted.` is the last line, and the exit code is 130."""
    MigrationManager(db_url).upgrade()
    process = subprocess.Popen([sys.executable, "-c", _HELD, db_url], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    scratch_url = process.stdout.readline().strip()
    assert scratch_url and _exists(scratch_url)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.splitlines()[-1] == "Interrupted."
    assert not _exists(scratch_url)


def test_a_step_failing_because_it_was_interrupted_is_an_interruption_not_a_finding(
        sqlite_url, tmp_path):
    """An interrupt that lands inside a statement cuts its connection, and the rollback after
    it fails with the driver's error (PendingRollbackError): the validation was interrupted;
    the migration is not broken."""
    scripts = copy_scripts(tmp_path)
    add_revision(scripts, "try:\n    raise KeyboardInterrupt\nexcept KeyboardInterrupt:\n"
                          "    raise RuntimeError('the rollback failed')")
    with pytest.raises(KeyboardInterrupt):
        validate(sqlite_url, script_location=str(scripts), rules=["MIG008"])
