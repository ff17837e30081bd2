"""Rehearsing 002 → head on a copy of a 1,000,000-task PostgreSQL database (issue 14).

The database at 002 with the tasks is built once; every repetition rehearses it twice,
alternating which goes first:

- ours: `rehearse(manager)`, everything `orchestrator db rehearse` does: sweep stale copies,
  plan on the database, `pg_dump` it, restore the dump into a new database, migrate that with
  `MigrationManager.upgrade()` while every statement is observed (pg_locks after each statement
  in a transaction, a second connection sampling during CONCURRENTLY builds, relfilenode before
  and after), the linter's predictions, and drop the copy;
- reference: the same copy and the same migration on it, unobserved (`observe=False`).

Target: ours ≤ 1.2 × the reference (median of paired ratios): observing is nearly free.

It also traces 003 by hand on a copy of the database, the way one would with psql: each of its
`CREATE INDEX CONCURRENTLY` statements run on one connection while another polls `pg_locks`
for that backend; the (table, mode) pairs seen must be those the rehearsal reports.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from benchmarks import (
    TASK_INDEXES,
    Options,
    alternate,
    checkpoint,
    database_url,
    libpq_url,
    median,
    metric,
    paired_ratios,
    postgres_or_skip,
    postgres_tasks_template,
    result,
    scratch_database,
)

TITLE = "Rehearse 002 → head with {rows:,} tasks (PostgreSQL)"
TARGET_RATIO = 1.2


def run(options: Options) -> dict[str, Any]:
    admin_url, skip = postgres_or_skip(TITLE.format(rows=options.rows), 14)
    if skip:
        return skip
    from orchestrator.migrations import MigrationManager
    from orchestrator.migrations.rehearse import rehearse, render_text

    repeats = options.repeats(3, 1)
    ours: list[float] = []
    reference: list[float] = []
    last = None
    with postgres_tasks_template(admin_url, options.rows, "002", "bench_rehearse_src") as name:
        url = database_url(admin_url, name)
        for i in range(repeats):
            for kind in alternate(i, "ours", "reference"):
                checkpoint(admin_url)
                with MigrationManager(url) as manager:
                    started = time.perf_counter()
                    rehearsal = rehearse(manager, observe=kind == "ours")
                    seconds = time.perf_counter() - started
                    if manager.get_current_revision() != "002":
                        raise RuntimeError("the rehearsal changed the database it rehearsed")
                if not rehearsal.steps or not all(step.ok for step in rehearsal.steps):
                    raise RuntimeError(f"the rehearsal failed: {rehearsal.problems()}")
                (ours if kind == "ours" else reference).append(seconds)
                if kind == "ours":
                    last = rehearsal
        # The report an operator would read, for docs/migrations.md.
        print(render_text(last), flush=True)
        measured = _locks_of_003(last)
        with scratch_database(admin_url, "bench_rehearse_trace", template=name) as copy:
            by_hand = _trace_003_by_hand(copy)
    ratio = median(paired_ratios(ours, reference))
    matches = measured == by_hand
    step_003 = next(step for step in last.steps if step.revision == "003")
    return result(
        TITLE.format(rows=options.rows),
        14,
        f"`tasks` with {options.rows:,} rows at 002, rehearsed up to head; {repeats} "
        "repetitions of each, alternating. Both include the `pg_dump`, the restore into a new "
        "database, the migration and dropping the copy.",
        [
            metric("`rehearse()`: copy, observed migration, report", median(ours),
                   reference=median(reference),
                   reference_name="the same copy and migration, unobserved",
                   ratio=ratio, target="≤ 1.2 ×", passed=ratio <= TARGET_RATIO, runs=repeats),
            metric("003 on the copy (5 CONCURRENTLY builds, observed)", step_003.duration_s,
                   runs=1),
        ],
        tables=[{
            "title": "003's locks: the rehearsal's report against a trace by hand with pg_locks",
            "header": ["statement", "rehearsal", "by hand"],
            "rows": [[index, ", ".join(sorted(measured.get(index, ()))),
                      ", ".join(sorted(by_hand.get(index, ())))]
                     for index in sorted(set(measured) | set(by_hand))],
        }],
        notes=[f"003's report matches the hand trace: {'yes' if matches else 'NO'}.",
               "Each run, ours: " + ", ".join(f"{s:.1f} s" for s in ours) + "; reference: "
               + ", ".join(f"{s:.1f} s" for s in reference) + " (the machine is shared: the "
               "copy's pg_dump and restore dominate, and vary more than observing costs)."],
        rows=options.rows,
    )


def _locks_of_003(rehearsal) -> dict[str, set[str]]:
    """Index name -> {"table mode"} the rehearsal reported for each build of 003."""
    step = next(step for step in rehearsal.steps if step.revision == "003")
    return {
        _index_of(statement.sql): {f"{lock.relation} {lock.mode}" for lock in statement.locks}
        for statement in step.statements if statement.sql.startswith("CREATE INDEX")
    }


def _index_of(sql: str) -> str:
    return next(word for word in sql.split() if word in TASK_INDEXES)


def _trace_003_by_hand(url: str) -> dict[str, set[str]]:
    """Run 003's builds on one connection while another polls pg_locks for its backend."""
    import psycopg

    seen: dict[str, set[str]] = {}
    with psycopg.connect(libpq_url(url), autocommit=True) as builder, \
            psycopg.connect(libpq_url(url), autocommit=True) as watcher:
        pid = builder.info.backend_pid
        for index, columns in TASK_INDEXES.items():
            done = threading.Event()
            found: set[str] = set()

            def poll() -> None:
                while not done.is_set():
                    for relation, mode in watcher.execute(
                            "SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c "
                            "ON c.oid = l.relation WHERE l.pid = %s AND l.granted "
                            "AND l.locktype = 'relation' AND c.relkind = 'r' "
                            "AND c.relnamespace = 'public'::regnamespace", (pid,)):
                        found.add(f"{relation} {mode}")
                    time.sleep(0.005)

            thread = threading.Thread(target=poll)
            thread.start()
            try:
                builder.execute(f"CREATE INDEX CONCURRENTLY {index} ON tasks ({columns})")
            finally:
                done.set()
                thread.join()
            seen[index] = found
    return seen
