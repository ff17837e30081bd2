"""PostgreSQL restore (issue 11): one session of ours runs the archive's SQL against `pg_restore`.

Since issue 11's operator trial, a PostgreSQL restore runs in one transaction of its own session,
which locks every table first (so that no session can commit between the safety dump and the
restore, whatever it says about read-only transactions): `pg_restore --file=-` writes the
archive out as SQL and this process runs it, each table's COPY data streamed to the server. What
it replaced, and the reference here, is `pg_restore --clean --if-exists --single-transaction
--dbname` connecting on its own. Both restore the same archive of the 1,000,000-task database
into a database holding it, alternating:

- `backup.restore(url, archive)` in process (no safety dump) against `pg_restore` alone;
- the whole `MigrationManager.restore` (ending sessions, locks, safety dump, restore) against
  `pg_dump -Fc` then `pg_restore` (the same work done by the tools alone, without a window).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks import (
    Options,
    alternate,
    checkpoint,
    libpq_url,
    median,
    metric,
    paired_ratios,
    postgres_or_skip,
    postgres_tasks_template,
    result,
    scratch_database,
    timed_run,
)

TITLE = "PostgreSQL restore: one session running the archive's SQL vs pg_restore"


def run(options: Options) -> dict[str, Any]:
    admin_url, skip = postgres_or_skip(TITLE, 11)
    if skip is not None:
        return skip
    from orchestrator.migrations import MigrationManager, backup

    repeats = options.repeats(3, 1)
    ours, tool, whole, tools = [], [], [], []
    with postgres_tasks_template(admin_url, options.rows, "head", "bench_restore_tpl") as tpl:
        with scratch_database(admin_url, "bench_restore", template=tpl) as url:
            archive = options.workdir / "restore_source.dump"
            backup.create(url, backup_dir=options.workdir, output=archive)
            for i in range(repeats):
                for kind in alternate(i, "ours", "pg_restore"):
                    checkpoint(admin_url)
                    if kind == "ours":
                        started = time.perf_counter()
                        backup.restore(url, archive)
                        ours.append(time.perf_counter() - started)
                    else:
                        tool.append(_pg_restore(url, archive))
                for kind in alternate(i, "manager", "tools"):
                    checkpoint(admin_url)
                    if kind == "manager":
                        with MigrationManager(url, backup_dir=options.workdir / f"safety_{i}") \
                                as manager:
                            started = time.perf_counter()
                            manager.restore(archive)
                            whole.append(time.perf_counter() - started)
                    else:
                        safety = options.workdir / f"tools_safety_{i}.dump"
                        dumped, _ = timed_run(["pg_dump", "-Fc", "-f", str(safety),
                                               libpq_url(url)])
                        tools.append(dumped + _pg_restore(url, archive))
                        safety.unlink()
    metrics = [
        metric("`backup.restore()` (in process, no safety dump)", median(ours),
               reference=median(tool),
               reference_name="`pg_restore --clean --if-exists --single-transaction --dbname`",
               ratio=median(paired_ratios(ours, tool)), runs=repeats),
        metric("`MigrationManager.restore()` (window, safety dump, restore)", median(whole),
               reference=median(tools), reference_name="`pg_dump -Fc` then that `pg_restore`",
               ratio=median(paired_ratios(whole, tools)), runs=repeats,
               note="the window's cost: ending sessions, locking, one transaction"),
    ]
    return result(
        TITLE,
        11,
        f"{options.rows:,} tasks at head; {repeats} repetitions of each, alternating with the "
        "reference; a CHECKPOINT before each.",
        metrics,
        rows=options.rows,
    )


def _pg_restore(url: str, archive) -> float:
    seconds, _ = timed_run(["pg_restore", "--clean", "--if-exists", "--single-transaction",
                            "--exit-on-error", f"--dbname={libpq_url(url)}",
                            str(archive)])
    return seconds
