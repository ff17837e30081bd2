"""`orchestrator db`: the group, assembled from the commands of each theme (reading, changing,
rebase, backups, quality); `--help` lists them by name."""

from __future__ import annotations

import click

from orchestrator.cli.db import backups, changing, quality, reading, rebase
from orchestrator.cli.options import common_options


@click.group()
@common_options
def db() -> None:
    """Inspect and migrate the database schema."""


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
