"""`db validate` on a mature project's chain: 50 to 300 extra migrations (issue 17).

Each chain is the project's scripts folder copied with N simple revisions added (each creates a
small table with an index; tests/fixtures/long_chain.py), and models that match it. On SQLite
and on PostgreSQL, every repetition runs, each in a fresh process and interleaved (their order
swapped every repetition):

- ours: `validate()` (what `orchestrator db validate` runs), every rule, against a live
  database at head (so drift and checksums run too); the time of each rule comes from the same
  run. The round trip migrates a scratch database up, then each revision down, up and down,
  comparing the schema at every stop;
- reference: pytest-alembic's `test_up_down_consistency` on a fresh database with the same
  chain and the project's alembic.ini (up one revision at a time, then down one at a time).

150 and 300, whose ratio is the growth target, are measured in turn within each repetition
(7), so that the machine's load at the time enters both alike.

Targets: at 300, ours ≤ 2 × the reference (median of paired ratios); the growth from 150 to
300 no faster than the reference's (the ratio of their medians at 300 and 150); `validate(since=...)` with one revision after it on the 300 chain,
SQLite, ≤ 5 s (the whole process, imports included).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import (
    ROOT,
    Options,
    alternate,
    median,
    metric,
    paired_ratios,
    postgres_admin_url,
    project_env,
    python_cmd,
    result,
    scratch_database,
    sqlite_url,
    timed_run,
)

TITLE = "`db validate` on long chains vs pytest-alembic's up/down test"
ISSUE = 17
SIZES = (50, 100, 150, 200, 300)
SMOKE_SIZES = (2,)
GROWTH_SIZES = (150, 300)
GROWTH_REPEATS = 7
PLOT = "benchmarks-validate-scale.png"
RATIO_TARGET = 2.0
SINCE_TARGET = 5.0


def run(options: Options) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.long_chain import long_chain

    sizes = SMOKE_SIZES if options.smoke else SIZES
    admin_url = postgres_admin_url()
    engines = ["sqlite", *(["postgresql"] if admin_url else [])]
    chains = {size: long_chain(options.workdir, size, through=None)  # as the models are
              for size in sizes}
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for group in _groups(sizes):
        # The growth target compares 150 with 300: more runs there steady the medians.
        repeats = options.repeats(GROWTH_REPEATS if group == GROWTH_SIZES else 3, 1)
        for engine in engines:
            rows.update(_measure(engine, {size: chains[size] for size in group}, repeats,
                                 admin_url, options))
    since, since_in_call = _measure_since(chains[sizes[-1]], options,
                                          options.repeats(5, 1))
    return _result(rows, sizes, engines, since, since_in_call, options)


def _groups(sizes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The sizes measured together: 150 and 300 in turn within each repetition (their ratio is
    the growth target: run minutes apart, a shared machine's changing load would enter it),
    every other size alone."""
    alone = [(size,) for size in sizes if size not in GROWTH_SIZES]
    return alone + ([GROWTH_SIZES] if set(GROWTH_SIZES) <= set(sizes) else [])


def _measure(engine: str, chains: dict[int, Path], repeats: int, admin_url: str | None,
             options: Options) -> dict[tuple[str, int], dict[str, Any]]:
    """Each size of `chains` on `engine`: validate against a live database at head, and
    pytest-alembic on a fresh one; sizes taken in turn (their order reversed every
    repetition), validate and pytest-alembic interleaved."""
    measured = {size: {"ours": [], "reference": [], "rules": [],
                   # The processes' own CPU time: on a shared machine, what the wall clock
                   # adds is others'.
                   "cpu": {"ours": [], "reference": []}} for size in chains}
    with contextlib.ExitStack() as stack:
        lives = {size: stack.enter_context(_database(engine, admin_url, options, f"live{size}"))
                 for size in chains}
        for size, live in lives.items():
            _child("upgrade", chains[size], live)
        for i in range(repeats):
            for size in (list(chains) if i % 2 == 0 else list(chains)[::-1]):
                runs = measured[size]
                for kind in alternate(i, "ours", "reference"):
                    if kind == "ours":
                        outcome = _child("validate", chains[size], lives[size])
                        if not outcome["ok"]:
                            raise RuntimeError(f"validate found errors on the {size} chain: "
                                               f"{outcome['findings'][:3]}")
                        runs["rules"].append(outcome["rules"])
                    else:
                        with _database(engine, admin_url, options, "pa") as fresh:
                            outcome = _child("pytest-alembic", chains[size], fresh)
                    runs[kind].append(outcome["seconds"])
                    runs["cpu"][kind].append(outcome["cpu"])
    rows = {}
    for size, runs in measured.items():
        print(f"[validate_scale] {engine} {size}: ours {median(runs['ours']):.2f}s, "
              f"pytest-alembic {median(runs['reference']):.2f}s", file=sys.stderr, flush=True)
        rules = {code: median([one[code] for one in runs["rules"]]) for code in runs["rules"][0]}
        rows[engine, size] = {"ours": runs["ours"], "reference": runs["reference"],
                              "rules": rules, "cpu": runs["cpu"],
                              "ratio": median(paired_ratios(runs["ours"], runs["reference"]))}
    return rows


def _measure_since(scripts: Path, options: Options, repeats: int) -> tuple[list[float], list[float]]:
    """`validate(since=head-1)` on SQLite: the whole process, and the call alone."""
    from tests.fixtures.long_chain import project_head

    since = f"{int(project_head(scripts)) - 1:03d}"
    whole, call = [], []
    with _database("sqlite", None, options, "since") as live:
        _child("upgrade", scripts, live)
        for _ in range(repeats):
            started = time.perf_counter()
            outcome = _child("validate", scripts, live, since)
            whole.append(time.perf_counter() - started)
            call.append(outcome["seconds"])
    return whole, call


class _database:
    """A database for one measurement: a SQLite file, or a PostgreSQL database dropped after."""

    def __init__(self, engine: str, admin_url: str | None, options: Options, name: str) -> None:
        self.engine, self.admin_url, self.options, self.name = engine, admin_url, options, name
        self._scratch = None
        self._folder = None

    def __enter__(self) -> str:
        if self.engine == "sqlite":
            self._folder = tempfile.TemporaryDirectory(dir=self.options.workdir)
            return sqlite_url(Path(self._folder.name) / f"{self.name}.db")
        self._scratch = scratch_database(self.admin_url, f"bench_validate_{self.name}")
        return self._scratch.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        if self._scratch is not None:
            self._scratch.__exit__(*exc_info)
        if self._folder is not None:
            self._folder.cleanup()


def _child(kind: str, scripts: Path, url: str, since: str | None = None) -> dict[str, Any]:
    args = ["-m", "benchmarks.bench_validate_scale", kind, str(scripts), url]
    _, done = timed_run(python_cmd(*args, *([since] if since else [])), project_env())
    return json.loads(done.stdout.strip().splitlines()[-1])


def _result(rows: dict[tuple[str, int], dict[str, Any]], sizes: tuple[int, ...],
            engines: list[str], since: list[float], since_in_call: list[float],
            options: Options) -> dict[str, Any]:
    largest = sizes[-1]
    metrics = []
    for engine in engines:
        row = rows[engine, largest]
        metrics.append(metric(
            f"{engine}: validate, {largest} extra migrations", median(row["ours"]),
            reference=median(row["reference"]), reference_name="pytest-alembic up/down",
            ratio=row["ratio"], target=f"≤ {RATIO_TARGET:g} ×",
            passed=None if options.smoke else row["ratio"] <= RATIO_TARGET,
            runs=len(row["ours"])))
        if not options.smoke:
            ours_growth = _growth(rows, engine, "ours")
            reference_growth = _growth(rows, engine, "reference")
            metrics.append(metric(
                f"{engine}: growth 150 → 300 (validate)", ours_growth, "×",
                reference=reference_growth, reference_name="pytest-alembic's growth",
                target="≤ the reference's", passed=ours_growth <= reference_growth,
                runs=len(rows[engine, largest]["ours"]),
                note=f"in CPU time: validate {_growth(rows, engine, 'ours', True):.2f} ×, "
                     f"pytest-alembic {_growth(rows, engine, 'reference', True):.2f} ×; "
                     f"spread (slowest / fastest run) at 150 and 300: validate "
                     f"{_spread(rows, engine, 150, 'ours')}, "
                     f"{_spread(rows, engine, 300, 'ours')}; pytest-alembic "
                     f"{_spread(rows, engine, 150, 'reference')}, "
                     f"{_spread(rows, engine, 300, 'reference')}; the fixed part (the "
                     f"line through 150 and 300 at 0): validate "
                     f"{_fixed(rows, engine, 'ours'):.2f} s, pytest-alembic "
                     f"{_fixed(rows, engine, 'reference'):.2f} s"))
            metrics.append(metric(
                f"{engine}: cost of a revision from 150 to 300 / from 50 to 150 (validate)",
                _marginal(rows, engine, "ours"), "×",
                reference=_marginal(rows, engine, "reference"),
                reference_name="pytest-alembic's", runs=len(rows[engine, largest]["ours"]),
                note="1.00 × is linear: a revision costs as much on a long chain as on a "
                     "short one"))
    if since:
        metrics.append(metric(
            f"sqlite: validate --since head-1 on {largest} extra migrations (process)",
            median(since), reference=median(rows["sqlite", largest]["ours"]),
            reference_name="the whole validate", target=f"≤ {SINCE_TARGET:g} s",
            passed=None if options.smoke else median(since) <= SINCE_TARGET, runs=len(since),
            note=f"the validate() call alone: {median(since_in_call):.2f} s"))
    codes = list(rows[engines[0], largest]["rules"])
    tables = [{
        "title": "Medians by chain length (seconds)",
        "header": ["engine", "extra migrations", "validate (all rules)",
                   "pytest-alembic up/down", "ratio"],
        "rows": [[engine, size, f"{median(rows[engine, size]['ours']):.2f}",
                  f"{median(rows[engine, size]['reference']):.2f}",
                  f"{rows[engine, size]['ratio']:.2f} ×"]
                 for engine in engines for size in sizes],
    }, {
        "title": "Every run (seconds, wall clock; in brackets the process's CPU time)",
        "header": ["engine", "extra migrations", "validate", "pytest-alembic up/down"],
        "rows": [[engine, size, *(", ".join(f"{w:.2f} ({c:.2f})" for w, c in
                                            sorted(zip(rows[engine, size][kind],
                                                       rows[engine, size]["cpu"][kind])))
                                  for kind in ("ours", "reference"))]
                 for engine in engines for size in sizes],
    }, {
        "title": "Each rule's share of the validate run (median seconds)",
        "header": ["engine", "extra migrations", *codes],
        "rows": [[engine, size, *(f"{rows[engine, size]['rules'][code]:.2f}" for code in codes)]
                 for engine in engines for size in sizes],
    }]
    notes = [
        "The scratch database is built by the first rule that needs it (MIG004, models-match): "
        "its time includes the climb to head with a snapshot at every revision; MIG008's is "
        "the round trip itself (each revision down, up and down, two snapshots compared per "
        "revision). The linter's rules share one rendering of the chain, charged to MIG009.",
        "pytest-alembic migrates 2 steps per revision (up once, down once) and compares "
        "nothing; validate migrates 4 per revision and compares the schema twice.",
    ]
    plot = _plot(rows, sizes, engines, options.plot_dir / PLOT)
    return result(
        TITLE, ISSUE,
        "A copy of the project's scripts with N extra simple migrations; each figure a median "
        "of fresh processes, validate and pytest-alembic interleaved.",
        metrics, notes=notes, tables=tables, plots=[plot])


def _growth(rows: dict[tuple[str, int], dict[str, Any]], engine: str, kind: str,
            cpu: bool = False) -> float:
    """How much longer 300 extra migrations take than 150 (their medians; of the processes'
    CPU times with `cpu`)."""
    def runs(size: int) -> list[float]:
        return rows[engine, size]["cpu"][kind] if cpu else rows[engine, size][kind]

    return median(runs(300)) / median(runs(150))


def _fixed(rows: dict[tuple[str, int], dict[str, Any]], engine: str, kind: str) -> float:
    """What a run costs whatever the chain's length: the line through the medians at 150 and
    300, at 0. The larger it is, the less than 2 × the growth from 150 to 300 of a linear
    cost."""
    return 2 * median(rows[engine, 150][kind]) - median(rows[engine, 300][kind])


def _marginal(rows: dict[tuple[str, int], dict[str, Any]], engine: str, kind: str) -> float:
    """The cost of one more revision between 150 and 300, over its cost between 50 and 150
    (from the medians)."""
    def at(size: int) -> float:
        return median(rows[engine, size][kind])

    return ((at(300) - at(150)) / 150) / ((at(150) - at(50)) / 100)


def _spread(rows: dict[tuple[str, int], dict[str, Any]], engine: str, size: int,
            kind: str) -> str:
    runs = rows[engine, size][kind]
    return f"{max(runs) / min(runs):.2f} ×"


def _plot(rows: dict[tuple[str, int], dict[str, Any]], sizes: tuple[int, ...],
          engines: list[str], path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = {"sqlite": "tab:blue", "postgresql": "tab:green"}
    for engine in engines:
        for kind, label, style in (("ours", "db validate (all rules)", "-o"),
                                   ("reference", "pytest-alembic up/down", "--s")):
            ax.plot(sizes, [median(rows[engine, size][kind]) for size in sizes], style,
                    color=colours[engine], label=f"{engine}: {label}")
    ax.set_xlabel("extra migrations in the chain")
    ax.set_ylabel("seconds (median)")
    ax.set_title("db validate vs pytest-alembic's up/down consistency test", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


# -- child processes ----------------------------------------------------------------------


def _upgrade(scripts: str, url: str) -> dict[str, Any]:
    from orchestrator.migrations import MigrationManager

    with MigrationManager(url, script_location=scripts) as manager:
        manager.upgrade()
    return {"seconds": 0.0}


def _validate(scripts: str, url: str, since: str | None) -> dict[str, Any]:
    from orchestrator.migrations.validate import Progress, validate
    from tests.fixtures.long_chain import long_chain_metadata

    rules: dict[str, float] = {}

    class Timer(Progress):
        def rule_done(self, rule, seconds: float, outcome: str) -> None:
            rules[rule.code] = seconds

    metadata = long_chain_metadata(Path(scripts))
    started, cpu = time.perf_counter(), time.process_time()
    report = validate(url, script_location=scripts, metadata=metadata, strict=True,
                      since=since, progress=Timer())
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"seconds": seconds, "cpu": cpu, "rules": rules, "ok": report.ok and not report.skipped,
            "findings": [f.message for f in report.findings] + [s.reason for s in report.skipped]}


def _pytest_alembic(scripts: str, url: str) -> dict[str, Any]:
    from pytest_alembic import runner
    from pytest_alembic.config import Config
    from pytest_alembic.tests.default import test_up_down_consistency

    from orchestrator.db import create_engine

    engine = create_engine(url)
    config = Config(config_options={"file": str(ROOT / "alembic.ini"), "script_location": scripts})
    try:
        started, cpu = time.perf_counter(), time.process_time()
        with runner(config=config, engine=engine) as alembic_runner:
            test_up_down_consistency(alembic_runner)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        engine.dispose()
    return {"seconds": seconds, "cpu": cpu}


def measure(engines: list[str], sizes: list[int], repeats: int) -> None:
    """Some sizes on some engines only, medians and spreads printed (no docs written): the
    growth from 150 to 300 without the whole run's half hour.

        uv run python -m benchmarks.bench_validate_scale measure sqlite 150,300 3
    """
    from tests.fixtures.long_chain import long_chain

    admin_url = postgres_admin_url()
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as scratch:
        options = Options(workdir=Path(scratch), plot_dir=Path(scratch))
        chains = {size: long_chain(options.workdir, size, through=None) for size in sizes}
        rows = {}
        for engine in engines:
            rows.update(_measure(engine, chains, repeats, admin_url, options))
    for (engine, size), row in rows.items():
        for kind in ("ours", "reference"):
            runs = sorted(row[kind])
            print(f"{engine} {size} {kind}: median {median(runs):.2f} s, runs "
                  f"{', '.join(f'{r:.2f}' for r in runs)}; CPU median "
                  f"{median(row['cpu'][kind]):.2f} s")
    for engine in engines:
        if (engine, 150) in rows and (engine, 300) in rows:
            print(f"{engine} growth 150 -> 300: validate {_growth(rows, engine, 'ours'):.2f} x, "
                  f"pytest-alembic {_growth(rows, engine, 'reference'):.2f} x; in CPU time "
                  f"{_growth(rows, engine, 'ours', True):.2f} x and "
                  f"{_growth(rows, engine, 'reference', True):.2f} x")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    kind, scripts_arg, url_arg, *rest = sys.argv[1:]
    if kind == "measure":
        measure(scripts_arg.split(","), [int(n) for n in url_arg.split(",")], int(rest[0]))
        sys.exit(0)
    if kind == "upgrade":
        outcome = _upgrade(scripts_arg, url_arg)
    elif kind == "validate":
        outcome = _validate(scripts_arg, url_arg, rest[0] if rest else None)
    else:
        outcome = _pytest_alembic(scripts_arg, url_arg)
    print(json.dumps(outcome))
