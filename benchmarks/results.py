"""What a benchmark returns (`result`, `metric`, `skipped`) and the statistics behind its
figures (medians, percentiles, paired ratios, alternating order)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

# -- results ------------------------------------------------------------------------------


def metric(
    name: str,
    value: float,
    unit: str = "s",
    *,
    reference: float | None = None,
    reference_name: str | None = None,
    ratio: float | None = None,
    target: str | None = None,
    passed: bool | None = None,
    runs: int | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """One row of a benchmark's table: a median, its reference, their ratio and the target.

    `ratio` defaults to value / reference; give it explicitly when it is the median of paired
    per-repetition ratios (the usual case: more robust than a ratio of medians).
    """
    if ratio is None and reference:
        ratio = value / reference
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "reference": reference,
        "reference_name": reference_name,
        "ratio": ratio,
        "target": target,
        "passed": passed,
        "runs": runs,
        "note": note,
    }


def result(
    title: str,
    issue: int | None,
    description: str,
    metrics: list[dict[str, Any]],
    *,
    notes: Sequence[str] = (),
    tables: Sequence[dict[str, Any]] = (),
    plots: Sequence[str] = (),
    rows: int | None = None,
) -> dict[str, Any]:
    """What a benchmark's `run()` returns; `tables` are extra {"title", "header", "rows"}."""
    return {
        "title": title,
        "issue": issue,
        "description": description,
        "metrics": metrics,
        "notes": list(notes),
        "tables": list(tables),
        "plots": list(plots),
        "rows": rows,
    }


def skipped(title: str, issue: int | None, reason: str) -> dict[str, Any]:
    """A benchmark that could not run here, with the reason."""
    return {**result(title, issue, "", []), "skipped": reason}


# -- statistics ---------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` in 0..1) of `values`."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def paired_ratios(values: Sequence[float], references: Sequence[float]) -> list[float]:
    return [v / r for v, r in zip(values, references, strict=True)]


def alternate(index: int, first: Any, second: Any) -> tuple[Any, Any]:
    """(first, second) on even repetitions, swapped on odd ones, so order effects cancel."""
    return (first, second) if index % 2 == 0 else (second, first)
