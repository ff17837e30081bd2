"""Benchmarks of the migration system, run by `uv run python -m benchmarks`.

Each `bench_*.py` module measures one thing and exposes `run(options) -> dict` (see
`Options`); the runner (`__main__.py`) renders what they return into `docs/benchmarks.md`.
Every figure is a median over repetitions, set beside a reference measured in the same run,
because the machines this runs on are small and noisy: absolute times move, ratios much less.

This module holds what the benchmarks share: timing and statistics, the result format,
subprocess helpers, scratch PostgreSQL databases and the cached 1,000,000-task databases.
Heavy modules (SQLAlchemy, psycopg, the project) are imported inside the functions that need
them, so that importing a benchmark costs nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Built databases are cached here between runs (git-ignored).
DATA = Path(__file__).resolve().parent / ".data"
BIN = Path(sys.executable).parent
VERSIONS = ROOT / "src" / "orchestrator" / "migrations" / "alembic" / "versions"

DEFAULT_ROWS = 1_000_000
SMOKE_ROWS = 2_000
# The five indexes revision 003 builds, as plain SQL (the naive migration and the reference).
TASK_INDEXES = {
    "ix_tasks_status": "status",
    "ix_tasks_priority_level": "priority_level",
    "ix_tasks_project_id": "project_id",
    "ix_tasks_agent_id": "agent_id",
    "ix_tasks_status_priority_created": "status, priority_level, created_at",
}
# Variables the project reads; benchmark subprocesses get only what each benchmark sets.
_PROJECT_VARIABLES = (
    "ENVIRONMENT", "DATABASE_URL", "AUTO_MIGRATE", "BACKUP_DIR", "BACKUP_KEEP",
    "BACKUP_BEFORE_MIGRATE", "MIGRATION_LOCK_TIMEOUT", "DB_LOCK_TIMEOUT",
)


@dataclass(frozen=True)
class Options:
    """How big and how often: the full run, or `--smoke`'s tiny one."""

    smoke: bool = False
    rows: int = DEFAULT_ROWS
    # Scratch files of the run (deleted afterwards).
    workdir: Path = Path("/tmp")
    # Where plots go (docs/ for the full run, the scratch folder for --smoke).
    plot_dir: Path = DOCS

    def repeats(self, full: int, smoke: int = 1) -> int:
        return smoke if self.smoke else full


# -- results ------------------------------------------------------------------------------


def metric(
    name: str,
    value: float,
    unit: str = "s",
    *,
    reference: float | None = None,
    reference_name: str | None = None,
    ratio: float | None = None,
    target: str | None = None,
    passed: bool | None = None,
    runs: int | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """One row of a benchmark's table: a median, its reference, their ratio and the target.

    `ratio` defaults to value / reference; give it explicitly when it is the median of paired
    per-repetition ratios (the usual case: more robust than a ratio of medians).
    """
    if ratio is None and reference:
        ratio = value / reference
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "reference": reference,
        "reference_name": reference_name,
        "ratio": ratio,
        "target": target,
        "passed": passed,
        "runs": runs,
        "note": note,
    }


def result(
    title: str,
    issue: int | None,
    description: str,
    metrics: list[dict[str, Any]],
    *,
    notes: Sequence[str] = (),
    tables: Sequence[dict[str, Any]] = (),
    plots: Sequence[str] = (),
    rows: int | None = None,
) -> dict[str, Any]:
    """What a benchmark's `run()` returns; `tables` are extra {"title", "header", "rows"}."""
    return {
        "title": title,
        "issue": issue,
        "description": description,
        "metrics": metrics,
        "notes": list(notes),
        "tables": list(tables),
        "plots": list(plots),
        "rows": rows,
    }


def skipped(title: str, issue: int | None, reason: str) -> dict[str, Any]:
    """A benchmark that could not run here, with the reason."""
    return {**result(title, issue, "", []), "skipped": reason}


# -- statistics ---------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` in 0..1) of `values`."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def paired_ratios(values: Sequence[float], references: Sequence[float]) -> list[float]:
    return [v / r for v, r in zip(values, references, strict=True)]


def alternate(index: int, first: Any, second: Any) -> tuple[Any, Any]:
    """(first, second) on even repetitions, swapped on odd ones, so order effects cancel."""
    return (first, second) if index % 2 == 0 else (second, first)


# -- processes ----------------------------------------------------------------------------


def project_env(**variables: str) -> dict[str, str]:
    """This process's environment without the project's settings, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if k not in _PROJECT_VARIABLES}
    env.update(variables)
    return env


def timed_run(cmd: Sequence[str], env: dict[str, str] | None = None, cwd: Path = ROOT,
              check: bool = True, timeout: float = 600) -> tuple[float, subprocess.CompletedProcess]:
    """Run a process to completion; (wall seconds from spawn to exit, the completed process)."""
    started = time.perf_counter()
    done = subprocess.run(list(cmd), env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    elapsed = time.perf_counter() - started
    if check and done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
    return elapsed, done


def orchestrator_cmd(*args: str) -> list[str]:
    """The installed `orchestrator` console script, as a user runs it."""
    return [str(BIN / "orchestrator"), *args]


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


# -- SQLite -------------------------------------------------------------------------------


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


# -- PostgreSQL ---------------------------------------------------------------------------

_CANDIDATE_SERVERS = (
    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "postgresql+psycopg://root@127.0.0.1:5432/postgres",
)


def postgres_admin_url() -> str | None:
    """A server that answers: BENCH_POSTGRES_URL, TEST_DATABASE_URL, then the local one."""
    import psycopg

    candidates = [os.environ[v] for v in ("BENCH_POSTGRES_URL", "TEST_DATABASE_URL")
                  if os.environ.get(v)]
    for url in [*candidates, *_CANDIDATE_SERVERS]:
        try:
            with psycopg.connect(libpq_url(url), connect_timeout=3):
                return url
        except psycopg.Error:
            continue
    return None


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
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    # FILE_COPY checkpoints once and copies the files, instead of logging the whole template
    # to the WAL (which would leave the copy's writes to land during the measurement).
    source = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
    admin_execute(admin_url, f'CREATE DATABASE "{name}"{source}')
    return name


def drop_database(admin_url: str, name: str) -> None:
    admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


# -- machine ------------------------------------------------------------------------------


def _code_version() -> str:
    """The commit measured (BENCH_CODE_COMMIT when run from an exported tree)."""
    if os.environ.get("BENCH_CODE_COMMIT"):
        return os.environ["BENCH_CODE_COMMIT"]
    try:
        done = subprocess.run(["git", "describe", "--always"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10)
        # The run itself rewrites docs/ (the plot): only changes elsewhere make the code dirty.
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                  ".", ":!docs"], cwd=ROOT, capture_output=True, text=True,
                                 timeout=10)
    except OSError:
        return "unknown"
    commit = done.stdout.strip() or "unknown"
    return f"{commit}-dirty" if changed.stdout.strip() else commit


def machine_info() -> dict[str, str]:
    import platform

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "sqlite": sqlite3.sqlite_version,
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    info["code"] = _code_version()
    with contextlib.suppress(Exception):
        import importlib.metadata as md

        for package in ("alembic", "sqlalchemy", "psycopg"):
            info[package] = md.version(package)
    with contextlib.suppress(Exception):
        url = postgres_admin_url()
        if url:
            import psycopg

            with psycopg.connect(libpq_url(url)) as connection:
                info["postgresql"] = connection.execute("SHOW server_version").fetchone()[0]
    return info
