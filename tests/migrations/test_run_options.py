"""What the manager hands env.py (environment.RunOptions), and what env.py takes without it."""

from __future__ import annotations

import dataclasses

import pytest
from alembic.config import Config

from orchestrator.migrations.environment import (
    RUN_OPTIONS,
    RunOptions,
    database_url,
    lock_timeout,
    run_options,
    running_with,
)
from orchestrator.migrations.manager import alembic_config
from orchestrator.settings import get_settings


@pytest.fixture
def fresh_settings(monkeypatch):
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_the_managers_config_names_its_database_and_lock_timeout() -> None:
    config = alembic_config("sqlite:///x.db", db_lock_timeout="250ms")
    assert run_options(config) == RunOptions(database_url="sqlite:///x.db", db_lock_timeout="250ms")
    assert database_url(config) == "sqlite:///x.db"
    assert lock_timeout(config) == "250ms"


def test_run_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunOptions().connection = object()  # type: ignore[misc]


def test_a_run_lends_its_connection_and_puts_the_options_back_after() -> None:
    config = alembic_config("sqlite:///x.db", db_lock_timeout=3)
    before = run_options(config)
    lent = object()
    with pytest.raises(RuntimeError), running_with(config, connection=lent):
        assert run_options(config).connection is lent
        assert run_options(config).db_lock_timeout == 3  # the rest is kept
        raise RuntimeError
    assert run_options(config) is before


def test_without_options_the_url_and_the_lock_timeout_come_from_the_settings(fresh_settings):
    """The `alembic` command: no run options, `sqlalchemy.url` then the settings."""
    fresh_settings.setenv("DATABASE_URL", "sqlite:///from-settings.db")
    fresh_settings.setenv("DB_LOCK_TIMEOUT", "2s")
    config = Config()
    assert RUN_OPTIONS not in config.attributes
    assert run_options(config) == RunOptions()
    assert database_url(config) == "sqlite:///from-settings.db"
    assert lock_timeout(config) == "2000ms"
    config.set_main_option("sqlalchemy.url", "sqlite:///from-ini.db")
    assert database_url(config) == "sqlite:///from-ini.db"
    with running_with(config, db_lock_timeout="1s"):
        assert lock_timeout(config) == "1000ms"
    assert lock_timeout(config) == "2000ms"
