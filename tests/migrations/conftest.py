"""Fixtures for pytest-alembic: the project's scripts, and an engine per database of `db_url`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pytest_alembic.config import Config

from orchestrator.db import create_engine
from tests.conftest import ROOT


@pytest.fixture
def alembic_config() -> Config:
    """The repository's alembic.ini: the same configuration the `alembic` command uses."""
    return Config(config_options={"file": str(ROOT / "alembic.ini")})


@pytest.fixture
def alembic_engine(db_url: str) -> Iterator:
    engine = create_engine(db_url)
    yield engine
    engine.dispose()
