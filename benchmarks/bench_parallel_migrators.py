"""Eight `orchestrator db upgrade` processes at once on a fresh database (issue 3).

On PostgreSQL (advisory lock) and SQLite (lock file), per repetition and on a fresh database
each time: the wall time of one `orchestrator db upgrade` process, then of eight started
together (until the last exits). Target: eight ≤ 1.5 × one (median of paired ratios). Every
process must exit 0, exactly one must apply the revisions and the others apply nothing.

A second reference separates the lock from process start-up: eight `orchestrator db current`
processes started together on the migrated database (read-only, no lock) give the floor that
eight Python processes on this machine's cores cost anyway.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks import (
    Options,
    median,
    metric,
    orchestrator_cmd,
    paired_ratios,
    postgres_or_skip,
    project_env,
    result,
    scratch_database,
    sqlite_url,
)

TITLE = "{processes} simultaneous migrators on a fresh database"
TARGET_RATIO = 1.5
_UNVERSIONED = "has tables but no migration revision"


def run(options: Options) -> dict[str, Any]:
    processes = 2 if options.smoke else 8
    repeats = options.repeats(3, 1)
    admin_url, skip = postgres_or_skip(TITLE.format(processes=processes), 3)
    dialects = ["postgresql", "sqlite"] if admin_url else ["sqlite"]
    metrics, rows = [], []
    notes: list[str] = [] if admin_url else [skip["skipped"] + "; PostgreSQL not measured"]
    for dialect in dialects:
        one, many, readers, failures = [], [], [], []
        for i in range(repeats):
            with _fresh(dialect, admin_url, options.workdir, f"one{i}") as url:
                one.append(_together(url, 1)[0])
            with _fresh(dialect, admin_url, options.workdir, f"many{i}") as url:
                seconds, applied_by, failed = _together(url, processes)
                many.append(seconds)
                failures += failed
                if failed:
                    # Finish the job so the read-only reference measures an up-to-date database.
                    _together(url, 1)
                readers.append(_together(url, processes, orchestrator_cmd("db", "current"))[0])
            rows.append([dialect, i + 1, f"{one[-1]:.2f} s", f"{many[-1]:.2f} s",
                         f"{readers[-1]:.2f} s", applied_by, len(failed)])
        ratio = median(paired_ratios(many, one))
        metrics += [
            metric(f"{processes} × `db upgrade` at once, {dialect}", median(many),
                   reference=median(one), reference_name="one `db upgrade`", ratio=ratio,
                   target="≤ 1.5 ×", passed=ratio <= TARGET_RATIO, runs=repeats),
            metric(f"{processes} × `db upgrade` vs {processes} × `db current`, {dialect}",
                   median(many), reference=median(readers),
                   reference_name=f"{processes} × `db current` at once (no lock)",
                   ratio=median(paired_ratios(many, readers)), runs=repeats,
                   note="what the lock and the migration add over start-up alone"),
            metric(f"processes that failed, {dialect}", len(failures), "processes",
                   target="0 (all exit 0)", passed=not failures,
                   runs=repeats * processes),
        ]
        notes += [f"{dialect}: a process failed: {error}" for error in dict.fromkeys(failures)]
        notes.append(
            f"{dialect}: start-up floor: {processes} × `db current` at once (no lock, nothing to "
            f"migrate) took {median(readers):.1f} s, {median(paired_ratios(readers, one)):.1f} × "
            f"one `db upgrade`. On {os.cpu_count()} cores, {processes} Python processes that each "
            "spend about a second of CPU importing cannot all finish within 1.5 × one process, "
            "lock or no lock; the upgrades took "
            f"{median(paired_ratios(many, readers)):.2f} × that floor."
        )
        if any(_UNVERSIONED in error for error in failures):
            notes.append(
                f"{dialect}: diagnosis of the failure: `upgrade()` calls `plan_upgrade()` before "
                "taking the lock, and `_read_database()` reads `alembic_version` and then the "
                "table list in two statements (two snapshots under READ COMMITTED). When the "
                "process holding the lock commits 001 between the two, the other sees tables "
                "but no version table and raises UnversionedDatabaseError instead of waiting."
            )
    return result(
        TITLE.format(processes=processes),
        3,
        f"Wall time until the last of {processes} `orchestrator db upgrade` processes started "
        "together exits, against one such process, each on a fresh database; "
        f"{repeats} repetitions per database.",
        metrics,
        tables=[{
            "title": "Every run",
            "header": ["database", "run", "one", f"{processes} at once",
                       f"{processes} × `db current`", "applied by (processes → revisions)",
                       "failed processes"],
            "rows": rows,
        }],
        notes=notes,
    )


class _fresh:
    """A fresh database for the block: a new PostgreSQL database or a new SQLite path."""

    def __init__(self, dialect: str, admin_url: str | None, workdir: Path, tag: str) -> None:
        self.dialect, self.admin_url, self.path = dialect, admin_url, workdir / f"parallel_{tag}.db"

    def __enter__(self) -> str:
        if self.dialect == "postgresql":
            self._database = scratch_database(self.admin_url, "bench_parallel")
            return self._database.__enter__()
        return sqlite_url(self.path)

    def __exit__(self, *exc: object) -> None:
        if self.dialect == "postgresql":
            self._database.__exit__(*exc)
        else:
            for leftover in (self.path, self.path.with_name(self.path.name + ".migrate.lock")):
                leftover.unlink(missing_ok=True)


def _together(url: str, count: int, cmd: list[str] | None = None) -> tuple[float, str, list[str]]:
    """Start `count` processes at once.

    Returns (seconds until the last exits, who applied what, the error line of each process
    that failed): a failure is a finding to report, not a reason to stop measuring.
    """
    cmd = cmd or orchestrator_cmd("db", "upgrade")
    env = project_env(DATABASE_URL=url)
    started = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(count)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    seconds = time.perf_counter() - started
    failed = [(err.strip().splitlines() or [f"exit {p.returncode}"])[-1]
              for p, (_, err) in zip(procs, outputs) if p.returncode != 0]
    if failed and count == 1:
        raise RuntimeError(f"{' '.join(cmd)} failed: {failed[0]}")
    ok = [out for p, (out, _) in zip(procs, outputs) if p.returncode == 0]
    return seconds, _applied(ok), failed


def _applied(outputs: list[str]) -> str:
    """Check that exactly one process applied revisions; describe it."""
    applied = [line for out in outputs for line in out.splitlines()
               if line.startswith("Applied ") and not line.startswith("Applied nothing")]
    if not any(line.startswith("Upgrading ") for out in outputs for line in out.splitlines()):
        return "—"  # read-only commands
    if len(applied) != 1:
        raise RuntimeError(f"expected one process to apply the migrations, got {applied}")
    return f"1 → {applied[0].removeprefix('Applied ').split(' in ')[0]}"
