"""The validator: dangerous operations: the linter's rules as validator rules."""

from __future__ import annotations

import textwrap
from pathlib import Path

from orchestrator.migrations.validate import (
    ScriptFile,
)
from tests.fixtures import VALIDATOR_SETS
from tests.migrations.validate.helpers import LINT_CODES, check

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

