"""Run the benchmarks and write `docs/benchmarks.md`.

    uv run python -m benchmarks                 # everything, 1,000,000 rows; rewrites the docs
    uv run python -m benchmarks --smoke         # tiny sizes, every code path; CI runs this
    uv run python -m benchmarks --only NAME     # one benchmark (its section of the docs only)
    uv run python -m benchmarks --rows N        # another table size than 1,000,000

The full run keeps every result in `docs/benchmarks.json` and renders `docs/benchmarks.md`
from it, so `--only` refreshes one section and keeps the others. `--smoke` writes nothing
under docs/; it prints its tables and exits non-zero only when a benchmark breaks (targets are
not judged at smoke sizes). A benchmark module that is missing is reported as "not present".
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.util
import inspect
import json
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import DEFAULT_ROWS, DOCS, ROOT, SMOKE_ROWS, Options, machine_info

# Run order; `bench_<name>.py` each. Modules not listed here are picked up after these.
BENCHMARKS = (
    "status",
    "check_process",
    "sqlite_upgrade",
    "pg_index_writer",
    "parallel_migrators",
    "pg_upgrade",
    "backup",
    "claims",
    "rehearse",
    "validate_scale",
)
RESULTS_JSON = DOCS / "benchmarks.json"
RESULTS_MD = DOCS / "benchmarks.md"
_HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    names = [args.only] if args.only else _all_names()
    rows = args.rows if args.rows is not None else (SMOKE_ROWS if args.smoke else DEFAULT_ROWS)
    command = "uv run python -m benchmarks" + "".join(
        f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv)
    )
    started = time.perf_counter()
    _compile_project()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as scratch:
        workdir = Path(scratch)
        options = Options(
            smoke=args.smoke,
            rows=rows,
            workdir=workdir,
            plot_dir=workdir if args.smoke else DOCS,
        )
        for name in names:
            results[name] = _run_one(name, options, command)
        if args.smoke:
            print(render({"machine": machine_info(), "results": results}, smoke=True))
    elapsed = time.perf_counter() - started
    broken = [name for name, r in results.items() if r.get("error")]
    if not args.smoke:
        _save(results, rows)
        print(f"wrote {RESULTS_MD.relative_to(Path.cwd()) if RESULTS_MD.is_relative_to(Path.cwd()) else RESULTS_MD}")
    print(f"benchmarks finished in {elapsed:.1f}s" + (f"; broken: {', '.join(broken)}" if broken else ""))
    return 1 if broken else 0


def _compile_project() -> None:
    """Bytecode for the installed packages and the project's modules and migration scripts, as a
    deployment image has it (`uv sync --compile-bytecode`). Where PYTHONDONTWRITEBYTECODE is set,
    as on the CI machine, every measured process would otherwise compile every module it imports
    from source (`orchestrator db check --help`: 1.9 s instead of 0.8 s)."""
    import compileall
    import sysconfig

    for folder in (sysconfig.get_paths()["purelib"], ROOT / "src"):
        compileall.compile_dir(folder, quiet=1, workers=0)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Benchmark the migration system."
    )
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, every code path, docs untouched (CI)")
    parser.add_argument("--only", metavar="NAME", choices=_all_names(),
                        help=f"run one benchmark: {', '.join(_all_names())}")
    parser.add_argument("--rows", type=int, metavar="N",
                        help=f"tasks in the large tables (default {DEFAULT_ROWS:,}; "
                             f"{SMOKE_ROWS:,} with --smoke)")
    return parser.parse_args(argv)


def _all_names() -> list[str]:
    found = sorted(p.stem.removeprefix("bench_") for p in _HERE.glob("bench_*.py"))
    return [*BENCHMARKS, *(n for n in found if n not in BENCHMARKS)]


def _run_one(name: str, options: Options, command: str) -> dict[str, Any]:
    module_name = f"benchmarks.bench_{name}"
    stamp = {"name": name, "command": command,
             "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if importlib.util.find_spec(module_name) is None:
        print(f"[{name}] not present ({module_name.replace('.', '/')}.py does not exist yet)",
              file=sys.stderr)
        return {**stamp, "title": name, "skipped": f"not present: `{module_name.replace('.', '/')}.py` "
                "does not exist yet; the runner picks it up as soon as it does", "metrics": []}
    print(f"[{name}] running...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        module = importlib.import_module(module_name)
        outcome = _call(module.run, options)
    except Exception as exc:
        traceback.print_exc()
        outcome = {"title": name, "error": f"{type(exc).__name__}: {exc}", "metrics": []}
    seconds = time.perf_counter() - started
    outcome = {**stamp, **_normalise(name, outcome), "seconds": seconds}
    verdict = outcome.get("error") or outcome.get("skipped") or _verdict(outcome)
    print(f"[{name}] {seconds:.1f}s: {verdict}", file=sys.stderr, flush=True)
    return outcome


def _call(run, options: Options) -> Any:
    """Call `run` with what it asks for: `options`, or `smoke` (and `rows`) by name."""
    parameters = inspect.signature(run).parameters
    if "options" in parameters:
        return run(options)
    kwargs: dict[str, Any] = {}
    if "smoke" in parameters:
        kwargs["smoke"] = options.smoke
    if "rows" in parameters:
        kwargs["rows"] = options.rows
    return run(**kwargs)


def _normalise(name: str, outcome: Any) -> dict[str, Any]:
    """Results in our format pass through; any other dict is kept and shown as key/value rows."""
    if not isinstance(outcome, dict):
        return {"title": name, "metrics": [], "raw": {"result": repr(outcome)}}
    if "metrics" in outcome and "title" in outcome:
        return outcome
    return {"title": outcome.get("title", name), "metrics": [], "raw": outcome}


def _verdict(outcome: dict[str, Any]) -> str:
    judged = [m for m in outcome.get("metrics", []) if m.get("passed") is not None]
    failed = [m["name"] for m in judged if not m["passed"]]
    if not judged:
        return "done"
    return "all targets met" if not failed else f"MISSED: {'; '.join(failed)}"


def _save(results: dict[str, dict[str, Any]], rows: int) -> None:
    stored: dict[str, Any] = {}
    if RESULTS_JSON.exists():
        stored = json.loads(RESULTS_JSON.read_text())
    stored.setdefault("results", {}).update(results)
    stored["machine"] = machine_info()
    # Keep the documented order, then anything else.
    order = {name: i for i, name in enumerate(_all_names())}
    stored["results"] = dict(sorted(stored["results"].items(), key=lambda kv: order.get(kv[0], 99)))
    DOCS.mkdir(exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(stored, indent=2, ensure_ascii=False) + "\n")
    RESULTS_MD.write_text(render(stored))


# -- rendering ----------------------------------------------------------------------------


def render(stored: dict[str, Any], smoke: bool = False) -> str:
    results = stored["results"]
    lines = ["# Benchmarks", ""]
    if smoke:
        lines += ["_Smoke run: tiny sizes, targets not meaningful._", ""]
    else:
        lines += [
            "Generated by `uv run python -m benchmarks` (see `benchmarks/__main__.py` for the "
            "options). Each figure is the **median** over repeated runs; each has a **reference** "
            "measured in the same run, and the **ratio** is the median of the per-repetition "
            "ratios (measurement and reference interleaved, their order swapped every "
            "repetition). The machine is small and noisy, so read the ratios first. Packages "
            "and the project's modules run from compiled bytecode, as deployed (the runner "
            "compiles what is missing first, as `uv sync --compile-bytecode` would).",
            "",
        ]
    lines += ["## Summary", "", _summary(results), ""]
    lines += ["## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in stored.get("machine", {}).items()]
    lines.append("")
    for result in results.values():
        lines += _section(result)
    return "\n".join(lines).rstrip() + "\n"


def _summary(results: dict[str, dict[str, Any]]) -> str:
    out = ["| benchmark | measurement | median | reference | ratio | target | result |",
           "|---|---|---|---|---|---|---|"]
    for result in results.values():
        title = result.get("title", result["name"])
        if result.get("error") or result.get("skipped"):
            status = "ERROR" if result.get("error") else "not run"
            out.append(f"| {title} | — | — | — | — | — | {status}: {result.get('error') or result.get('skipped')} |")
            continue
        if not result.get("metrics") and result.get("raw"):
            out.append(f"| {title} | see its section | | | | | |")
        for m in result.get("metrics", []):
            out.append(
                f"| {title} | {m['name']} | {_value(m['value'], m['unit'])} | "
                f"{_value(m['reference'], m['unit'])} | {_ratio(m['ratio'])} | "
                f"{m.get('target') or '—'} | {_pass(m.get('passed'))} |"
            )
    return "\n".join(out)


def _section(result: dict[str, Any]) -> list[str]:
    issue = f" (issue {result['issue']})" if result.get("issue") else ""
    lines = [f"## {result.get('title', result['name'])}{issue}", ""]
    lines.append(
        f"`--only {result['name']}` · last run {result.get('date', '?')}"
        + (f" · {result['seconds']:.0f} s" if result.get("seconds") is not None else "")
        + (f" · `{result['command']}`" if result.get("command") else "")
    )
    lines.append("")
    if result.get("error"):
        return [*lines, f"**Error:** {result['error']}", ""]
    if result.get("skipped"):
        return [*lines, f"**Not run:** {result['skipped']}", ""]
    if result.get("description"):
        lines += [result["description"], ""]
    if result.get("metrics"):
        lines += ["| measurement | median | reference | ratio | target | result | runs |",
                  "|---|---|---|---|---|---|---|"]
        for m in result["metrics"]:
            reference = _value(m["reference"], m["unit"])
            if m.get("reference_name"):
                reference = f"{reference} ({m['reference_name']})"
            name = m["name"] + (f" — _{m['note']}_" if m.get("note") else "")
            lines.append(
                f"| {name} | {_value(m['value'], m['unit'])} | {reference} | {_ratio(m['ratio'])} | "
                f"{m.get('target') or '—'} | {_pass(m.get('passed'))} | {m.get('runs') or ''} |"
            )
        lines.append("")
    for table in result.get("tables", []):
        lines += [f"**{table['title']}**", "",
                  "| " + " | ".join(table["header"]) + " |",
                  "|" + "---|" * len(table["header"])]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table["rows"]]
        lines.append("")
    if result.get("raw"):
        lines += ["| key | value |", "|---|---|"]
        lines += [f"| {k} | {json.dumps(v) if not isinstance(v, str) else v} |"
                  for k, v in result["raw"].items()]
        lines.append("")
    for note in result.get("notes", []):
        lines += [f"- {note}"]
    if result.get("notes"):
        lines.append("")
    for plot in result.get("plots", []):
        lines += [f"![{Path(plot).stem}]({Path(plot).name})", ""]
    return lines


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "ms":
        return f"{value * 1000:.2f} ms" if value < 0.1 else f"{value * 1000:.0f} ms"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    return f"{value:,.4g} {unit}"


def _ratio(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f} ×"


def _pass(passed: bool | None) -> str:
    return "—" if passed is None else ("**pass**" if passed else "**FAIL**")


if __name__ == "__main__":
    sys.exit(main())
