"""`orchestrator db check` as a whole process against `alembic current` (issue 2).

Both run from the repository root on the same up-to-date SQLite database, through the
console scripts installed in the virtual environment, interleaved (the order swaps every
repetition). Target: median of the paired ratios ≤ 1.0. The start-up cost is then broken
down with `python -X importtime` for both commands, so a miss points at the imports to cut.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from benchmarks import (
    BIN,
    Options,
    alternate,
    median,
    metric,
    orchestrator_cmd,
    paired_ratios,
    project_env,
    python_cmd,
    result,
    sqlite_url,
    timed_run,
)

TITLE = "`orchestrator db check` vs `alembic current` (whole process, SQLite)"
TARGET_RATIO = 1.0
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|( *)(\S+)")


def run(options: Options) -> dict[str, Any]:
    from orchestrator.migrations import MigrationManager

    path = options.workdir / "check.db"
    url = sqlite_url(path)
    with MigrationManager(url) as manager:
        manager.upgrade()
    env = project_env(DATABASE_URL=url)
    ours_cmd = orchestrator_cmd("db", "check")
    alembic_cmd = [str(BIN / "alembic"), "-c", "alembic.ini", "current"]
    if not options.smoke:
        # One untimed run of each first: the measured runs all find the files in the page cache.
        timed_run(ours_cmd, env)
        timed_run(alembic_cmd, env)
    repeats = options.repeats(15, 1)
    ours, theirs = [], []
    for i in range(repeats):
        for cmd in alternate(i, ours_cmd, alembic_cmd):
            seconds, _ = timed_run(cmd, env)
            (ours if cmd is ours_cmd else theirs).append(seconds)
    ratio = median(paired_ratios(ours, theirs))

    samples = options.repeats(5, 1)
    ours_imports = _import_profile(["-m", "orchestrator", "db", "check"], env, samples)
    alembic_imports = _import_profile(["-m", "alembic", "-c", "alembic.ini", "current"], env, samples)
    return result(
        TITLE,
        2,
        f"Wall time from spawn to exit of `{' '.join(['orchestrator', 'db', 'check'])}` and "
        "`alembic -c alembic.ini current` (DATABASE_URL set, repository root), "
        f"{repeats} runs each, interleaved.",
        [
            metric(
                "orchestrator db check",
                median(ours),
                "s",
                reference=median(theirs),
                reference_name="alembic -c alembic.ini current",
                ratio=ratio,
                target="≤ 1.0 ×",
                passed=ratio <= TARGET_RATIO,
                runs=repeats,
            )
        ],
        tables=[
            _imports_table(
                f"Start-up imports by library (`python -X importtime`, median of {samples}; "
                "self time summed over each library's modules)",
                ours_imports,
                alembic_imports,
            )
        ],
    )


def _import_profile(args: list[str], env: dict[str, str], samples: int) -> dict[str, float]:
    """Median import time (ms) per library: self time summed over each library's modules."""
    runs: dict[str, list[float]] = defaultdict(list)
    for _ in range(samples):
        _, done = timed_run(python_cmd("-X", "importtime", *args), env, check=False)
        for name, ms in _self_time_by_library(done.stderr).items():
            runs[name].append(ms)
    return {name: median(values) for name, values in runs.items()}


def _self_time_by_library(stderr: str) -> dict[str, float]:
    """{library: ms}; the project's own modules are kept apart, one row each."""
    found: dict[str, float] = defaultdict(float)
    for line in stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            module = match.group(4)
            parts = module.split(".")
            key = module if parts[0] == "orchestrator" else parts[0]
            found[key] += int(match.group(1)) / 1000
    return found


def _imports_table(title: str, ours: dict[str, float], theirs: dict[str, float]) -> dict[str, Any]:
    top = sorted(set(ours) | set(theirs), key=lambda n: -max(ours.get(n, 0), theirs.get(n, 0)))
    rows = [[f"`{name}`", _ms(ours.get(name)), _ms(theirs.get(name))] for name in top[:15]]
    rows.append(["**all imports**", _ms(sum(ours.values())), _ms(sum(theirs.values()))])
    return {
        "title": title,
        "header": ["library / module", "orchestrator db check", "alembic current"],
        "rows": rows,
    }


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} ms"
