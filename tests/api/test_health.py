"""The health endpoints: `/health/live` and `/health/ready` answer anyone and reveal nothing
about the database but a reason code; the details are on `/health`, behind a token, and in the
log."""

from __future__ import annotations

import logging
import sqlite3

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from orchestrator import accounts
from orchestrator.api.app import create_app
from orchestrator.db import create_engine
from orchestrator.migrations import MigrationManager
from orchestrator.settings import load_settings
from tests.api.conformance import check_every_response
from tests.schema import execute

# Every part of this URL must stay out of the public answers.
UNREACHABLE = "postgresql://secretuser:s3cret@127.0.0.1:6543/secretdb"


def _client(**settings) -> TestClient:
    client = TestClient(create_app(load_settings(**settings)))
    check_every_response(client)
    return client


def _token(url: str) -> dict[str, str]:
    engine = create_engine(url)
    with Session(engine) as session:
        _, token = accounts.create_user(session, "ops@example.com", "Ops")
        session.commit()
    engine.dispose()
    return {"Authorization": f"Bearer {token}"}


def test_public_answers_reveal_no_host_user_port_or_database_name():
    with _client(environment="staging", database_url=UNREACHABLE) as client:
        live, ready = client.get("/health/live"), client.get("/health/ready")
    assert (live.status_code, live.json()) == (200, {"status": "alive"})
    assert (ready.status_code, ready.json()) == (
        503, {"status": "not ready", "reason": "database_unreachable"}
    )
    for secret in ("secretuser", "s3cret", "127.0.0.1", "6543", "secretdb"):
        assert secret not in ready.text and secret not in str(ready.headers)


def _pending(url: str) -> None:
    MigrationManager(url).upgrade("003")


def _ahead(url: str) -> None:
    MigrationManager(url).upgrade()
    execute(url, "UPDATE alembic_version SET version_num = '999'")


def _unversioned(url: str) -> None:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
        connection.execute("CREATE TABLE legacy (id INTEGER PRIMARY KEY)")


@pytest.mark.parametrize(
    ("prepare", "reason"),
    [(_pending, "migrations_pending"), (_ahead, "database_ahead"),
     (_unversioned, "database_unversioned")],
)
def test_each_way_of_not_being_ready_has_its_reason_code(sqlite_url, prepare, reason):
    with _client(environment="staging", database_url=sqlite_url) as client:
        prepare(sqlite_url)
        ready = client.get("/health/ready")
    assert (ready.status_code, ready.json()) == (503, {"status": "not ready", "reason": reason})
    assert "999" not in ready.text and "003" not in ready.text


def test_the_details_are_behind_the_token(sqlite_url):
    with _client(database_url=sqlite_url) as client:
        headers = _token(sqlite_url)
        assert client.get("/health").status_code == 401
        healthy = client.get("/health", headers=headers).json()
        assert (healthy["reason"], healthy["problem"]) == (None, None)
        execute(sqlite_url, "UPDATE alembic_version SET version_num = '999'")
        detail = client.get("/health", headers=headers).json()
    assert detail["reason"] == "database_ahead"
    assert detail["problem"] == "the database is at 999, which this code does not know"
    head = MigrationManager(sqlite_url).get_head_revision()
    assert detail["schema"] == {"current": "999", "head": head, "pending": [],
                                "up_to_date": False}


def test_a_change_of_readiness_is_logged_once_with_its_details(caplog):
    caplog.set_level(logging.INFO, logger="orchestrator.api")
    with _client(environment="staging", database_url=UNREACHABLE) as client:
        for _ in range(3):
            client.get("/health/ready")
    lines = [r.getMessage() for r in caplog.records if r.name == "orchestrator.api"]
    not_ready = [line for line in lines if line.startswith("not ready (database_unreachable)")]
    assert len(not_ready) == 1
    assert "cannot reach the database" in not_ready[0] and "s3cret" not in not_ready[0]
