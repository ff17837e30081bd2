"""PostgreSQL for the benchmarks: finding a server, scratch databases (created, copied from a
template, dropped), and the tasks databases filled like the SQLite ones.

psycopg, SQLAlchemy and the project are imported inside the functions that use them, so that
importing a benchmark costs nothing."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from benchmarks.results import skipped

def postgres_admin_url() -> str | None:
    """A server that answers: BENCH_POSTGRES_URL, TEST_DATABASE_URL, then the local one."""
    from orchestrator.migrations.scratch import LOCAL_SERVERS, answering_server

    candidates = [os.environ[v] for v in ("BENCH_POSTGRES_URL", "TEST_DATABASE_URL")
                  if os.environ.get(v)]
    return answering_server([*candidates, *LOCAL_SERVERS])


def postgres_or_skip(title: str, issue: int | None) -> tuple[str | None, dict[str, Any] | None]:
    """(admin URL, None), or (None, a skipped result); REQUIRE_POSTGRES=1 makes it an error."""
    url = postgres_admin_url()
    if url is not None:
        return url, None
    reason = "no PostgreSQL server answers (set BENCH_POSTGRES_URL or TEST_DATABASE_URL)"
    if os.environ.get("REQUIRE_POSTGRES") == "1":
        raise RuntimeError(f"REQUIRE_POSTGRES=1 but {reason}")
    return None, skipped(title, issue, reason)


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL as libpq (psql, psycopg) takes it."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def database_url(admin_url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(admin_url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.set(database=name).render_as_string(hide_password=False)


def admin_execute(admin_url: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(libpq_url(admin_url), autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement)


def create_database(admin_url: str, prefix: str, template: str | None = None) -> str:
    """A new database (a copy of `template` when given); returns its name."""
    from sqlalchemy.engine import make_url

    from orchestrator.migrations.scratch import create_database as create

    # FILE_COPY checkpoints once and copies the files, instead of logging the whole template
    # to the WAL (which would leave the copy's writes to land during the measurement).
    url = create(admin_url, prefix, template=template,
                 strategy="FILE_COPY" if template else None)
    return make_url(url).database


def drop_database(admin_url: str, name: str) -> None:
    from orchestrator.migrations.scratch import drop_database as drop

    drop(admin_url, name)


@contextlib.contextmanager
def scratch_database(admin_url: str, prefix: str, template: str | None = None) -> Iterator[str]:
    """A database created for the block and dropped after it; yields its SQLAlchemy URL."""
    name = create_database(admin_url, prefix, template)
    try:
        yield database_url(admin_url, name)
    finally:
        drop_database(admin_url, name)


def checkpoint(admin_url: str) -> None:
    """Flush dirty pages now, so a checkpoint does not land inside a measurement."""
    admin_execute(admin_url, "CHECKPOINT")


@contextlib.contextmanager
def postgres_tasks_template(admin_url: str, rows: int, revision: str, prefix: str) -> Iterator[str]:
    """A database at `revision` with `rows` tasks, to copy with `scratch_database(template=)`.

    Yields the database's name; dropped after the block.
    """
    name = create_database(admin_url, prefix)
    try:
        url = database_url(admin_url, name)
        from orchestrator.migrations import MigrationManager

        with MigrationManager(url) as manager:
            manager.upgrade(revision)
        fill_postgres(url, rows)
        yield name
    finally:
        drop_database(admin_url, name)


def fill_postgres(url: str, rows: int) -> None:
    """The same data as the SQLite databases, then VACUUM ANALYZE (as a live table would be)."""
    import psycopg

    with psycopg.connect(libpq_url(url), autocommit=True) as connection:
        with connection.transaction():
            connection.execute(
                "INSERT INTO users (id, email, name) VALUES (1, 'bench@example.com', 'Bench')"
            )
            connection.execute(
                "INSERT INTO projects (id, owner_id, name) "
                "SELECT i, 1, 'project ' || i FROM generate_series(1, 100) i"
            )
            # From 005 on, an agent has an owner (the one user).
            owned = connection.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = 'agents' AND column_name = 'owner_id'").fetchone() is not None
            connection.execute(
                f"INSERT INTO agents (id, name{', owner_id' if owned else ''}) "
                f"SELECT i, 'agent ' || i{', 1' if owned else ''} FROM generate_series(1, 50) i"
            )
            connection.execute(
                "INSERT INTO tasks (project_id, agent_id, title, description, status, "
                "created_at, updated_at) "
                "SELECT 1 + i % 100, CASE WHEN i % 3 = 0 THEN NULL ELSE 1 + i % 50 END, "
                "'task ' || i, 'benchmark task ' || i || ' ' || md5(i::text) || md5((-i)::text), "
                "(ARRAY['pending', 'in_progress', 'done', 'failed'])[1 + i % 4], "
                "timestamptz '2026-01-01' + i * interval '1 second', "
                "timestamptz '2026-01-01' + i * interval '1 second' "
                f"FROM generate_series(1, {int(rows)}) i"
            )
            # Fixed ids above: move the sequences past them, as the application would have.
            for table in ("users", "projects", "agents"):
                connection.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
        connection.execute("VACUUM ANALYZE")
