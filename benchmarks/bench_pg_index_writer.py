"""Writer latency while revision 003 builds its indexes on PostgreSQL (issue 3).

A 1,000,000-task table at revision 002, and a writer process that inserts and updates tasks in
small transactions (one statement each, about 200 a second, as application traffic would).
While it writes, 003 runs:

- (a) with this project: `MigrationManager(url).upgrade()`, which builds the five indexes
  `CONCURRENTLY`;
- (b) the naive migration: the same five indexes with plain `CREATE INDEX`, in one transaction
  (what a transactional Alembic migration without `postgresql_concurrently` does);
- (c) by hand: the same five `CREATE INDEX CONCURRENTLY` statements sent by psycopg, as a DBA
  would type them into psql: what PostgreSQL itself costs the writer, without this project.

Each runs in a fresh process that imports first and times only the migration. The writer's
statements that started inside the migration's window give its worst and p99 latency; the
writer's latency before the migration starts is the reference. Targets: worst stall ≤ 20 ms
with this project; migration time ≤ 1.7 × the plain one. The three rotate, each on the same
database reset to 002 between runs.

A concurrent build writes its index outside shared buffers and fsyncs the whole file at the
end of the build, and a writer's commit (an fsync of the WAL on the same disk) waits behind that
flush. So the last reference is storage, not PostgreSQL: the writer's worst latency while this
process writes and fsyncs a file the size of the largest index on the data directory's
filesystem (measured only when the server's data directory is on this machine's filesystem).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import (
    TASK_INDEXES,
    Options,
    checkpoint,
    libpq_url,
    median,
    metric,
    paired_ratios,
    percentile,
    postgres_or_skip,
    postgres_tasks_template,
    project_env,
    python_cmd,
    result,
    scratch_database,
    timed_run,
)

TITLE = "Writer latency during 003's index builds (PostgreSQL)"
STALL_TARGET = 0.020
TIME_RATIO_TARGET = 1.7
WRITER_INTERVAL = 0.005
# The writer runs alone this long before the migration starts: its latency then is the reference.
BASELINE_SECONDS = 2.0
PLOT = "benchmarks-writer-latency.png"
MODES = ("concurrently", "plain", "by_hand")


def run(options: Options) -> dict[str, Any]:
    admin_url, skip = postgres_or_skip(TITLE, 3)
    if skip:
        return skip
    repeats = options.repeats(3, 1)
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    flushes: list[dict[str, Any]] = []
    with postgres_tasks_template(admin_url, options.rows, "002", "bench_writer_tpl") as template:
        with scratch_database(admin_url, "bench_writer", template=template) as url:
            for i in range(repeats):
                for mode in MODES[i % 3:] + MODES[:i % 3]:
                    checkpoint(admin_url)
                    runs[mode].append(_measure(url, mode, options))
                    largest = _largest_index_bytes(url)
                    _reset_to_002(url)
                checkpoint(admin_url)
                flush = _measure_flush(url, largest, options)
                if flush is not None:
                    flushes.append(flush)
    ours, plain, by_hand = runs["concurrently"], runs["plain"], runs["by_hand"]
    time_ratio = median(paired_ratios([r["migrate"] for r in ours], [r["migrate"] for r in plain]))
    worst_ours = median([r["worst"] for r in ours])
    worst_plain = median([r["worst"] for r in plain])
    worst_by_hand = median([r["worst"] for r in by_hand])
    everything = ours + plain + by_hand
    baseline_worst = median([r["baseline_worst"] for r in everything])
    baseline_p99 = median([r["baseline_p99"] for r in everything])
    plot = _plot(ours[len(ours) // 2], plain[len(plain) // 2], options.plot_dir / PLOT)
    flush_metrics, notes = [], []
    if flushes:
        notes.append(
            "What is left of the stall with CONCURRENTLY is the disk's: the build fsyncs the "
            "whole index when it ends and the writer's commits wait behind that flush, so the "
            "stall follows the flush of a file of the largest index's size with no migration "
            "at all (the row above), and this project adds nothing to the statements typed by "
            "hand. See docs/migrations.md, \"Zero-downtime index builds\"."
        )
        flush_metrics.append(metric(
            f"writer worst while {flushes[0]['bytes'] / 2**20:.1f} MiB (the largest index) "
            "is written and fsynced on the data disk, no migration",
            median([f["worst"] for f in flushes]), "ms",
            reference=baseline_worst, reference_name="writer worst, no migration",
            runs=len(flushes),
            note=f"the fsync itself: {median([f['fsync'] for f in flushes]) * 1000:.0f} ms",
        ))
    return result(
        TITLE,
        3,
        f"`tasks` with {options.rows:,} rows at 002; a writer inserting and updating tasks "
        f"(autocommit, one statement per transaction, every {WRITER_INTERVAL * 1000:.0f} ms) "
        f"while 003 runs; {repeats} runs of each, in rotating order. Latencies are those of the "
        "writer's statements that started during the migration; the reference is the same "
        f"writer in the {BASELINE_SECONDS:.0f} s before the migration.",
        [
            metric("writer worst stall, this project (CONCURRENTLY)", worst_ours, "ms",
                   reference=baseline_worst, reference_name="writer worst, no migration",
                   target="≤ 20 ms", passed=worst_ours <= STALL_TARGET, runs=repeats),
            metric("writer worst stall, this project vs CONCURRENTLY by hand", worst_ours, "ms",
                   reference=worst_by_hand,
                   reference_name="the same CREATE INDEX CONCURRENTLY statements sent by psycopg",
                   ratio=median(paired_ratios([r["worst"] for r in ours],
                                              [r["worst"] for r in by_hand])),
                   runs=repeats),
            *flush_metrics,
            metric("writer p99, this project (CONCURRENTLY)", median([r["p99"] for r in ours]),
                   "ms", reference=baseline_p99, reference_name="writer p99, no migration",
                   runs=repeats),
            metric("writer worst stall, plain CREATE INDEX", worst_plain, "ms",
                   reference=baseline_worst, reference_name="writer worst, no migration",
                   runs=repeats),
            metric("writer p99, plain CREATE INDEX", median([r["p99"] for r in plain]), "ms",
                   reference=baseline_p99, reference_name="writer p99, no migration",
                   runs=repeats),
            metric("migration time, this project (in process)",
                   median([r["migrate"] for r in ours]),
                   reference=median([r["migrate"] for r in plain]),
                   reference_name="plain CREATE INDEX ×5, one transaction",
                   ratio=time_ratio, target="≤ 1.7 ×",
                   passed=time_ratio <= TIME_RATIO_TARGET, runs=repeats),
        ],
        tables=[{
            "title": "Every run",
            "header": ["run", "migration", "writer statements during it", "worst", "p99",
                       "baseline worst"],
            "rows": [
                [f"{mode} {n + 1}", f"{r['migrate']:.2f} s", r["count"],
                 f"{r['worst'] * 1000:.1f} ms", f"{r['p99'] * 1000:.1f} ms",
                 f"{r['baseline_worst'] * 1000:.1f} ms"]
                for mode in MODES for n, r in enumerate(runs[mode])
            ],
        }],
        notes=notes,
        plots=[plot] if plot else [],
        rows=options.rows,
    )


def _measure(url: str, mode: str, options: Options) -> dict[str, Any]:
    samples_file = options.workdir / f"writer_{mode}.json"
    writer = _start_writer(url, samples_file)
    try:
        time.sleep(BASELINE_SECONDS)
        _, done = timed_run(
            python_cmd("-m", "benchmarks.bench_pg_index_writer", "--migrate", mode, url),
            project_env(),
        )
        window = json.loads(done.stdout.strip().splitlines()[-1])
        time.sleep(0.5)
    finally:
        _stop_writer(writer)
    samples = json.loads(samples_file.read_text())
    start, end = window["start"], window["end"]
    during = _window(samples, start, end)
    baseline = [latency for at, latency in samples if at < start - 0.05]
    if not during or not baseline:
        raise RuntimeError(f"the writer recorded nothing during the {mode} migration")
    return {
        "mode": mode,
        "migrate": end - start,
        "count": len(during),
        "worst": max(during),
        "p99": percentile(during, 0.99),
        "baseline_worst": max(baseline[len(baseline) // 4:]),  # skip the writer's warm-up
        "baseline_p99": percentile(baseline[len(baseline) // 4:], 0.99),
        "samples": [(at - start, latency) for at, latency in samples],
        "window": end - start,
    }


def _largest_index_bytes(url: str) -> int:
    import psycopg

    with psycopg.connect(libpq_url(url), autocommit=True) as connection:
        sizes = [connection.execute("SELECT pg_relation_size(to_regclass(%s))", (name,))
                 .fetchone()[0] or 0 for name in TASK_INDEXES]
    return max(sizes)


def _measure_flush(url: str, size: int, options: Options) -> dict[str, Any] | None:
    """The writer's worst latency while `size` bytes are written and fsynced beside the server's
    data, or None when its data directory is not on this machine's filesystem."""
    import psycopg

    with psycopg.connect(libpq_url(url), autocommit=True) as connection:
        try:
            data_directory = Path(connection.execute("SHOW data_directory").fetchone()[0])
        except psycopg.Error:  # not a superuser, nor pg_read_all_settings
            return None
    try:
        same_disk = data_directory.stat().st_dev == options.workdir.stat().st_dev
    except OSError:  # a remote server, or a folder this user may not read
        return None
    if not same_disk:
        return None
    samples_file = options.workdir / "writer_flush.json"
    scratch = options.workdir / "writer_flush.bin"
    data = os.urandom(size)  # incompressible, like index pages to the disk
    writer = _start_writer(url, samples_file)
    try:
        time.sleep(BASELINE_SECONDS)
        start = time.monotonic()
        with open(scratch, "wb") as out:
            out.write(data)
            out.flush()
            synced = time.monotonic()
            os.fsync(out.fileno())
        end = time.monotonic()
        time.sleep(0.5)
    finally:
        _stop_writer(writer)
        scratch.unlink(missing_ok=True)
    samples = json.loads(samples_file.read_text())
    return {"bytes": size, "fsync": end - synced, "worst": max(_window(samples, start, end), default=0.0)}


def _start_writer(url: str, samples_file: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        python_cmd("-m", "benchmarks.bench_pg_index_writer", "--writer", url, str(samples_file)),
        env=project_env(),
        stdout=subprocess.DEVNULL,
    )


def _stop_writer(writer: subprocess.Popen[bytes]) -> None:
    writer.send_signal(signal.SIGTERM)
    writer.wait(timeout=60)
    if writer.returncode != 0:
        raise RuntimeError(f"the writer exited {writer.returncode}")


def _window(samples: list[tuple[float, float]], start: float, end: float) -> list[float]:
    """Latencies of the statements that started in [start, end], and of one still running at
    `start` (a statement started just before can be the one blocked longest)."""
    return [latency for at, latency in samples
            if start <= at <= end or (at < start and at + latency > start)]


def _reset_to_002(url: str) -> None:
    import psycopg

    with psycopg.connect(libpq_url(url), autocommit=True) as connection:
        for name in TASK_INDEXES:
            connection.execute(f"DROP INDEX IF EXISTS {name}")
        connection.execute("UPDATE alembic_version SET version_num = '002'")
        # The writer left dead rows behind; clean them so every run starts alike.
        connection.execute("VACUUM ANALYZE tasks")


def _plot(ours: dict[str, Any], plain: dict[str, Any], path: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharey=True)
    for ax, run, label, colour in (
        (axes[0], plain, "plain CREATE INDEX (naive migration)", "tab:red"),
        (axes[1], ours, "this project: CREATE INDEX CONCURRENTLY", "tab:blue"),
    ):
        xs = [at for at, _ in run["samples"]]
        ys = [latency * 1000 for _, latency in run["samples"]]
        ax.axvspan(0, run["window"], color="0.9", label=f"migration ({run['window']:.1f} s)")
        ax.plot(xs, ys, ".", markersize=2, color=colour)
        ax.axhline(STALL_TARGET * 1000, color="k", linestyle="--", linewidth=0.8,
                   label="20 ms target")
        ax.set_yscale("log")
        ax.set_title(f"{label}: worst {run['worst'] * 1000:.0f} ms, p99 {run['p99'] * 1000:.1f} ms",
                     fontsize=10)
        ax.set_ylabel("statement latency (ms)")
        ax.legend(loc="upper right", fontsize=8)
    axes[1].set_xlabel("seconds since the migration started")
    fig.suptitle("Writer latency while 003 builds five indexes on tasks", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


# -- child processes ----------------------------------------------------------------------


def writer(url: str, out: str) -> None:
    """Insert and update tasks until SIGTERM; write [(start, latency)] to `out` as JSON."""
    import random

    import psycopg

    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    samples: list[tuple[float, float]] = []
    rng = random.Random(1)
    with psycopg.connect(libpq_url(url), autocommit=True) as connection:
        max_id = connection.execute("SELECT max(id) FROM tasks").fetchone()[0]
        n = 0
        while not stop:
            n += 1
            if n % 2:
                sql, params = (
                    "INSERT INTO tasks (project_id, agent_id, title, status, priority_level) "
                    "VALUES (%s, %s, %s, 'pending', %s)",
                    (1 + n % 100, 1 + n % 50, f"writer task {n}", 1 + n % 5),
                )
            else:
                sql, params = (
                    "UPDATE tasks SET status = 'in_progress', updated_at = now() WHERE id = %s",
                    (rng.randint(1, max_id),),
                )
            started = time.monotonic()
            connection.execute(sql, params)
            samples.append((started, time.monotonic() - started))
            time.sleep(WRITER_INTERVAL)
    Path(out).write_text(json.dumps(samples))


def migrate(mode: str, url: str) -> None:
    """Run 003 one of the three ways, after imports; print the monotonic window as JSON."""
    if mode == "concurrently":
        from orchestrator.migrations import MigrationManager

        manager = MigrationManager(url)
        for module in ("alembic.command", "orchestrator.models", "alembic.runtime.migration"):
            __import__(module)
        start = time.monotonic()
        applied = manager.upgrade("003")
        end = time.monotonic()
        manager.close()
        assert applied == ["003"], applied
    elif mode == "plain":
        import psycopg

        with psycopg.connect(libpq_url(url)) as connection:
            start = time.monotonic()
            with connection.transaction():
                for name, columns in TASK_INDEXES.items():
                    connection.execute(f"CREATE INDEX {name} ON tasks ({columns})")
                connection.execute("UPDATE alembic_version SET version_num = '003'")
            end = time.monotonic()
    else:
        import psycopg

        with psycopg.connect(libpq_url(url), autocommit=True) as connection:
            start = time.monotonic()
            for name, columns in TASK_INDEXES.items():
                connection.execute(f"CREATE INDEX CONCURRENTLY {name} ON tasks ({columns})")
            connection.execute("UPDATE alembic_version SET version_num = '003'")
            end = time.monotonic()
    print(json.dumps({"start": start, "end": end}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--writer"]:
        writer(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["--migrate"]:
        migrate(sys.argv[2], sys.argv[3])
