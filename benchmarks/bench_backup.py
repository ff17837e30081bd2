"""Backups (issue 4): SQLite backup against `cp`, the automatic backup's cost, PostgreSQL's.

Runs only once `orchestrator.migrations.backup` exists; until then it reports "not present".
Backups are taken through `orchestrator.migrations.backup.create(url, backup_dir=, output=)`
in this process; the upgrades run `orchestrator db upgrade`'s code (`cli.main`) in a fresh
process that has done its imports first, so that what is timed is the work, not start-up:

- SQLite backup of the 1,000,000-task database vs `cp` of the same file (target ≤ 2 ×); the
  backup must be a sound SQLite file (`PRAGMA quick_check`);
- the overhead of the automatic backup on an upgrade 001 → head (staging, where it is on by
  default, against the same upgrade with BACKUP_BEFORE_MIGRATE=false);
- PostgreSQL: `orchestrator db backup` of a 1,000,000-task database beside `pg_dump -Fc`.
"""

from __future__ import annotations

import importlib.util
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
    libpq_url,
    median,
    metric,
    paired_ratios,
    postgres_admin_url,
    postgres_tasks_template,
    project_env,
    python_cmd,
    result,
    scratch_database,
    skipped,
    sqlite_tasks_db,
    sqlite_url,
    timed_run,
)

TITLE = "Backups: SQLite vs cp, automatic backup overhead, PostgreSQL vs pg_dump"
MODULE = "orchestrator.migrations.backup"
TARGET_RATIO = 2.0


def run(options: Options) -> dict[str, Any]:
    if importlib.util.find_spec(MODULE) is None:
        return skipped(TITLE, 4, f"not present: `{MODULE}` does not exist yet (issue 4)")
    repeats = options.repeats(5, 1)
    source = sqlite_tasks_db(options.rows)
    live = options.workdir / "backup_source.db"
    copy_file(source, live)
    from orchestrator.migrations import backup

    ours, cp = [], []
    for i in range(repeats):
        for kind in alternate(i, "ours", "cp"):
            out = options.workdir / f"backup_{kind}_{i}.db"
            if kind == "ours":
                started = time.perf_counter()
                info = backup.create(sqlite_url(live), backup_dir=options.workdir / "backups",
                                     output=out)
                ours.append(time.perf_counter() - started)
                _check_sqlite_backup(info.path)
            else:
                seconds, _ = timed_run(["cp", str(live), str(out)])
                cp.append(seconds)
            for leftover in (out, out.with_name(out.name + ".json")):
                leftover.unlink(missing_ok=True)
    backup_ratio = median(paired_ratios(ours, cp))
    metrics = [
        metric("SQLite `backup.create()` (in process)", median(ours), reference=median(cp),
               reference_name="`cp` of the file", ratio=backup_ratio, target="≤ 2 ×",
               passed=backup_ratio <= TARGET_RATIO, runs=repeats),
    ]

    notes: list[str] = []
    try:
        metrics.append(_automatic_backup_overhead(source, options, repeats, notes))
    except RuntimeError as exc:
        # Issue 4 is being built: report what stops the measurement instead of nothing.
        notes.append(f"Automatic backup overhead not measured: {str(exc).splitlines()[0]}")

    admin_url = postgres_admin_url()
    if admin_url:
        pg_ours, pg_dump = [], []
        with postgres_tasks_template(admin_url, options.rows, "head", "bench_backup_tpl") as tpl:
            with scratch_database(admin_url, "bench_backup", template=tpl) as url:
                for i in range(repeats):
                    for kind in alternate(i, "ours", "pg_dump"):
                        out = options.workdir / f"pg_{kind}_{i}.dump"
                        if kind == "ours":
                            started = time.perf_counter()
                            backup.create(url, backup_dir=options.workdir / "pg_backups",
                                          output=out)
                            pg_ours.append(time.perf_counter() - started)
                        else:
                            seconds, _ = timed_run(["pg_dump", "-Fc", "-f", str(out),
                                                    libpq_url(url)])
                            pg_dump.append(seconds)
                        for leftover in (out, out.with_name(out.name + ".json")):
                            leftover.unlink(missing_ok=True)
        metrics.append(
            metric("PostgreSQL `backup.create()` (in process)", median(pg_ours),
                   reference=median(pg_dump), reference_name="`pg_dump -Fc` (whole process)",
                   ratio=median(paired_ratios(pg_ours, pg_dump)), runs=repeats))
    else:
        notes.append("PostgreSQL not measured: no server answers")
    return result(
        TITLE,
        4,
        f"{options.rows:,} tasks; {repeats} repetitions of each, alternating with the reference.",
        metrics,
        notes=notes,
        rows=options.rows,
    )


def _automatic_backup_overhead(source: Path, options: Options, repeats: int,
                               notes: list[str]) -> dict[str, Any]:
    """Upgrade 001 → head in staging with and without the backup taken before migrating."""
    with_backup, without, written = [], [], []
    for i in range(repeats):
        for kind in alternate(i, "with", "without"):
            target = options.workdir / f"auto_{kind}.db"
            copy_file(source, target)
            folder = options.workdir / f"auto_backups_{kind}_{i}"
            env = project_env(DATABASE_URL=sqlite_url(target), ENVIRONMENT="staging",
                              BACKUP_DIR=str(folder),
                              BACKUP_BEFORE_MIGRATE="true" if kind == "with" else "false")
            (with_backup if kind == "with" else without).append(
                _child_cli(["db", "upgrade"], env))
            if kind == "with":
                written.append(any(folder.glob("*.sqlite")) or any(folder.glob("*.db")))
            target.unlink()
    result_metric = (
        metric("upgrade 001 → head with the automatic backup (staging)", median(with_backup),
               reference=median(without), reference_name="same upgrade, BACKUP_BEFORE_MIGRATE=false",
               ratio=median(paired_ratios(with_backup, without)), runs=repeats,
               note="overhead = ratio − 1; no target"))
    if not all(written):
        notes.append(
            "The staging upgrade wrote no backup into BACKUP_DIR: the automatic backup before "
            "migrating is not wired into `db upgrade` yet, so the overhead above is noise."
        )

    return result_metric


def _child_cli(args: list[str], env: dict[str, str]) -> float:
    _, done = timed_run(python_cmd("-m", "benchmarks.bench_backup", "--child", *args), env)
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def _check_sqlite_backup(path: Path) -> None:
    if not path.exists():
        candidates = sorted(path.parent.glob(path.name + "*"))
        if not candidates:
            raise RuntimeError(f"`db backup --output {path}` wrote no file there")
        path = candidates[0]
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        verdict = connection.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        connection.close()
    if verdict != "ok":
        raise RuntimeError(f"the backup {path} is not sound: {verdict}")


def child(args: list[str]) -> None:
    """In a fresh process: import, then time the CLI command alone; prints JSON seconds."""
    import contextlib
    import io

    import orchestrator.cli as cli

    for module in (MODULE, "orchestrator.migrations", "orchestrator.models", "alembic.command"):
        __import__(module)
    output = io.StringIO()
    begin = time.perf_counter()
    with contextlib.redirect_stdout(output):
        try:
            cli.main(args)
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise RuntimeError(f"orchestrator {' '.join(args)} exited {exc.code}") from None
    seconds = time.perf_counter() - begin
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
