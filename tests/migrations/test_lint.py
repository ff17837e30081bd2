"""The migration linter: the labelled corpus, and how findings are placed, reviewed and explained."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from orchestrator.migrations import MigrationManager
from orchestrator.migrations.lint import ACCEPTED_FILE, NAMES, RULES, lint, read_accepted
from orchestrator.migrations.lint.sql import TypeKey, rewrites
from tests.fixtures import PROJECT_SCRIPTS, copy_scripts
from tests.fixtures.lint_corpus import CORPUS, DANGEROUS, SAFE, cases, scripts_for
from tests.schema import execute

OFFLINE = "postgresql+psycopg://lint@localhost/offline"
CASES = cases()


def lint_folder(folder: Path):
    with MigrationManager(OFFLINE, script_location=str(folder)) as manager:
        return lint(manager.script, manager.chain.revisions)


# -- the corpus -----------------------------------------------------------------------------------


def test_the_corpus_covers_every_class_in_two_spellings_and_every_safe_pattern():
    assert len(CASES) >= 50 and len({c.name for c in CASES}) == len(CASES)
    for case in CASES:
        assert case.files, f"{case.name} has no script"
        assert case.reason and case.verdict in (DANGEROUS, SAFE)
        assert bool(case.codes) == case.dangerous
    # MIG009 (a script `db upgrade --sql` cannot render) comes with a dangerous case's own code.
    dangerous_codes = {code for c in CASES for code in c.codes} - {"MIG009"}
    assert dangerous_codes == set(NAMES) - {"MIG009"}
    for code in dangerous_codes:
        spellings = {c.spelling.split()[0] for c in CASES if code in c.codes}
        assert len([c for c in CASES if code in c.codes]) >= 2, code
        if code != "MIG020":  # batch mode is an Alembic op only; its SQL is the copy itself
            assert {"op", "sql"} <= spellings, (code, spellings)
    safe_kinds = {c.kind for c in CASES if not c.dangerous}
    assert {"new table", "nullable column", "constant default",
            "concurrently in autocommit_block", "not valid, validated later",
            "set not null after validated check", "no-rewrite type change",
            "reviewed exception"} <= safe_kinds
    raw_forms = {c.spelling for c in CASES}
    for form in ("sql (module constant)", "sql (f-string)", "sql (sa.text)", "sql (helper)",
                 "sql (get_bind)"):
        assert form in raw_forms


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_corpus_case_gets_its_labelled_verdict(case, tmp_path):
    findings = [f for f in lint_folder(scripts_for(case, tmp_path)) if f.revision != "001"]
    assert {f.code for f in findings} == set(case.codes), [f.message for f in findings]
    for finding in findings:
        assert finding.line is not None and Path(finding.file).name in {p.name for p in case.files}
        assert finding.fix and finding.message.startswith(f"revision {finding.revision}: ")


def test_the_base_of_the_corpus_is_clean():
    findings = lint_folder(scripts_for(CASES[0], Path(__import__("tempfile").mkdtemp())))
    assert [f for f in findings if f.revision == "001"] == []



@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_linting_from_a_revision_judges_the_later_ones_as_the_whole_chain_does(case, tmp_path):
    """`validate --since`: the revisions before `first` are read for what they build (a
    column's type, a validated CHECK, an index's table) and not judged."""
    with MigrationManager(OFFLINE, script_location=str(scripts_for(case, tmp_path))) as manager:
        chain = manager.chain.revisions
        everything = lint(manager.script, chain)
        for first in range(len(chain) + 1):
            later = set(chain[first:])
            assert lint(manager.script, chain, first) == [
                f for f in everything if f.revision in later], first


# -- the project's own migrations -----------------------------------------------------------------


def test_the_projects_migrations_have_one_reviewed_finding(tmp_path):
    """002 validates its check in the transaction that locked `tasks`: a true finding, accepted
    in validate.toml because 002 is applied everywhere and cannot change."""
    assert lint_folder(PROJECT_SCRIPTS) == []
    unreviewed = copy_scripts(tmp_path)
    (unreviewed / ACCEPTED_FILE).unlink()
    [finding] = lint_folder(unreviewed)
    assert (finding.code, finding.revision, finding.line) == ("MIG016", "002", 40)
    assert "validates ck_tasks_priority_level_range in the same transaction" in finding.message
    [accepted] = read_accepted(PROJECT_SCRIPTS)
    assert (accepted.revision, accepted.code) == ("002", "MIG016") and "0.19 s" in accepted.reason


def test_an_accepted_entry_without_a_reason_accepts_nothing(tmp_path):
    scripts = copy_scripts(tmp_path)
    (scripts / ACCEPTED_FILE).write_text('[[accept]]\nrevision = "002"\ncode = "MIG016"\n')
    assert [f.code for f in lint_folder(scripts)] == ["MIG016"]
    assert read_accepted(tmp_path) == []


# -- scripts written for one test -----------------------------------------------------------------


def write_case(tmp_path: Path, upgrade: str, downgrade: str = "pass", header: str = "",
               base: str | None = None) -> Path:
    """A scripts folder: the corpus base (widgets, gadgets) and one revision 002."""
    folder = scripts_for(CASES[0], tmp_path)
    for extra in (folder / "versions").glob("*.py"):
        if extra.name != "001_base.py":
            extra.unlink()
    (folder / "versions" / "002_case.py").write_text(
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f'revision = "002"\ndown_revision = "001"\n{textwrap.dedent(header)}\n\n'
        f"def upgrade():\n{textwrap.indent(textwrap.dedent(upgrade).strip(), '    ')}\n\n\n"
        f"def downgrade():\n{textwrap.indent(textwrap.dedent(downgrade).strip(), '    ')}\n"
    )
    return folder


def found(tmp_path: Path, upgrade: str, downgrade: str = "pass", header: str = ""):
    return [(f.code, f.line) for f in lint_folder(write_case(tmp_path, upgrade, downgrade, header))
            if f.revision == "002"]


def test_a_review_comment_needs_the_code_and_a_reason(tmp_path):
    folder = write_case(tmp_path, """
        op.drop_column("widgets", "colour")  # validate: ignore[MIG018] archived in release 3
        op.drop_column(  # validate: ignore[MIG019, MIG018]: unused since 2.1
            "widgets", "size"
        )
        op.drop_column("widgets", "code")  # validate: ignore[MIG018]
        op.drop_column("widgets", "price")  # validate: ignore[MIG013] another rule entirely
        op.execute("DROP TABLE gadgets")  # validate: ignore[MIG007] the old rule's code, reviewed
        op.execute("ALTER TABLE widgets DROP COLUMN name -- validate: ignore[MIG018] in SQL")
    """)
    findings = [f for f in lint_folder(folder) if f.revision == "002"]
    assert [(f.code, f.line) for f in findings] == [("MIG018", 13), ("MIG018", 14), ("MIG018", 16)]
    assert findings[0].fix.endswith("the `# validate: ignore[MIG018]` comment here needs a reason "
                                    "after it to count")
    assert "needs a reason" not in findings[1].fix


def test_a_comment_on_the_with_line_reviews_the_batch_and_a_helper_line_reviews_its_call(tmp_path):
    assert found(tmp_path, """
        with op.batch_alter_table("widgets") as batch_op:  # validate: ignore[MIG019] view kept
            batch_op.alter_column("colour", new_column_name="hue")
        _drop()  # validate: ignore[MIG018] reviewed at the call
        _drop_size()
    """, header="""
        def _drop():
            op.drop_column("widgets", "code")

        def _drop_size():
            op.drop_column("widgets", "size")
    """) == [("MIG018", 11)]


def test_a_finding_in_a_helper_names_the_line_it_was_called_from(tmp_path):
    folder = write_case(tmp_path, "_index()", header="""
        def _index():
            op.create_index("ix_widgets_name", "widgets", ["name"])
    """)
    [finding] = [f for f in lint_folder(folder) if f.revision == "002"]
    assert finding.line == 8 and finding.message.endswith("(called from line 12)")


def test_a_revision_that_cannot_be_rendered_offline_is_reported_where_it_stops(tmp_path):
    folder = write_case(tmp_path, """
        op.create_index("ix_widgets_name", "widgets", ["name"])
        table = sa.inspect(op.get_bind()).get_table_names()
        op.drop_column("widgets", "colour")
    """)
    findings = [f for f in lint_folder(folder) if f.revision == "002"]
    assert [(f.code, f.line) for f in findings] == [("MIG013", 9), ("MIG009", 10)]
    assert "cannot be rendered as PostgreSQL SQL offline (NoInspectionAvailable" in findings[1].message
    assert "as_sql" in findings[1].fix


def test_an_error_without_a_message_and_sql_postgresql_cannot_parse_are_reported(tmp_path):
    assert found(tmp_path, """
        op.execute("ALTER TABLE widgets ADD COLUMN note text")
        op.execute("ALTER TABLE widgets ADD COLUMN")
        raise KeyboardInterrupt if False else RuntimeError()
    """) == [("MIG009", 10), ("MIG009", 11)]
    # (10: the SQL does not parse; 11: the RuntimeError, which has no message)


def test_before_the_first_judged_revision_sql_that_does_not_parse_is_passed_over(tmp_path):
    folder = write_case(tmp_path, """
        op.execute("ALTER TABLE widgets ADD COLUMN")
        op.execute("ALTER TABLE widgets ADD COLUMN note varchar(10)")
    """)
    (folder / "versions" / "003_later.py").write_text(
        'from alembic import op\n\nrevision = "003"\ndown_revision = "002"\n\n\n'
        "def upgrade():\n"
        '    op.execute("ALTER TABLE widgets ALTER COLUMN note TYPE varchar(20)")\n\n\n'
        "def downgrade():\n    pass\n")
    with MigrationManager(OFFLINE, script_location=str(folder)) as manager:
        chain = manager.chain.revisions
        everything = lint(manager.script, chain)
        # Widening varchar(10) is no rewrite: 002's second statement was built, not lost.
        assert lint(manager.script, chain, 2) == [
            f for f in everything if f.revision == "003"] == []


def test_a_script_reading_rows_offline_gets_none_and_its_parameters_render(tmp_path):
    assert found(tmp_path, """
        connection = op.get_bind()
        assert connection.execute(sa.text("SELECT 1")).first() is None
        assert connection.dialect.name == "postgresql"
        connection.execute(sa.text("UPDATE widgets SET colour = :c"), [{"c": "red"}, {"c": "x"}])
        connection.execute(sa.text("UPDATE gadgets SET label = :l WHERE id = :id"), {"id": 3})
        connection.execute(sa.text("UPDATE gadgets SET label = 'x' WHERE id = :id"), [])
        connection.exec_driver_sql("DELETE FROM gadgets")
        connection.execute(WIDGETS.update().values(size=sa.bindparam("s")), {"s": 4})
        op.execute(sa.text("UPDATE widgets SET size = 1 WHERE id = 2"))
        connection.execute(sa.text("UPDATE widgets SET size = :s WHERE id = 3").bindparams(s=5))
    """, header='WIDGETS = sa.table("widgets", sa.column("size", sa.Integer()))') == [
        ("MIG021", 12), ("MIG021", 15), ("MIG021", 16)]


def test_downgrade_may_drop_only_what_its_upgrade_created(tmp_path):
    assert found(tmp_path, """
        op.create_table("labels", sa.Column("id", sa.Integer(), primary_key=True))
        op.add_column("widgets", sa.Column("note", sa.Text()))
    """, """
        op.drop_column("widgets", "note")
        op.drop_table("labels")
        op.drop_column("widgets", "colour")
        op.execute("DROP TABLE gadgets")
        op.execute("ALTER TABLE labels DROP COLUMN id")
        op.execute("ALTER TABLE widgets ADD COLUMN x int; ALTER TABLE widgets RENAME TO w")
        op.execute("this is not SQL")
    """) == [("MIG018", 16), ("MIG018", 17)]


def test_downgrade_messages_say_what_the_upgrade_did_not_create(tmp_path):
    folder = write_case(tmp_path, "pass", 'op.drop_table("gadgets")\nop.drop_column("widgets", "size")')
    messages = [f.message for f in lint_folder(folder) if f.revision == "002"]
    assert messages == [
        "revision 002: downgrade() drops table gadgets, which this revision's upgrade did not create",
        "revision 002: downgrade() drops column widgets.size, which this revision's upgrade did "
        "not add",
    ]


# -- loops ----------------------------------------------------------------------------------------


def test_loops_are_judged_by_dialect_transaction_and_what_they_execute(tmp_path):
    assert found(tmp_path, """
        if op.get_context().dialect.name == "sqlite":
            for i in range(3):
                op.execute(f"UPDATE widgets SET size = {i} WHERE id = {i}")
        for name in ("a", "b"):
            op.execute(f"CREATE TABLE t_{name} (id int)")
            op.execute(statement())
        rows = [op.execute(f"DELETE FROM widgets WHERE id = {i}") for i in range(3)]
        for row in []:
            session.query(Widget).filter_by(id=row).update({"size": 1})
        for row in []:
            options.update({"size": 1})
            op.get_bind().execute(sa.delete(WIDGETS).where(WIDGETS.c.id == row))
        while False:
            op.get_bind().execute(sa.select(WIDGETS))
            op.get_bind().execute()
        for row in []:
            op.execute("UPDATE widgets SET size = 1 WHERE id = ANY($1) AND broken(")
            op.execute(QUERIES[0])
            later = lambda: op.execute("DELETE FROM widgets")  # noqa: E731

            def nested():
                op.execute("DELETE FROM widgets")
        if not op.get_context().dialect.name == "postgresql":
            for row in []:
                op.execute("DELETE FROM gadgets")
        if op.get_context().dialect.name in ("sqlite", "mysql"):
            pass
        if op.get_context().dialect.name == QUERIES[0]:
            pass
        if op.get_context().dialect.name > "m":
            pass
        if op.get_context().dialect.name != "postgresql":
            return
        for row in []:
            _touch(row)
    """, header="""
        WIDGETS = sa.table("widgets", sa.column("id"))
        QUERIES = ["SELECT 1"]

        def statement():
            return "SELECT 1"

        def _touch(row):
            _touch(row)
            op.execute(sa.text("UPDATE widgets SET size = 2 WHERE id = :id").bindparams(id=row))
    """) == [("MIG022", 25), ("MIG022", 26), ("MIG022", 28), ("MIG022", 52)]


def test_a_loop_that_commits_each_batch_or_only_reads_is_fine(tmp_path):
    assert found(tmp_path, """
        with op.get_context().autocommit_block():
            for low in range(0, 100, 10):
                op.execute(f"UPDATE widgets SET size = 0 WHERE id >= {low} AND id < {low + 10}")
        for table in ("widgets", "gadgets"):
            op.get_bind().execute(sa.text(f"SELECT count(*) FROM {table}"))
        if op.get_context().dialect.name == "sqlite":
            pass
        else:
            return
        for i in range(3):
            op.execute(f"UPDATE widgets SET size = {i} WHERE id = {i}")
    """) == []


# -- types ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("old, new, rewritten", [
    (TypeKey("varchar", (20,)), TypeKey("varchar", (40,)), False),
    (TypeKey("varchar", (20,)), TypeKey("varchar"), False),
    (TypeKey("varchar", (20,)), TypeKey("text"), False),
    (TypeKey("text"), TypeKey("varchar"), False),
    (TypeKey("text"), TypeKey("varchar", (5,)), True),
    (TypeKey("varchar"), TypeKey("varchar", (5,)), True),
    (TypeKey("varchar", (20,)), TypeKey("varchar", (10,)), True),
    (TypeKey("numeric", (10, 2)), TypeKey("numeric"), False),
    (TypeKey("numeric", (10, 2)), TypeKey("numeric", (12, 2)), False),
    (TypeKey("numeric", (10,)), TypeKey("numeric", (12,)), False),
    (TypeKey("numeric", (10, 2)), TypeKey("numeric", (12, 3)), True),
    (TypeKey("numeric"), TypeKey("numeric", (12, 2)), True),
    (TypeKey("cidr"), TypeKey("inet"), False),
    (TypeKey("int4"), TypeKey("int8"), True),
    (TypeKey("int4", array=True), TypeKey("int4"), True),
    (TypeKey("int4", array=True), TypeKey("int4", array=True), False),
    (TypeKey("timestamp"), TypeKey("timestamptz"), True),
])
def test_which_type_changes_rewrite_the_table(old, new, rewritten):
    assert rewrites(old, new) is rewritten
    assert str(TypeKey("numeric", (10, 2), array=True)) == "numeric(10, 2)[]"


def test_type_changes_are_judged_against_the_schema_the_chain_built(tmp_path):
    assert found(tmp_path, """
        op.execute("ALTER TABLE widgets RENAME COLUMN code TO sku")
        op.execute("ALTER TABLE widgets ALTER COLUMN sku TYPE varchar(40)")
        op.execute("ALTER TABLE widgets RENAME TO things")
        op.execute("ALTER TABLE things ALTER COLUMN name TYPE varchar(200)")
        op.execute("ALTER TABLE things ALTER COLUMN name TYPE varchar(300) USING trim(name)")
        op.execute("ALTER TABLE legacy ALTER COLUMN x TYPE text")
        op.execute("ALTER TABLE legacy RENAME COLUMN x TO y")
        op.execute("CREATE TABLE copy (LIKE things, extra int)")
        op.execute("ALTER TABLE things ADD CONSTRAINT ck_size CHECK (size IS NOT NULL) NOT VALID")
        op.execute("ALTER TABLE things RENAME TO widgets")
        with op.get_context().autocommit_block():
            op.execute("ALTER TABLE widgets VALIDATE CONSTRAINT ck_size")
        op.execute("ALTER TABLE widgets ALTER COLUMN size SET NOT NULL")
    """) == [("MIG019", 9), ("MIG019", 11), ("MIG017", 13), ("MIG017", 14), ("MIG019", 15),
             ("MIG019", 18)]


# -- everything else the SQL rules tell apart -----------------------------------------------------


def test_sql_rules_on_less_common_statements(tmp_path):
    assert found(tmp_path, """
        op.execute("REINDEX TABLE widgets")
        with op.get_context().autocommit_block():
            op.execute("REINDEX INDEX CONCURRENTLY ix_gadgets_widget_id")
            op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_unknown")
        op.execute("DROP INDEX ix_made_elsewhere")
        op.execute("CREATE INDEX ON widgets (size)")
        op.execute("CREATE TABLE t (id int CHECK (id > 0), CONSTRAINT ck_t CHECK (id IS NOT NULL))")
        op.execute("CREATE INDEX ix_t_id ON t (id)")
        op.execute("DROP INDEX ix_t_id")
        op.execute("ALTER TABLE t ADD COLUMN n int CONSTRAINT ck_t_n CHECK (n IS NOT NULL)")
        op.execute("DROP TABLE t, widgets")
        op.execute("DROP VIEW IF EXISTS v")
        op.execute("ALTER TABLE gadgets ADD COLUMN weight int CHECK (weight > 0)")
        op.execute("ALTER TABLE gadgets ADD PRIMARY KEY (id), ADD CONSTRAINT c CHECK (id > 0) NOT VALID")
        op.execute("ALTER TABLE gadgets ADD COLUMN kind int GENERATED ALWAYS AS IDENTITY")
        op.execute("ALTER TABLE gadgets ADD COLUMN twice int GENERATED ALWAYS AS (id * 2) STORED")
        op.execute("ALTER TABLE gadgets ADD COLUMN z int NOT NULL DEFAULT NULL")
        op.execute("ALTER TABLE gadgets ADD COLUMN w int DEFAULT 4, SET (fillfactor = 90)")
        op.execute("ALTER TABLE gadgets ALTER COLUMN w SET NOT NULL")
        op.execute("ALTER TABLE gadgets DROP CONSTRAINT c")
        op.execute("ALTER INDEX ix_gadgets_widget_id RENAME TO ix_g")
        op.execute("ALTER TABLE gadgets RENAME CONSTRAINT c TO d")
        op.execute("CREATE TYPE mood AS ENUM ('calm')")
        op.execute("ALTER TYPE mood RENAME TO feeling")
        op.execute("ALTER FUNCTION now_utc() RENAME TO utc_now")
        op.execute("ALTER SEQUENCE gadgets_id_seq RENAME TO gadget_ids")
    """) == [("MIG013", 9), ("MIG013", 13), ("MIG013", 14), ("MIG018", 19), ("MIG016", 21),
             ("MIG015", 22), ("MIG011", 23), ("MIG011", 24), ("MIG010", 25),
             # the column is new, but every row of the table has it: still a scan
             ("MIG012", 27)]


def test_a_validate_is_judged_by_what_its_own_transaction_locked(tmp_path):
    assert found(tmp_path, """
        op.execute("ALTER TABLE widgets ADD CONSTRAINT ck_size CHECK (size > 0) NOT VALID")
        with op.get_context().autocommit_block():
            op.execute("ALTER TABLE widgets VALIDATE CONSTRAINT ck_size")
        op.execute("ALTER TABLE widgets ADD CONSTRAINT ck_n CHECK (size IS NOT NULL) NOT VALID")
        op.execute("ALTER TABLE widgets VALIDATE CONSTRAINT ck_unknown")
        op.execute("ALTER TABLE widgets ALTER COLUMN size SET NOT NULL")
        op.execute("ALTER TABLE gadgets ADD CONSTRAINT fk FOREIGN KEY (widget_id) REFERENCES widgets (id) NOT VALID")
        op.execute("ALTER TABLE widgets VALIDATE CONSTRAINT ck_size")
    """) == [("MIG016", 13), ("MIG012", 14), ("MIG016", 16)]


def test_a_revision_without_upgrade_or_downgrade_is_linted(tmp_path):
    folder = write_case(tmp_path, "pass")
    script = folder / "versions" / "002_case.py"
    script.write_text(script.read_text().split("def upgrade")[0])
    assert [f for f in lint_folder(folder) if f.revision == "002"] == []


def test_a_linter_failure_is_a_finding_for_that_revision_only(tmp_path, monkeypatch):
    import orchestrator.migrations.lint.revisions as linter

    folder = write_case(tmp_path, 'op.drop_column("widgets", "colour")')
    real = linter._sql_hits

    def broken(rendered, schema):
        if rendered.revision == "002":
            raise RuntimeError("unexpected statement")
        return real(rendered, schema)

    monkeypatch.setattr(linter, "_sql_hits", broken)
    [finding] = lint_folder(folder)
    assert (finding.code, finding.revision, finding.line) == ("MIG009", "002", None)
    assert "the linter failed on it (RuntimeError: unexpected statement)" in finding.message


def test_every_rule_has_a_name_and_a_summary():
    assert [r.code for r in RULES] == sorted(NAMES) and all(r.summary for r in RULES)


# -- the offline script sets lock_timeout ---------------------------------------------------------


def test_the_offline_script_sets_the_lock_timeout_of_online_runs():
    manager = MigrationManager(OFFLINE, db_lock_timeout="750ms")
    sql = manager.sql()
    assert sql.startswith("SET lock_timeout = '750ms';")
    assert "lock_timeout" not in MigrationManager("sqlite:///unused.db").sql()


@pytest.mark.postgres
def test_sql_applied_by_hand_gives_up_on_a_busy_table(postgres_url, tmp_path):
    import psycopg
    from sqlalchemy.engine import make_url

    libpq = lambda url: make_url(url).set(drivername="postgresql").render_as_string(  # noqa: E731
        hide_password=False)
    with MigrationManager(postgres_url) as manager:
        manager.upgrade("001")
        script = MigrationManager(postgres_url, db_lock_timeout="300ms").sql("002", start="001")
    (tmp_path / "002.sql").write_text(script)
    with psycopg.connect(libpq(postgres_url)) as holder:
        holder.execute("LOCK TABLE tasks IN ACCESS SHARE MODE")  # a long read, still open
        done = subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", libpq(postgres_url), "-f",
             str(tmp_path / "002.sql")],
            capture_output=True, text=True, timeout=60,
        )
    assert done.returncode != 0
    assert "canceling statement due to lock timeout" in done.stderr
    execute(postgres_url, "SELECT 1")  # the server is fine, and 002 was not applied:
    assert MigrationManager(postgres_url).get_current_revision() == "001"


def test_the_corpus_table_lists_every_case_file():
    listed = {c.name for c in CASES}
    on_disk = {p.stem for p in (CORPUS / "cases").iterdir()}
    assert listed == on_disk


def test_rewrites_truncates_and_exclusions_are_judged_on_existing_tables_only(tmp_path):
    assert found(tmp_path, """
        op.execute("CREATE TABLE t (id int, during tsrange)")
        op.execute("CLUSTER t USING ix_t")
        op.execute("CLUSTER")
        op.execute("VACUUM (ANALYZE) widgets")
        op.execute("VACUUM (FULL) t")
        op.execute("VACUUM FULL")
        op.execute("ALTER TABLE widgets SET UNLOGGED")
        op.execute("ALTER TABLE t SET LOGGED")
        op.execute("ALTER TABLE gadgets SET TABLESPACE fast")
        op.execute("TRUNCATE t")
        op.execute("ALTER TABLE t ADD EXCLUDE USING gist (during WITH &&)")
        op.execute("ALTER TABLE gadgets ADD EXCLUDE USING gist (label WITH =)")
    """) == [("MIG017", 11), ("MIG017", 14), ("MIG017", 15), ("MIG017", 17), ("MIG015", 20)]


def test_an_update_or_delete_by_key_or_key_range_is_not_a_whole_table_change(tmp_path):
    assert found(tmp_path / "a", """
        op.execute("UPDATE gadgets SET label = 'x' WHERE id BETWEEN 1 AND 10")
        op.execute("UPDATE gadgets SET label = 'x' WHERE id IN (1, 2)")
        op.execute("UPDATE gadgets SET label = 'x' WHERE 5 = id")
        op.execute("UPDATE gadgets SET label = 'x' WHERE 5 <= id AND id < CAST(:high AS int)")
        op.execute("UPDATE gadgets SET label = 'x' WHERE id IN (SELECT id FROM gadgets LIMIT 5)")
        op.execute("UPDATE gadgets SET label = 'x' WHERE id = ANY(ARRAY[1, 2]::int[])")
        op.execute("UPDATE gadgets SET label = 'x' WHERE id = (SELECT max(id) FROM gadgets)")
        op.execute("UPDATE gadgets SET label = 'x' WHERE id > 5")
        op.execute("UPDATE gadgets SET label = 'x' WHERE id = widget_id AND label LIKE 'a%'")
        op.execute("UPDATE gadgets SET label = 'x' WHERE label = lower(label)")
        op.execute("UPDATE gadgets SET label = 'x' WHERE id = ANY(SELECT id FROM gadgets)")
        op.execute("UPDATE gadgets SET label = 'x' WHERE id NOT IN (1, 2)")
    """) == [("MIG021", 16), ("MIG021", 17), ("MIG021", 18), ("MIG021", 19), ("MIG021", 20)]
    folder = write_case(tmp_path / "b", """
        op.execute("LOCK TABLE gadgets IN ROW EXCLUSIVE MODE")
        op.execute("DELETE FROM gadgets WHERE id > 5")
        op.execute("LOCK TABLE widgets IN SHARE MODE")
        op.execute("DELETE FROM widgets WHERE size < 0")
    """)
    first, second = [f for f in lint_folder(folder) if f.revision == "002"]
    assert "may be every row" in first.message and "or locked" not in first.message
    assert second.message.endswith("and so does the table it altered or locked")


def test_the_statements_of_a_do_block_are_judged_as_plain_sql(tmp_path):
    assert found(tmp_path, '''
        op.execute("DO LANGUAGE plpython3u $$ plpy.execute('DROP TABLE widgets') $$")
        op.execute("DO $$ BEGIN oops; END $$")
        op.execute("""
            DO $$
            DECLARE n int;
            BEGIN
                EXECUTE 'CREATE INDEX ON';
                EXECUTE format('DROP TABLE %I', 'gadgets');
                SELECT count(*) INTO n FROM widgets;
                EXECUTE 'DROP TABLE gadgets';
            END $$
        """)
    ''') == [("MIG018", 11)]


def test_a_do_blocks_variables_are_values_so_its_batches_are_key_ranges(tmp_path):
    """The batched backfill of 005/006 rendered offline: each UPDATE takes one key range
    between two of the block's variables; an open range is still every row."""
    assert found(tmp_path / "batched", '''
        with op.get_context().autocommit_block():
            op.execute("""
                DO $$
                DECLARE _low bigint; _last bigint;
                BEGIN
                    SELECT min(id), max(id) INTO _low, _last FROM widgets;
                    WHILE _low <= _last LOOP
                        UPDATE widgets SET size = 1
                        WHERE widgets.id >= _low AND widgets.id < _low + 5000 AND size IS NULL;
                        COMMIT;
                        _low := _low + 5000;
                    END LOOP;
                END $$
            """)
    ''') == []
    assert found(tmp_path / "open", '''
        op.execute("""
            DO $$
            DECLARE _low bigint := 0;
            BEGIN
                UPDATE widgets SET size = 1 WHERE id >= _low;
            END $$
        """)
    ''') == [("MIG021", 9)]


def test_a_script_asking_is_offline_mode_renders_as_with_sql_also_inside_an_env(tmp_path):
    from alembic import context
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext

    folder = write_case(tmp_path, """
        if context.is_offline_mode():
            return
        op.drop_column("widgets", "size")
    """, header="from alembic import context")
    assert lint_folder(folder) == []
    with MigrationManager(OFFLINE, script_location=str(folder)) as manager:
        outer = EnvironmentContext(Config(), manager.script, as_sql=True)
        with outer:
            assert lint(manager.script, manager.chain.revisions) == []
            assert context.is_offline_mode()  # the caller's environment is left in place


def test_orm_objects_changed_in_a_loop_are_row_by_row_unless_each_commits(tmp_path):
    assert found(tmp_path, """
        for widget in widgets_of(op.get_bind()):
            widget.size += 1
        with op.get_context().autocommit_block():
            for widget in widgets_of(op.get_bind()):
                widget.size = 0
        for row in widgets_of(op.get_bind()):
            print(row.size)
    """, header="""
        def widgets_of(bind):
            return []
    """) == [("MIG022", 12)]
