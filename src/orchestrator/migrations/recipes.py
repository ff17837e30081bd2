"""Recipes for migration scripts that change tables holding rows and traffic.

`update_in_batches`: a backfill run id range by id range, never one UPDATE of the whole table.

One UPDATE over a big table keeps every row it touched locked until the migration commits, and
the API's writes to those rows wait that long. Here each batch of `batch_size` ids is its own
statement; on PostgreSQL each runs in its own transaction (the caller is inside
`op.get_context().autocommit_block()`), so a batch holds its rows for milliseconds. SQLite has
one writer at a time anyway: the batches run in the step's transaction.

Offline (`db upgrade --sql`) there are no ids to read; PostgreSQL gets a `DO` block that loops
over the same ranges and commits after each (PostgreSQL 11+ allows COMMIT in a DO block run
outside a transaction), SQLite one UPDATE.

Progress is written to stderr when it is a terminal (`\\r`-updated), and nowhere otherwise.

`recreate_sqlite_table`: SQLite's batch mode (copy the table, drop the old one, rename) without
losing what points at it. With foreign keys enforced, dropping the old copy deletes its rows
first, and the referencing tables' `ON DELETE SET NULL` fires; `PRAGMA foreign_keys` cannot be
turned off inside the step's transaction, so the referencing values are kept aside and put back
in the same transaction.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from orchestrator.models import NAMING_CONVENTION

BATCH_SIZE = 5000


def update_in_batches(
    table: str, assignment: str, where: str, *, label: str, batch_size: int | None = None
) -> int:
    """`UPDATE table SET assignment WHERE where`, batch by batch of ids; returns the batches.

    `where` selects the rows still to change (e.g. `owner_id IS NULL`), so that a run that was
    interrupted resumes where it stopped.
    """
    context = op.get_context()
    batch_size = batch_size or BATCH_SIZE
    update = (
        f"UPDATE {table} SET {assignment} "
        f"WHERE {table}.id >= {{low}} AND {table}.id < {{high}} AND ({where})"
    )
    if context.as_sql:
        if context.dialect.name == "postgresql":
            op.execute(sa.text(_do_block(table, update, where, batch_size)))
        else:
            op.execute(sa.text(f"UPDATE {table} SET {assignment} WHERE {where}"))
        return 0
    bind = op.get_bind()
    first, last, total = bind.execute(
        sa.text(f"SELECT min(id), max(id), count(*) FROM {table} WHERE {where}")
    ).one()
    if not total:
        return 0
    statement = sa.text(update.format(low=":low", high=":high"))
    batches = 0
    for low in range(first, last + 1, batch_size):
        bind.execute(statement, {"low": low, "high": low + batch_size})
        batches += 1
        _progress(label, min(low + batch_size - first, last - first + 1), last - first + 1)
    _progress(label, None, None)
    return batches


def _do_block(table: str, update: str, where: str, batch_size: int) -> str:
    body = update.format(low="_low", high=f"_low + {batch_size}")
    return (
        "DO $$\nDECLARE _low bigint; _last bigint;\nBEGIN\n"
        f"  SELECT min(id), max(id) INTO _low, _last FROM {table} WHERE {where};\n"
        "  WHILE _low <= _last LOOP\n"
        f"    {body};\n"
        "    COMMIT;\n"
        f"    _low := _low + {batch_size};\n"
        "  END LOOP;\nEND $$"
    )


def _progress(label: str, done: int | None, span: int | None) -> None:
    if not sys.stderr.isatty():
        return
    if done is None:
        sys.stderr.write("\n")
    else:
        sys.stderr.write(f"\r{label}: ids {done:,} of {span:,} done")
    sys.stderr.flush()


def recreate_sqlite_table(
    table: str,
    change: Callable[[Any], None],
    referenced_by: Sequence[tuple[str, str]],
    copy_from: sa.Table,
) -> None:
    """`op.batch_alter_table(table)` with `change(batch)` on SQLite, keeping the values of the
    `(table, column)`s whose foreign keys point at `table` with ON DELETE SET NULL.

    `copy_from` is the table as it stands before the change: offline there is no database to
    read it from (online it is read from the database itself)."""
    for child, column in referenced_by:
        op.execute(
            f"CREATE TEMP TABLE _kept_{child}_{column} AS "
            f"SELECT id, {column} FROM {child} WHERE {column} IS NOT NULL"
        )
        # Indexed, so that putting the values back below looks each row up once instead of
        # scanning the whole table per row (quadratic: hours at 600,000 tasks).
        op.execute(f"CREATE UNIQUE INDEX _kept_{child}_{column}_id ON _kept_{child}_{column} (id)")
    # SQLite reports no name for some constraints; the convention names them again.
    offline = op.get_context().as_sql
    with op.batch_alter_table(
        table, naming_convention=NAMING_CONVENTION, copy_from=copy_from if offline else None
    ) as batch:
        change(batch)
    for child, column in referenced_by:
        kept = f"_kept_{child}_{column}"
        op.execute(
            f"UPDATE {child} SET {column} = (SELECT {kept}.{column} FROM {kept} "
            f"WHERE {kept}.id = {child}.id) WHERE id IN (SELECT id FROM {kept})"
        )
        op.execute(f"DROP TABLE {kept}")
