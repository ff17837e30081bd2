"""Warm in-process `MigrationManager.status()` on an up-to-date SQLite database (issue 2).

Target: median ≤ 5 ms per call. Reference, in the same run: the raw check through Python's
sqlite3 module (connect, `SELECT version_num FROM alembic_version`, close), i.e. what reading the
revision costs with no library at all.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from benchmarks import Options, median, metric, paired_ratios, result, sqlite_url

TITLE = "Warm in-process status check (SQLite)"
TARGET_SECONDS = 0.005


def run(options: Options) -> dict[str, Any]:
    from orchestrator.migrations import MigrationManager

    path = options.workdir / "status.db"
    rounds = options.repeats(15, 3)
    calls = options.repeats(200, 20)
    with MigrationManager(sqlite_url(path)) as manager:
        manager.upgrade()
        status = manager.status()  # warm: scripts parsed, engine and pool built
        assert status.up_to_date, status
        ours, raw = [], []
        for _ in range(rounds):
            ours.append(_per_call(manager.status, calls))
            raw.append(_per_call(lambda: _raw_status(path), calls))
    ratios = paired_ratios(ours, raw)
    value = median(ours)
    return result(
        TITLE,
        2,
        f"`MigrationManager(url).status()` called {calls} times per round on a warm manager "
        f"(scripts already parsed, connection pooled), {rounds} rounds; the figure is the median "
        "per-call time over rounds.",
        [
            metric(
                "status() per call",
                value,
                "ms",
                reference=median(raw),
                reference_name="sqlite3: connect + SELECT version_num + close",
                ratio=median(ratios),
                target="≤ 5 ms",
                passed=value <= TARGET_SECONDS,
                runs=rounds,
            )
        ],
    )


def _per_call(fn, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls


def _raw_status(path) -> str | None:
    connection = sqlite3.connect(path)
    try:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    finally:
        connection.close()
    return row[0] if row else None
