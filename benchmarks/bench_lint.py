"""The migration linter against squawk on the labelled corpus, and what it adds to `db validate`
(issue 13).

Both linters judge the same cases (tests/fixtures/lint_corpus, `labels.csv`): this project's
linter (`orchestrator.migrations.lint`, the rules MIG009-MIG022 of `db validate`) on the
scripts, squawk (`squawk-cli`, pinned in uv.lock) on the SQL Alembic renders offline for
PostgreSQL for the case's revisions (`MigrationManager.sql`, as `db upgrade 001:head --sql`).
A case is flagged when a linter reports anything on it; recall is the share of dangerous cases
flagged, precision the share of flagged cases that are dangerous. squawk is counted twice: with
its rules that judge danger (without the style and session-setting rules listed in
`SQUAWK_STYLE_RULES`, which fire on nearly every migration), and with all its default rules.

Time per migration: ours is `lint()` in process on the case's scripts folder (loading the
scripts, rendering, parsing, the rules), the median over repetitions; squawk's is rendering
the SQL plus one `squawk` process, and squawk alone. The cost on the project's migrations is
`validate()` in a fresh process with every rule against the same without the linter's rules
(today's rules less MIG007, which the linter replaced), paired and interleaved; target ≤ 1 s.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import (
    BIN,
    ROOT,
    Options,
    alternate,
    median,
    metric,
    project_env,
    python_cmd,
    result,
    skipped,
    sqlite_url,
    timed_run,
)

TITLE = "Migration linter vs squawk on the labelled corpus"
ISSUE = 13
# squawk rules about style or session settings, not about what takes a table down.
SQUAWK_STYLE_RULES = frozenset({
    "prefer-robust-stmts", "prefer-bigint-over-int", "prefer-bigint-over-smallint",
    "prefer-identity", "prefer-text-field", "prefer-timestamptz", "require-statement-timeout",
    "require-lock-timeout", "ban-char-field",
})
OFFLINE_POSTGRES = "postgresql+psycopg://lint@localhost/offline"
TARGET = 0.95
EXTRA_TARGET_SECONDS = 1.0


def run(options: Options) -> dict[str, Any]:
    import sys

    sys.path.insert(0, str(ROOT))
    from tests.fixtures.lint_corpus import cases, scripts_for

    squawk = BIN / "squawk"
    if not squawk.exists():
        return skipped(TITLE, ISSUE, "squawk is not installed (`uv sync` installs squawk-cli "
                       "with the dev dependencies)")
    corpus = cases()
    repeats = options.repeats(5, 1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lint-corpus-") as scratch:
        for case in corpus:
            folder = scripts_for(case, Path(scratch))
            ours, ours_seconds = _ours(folder, repeats)
            sql, render_seconds = _render(folder, repeats)
            rules, squawk_seconds = _squawk(squawk, case.name, sql, repeats)
            rows.append({"case": case, "ours": ours, "squawk": rules, "sql": sql is not None,
                         "ours_s": ours_seconds, "render_s": render_seconds,
                         "squawk_s": squawk_seconds})
    ours_score = _score(rows, lambda r: bool(r["ours"]))
    danger_score = _score(rows, lambda r: bool(r["squawk"] - SQUAWK_STYLE_RULES))
    all_score = _score(rows, lambda r: bool(r["squawk"]))
    exact = sum(r["ours"] == set(r["case"].codes) for r in rows)
    extra, full, base = _project_cost(options)
    ours_time = median([r["ours_s"] for r in rows])
    squawk_time = median([r["render_s"] + r["squawk_s"] for r in rows])
    squawk_only = median([r["squawk_s"] for r in rows])
    dangerous = sum(r["case"].dangerous for r in rows)
    metrics = [
        metric("recall, this linter", ours_score["recall"] * 100, "%",
               reference=danger_score["recall"] * 100, reference_name="squawk (danger rules)",
               target="≥ 95 %, above squawk's",
               passed=ours_score["recall"] >= TARGET
               and ours_score["recall"] > danger_score["recall"]),
        metric("precision, this linter", ours_score["precision"] * 100, "%",
               reference=danger_score["precision"] * 100, reference_name="squawk (danger rules)",
               target="≥ 95 %, above squawk's",
               passed=ours_score["precision"] >= TARGET
               and ours_score["precision"] > danger_score["precision"]),
        metric("recall, squawk with all its default rules", all_score["recall"] * 100, "%"),
        metric("precision, squawk with all its default rules", all_score["precision"] * 100, "%"),
        metric("cases whose rule codes are exactly the labelled ones, this linter", exact,
               "cases", reference=len(rows), reference_name="labelled cases"),
        metric("time per migration, this linter (in process: load, render, parse, rules)",
               ours_time, "ms", reference=squawk_time,
               reference_name="squawk: render the SQL + one squawk process", runs=repeats),
        metric("time per migration, squawk process alone (SQL already rendered)", squawk_only,
               "ms", runs=repeats),
        metric("extra cost of the linter on the project's migrations (fresh process, "
               "validate() with every rule minus without the linter's)", extra, "s",
               reference=base, reference_name="validate() without the linter's rules",
               target="≤ 1 s", passed=extra <= EXTRA_TARGET_SECONDS,
               runs=options.repeats(7, 1)),
        metric("validate() with every rule, fresh process, project's migrations (SQLite)", full,
               "s", runs=options.repeats(7, 1)),
    ]
    table = {
        "title": "Verdicts by case (squawk's style and session-setting rules in parentheses)",
        "header": ["case", "label", "class", "spelling", "this linter", "squawk"],
        "rows": [
            [r["case"].name, r["case"].verdict, r["case"].kind, r["case"].spelling,
             ", ".join(sorted(r["ours"])) or "—", _squawk_cell(r)]
            for r in rows
        ],
    }
    return result(
        TITLE, ISSUE,
        f"{len(rows)} labelled cases ({dangerous} dangerous on a live PostgreSQL, "
        f"{len(rows) - dangerous} safe), tests/fixtures/lint_corpus/labels.csv. This linter: "
        f"{_counts(ours_score)}. squawk, danger rules: {_counts(danger_score)}; all default "
        f"rules: {_counts(all_score)}. squawk judged the SQL of "
        f"{sum(r['sql'] for r in rows)} cases; the others cannot be rendered offline "
        "(a batch recreate without copy_from, a script that reads rows through op.get_bind()), "
        "so squawk had nothing to read.",
        metrics, tables=[table],
        notes=[f"squawk rules left out of 'danger rules': {', '.join(sorted(SQUAWK_STYLE_RULES))}.",
               "squawk runs with --pg-version 15.0 (the production engine)."],
    )


def _ours(folder: Path, repeats: int) -> tuple[set[str], float]:
    from orchestrator.migrations import MigrationManager
    from orchestrator.migrations.lint import lint

    times, codes = [], set()
    for _ in range(repeats):
        started = time.perf_counter()
        with MigrationManager(OFFLINE_POSTGRES, script_location=str(folder)) as manager:
            findings = lint(manager.script, manager.chain.revisions)
        times.append(time.perf_counter() - started)
        codes = {f.code for f in findings if f.revision != "001"}
    return codes, median(times)


def _render(folder: Path, repeats: int) -> tuple[str | None, float]:
    from orchestrator.migrations import MigrationManager

    times, sql = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        try:
            with MigrationManager(OFFLINE_POSTGRES, script_location=str(folder)) as manager:
                sql = manager.sql("head", start="001")
        except Exception:  # squawk then has nothing to read: the case is not flagged
            sql = None
        times.append(time.perf_counter() - started)
    return sql, median(times)


def _squawk(squawk: Path, name: str, sql: str | None, repeats: int) -> tuple[set[str], float]:
    if sql is None:
        return set(), 0.0
    times, rules = [], set()
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(
            [str(squawk), "--reporter", "json", "--pg-version", "15.0",
             "--stdin-filepath", f"{name}.sql"],
            input=sql, capture_output=True, text=True, timeout=60,
        )
        times.append(time.perf_counter() - started)
        rules = {v["rule_name"] for v in json.loads(done.stdout or "[]")}
    return rules, median(times)


def _score(rows: list[dict], flagged) -> dict[str, float]:
    tp = sum(1 for r in rows if r["case"].dangerous and flagged(r))
    fp = sum(1 for r in rows if not r["case"].dangerous and flagged(r))
    fn = sum(1 for r in rows if r["case"].dangerous and not flagged(r))
    return {"tp": tp, "fp": fp, "fn": fn,
            "recall": tp / (tp + fn) if tp + fn else 1.0,
            "precision": tp / (tp + fp) if tp + fp else 1.0}


def _counts(score: dict[str, float]) -> str:
    return (f"{score['tp']} of {score['tp'] + score['fn']} dangerous cases caught, "
            f"{score['fp']} false alarms")


def _squawk_cell(row: dict) -> str:
    danger = sorted(row["squawk"] - SQUAWK_STYLE_RULES)
    style = sorted(row["squawk"] & SQUAWK_STYLE_RULES)
    if not row["sql"]:
        return "— (no SQL: does not render offline)"
    text = ", ".join(danger) or "—"
    return text + (f" ({', '.join(style)})" if style else "")


def _project_cost(options: Options) -> tuple[float, float, float]:
    """(extra seconds, with every rule, without the linter's), fresh processes, paired."""
    from orchestrator.migrations import MigrationManager

    folder = Path(tempfile.mkdtemp(prefix="lint-cost-", dir=options.workdir))
    try:
        url = sqlite_url(folder / "validate.db")
        with MigrationManager(url) as manager:
            manager.upgrade()
        code = ("import sys; from orchestrator.migrations import lint, validate as v; "
                "codes = None if sys.argv[1] == 'all' else "
                "[r.code for r in v.RULES if r.code not in lint.NAMES]; "
                "report = v.validate(sys.argv[2], strict=True, rules=codes); "
                "sys.exit(0 if report.ok else 1)")
        env = project_env()
        full_cmd = python_cmd("-c", code, "all", url)
        base_cmd = python_cmd("-c", code, "base", url)
        if not options.smoke:
            timed_run(full_cmd, env)
            timed_run(base_cmd, env)
        full, base = [], []
        for i in range(options.repeats(7, 1)):
            for cmd in alternate(i, full_cmd, base_cmd):
                seconds, _ = timed_run(cmd, env)
                (full if cmd is full_cmd else base).append(seconds)
        extra = median([f - b for f, b in zip(full, base, strict=True)])
        return extra, median(full), median(base)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
