"""The validator: drift, edited scripts, irreversible revisions, scratch databases and the round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.migrations import MigrationManager
from orchestrator.migrations.validate import (
    IrreversibleMigrationError,
    diff_schemas,
    validate,
)
from tests.fixtures import VALIDATOR_SETS, add_revision, copy_scripts
from tests.migrations.validate.helpers import LINT_CODES, check
from tests.schema import execute

# -- drift, edited scripts, irreversible revisions, scratch databases ------------------------------


def test_drift_made_by_hand_is_found(db_url, tmp_path):
    with MigrationManager(db_url, script_location=str(VALIDATOR_SETS / "good")) as manager:
        manager.upgrade()
    execute(db_url, "CREATE INDEX ix_made_by_hand ON widgets (name)",
            "ALTER TABLE widgets ADD COLUMN note VARCHAR(10)")
    report = check(db_url, VALIDATOR_SETS / "good")
    assert report.codes() == {"MIG005"} and not report.ok
    text = "\n".join(f.message for f in report.findings)
    assert "at 002: column widgets.note: expected no such column, found VARCHAR(10) NULL" in text
    assert "indexes of widgets: expected [], found [('ix_made_by_hand', ('name',), False)]" in text


def test_drift_is_compared_at_the_databases_own_revision(sqlite_url):
    with MigrationManager(sqlite_url, script_location=str(VALIDATOR_SETS / "good")) as manager:
        manager.upgrade("001")
    assert check(sqlite_url, VALIDATOR_SETS / "good", rules=["MIG005"]).passed == ["MIG005"]
    execute(sqlite_url, "DROP TABLE widgets")
    [finding] = check(sqlite_url, VALIDATOR_SETS / "good", rules=["MIG005"]).findings
    assert finding.message.endswith("at 001: table widgets is missing")


def test_an_applied_script_edited_afterwards_is_found(db_url, tmp_path):
    scripts = copy_scripts(tmp_path, VALIDATOR_SETS / "good")
    with MigrationManager(db_url, script_location=str(scripts)) as manager:
        manager.upgrade()
    edited = scripts / "versions" / "001_widgets.py"
    edited.write_text(edited.read_text() + "\n# edited after it ran\n")
    report = check(db_url, scripts)
    [finding] = report.findings
    assert (finding.code, finding.file) == ("MIG006", str(edited))
    assert finding.message.startswith("revision 001 was edited after it was applied on ")


def test_an_irreversible_revision_passes_and_downgrade_refuses_to_cross_it(db_url):
    with MigrationManager(db_url, script_location=str(VALIDATOR_SETS / "irreversible")) as manager:
        manager.upgrade()
        with pytest.raises(IrreversibleMigrationError) as refused:
            manager.downgrade("002")
        assert "cannot downgrade past 003" in str(refused.value)
        assert "orchestrator db restore" in str(refused.value)
        assert manager.get_current_revision() == "003"
        assert manager.plan_downgrade("003") == []


def test_without_a_database_the_rules_that_need_one_are_skipped(tmp_path):
    missing_sqlite = f"sqlite:///{tmp_path / 'never-made.db'}"
    report = validate(missing_sqlite)
    assert [s.code for s in report.skipped] == ["MIG005", "MIG006"]
    assert all("does not exist yet" in s.reason for s in report.skipped)
    assert not Path(tmp_path / "never-made.db").exists()

    unreachable = "postgresql+psycopg://postgres:pw@127.0.0.1:1/nowhere"
    report = validate(unreachable)
    skipped = {s.code: s.reason for s in report.skipped}
    assert sorted(skipped) == ["MIG004", "MIG005", "MIG006", "MIG008"]
    assert skipped["MIG004"].startswith("cannot create a scratch database beside "
                                        "postgresql+psycopg://postgres:***@127.0.0.1:1/nowhere")
    assert skipped["MIG005"].startswith("no database to compare with: cannot reach the database")
    assert report.passed == ["MIG001", "MIG002", "MIG003", "MIG023", *LINT_CODES]
    assert "pw@" not in json.dumps(report.as_dict())


def test_a_database_the_scripts_do_not_describe_is_not_compared(sqlite_url):
    execute(sqlite_url, "CREATE TABLE someone_elses (id INTEGER)")
    report = check(sqlite_url, VALIDATOR_SETS / "good", rules=["MIG005"])
    assert report.skipped[0].reason.startswith("the database is not at a revision these scripts know")


def test_upgrades_that_fail_on_a_fresh_database_are_round_trip_errors(db_url, tmp_path):
    scripts = copy_scripts(tmp_path, VALIDATOR_SETS / "good")
    # Applied to the live database first, then edited into something that fails.
    with MigrationManager(db_url, script_location=str(scripts)) as manager:
        manager.upgrade()
    edited = scripts / "versions" / "002_colour.py"
    edited.write_text(edited.read_text().replace(
        'op.add_column("widgets"', 'op.add_column("no_such_table"'))
    report = check(db_url, scripts)
    [failure] = [f for f in report.findings if f.code == "MIG008"]
    assert failure.message.startswith("revision 002: upgrade fails on a fresh database: migration 002")
    assert failure.location.endswith("002_colour.py:14")
    skipped = {s.code: s.reason for s in report.skipped}
    assert skipped["MIG004"].startswith("the migrations do not reach head on a fresh database")
    assert skipped["MIG005"].startswith("the migrations do not reach the database's revision")


def test_a_downgrade_that_fails_is_a_round_trip_error(sqlite_url, tmp_path):
    scripts = copy_scripts(tmp_path, VALIDATOR_SETS / "good")
    add_revision(scripts, 'op.execute("SELECT 1")',
                 'op.execute("SELECT 1")\nraise RuntimeError("cannot go back")')
    [finding] = check(sqlite_url, scripts, rules=["MIG008"]).findings
    assert finding.message.startswith("revision 003: downgrade fails: migration 003 failed: "
                                      "RuntimeError: cannot go back")


def test_a_failed_scratch_step_is_reported_without_the_commands_advice(sqlite_url, tmp_path):
    # What `db downgrade` adds (where the database was left, "run the command again") is about
    # the scratch database, which the validator throws away.
    scripts = copy_scripts(tmp_path, VALIDATOR_SETS / "good")
    add_revision(scripts, 'op.execute("SELECT 1")',
                 'op.execute("SELECT 1")\nraise RuntimeError("cannot go back")')
    [finding] = check(sqlite_url, scripts, rules=["MIG008"]).findings
    assert finding.message == ("revision 003: downgrade fails: migration 003 failed: "
                               "RuntimeError: cannot go back")


def test_an_upgrade_that_fails_the_second_time_is_a_round_trip_error(sqlite_url, tmp_path):
    scripts = copy_scripts(tmp_path, VALIDATOR_SETS / "good")
    add_revision(scripts, "op.execute(\"INSERT INTO widgets (id, name) VALUES (1, 'seed')\")",
                 "op.execute(\"UPDATE widgets SET name = 'unseeded' WHERE id = 1\")")
    [finding] = check(sqlite_url, scripts, rules=["MIG008"]).findings
    assert finding.message.startswith("revision 003: upgrade fails the second time, after its downgrade")


def test_an_upgrade_that_builds_another_schema_the_second_time_is_a_round_trip_error(
    sqlite_url, tmp_path
):
    scripts = copy_scripts(tmp_path, VALIDATOR_SETS / "good")
    add_revision(
        scripts,
        """
        rows = op.get_bind().execute(sa.text("SELECT count(*) FROM widgets")).scalar()
        if not rows:
            op.create_index("ix_widgets_name", "widgets", ["name"])
        op.execute("INSERT INTO widgets (name) VALUES ('left behind')")
        """,
        'op.execute("DROP INDEX IF EXISTS ix_widgets_name")',
    )
    [finding] = check(sqlite_url, scripts, rules=["MIG008"]).findings
    assert finding.message.startswith(
        "revision 003: upgrading again after its downgrade gives another schema: indexes of widgets")


def test_schema_differences_read_as_sentences():
    table = {"columns": {"id": ("INTEGER", False, "None"), "n": ("INTEGER", True, "3")},
             "primary key": ("id",), "foreign keys": [], "indexes": [],
             "unique constraints": [], "checks": []}
    changed = {**table, "columns": {"id": ("INTEGER", False, "None")}, "primary key": ()}
    assert diff_schemas({"t": table, "u": table}, {"t": changed, "v": table}) == [
        "table u is missing",
        "table v is extra",
        "column t.n: expected INTEGER NULL DEFAULT 3, found no such column",
        "primary key of t: expected ('id',), found ()",
    ]

