"""The validator: each rule fires on its broken migration set, and the project's own set passes."""

from __future__ import annotations

import json
import tempfile
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import Column, ForeignKey, Index, Integer, MetaData, String, Table, UniqueConstraint

from orchestrator.migrations import MigrationManager, lint
from orchestrator.migrations.validate import (
    RULES,
    IrreversibleMigrationError,
    ScriptFile,
    describe_diff as _describe_diff,
    diff_schemas,
    validate,
)
from orchestrator.models import NAMING_CONVENTION
from tests.fixtures import VALIDATOR_SETS, add_revision, command_runner, copy_scripts
from tests.schema import execute, scalar

ALL_CODES = [rule.code for rule in RULES]
LINT_CODES = [rule.code for rule in lint.RULES]


def widgets(colour: bool = True, gadgets: bool = False) -> MetaData:
    """The models the validator's migration sets are meant to build."""
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    columns = [Column("id", Integer, primary_key=True), Column("name", String(100), nullable=False)]
    if colour:
        columns.append(Column("colour", String(20)))
    Table("widgets", metadata, *columns)
    if gadgets:
        Table("gadgets", metadata, Column("id", Integer, primary_key=True))
    return metadata


@pytest.fixture
def run_here(monkeypatch, capsys):
    return command_runner(monkeypatch, capsys)


def check(url: str, scripts: Path, metadata: MetaData | None = None, **options):
    return validate(url, script_location=str(scripts), metadata=metadata or widgets(), **options)


# -- the project's own migrations ---------------------------------------------------------------


def scratch_databases(url: str) -> set[str]:
    """The validator's scratch databases on `url`'s server, or its scratch folders."""
    if url.startswith("sqlite"):
        return {p.name for p in Path(tempfile.gettempdir()).glob("orchestrator-validate-*")}
    return set(scalar(url, "SELECT coalesce(string_agg(datname, ','), '') FROM pg_database "
                           "WHERE datname LIKE 'orchestrator\\_validate\\_%'").split(",")) - {""}


def test_the_projects_own_migrations_pass_strict_validation(manager: MigrationManager, tmp_path,
                                                            monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # scratch folders land here
    manager.upgrade()
    before = scratch_databases(manager.database_url)
    report = validate(manager.database_url, strict=True)
    assert report.findings == [] and report.skipped == []
    assert report.passed == ALL_CODES and report.ok
    assert scratch_databases(manager.database_url) == before  # the scratch database is gone


# -- each rule on its broken set ------------------------------------------------------------------

# The set, the metadata its models describe, and exactly what fires (rules left out of the
# set because a broken chain makes them meaningless are skipped, and the report says so).
BROKEN_SETS = {
    "good": (widgets(), set()),
    "multiple_heads": (widgets(), {"MIG001", "MIG023"}),
    "broken_chain": (widgets(), {"MIG002"}),
    "missing_downgrade": (widgets(), {"MIG003", "MIG008"}),
    "models_mismatch": (widgets(colour=True), {"MIG004"}),
    "dangerous": (widgets(), {"MIG012", "MIG013", "MIG017", "MIG018", "MIG019"}),
    "round_trip": (widgets(gadgets=True), {"MIG008"}),
    "irreversible": (widgets(), set()),
}


@pytest.mark.parametrize("name", BROKEN_SETS)
def test_each_rule_fires_on_its_broken_set(db_url: str, name: str):
    metadata, expected = BROKEN_SETS[name]
    report = check(db_url, VALIDATOR_SETS / name, metadata)
    assert report.codes() == expected
    assert report.ok == (not expected or name == "dangerous")
    for finding in report.findings:
        assert finding.fix and finding.message
    if expected & {"MIG001", "MIG002"}:
        skipped = {s.code: s.reason for s in report.skipped}
        assert set(skipped) >= {"MIG004", "MIG008"}
        assert skipped["MIG004"] == "the scripts do not form one complete chain in number order (see MIG001, MIG002, MIG023)"


def test_two_heads_are_named_with_the_newer_file(sqlite_url):
    [finding, fork] = check(sqlite_url, VALIDATOR_SETS / "multiple_heads").findings
    assert "2 heads (003, 004)" in finding.message
    assert finding.file.endswith("004_weight.py") and finding.line == 11
    assert "`orchestrator db rebase`" in finding.fix
    # MIG023 says the same as every command does, naming both files.
    assert (fork.code, fork.message) == (
        "MIG023", "the migration scripts 003_size.py and 004_weight.py both revise 002, so the "
        "chain forks there")
    assert fork.fix.startswith("`orchestrator db rebase` to renumber")


def test_a_missing_parent_is_named_where_it_is_referenced(sqlite_url):
    [finding] = check(sqlite_url, VALIDATOR_SETS / "broken_chain").findings
    assert finding.message == "revision 003 follows 002, which does not exist"
    assert finding.location.endswith("003_orphan.py:11")


def test_a_downgrade_with_only_a_docstring_or_not_implemented_does_nothing(sqlite_url, tmp_path):
    folder = _versions(
        tmp_path,
        a=_rev("001", None),
        b='revision = "002"\ndown_revision = "001"\ndef upgrade():\n    pass\n'
          'def downgrade():\n    """Nothing to undo."""\n',
        c='revision = "003"\ndown_revision = "002"\ndef upgrade():\n    pass\n'
          'def downgrade():\n    raise NotImplementedError\n',
        d='revision = "004"\ndown_revision = "003"\ndef upgrade():\n    pass\n',
    )
    report = check(sqlite_url, folder, rules=["MIG003"])
    assert [f.message for f in report.findings] == [
        "revision 001 has a downgrade() that does nothing",
        "revision 002 has a downgrade() that does nothing",
        "revision 003 has a downgrade() that does nothing",
        "revision 004 has no downgrade()",
    ]
    assert report.findings[-1].line is None


def test_a_downgrade_that_does_nothing_is_an_error_with_its_line(sqlite_url):
    report = check(sqlite_url, VALIDATOR_SETS / "missing_downgrade", rules=["MIG003"])
    [finding] = report.findings
    assert finding.message == "revision 002 has a downgrade() that does nothing"
    assert finding.location.endswith("002_colour.py:18") and "irreversible = True" in finding.fix


def test_models_that_differ_from_the_migrations_are_listed(sqlite_url):
    [finding] = check(sqlite_url, VALIDATOR_SETS / "models_mismatch").findings
    assert finding.message.endswith("column widgets.colour is in the models only")
    assert "orchestrator db create" in finding.fix


def test_every_kind_of_model_difference_is_described(db_url):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    Table("widgets", metadata, Column("id", Integer, primary_key=True),
          Column("name", String(50), nullable=True), Index("ix_widgets_name", "name"))
    Table("extra", metadata, Column("id", Integer, primary_key=True),
          Column("widget_id", ForeignKey("widgets.id")), UniqueConstraint("widget_id"))
    messages = [f.message for f in check(db_url, VALIDATOR_SETS / "good", metadata).findings]
    text = "\n".join(messages)
    assert "table extra is in the models only" in text
    assert "column widgets.colour is in the migrations only" in text
    assert "index ix_widgets_name on widgets is in the models only" in text
    assert "type of widgets.name: the migrations give VARCHAR(100), the models VARCHAR(50)" in text
    assert "nullable of widgets.name: the migrations give False, the models True" in text


def test_autogenerate_differences_of_other_kinds_are_described():
    metadata = MetaData()
    table = Table("t", metadata, Column("id", Integer, primary_key=True), Column("x", Integer))
    assert _describe_diff(("remove_table", table)) == "table t is in the migrations only"
    assert _describe_diff(("add_column", None, "t", table.c.x)) == "column t.x is in the models only"
    constraint = UniqueConstraint(table.c.x, name="uq_t_x")
    table.append_constraint(constraint)
    assert _describe_diff(("remove_constraint", constraint)) == (
        "constraint uq_t_x on t is in the migrations only")


# -- dangerous operations (the linter's rules; tests/test_lint.py has the rest) --------------------


def test_dangerous_operations_are_warnings_or_errors_with_strict(sqlite_url):
    lint_codes = LINT_CODES
    report = check(sqlite_url, VALIDATOR_SETS / "dangerous", rules=lint_codes)
    found = [(Path(f.file).name, f.line, f.code) for f in report.findings]
    assert sorted(found) == sorted([
        # The batch block's operations run when it ends: they are reported at its `with` line.
        ("003_dangerous.py", 15, "MIG012"),
        ("003_dangerous.py", 15, "MIG019"),
        ("003_dangerous.py", 19, "MIG013"),
        ("003_dangerous.py", 20, "MIG019"),
        ("004_undo.py", 15, "MIG018"),
        ("004_undo.py", 16, "MIG019"),
        ("004_undo.py", 17, "MIG013"),
        ("004_undo.py", 18, "MIG017"),
        ("004_undo.py", 18, "MIG019"),
    ])
    assert {f.severity for f in report.findings} == {"warning"} and report.ok
    assert {f.rule for f in report.findings} == {
        "set-not-null", "rename-in-use", "index-not-concurrent", "drop-in-use",
        "rewriting-type-change"}
    strict = check(sqlite_url, VALIDATOR_SETS / "dangerous", rules=lint_codes, strict=True)
    assert {f.severity for f in strict.findings} == {"error"} and not strict.ok
    assert set(strict.passed) == set(lint_codes) - {f.code for f in strict.findings}


def test_the_linter_is_skipped_while_the_chain_is_broken(sqlite_url):
    report = check(sqlite_url, VALIDATOR_SETS / "broken_chain", rules=["MIG002", "MIG013"])
    assert report.codes() == {"MIG002"}
    assert [(s.code, s.reason) for s in report.skipped] == [
        ("MIG013", "the scripts do not form one complete chain in number order (see MIG001, MIG002, MIG023)")]


def test_scripts_without_functions_or_with_unusual_assignments_are_read(tmp_path):
    path = tmp_path / "odd.py"
    path.write_text(textwrap.dedent("""
        import sqlalchemy
        revision: str = "010"
        down_revision = ("008", "009")
        a = b = "x"
        counter: int
        sqlalchemy.thing = "y"
        irreversible = "yes"
    """))
    script = ScriptFile.read(path)
    assert (script.revision, script.down_revisions, script.irreversible) == ("010", ("008", "009"), False)
    assert script.function("upgrade") is None


# -- scripts read as Python reads them --------------------------------------------------------------


def _script_bytes(tmp_path: Path, data: bytes) -> Path:
    folder = _versions(tmp_path, a_base=_rev("001", None))
    (folder / "versions" / "b_odd.py").write_bytes(data)
    return folder


SECOND = ('revision = "002"\ndown_revision = "001"\n'
          "def upgrade():\n    op.execute(\"UPDATE widgets SET name = 'caf\u00e9'\")\n"
          "def downgrade():\n    pass\n")


@pytest.mark.parametrize("data, line", [
    (b"# -*- coding: latin-1 -*-\nfrom alembic import op\n" + SECOND.encode("latin-1"), 6),
    (b"\xef\xbb\xbffrom alembic import op\n" + SECOND.encode(), 5),
    (b"from alembic import op\r\n" + SECOND.replace("\n", "\r\n").encode(), 5),
], ids=["coding-latin-1", "utf-8-bom", "crlf"])
def test_scripts_with_a_coding_line_or_a_byte_order_mark_are_judged_like_any_other(
    sqlite_url, tmp_path, data, line
):
    folder = _script_bytes(tmp_path, data)
    report = check(sqlite_url, folder, rules=["MIG001", "MIG002", "MIG013", "MIG021"])
    assert report.passed == ["MIG001", "MIG002", "MIG013"]
    # The linter read it (and rendered it: Alembic loads it as Python does).
    [finding] = report.findings
    assert (finding.code, finding.line) == ("MIG021", line)
    assert finding.file.endswith("b_odd.py")
    script = ScriptFile.read(folder / "versions" / "b_odd.py")
    assert script.revision == "002" and "café" in script.source


@pytest.mark.parametrize("data, line, reason", [
    (b"# -*- coding: latin-1 -*-\nrevision = '002'\ndef upgrade(:\n", 3, "invalid syntax"),
    (b"revision = '002'\n\nx = '\xe9t\xe9'\n", 3, "not valid utf-8 text"),
    (b"# -*- coding: no-such-codec -*-\nrevision = '002'\n", 1, "unknown encoding"),
    (b"revision = '002'\x00\n", 1, "null bytes"),
], ids=["syntax-error", "undecodable-byte", "unknown-coding", "null-byte"])
def test_a_script_python_cannot_read_is_a_chain_finding_with_its_line(sqlite_url, tmp_path, data,
                                                                       line, reason):
    folder = _script_bytes(tmp_path, data)
    report = check(sqlite_url, folder, rules=["MIG001", "MIG002"])
    [finding] = report.findings
    assert finding.code == "MIG002" and finding.line == line
    assert finding.location.endswith(f"b_odd.py:{line}")
    assert reason in finding.message


# -- the chain, with scripts the validator cannot load --------------------------------------------


def _versions(tmp_path: Path, **scripts: str) -> Path:
    folder = copy_scripts(tmp_path, VALIDATOR_SETS / "good")
    for old in (folder / "versions").glob("*.py"):
        old.unlink()
    for name, text in scripts.items():
        (folder / "versions" / f"{name}.py").write_text(textwrap.dedent(text))
    return folder


def _rev(revision: str, down: str | None) -> str:
    return (f'revision = "{revision}"\ndown_revision = {down!r}\n'
            "def upgrade():\n    pass\ndef downgrade():\n    pass\n")


def test_the_chain_rule_reports_every_way_a_chain_breaks(sqlite_url, tmp_path):
    folder = _versions(
        tmp_path,
        a_base=_rev("001", None),
        b_second_base=_rev("002", None),
        c_duplicate=_rev("001", None),
        d_unparsable="revision = '004'\ndef upgrade(:\n",
        e_no_revision='revision = REVISION\ndown_revision = "001"\n',
        f_dynamic_parent='revision = "006"\ndown_revision = compute()\n',
        g_cycle_one=_rev("007", "008"),
        h_cycle_two=_rev("008", "007"),
    )
    report = check(sqlite_url, folder, rules=["MIG001", "MIG002", "MIG003", "MIG013"])
    messages = sorted(f.message for f in report.findings if f.code == "MIG002")
    assert messages == sorted([
        "d_unparsable.py does not parse (line 2: invalid syntax)",
        "e_no_revision.py does not state its revision and down_revision as plain strings",
        "f_dynamic_parent.py does not state its revision and down_revision as plain strings",
        "revision 002 starts a second history (its down_revision is None, like 001's)",
        "revision 007 is part of a cycle of down_revisions",
        "revision 008 is part of a cycle of down_revisions",
    ])
    # Two bases are also two heads.
    assert [f.code for f in report.findings].count("MIG001") == 1
    # Two scripts with one id are a fork of the numbered line (MIG023), not a broken chain.
    [fork] = check(sqlite_url, folder, rules=["MIG023"]).findings
    assert fork.message == ("the migration scripts a_base.py and c_duplicate.py both have "
                            "revision 001 (branches made from the same revision each added one)")

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


# -- the command ----------------------------------------------------------------------------------


def test_validate_command_prints_findings_and_exits_1_on_errors(sqlite_url, run_here):
    MigrationManager(sqlite_url).upgrade()
    clean = run_here("db", "validate", "--strict", "--database-url", sqlite_url)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "passed  MIG001 single-head" in clean.stdout
    assert clean.stdout.rstrip().endswith("OK: 0 errors, 0 warnings (strict)")

    execute(sqlite_url, "CREATE INDEX ix_hand_made ON users (name)")
    drifted = run_here("db", "validate", "--database-url", sqlite_url)
    assert drifted.returncode == 1
    lines = drifted.stdout.splitlines()
    assert lines[0] == "ERROR   MIG005 no-drift"
    assert "ix_hand_made" in lines[1] and lines[2].startswith("        fix: if the change is wanted")
    assert lines[-1] == "FAILED: 1 error, 0 warnings"

    as_json = run_here("db", "validate", "--format", "json", "--database-url", sqlite_url)
    assert as_json.returncode == 1
    document = json.loads(as_json.stdout)
    assert document["database"] == sqlite_url and document["errors"] == 1
    assert document["findings"][0]["code"] == "MIG005"


def test_validate_command_shows_locations_and_skipped_rules(tmp_path, run_here, monkeypatch):
    url = f"sqlite:///{tmp_path / 'edited.db'}"
    missing = run_here("db", "validate", "--database-url", url)
    assert "skipped MIG005 no-drift: the database" in missing.stdout
    assert missing.stdout.rstrip().endswith("OK: 0 errors, 0 warnings, 2 rules skipped")
    MigrationManager(url).upgrade()
    # The project's scripts must not be touched: make the database remember another checksum.
    execute(url, "UPDATE migration_history SET checksum = 'feed' WHERE revision = '002'")
    # Here (a temporary folder) the script's path is shown whole; in the checkout, relative.
    away = run_here("db", "validate", "--database-url", url)
    assert away.returncode == 1
    script = Path(MigrationManager(url).history()[1].path)
    assert f"ERROR   MIG006 scripts-unchanged  {script}" in away.stdout
    monkeypatch.chdir(Path(__file__).parents[2])
    near = run_here("db", "validate", "--database-url", url)
    assert "ERROR   MIG006 scripts-unchanged  src/orchestrator/migrations/alembic/versions/002_" \
        in near.stdout
