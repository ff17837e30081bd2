"""`orchestrator db`: the group, assembled from the commands of each theme (reading, changing,
rebase, backups, quality); `--help` lists them by name."""

from __future__ import annotations

import signal

import click

from orchestrator.cli.db import backups, changing, quality, reading, rebase
from orchestrator.cli.options import common_options


@click.group()
@common_options
def db() -> None:
    """Inspect and migrate the database schema."""
    # SIGTERM (a cancelled CI job, `docker stop`, systemd) ends a command as Ctrl-C does: the
    # running step is rolled back and recorded as interrupted, scratch databases are dropped,
    # and the exit code is 130. (`serve` keeps the web server's own handling.)
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


for command in (
    reading.current,
    reading.status,
    reading.check,
    changing.upgrade,
    changing.downgrade,
    reading.history,
    reading.show,
    changing.create,
    changing.stamp,
    rebase.rebase,
    backups.backup,
    backups.backups,
    backups.restore,
    quality.validate,
    quality.rehearse,
):
    db.add_command(command)
