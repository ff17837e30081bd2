"""URL normalising and masking, and SQLite connection settings."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from orchestrator.db import (
    InvalidDatabaseUrl,
    backend_name,
    create_engine,
    mask_url,
    normalize_url,
    sqlite_path,
)


@pytest.mark.parametrize(
    "url",
    ["postgres://u:p@h/db", "postgresql://u:p@h/db", "postgresql+psycopg://u:p@h/db"],
)
def test_postgres_urls_use_psycopg3(url):
    assert normalize_url(url) == "postgresql+psycopg://u:p@h/db"


def test_mask_url_hides_the_password():
    assert mask_url("postgresql://ada:s3cret@db:5432/app") == "postgresql://ada:***@db:5432/app"
    assert mask_url("sqlite:///a.db") == "sqlite:///a.db"
    assert "s3cret" not in mask_url("weird://ada:s3cret@host/x y z")
    assert mask_url("no url here") == "no url here"


@pytest.mark.parametrize("typo", ["postgresql//ada:s3cret@db/app", "ada:s3cret@db/app",
                                  "postgresql:/ada:s3cret@db/app"])
def test_a_url_without_its_scheme_separator_still_hides_the_password(typo):
    assert "s3cret" not in mask_url(typo) and mask_url(typo).endswith(":***@db/app")
    with pytest.raises(InvalidDatabaseUrl) as info:
        normalize_url(typo)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("url, masked", [
    ("postgresql://app@db/x?password=S3cret", "postgresql://app@db/x?password=***"),
    ("postgresql://app:S3cret@db/x?sslmode=require&sslpassword=S3cret&api_token=S3cret",
     "postgresql://app:***@db/x?api_token=***&sslmode=require&sslpassword=***"),
    ("postgresql://app@db/x?Client_Secret=S3cret&application_name=orch",
     "postgresql://app@db/x?Client_Secret=***&application_name=orch"),
    # Unparseable (a port that is not a number): masked all the same.
    ("postgresql://app@db:x/x?password=S3cret&a=1", "postgresql://app:***@db:x/x?password=***&a=1"),
    ("postgresql://a:S3@cret@db/x?my_token=S3cret", "postgresql://a:***@db/x?my_token=***"),
])
def test_mask_url_hides_query_parameters_that_hold_secrets(url, masked):
    assert mask_url(url) == masked


def test_a_secret_query_parameter_is_masked_in_every_error(run_cli):
    url = "postgresql://ada@127.0.0.1:1/app?password=S3cret&sslpassword=S3cret"
    for command in (("db", "status"), ("db", "backup"), ("db", "upgrade")):
        result = run_cli(*command, "--database-url", url)
        assert result.returncode in (2, 3) and "cannot" in result.stderr, result.stderr
        assert "S3cret" not in result.stderr + result.stdout
        assert "password=***" in result.stderr


@pytest.mark.parametrize("url", [
    "postgresql://ada:s3c@retPW@127.0.0.1/app",
    "postgresql://ada:s3c@ret/PW@127.0.0.1/app",
    "postgresql://ada:s3c@ret?PW@127.0.0.1/app",
    "postgresql://ada:s3c@ret:PW@127.0.0.1/app",
])
def test_an_unencoded_at_sign_in_the_password_is_masked_and_refused(url):
    assert mask_url(url) == "postgresql://ada:***@127.0.0.1/app"
    with pytest.raises(InvalidDatabaseUrl, match="as %40") as info:
        normalize_url(url)
    assert "s3c" not in str(info.value) and "PW" not in str(info.value)


def test_a_port_that_is_not_a_number_is_refused_without_the_password():
    with pytest.raises(InvalidDatabaseUrl, match="is not a database URL") as info:
        normalize_url("postgresql://ada:s3cret@host:x/app")
    assert "s3cret" not in str(info.value) and "s3cret" not in mask_url(
        "postgresql://ada:s3cret@host:x/app")
    assert normalize_url("postgresql://ada:s3c%40retPW@127.0.0.1/app").endswith("@127.0.0.1/app")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_sqlite_database_is_refused(url):
    with pytest.raises(InvalidDatabaseUrl, match="in-memory SQLite database"):
        normalize_url(url)


def test_bad_url_error_hides_the_password():
    with pytest.raises(InvalidDatabaseUrl) as info:
        normalize_url("nonsense://ada:s3cret@")
    assert "s3cret" not in str(info.value)


def test_backend_and_path():
    assert backend_name("postgres://h/db") == "postgresql"
    assert str(sqlite_path("sqlite:///data/app.db")) == "data/app.db"
    assert sqlite_path("postgresql://h/db") is None


def test_sqlite_connections_enforce_foreign_keys(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/fk.db")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_sqlite_ddl_is_transactional(tmp_path):
    """A rolled-back transaction takes its DDL with it (the pysqlite recipe in db.py)."""
    engine = create_engine(f"sqlite:///{tmp_path}/tx.db")
    with engine.connect() as connection:
        connection.execute(text("CREATE TABLE kept (id INTEGER)"))
        connection.commit()
        connection.execute(text("CREATE TABLE dropped (id INTEGER)"))
        connection.rollback()
        names = connection.execute(text("SELECT name FROM sqlite_master")).scalars().all()
    assert names == ["kept"]
    engine.dispose()
