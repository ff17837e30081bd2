"""The standard `alembic` command runs the same scripts with the same settings."""

from __future__ import annotations

import configparser
import shutil
from pathlib import Path

import pytest
from alembic.config import main as alembic_main

from orchestrator.migrations import DatabaseUnreachableError, MigrationManager
from orchestrator.migrations.environment import FILE_TEMPLATE, SCRIPT_DIRECTORY, SCRIPT_LOCATION
from orchestrator.migrations.lock import file_lock
from tests.conftest import ROOT
from tests.migrations.test_manager import PROJECT_SCRIPTS

INI = str(ROOT / "alembic.ini")


def test_alembic_ini_matches_the_programmatic_configuration(tmp_path):
    parser = configparser.RawConfigParser()
    parser.read(INI)
    assert parser["alembic"]["script_location"] == SCRIPT_LOCATION
    assert parser["alembic"]["file_template"] == FILE_TEMPLATE
    assert not parser["alembic"].get("sqlalchemy.url")
    # The manager names the same folder by its path (cheaper to resolve than the resource).
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from orchestrator.migrations import MigrationManager

    ini_scripts = ScriptDirectory.from_config(Config(INI))
    assert Path(ini_scripts.dir).resolve() == Path(SCRIPT_DIRECTORY).resolve()
    assert MigrationManager(f"sqlite:///{tmp_path}/x.db").script.dir == SCRIPT_DIRECTORY


def test_alembic_upgrade_reads_database_url_from_the_settings(db_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", db_url)
    alembic_main(["-c", INI, "upgrade", "head"])
    assert MigrationManager(db_url).status().up_to_date
    alembic_main(["-c", INI, "downgrade", "002"])
    assert MigrationManager(db_url).get_current_revision() == "002"


def test_alembic_offline_sql(monkeypatch, capfd, sqlite_url):
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    alembic_main(["-c", INI, "upgrade", "001:002", "--sql"])
    assert "ALTER TABLE tasks ADD COLUMN priority_level" in capfd.readouterr().out


def test_alembic_revision_continues_the_numbered_sequence(tmp_path, monkeypatch, sqlite_url):
    scripts = tmp_path / "scripts"
    shutil.copytree(PROJECT_SCRIPTS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    ini = tmp_path / "alembic.ini"
    ini.write_text(Path(INI).read_text().replace(SCRIPT_LOCATION, str(scripts)))
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    head = MigrationManager(sqlite_url, script_location=str(scripts)).get_head_revision()
    alembic_main(["-c", str(ini), "revision", "-m", "by hand"])
    expected = f"{int(head) + 1:03d}_by_hand.py"
    assert (scripts / "versions" / expected).exists()
    # An id given explicitly is kept as it is.
    alembic_main(["-c", str(ini), "revision", "-m", "explicit", "--rev-id", "100"])
    assert (scripts / "versions" / "100_explicit.py").exists()


def test_lock_file_in_a_missing_folder_is_reported(tmp_path):
    with pytest.raises(DatabaseUnreachableError, match="check that the database's folder exists"):
        with file_lock(tmp_path / "missing" / "x.lock", timeout=1):
            pass  # pragma: no cover - never reached


def test_a_waiter_is_told_once(tmp_path):
    messages: list[str] = []
    path = tmp_path / "db.migrate.lock"
    with file_lock(path, timeout=1):
        with pytest.raises(Exception, match="held the migration lock for more than 0.3s"):
            with file_lock(path, timeout=0.3, notify=messages.append):
                pass  # pragma: no cover - never reached
    assert len(messages) == 1 and messages[0].startswith("waiting for the migration lock held by")
