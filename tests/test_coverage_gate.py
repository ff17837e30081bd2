"""The test command passes on a machine without PostgreSQL, and CI keeps its 100% gate.

Each case runs pytest on one small test file, in a process of its own: one file cannot cover the
migration package, so wherever the gate applies it fails the run, and where it does not the run
passes and says so (tests/conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_postgres

NOBODY_LISTENS = "postgresql://postgres@127.0.0.1:1/postgres"
GATE_OFF = ("coverage gate (100% of orchestrator.migrations) not applied: no PostgreSQL server "
            "answered")
GATE_FAILED = "FAIL Required test coverage of 100.0% not reached"


def pytest_on_one_file(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_db.py", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "COVERAGE_FILE": str(tmp_path / ".coverage"), **env},
    )


def test_without_postgresql_the_test_command_passes_and_says_the_gate_is_off(tmp_path):
    result = pytest_on_one_file(tmp_path, REQUIRE_POSTGRES="0", TEST_DATABASE_URL=NOBODY_LISTENS)
    assert result.returncode == 0, result.stdout[-3000:]
    assert GATE_OFF in result.stdout and GATE_FAILED not in result.stdout
    assert "TOTAL" in result.stdout  # the report is still printed


def test_ci_requiring_postgresql_keeps_the_gate(tmp_path):
    result = pytest_on_one_file(tmp_path, REQUIRE_POSTGRES="1", TEST_DATABASE_URL=NOBODY_LISTENS)
    assert result.returncode == 1 and GATE_FAILED in result.stdout and GATE_OFF not in result.stdout


def test_a_threshold_given_on_the_command_line_is_obeyed(tmp_path):
    result = pytest_on_one_file(tmp_path, "--cov-fail-under=99",
                                REQUIRE_POSTGRES="0", TEST_DATABASE_URL=NOBODY_LISTENS)
    assert result.returncode == 1
    assert "FAIL Required test coverage of 99% not reached" in result.stdout


@pytest.mark.postgres
def test_a_server_that_answers_keeps_the_gate(tmp_path):
    result = pytest_on_one_file(tmp_path, REQUIRE_POSTGRES="0", TEST_DATABASE_URL=require_postgres())
    assert result.returncode == 1 and GATE_FAILED in result.stdout
