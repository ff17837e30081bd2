"""Upgrading a 1,000,000-task PostgreSQL database from 001 to head (issue 3).

A template database at 001 with the tasks is built once per run; every repetition copies it
twice and upgrades one copy each way, interleaved:

- ours: a fresh process imports what a migration needs, then times
  `MigrationManager(url).upgrade()` (advisory lock, lock_timeout, one transaction per
  revision, 003's indexes built CONCURRENTLY);
- reference: the same DDL, `MigrationManager(url).sql("head", start="001")` (whose 003 is also
  CONCURRENTLY, so concurrent builds are compared with concurrent builds), run by `psql -f`;
  the whole psql process is timed, connection included.

Target: ours ≤ 1.1 × the reference (median of paired ratios).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from benchmarks import (
    TASK_INDEXES,
    Options,
    alternate,
    checkpoint,
    libpq_url,
    median,
    metric,
    paired_ratios,
    postgres_or_skip,
    postgres_tasks_template,
    project_env,
    python_cmd,
    result,
    scratch_database,
    timed_run,
)

TITLE = "Upgrade 001 → head with {rows:,} tasks (PostgreSQL)"
TARGET_RATIO = 1.1


def run(options: Options) -> dict[str, Any]:
    admin_url, skip = postgres_or_skip(TITLE.format(rows=options.rows), 3)
    if skip:
        return skip
    repeats = options.repeats(5, 1)
    ours, reference = [], []
    ddl_file = options.workdir / "upgrade_001_head.sql"
    with postgres_tasks_template(admin_url, options.rows, "001", "bench_upgrade_tpl") as template:
        for i in range(repeats):
            for kind in alternate(i, "ours", "psql"):
                with scratch_database(admin_url, f"bench_upgrade_{kind}", template=template) as url:
                    if not ddl_file.exists():
                        from orchestrator.migrations import MigrationManager

                        ddl_file.write_text(MigrationManager(url).sql("head", start="001"))
                    checkpoint(admin_url)
                    if kind == "ours":
                        _, done = timed_run(
                            python_cmd("-m", "benchmarks.bench_pg_upgrade", "--child", url),
                            project_env(),
                        )
                        ours.append(json.loads(done.stdout.strip().splitlines()[-1])["migrate"])
                    else:
                        seconds, _ = timed_run(
                            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", libpq_url(url),
                             "-f", str(ddl_file)],
                            project_env(),
                        )
                        reference.append(seconds)
                    _verify_at_head(url)
    ratio = median(paired_ratios(ours, reference))
    return result(
        TITLE.format(rows=options.rows),
        3,
        f"`tasks` with {options.rows:,} rows at 001, upgraded to head on a fresh copy of a "
        f"template database each time; {repeats} repetitions of each, alternating.",
        [
            metric("time spent migrating, in process (`upgrade()` after imports)", median(ours),
                   reference=median(reference),
                   reference_name="same DDL through `psql -f` (whole psql process)",
                   ratio=ratio, target="≤ 1.1 ×", passed=ratio <= TARGET_RATIO, runs=repeats),
        ],
        rows=options.rows,
    )


def _verify_at_head(url: str) -> None:
    import psycopg

    from orchestrator.migrations import MigrationManager

    head = MigrationManager(url).get_head_revision()
    with psycopg.connect(libpq_url(url)) as connection:
        version = connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        valid = connection.execute(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = ANY(%s) AND i.indisvalid",
            (list(TASK_INDEXES),),
        ).fetchone()[0]
    if version != head or valid != len(TASK_INDEXES):
        raise RuntimeError(f"ended at {version} with {valid} valid task indexes")


def child(url: str) -> None:
    """In a fresh process: import, then time `upgrade()` alone; prints JSON seconds."""
    from orchestrator.migrations import MigrationManager

    for module in ("alembic.command", "orchestrator.models", "alembic.runtime.migration",
                   "alembic.operations", "sqlalchemy.dialects.postgresql", "psycopg"):
        __import__(module)
    manager = MigrationManager(url)
    begin = time.perf_counter()
    applied = manager.upgrade()
    migrate = time.perf_counter() - begin
    manager.close()
    assert applied and applied[0] == "002", applied
    print(json.dumps({"migrate": migrate}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2])
