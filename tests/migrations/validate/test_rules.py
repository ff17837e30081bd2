"""The validator: each rule fires on its broken set; the models rule describes every difference."""

from __future__ import annotations

import pytest
from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

from orchestrator.migrations.validate import (
    describe_diff as _describe_diff,
)
from orchestrator.models import NAMING_CONVENTION
from tests.fixtures import VALIDATOR_SETS
from tests.migrations.validate.helpers import _rev, _versions, check, widgets

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

