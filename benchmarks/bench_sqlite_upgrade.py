"""Upgrading a 1,000,000-task SQLite database from 001 to head (issue 2).

The database is built once at revision 001 and cached under `benchmarks/.data/`; every
repetition works on a fresh copy. Three measurements per repetition, interleaved:

- ours: a fresh process imports what a migration needs (the project, Alembic, SQLAlchemy's
  ORM), then times `MigrationManager(url).upgrade()`: the time spent migrating;
- reference: the same DDL, taken from `MigrationManager(url).sql("head", start="001")`, run
  through Python's sqlite3 module with one transaction per revision, as the manager runs it;
- the whole `orchestrator db upgrade` process, spawn to exit (reported beside the reference,
  no target).

Target: ours ≤ 1.1 × the reference (median of paired ratios). The file size before and after
shows whether any step copied the table.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import (
    Options,
    alternate,
    copy_file,
    median,
    metric,
    orchestrator_cmd,
    paired_ratios,
    project_env,
    python_cmd,
    result,
    sqlite_statements_by_revision,
    sqlite_tasks_db,
    sqlite_url,
    timed_run,
)

TITLE = "Upgrade 001 → head with {rows:,} tasks (SQLite)"
TARGET_RATIO = 1.1
# What a migration imports lazily; the child imports them before the clock starts.
WARM_IMPORTS = (
    "orchestrator.migrations",
    "orchestrator.models",
    "alembic.command",
    "alembic.script",
    "alembic.runtime.migration",
    "alembic.runtime.environment",
    "alembic.operations",
    "sqlalchemy.orm",
)


def run(options: Options) -> dict[str, Any]:
    source = sqlite_tasks_db(options.rows)
    size_before = source.stat().st_size
    ddl = _reference_ddl(options.workdir)
    repeats = options.repeats(5, 1)
    ours, reference, whole, lazy_imports = [], [], [], []
    size_after = 0
    for i in range(repeats):
        for kind in alternate(i, "ours", "reference") + ("whole",):
            target = options.workdir / f"upgrade_{kind}.db"
            copy_file(source, target)
            if kind == "ours":
                measured = _child_upgrade(target)
                ours.append(measured["migrate"])
                lazy_imports.append(measured["imports"])
                size_after = target.stat().st_size
            elif kind == "reference":
                reference.append(_run_ddl(target, ddl))
            else:
                seconds, _ = timed_run(
                    orchestrator_cmd("db", "upgrade"), project_env(DATABASE_URL=sqlite_url(target))
                )
                whole.append(seconds)
            _verify_at_head(target)
            _remove(target)
    ratio = median(paired_ratios(ours, reference))
    floor = median(reference)
    return result(
        TITLE.format(rows=options.rows),
        2,
        f"A `tasks` table of {options.rows:,} rows at revision 001 ({size_before / 1e6:.0f} MB "
        f"file), upgraded to head (002 adds a column, 003 builds five indexes, later revisions "
        f"what they do); {repeats} repetitions, each on a fresh copy.",
        [
            metric(
                "time spent migrating, in process (`upgrade()` after imports)",
                median(ours),
                reference=floor,
                reference_name="same DDL through sqlite3",
                ratio=ratio,
                target="≤ 1.1 ×",
                passed=ratio <= TARGET_RATIO,
                runs=repeats,
            ),
            metric(
                "whole process `orchestrator db upgrade`",
                median(whole),
                reference=floor,
                reference_name="same DDL through sqlite3",
                ratio=median(paired_ratios(whole, reference)),
                runs=repeats,
                note="start-up included; no target",
            ),
            metric(
                "imports a migration needs (project, Alembic, ORM), cold",
                median(lazy_imports),
                runs=repeats,
                note="paid once per process; outside the first row's clock",
            ),
        ],
        notes=[
            f"File size: {size_before / 1e6:.0f} MB at 001, {size_after / 1e6:.0f} MB at head "
            "(no step copies the table).",
        ],
        rows=options.rows,
    )


def _reference_ddl(workdir: Path) -> list[list[str]]:
    from orchestrator.migrations import MigrationManager

    sql = MigrationManager(sqlite_url(workdir / "offline.db")).sql("head", start="001")
    return sqlite_statements_by_revision(sql)


def _run_ddl(path: Path, steps: list[list[str]]) -> float:
    """The DDL through sqlite3, one transaction per revision; seconds, connection included."""
    started = time.perf_counter()
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        for statements in steps:
            connection.execute("BEGIN")
            for statement in statements:
                connection.execute(statement)
            connection.execute("COMMIT")
    finally:
        connection.close()
    return time.perf_counter() - started


def _child_upgrade(path: Path) -> dict[str, float]:
    _, done = timed_run(
        python_cmd("-m", "benchmarks.bench_sqlite_upgrade", "--child", sqlite_url(path)),
        project_env(),
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _verify_at_head(path: Path) -> None:
    from orchestrator.migrations import MigrationManager

    head = MigrationManager(sqlite_url(path)).get_head_revision()
    connection = sqlite3.connect(path)
    try:
        version = connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        indexes = connection.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks' "
            "AND name LIKE 'ix_tasks_%'"
        ).fetchone()[0]
    finally:
        connection.close()
    if version != head or indexes != 5:
        raise RuntimeError(f"{path} ended at {version} with {indexes} task indexes")


def _remove(path: Path) -> None:
    for leftover in (path, path.with_name(path.name + ".migrate.lock")):
        leftover.unlink(missing_ok=True)


def child(url: str) -> None:
    """In a fresh process: import, then time `upgrade()` alone; prints JSON seconds."""
    import importlib

    started = time.perf_counter()
    for module in WARM_IMPORTS:
        importlib.import_module(module)
    imported = time.perf_counter()
    from orchestrator.migrations import MigrationManager

    manager = MigrationManager(url)
    begin = time.perf_counter()
    applied = manager.upgrade()
    migrate = time.perf_counter() - begin
    manager.close()
    assert applied and applied[0] == "002", applied
    print(json.dumps({"imports": imported - started, "migrate": migrate}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2])
