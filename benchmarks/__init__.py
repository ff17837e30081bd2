"""Benchmarks of the migration system, run by `uv run python -m benchmarks`.

Each `bench_*.py` module measures one thing and exposes `run(options) -> dict` (see
`Options`); the runner (`__main__.py`) renders what they return into `docs/benchmarks.md`.
Every figure is a median over repetitions, set beside a reference measured in the same run,
because the machines this runs on are small and noisy: absolute times move, ratios much less.

What the benchmarks share lives beside them, one module per job, and is re-exported here:
`options` (paths, sizes, `Options`), `results` (the result format and statistics), `processes`
(running commands), `sqlite_data` (the cached 1,000,000-task files), `postgres` (server,
scratch databases, tasks databases) and `machine` (what the figures were measured on). Heavy
modules (SQLAlchemy, psycopg, the project) are imported inside the functions that need them,
so that importing a benchmark costs nothing.
"""

from benchmarks.machine import machine_info
from benchmarks.options import (
    BIN,
    DATA,
    DEFAULT_ROWS,
    DOCS,
    ROOT,
    SMOKE_ROWS,
    TASK_INDEXES,
    VERSIONS,
    Options,
)
from benchmarks.postgres import (
    admin_execute,
    checkpoint,
    create_database,
    database_url,
    drop_database,
    fill_postgres,
    libpq_url,
    postgres_admin_url,
    postgres_or_skip,
    postgres_tasks_template,
    scratch_database,
)
from benchmarks.processes import orchestrator_cmd, project_env, python_cmd, timed_run
from benchmarks.results import (
    alternate,
    median,
    metric,
    paired_ratios,
    percentile,
    result,
    skipped,
)
from benchmarks.sqlite_data import (
    copy_file,
    sqlite_statements_by_revision,
    sqlite_tasks_db,
    sqlite_url,
)

__all__ = [
    "BIN", "DATA", "DEFAULT_ROWS", "DOCS", "ROOT", "SMOKE_ROWS", "TASK_INDEXES", "VERSIONS",
    "Options", "admin_execute", "alternate", "checkpoint", "copy_file", "create_database",
    "database_url", "drop_database", "fill_postgres", "libpq_url", "machine_info", "median",
    "metric", "orchestrator_cmd", "paired_ratios", "percentile", "postgres_admin_url",
    "postgres_or_skip", "postgres_tasks_template", "project_env", "python_cmd", "result",
    "scratch_database", "skipped", "sqlite_statements_by_revision", "sqlite_tasks_db",
    "sqlite_url", "timed_run",
]
