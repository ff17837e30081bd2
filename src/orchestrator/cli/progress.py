"""Progress shown on stderr while a command works: a Rich bar for copies that last (backups,
restores) and `db validate`'s bar of migration steps, on a terminal only; plain lines in a CI
log."""

from __future__ import annotations

import sys
import time

import click


def progress(ctx: click.Context, description: str):
    """A progress callback: a Rich bar on a terminal for copies that last, nothing otherwise."""
    bar = ProgressBar(description)
    ctx.call_on_close(bar.close)
    return bar


class ProgressBar:
    """Shows a bar on stderr once an operation has lasted `delay` seconds, if it is a terminal."""

    def __init__(self, description: str, delay: float = 0.5) -> None:
        self.description = description
        self.delay = delay
        self.started = time.monotonic()
        self._bar = None
        self._task = None

    def __call__(self, done: int, total: int | None) -> None:
        if self._bar is None:
            if not sys.stderr.isatty() or time.monotonic() - self.started < self.delay:
                return
            self._bar, self._task = _start_bar(self.description, total, "bytes")
        self._bar.update(self._task, completed=done, total=total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class ValidationProgress:
    """`db validate` as it goes, on stderr: a Rich bar of the scratch database's migration
    steps on a terminal, one line per rule otherwise (a CI log)."""

    def __init__(self) -> None:
        self._terminal = sys.stderr.isatty()
        self._bar = None
        self._task = None
        self._rule = ""

    def rule_started(self, rule) -> None:
        self._rule = f"{rule.code} {rule.name}"
        if self._bar is not None:
            self._bar.update(self._task, description=self._rule)

    def step(self, done: int, total: int) -> None:
        if not self._terminal:
            return
        if self._bar is None:
            self._bar, self._task = _start_bar(self._rule, total, "migration steps")
        self._bar.update(self._task, completed=done, total=total)

    def rule_done(self, rule, seconds: float, outcome: str) -> None:
        if not self._terminal:
            click.echo(f"{rule.code} {rule.name}: {outcome} ({seconds:.1f} s)", err=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _start_bar(description: str, total: int | None, unit: str):
    """A transient Rich bar on stderr counting `unit` ("bytes", or a count of that name), and
    its task."""
    # Imported here: Rich costs 0.14 s, paid only once a bar is drawn on a terminal.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    counted = [DownloadColumn()] if unit == "bytes" else [MofNCompleteColumn(), TextColumn(unit)]
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *counted,
        TimeElapsedColumn(),
        console=Console(file=sys.stderr),
        transient=True,
    )
    bar.start()
    return bar, bar.add_task(description, total=total)
