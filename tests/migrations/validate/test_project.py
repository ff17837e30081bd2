"""The validator: the project's own migrations pass strict validation and leave no scratch database."""

from __future__ import annotations

import tempfile
from pathlib import Path

from orchestrator.migrations import MigrationManager
from orchestrator.migrations.validate import (
    validate,
)
from tests.migrations.validate.helpers import ALL_CODES
from tests.schema import scalar

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

