"""SQLite databases for the benchmarks: the cached 1,000,000-task files, and reading Alembic's
offline SQL for SQLite."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

from benchmarks.options import DATA, VERSIONS


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _scripts_digest() -> str:
    """Changes when a migration script changes, so cached databases are rebuilt."""
    digest = hashlib.sha256()
    for script in sorted(VERSIONS.glob("*.py")):
        digest.update(script.name.encode() + script.read_bytes())
    return digest.hexdigest()[:12]


def sqlite_tasks_db(rows: int, revision: str = "001") -> Path:
    """A cached SQLite file at `revision` whose `tasks` table holds `rows` rows.

    Built once (migrate with the manager, then one bulk INSERT from a recursive CTE in a single
    transaction) and reused by later runs; callers copy it before changing it.
    """
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"tasks_{revision}_{rows}_{_scripts_digest()}.db"
    if path.exists():
        return path
    for stale in DATA.glob(f"tasks_{revision}_{rows}_*.db"):
        stale.unlink()
    building = path.with_suffix(".building")
    building.unlink(missing_ok=True)
    from orchestrator.migrations import MigrationManager

    with MigrationManager(sqlite_url(building)) as manager:
        manager.upgrade(revision)
    building.with_name(building.name + ".migrate.lock").unlink(missing_ok=True)
    connection = sqlite3.connect(building, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("BEGIN")
        _fill_sqlite(connection, rows)
        connection.execute("COMMIT")
    finally:
        connection.close()
    building.rename(path)
    return path


def _fill_sqlite(connection: sqlite3.Connection, rows: int) -> None:
    connection.execute("INSERT INTO users (id, email, name) VALUES (1, 'bench@example.com', 'Bench')")
    connection.execute(
        "INSERT INTO projects (id, owner_id, name) WITH RECURSIVE n(i) AS "
        "(SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) SELECT i, 1, 'project ' || i FROM n"
    )
    # From 005 on, an agent has an owner (the one user).
    owned = any(row[1] == "owner_id" for row in connection.execute("PRAGMA table_info(agents)"))
    connection.execute(
        f"INSERT INTO agents (id, name{', owner_id' if owned else ''}) WITH RECURSIVE n(i) AS "
        "(SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50) "
        f"SELECT i, 'agent ' || i{', 1' if owned else ''} FROM n"
    )
    # Realistic spread: 100 projects, two thirds of tasks assigned, four statuses, distinct
    # creation times, a description of about 100 bytes.
    connection.execute(
        "INSERT INTO tasks (id, project_id, agent_id, title, description, status, created_at, "
        "updated_at) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        "SELECT i, 1 + i % 100, CASE WHEN i % 3 = 0 THEN NULL ELSE 1 + i % 50 END, "
        "'task ' || i, 'benchmark task ' || i || ' ' || hex(randomblob(32)), "
        "CASE i % 4 WHEN 0 THEN 'pending' WHEN 1 THEN 'in_progress' WHEN 2 THEN 'done' "
        "ELSE 'failed' END, datetime(1767225600 + i, 'unixepoch'), "
        "datetime(1767225600 + i, 'unixepoch') FROM n",
        (rows,),
    )


def copy_file(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)


def sqlite_statements_by_revision(sql: str) -> list[list[str]]:
    """Split Alembic's offline SQL for SQLite into the statements of each revision step."""
    steps: list[list[str]] = []
    for chunk in sql.split("-- Running upgrade")[1:]:
        body = chunk.split("\n", 1)[1] if "\n" in chunk else ""
        statements = [s.strip() for s in body.split(";\n") if s.strip()]
        steps.append([s.rstrip(";") for s in statements])
    return steps
