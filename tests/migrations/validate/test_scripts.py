"""The validator: scripts read as Python reads them, and the chain the validator cannot load."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.migrations.validate import (
    ScriptFile,
)
from tests.migrations.validate.helpers import _rev, _versions, check

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

