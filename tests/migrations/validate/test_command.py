"""The validator: the `db validate` command."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.migrations import MigrationManager
from tests.schema import execute

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
    monkeypatch.chdir(Path(__file__).parents[3])
    near = run_here("db", "validate", "--database-url", url)
    assert "ERROR   MIG006 scripts-unchanged  src/orchestrator/migrations/alembic/versions/002_" \
        in near.stdout
