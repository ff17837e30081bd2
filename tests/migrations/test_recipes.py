"""recipes.recreate_sqlite_table: the referencing values survive the copy, and putting them back
costs work proportional to the rows (it was quadratic: four minutes for 60,000 tasks).

The work is counted in SQLite virtual-machine steps (the progress handler), not in seconds, so the
test means the same on a loaded machine."""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations

from orchestrator.migrations.recipes import recreate_sqlite_table

STEPS_PER_CALL = 1000


def _parents_and_children(path, rows: int) -> None:
    connection = sqlite3.connect(path)
    connection.executescript(
        "CREATE TABLE parents (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"
        "CREATE TABLE children (id INTEGER PRIMARY KEY, parent_id INTEGER "
        "REFERENCES parents (id) ON DELETE SET NULL);"
    )
    connection.executemany("INSERT INTO parents VALUES (?, ?)", ((i, f"p{i}") for i in range(rows)))
    connection.executemany("INSERT INTO children VALUES (?, ?)", ((i, i) for i in range(rows)))
    connection.commit()
    connection.close()


def _recreate(path) -> tuple[int, int]:
    """Add a column to `parents` by copying it; the VM steps it took and the children still
    pointing at a parent."""
    engine = sa.create_engine(f"sqlite:///{path}")

    @sa.event.listens_for(engine, "connect")
    def _enforce_keys(dbapi_connection, record):
        dbapi_connection.execute("PRAGMA foreign_keys = ON")

    steps = 0

    def count() -> int:
        nonlocal steps
        steps += STEPS_PER_CALL
        return 0

    copy_from = sa.Table("parents", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                         sa.Column("name", sa.Text, nullable=False))
    try:
        with engine.begin() as connection:
            connection.connection.driver_connection.set_progress_handler(count, STEPS_PER_CALL)
            with Operations.context(MigrationContext.configure(connection)):
                recreate_sqlite_table(
                    "parents",
                    lambda batch: batch.add_column(sa.Column("note", sa.Text)),
                    [("children", "parent_id")],
                    copy_from,
                )
            connection.connection.driver_connection.set_progress_handler(None, 0)
            kept = connection.exec_driver_sql(
                "SELECT count(*) FROM children WHERE parent_id = id"
            ).scalar_one()
    finally:
        engine.dispose()
    return steps, kept


def test_recreating_a_table_keeps_what_points_at_it_in_linear_work(tmp_path):
    small, large = 2_000, 8_000
    _parents_and_children(tmp_path / "small.db", small)
    _parents_and_children(tmp_path / "large.db", large)

    small_steps, small_kept = _recreate(tmp_path / "small.db")
    large_steps, large_kept = _recreate(tmp_path / "large.db")

    assert (small_kept, large_kept) == (small, large)
    # Four times the rows: about four times the work when each value is found by its index,
    # sixteen times when each is found by scanning the kept table.
    assert large_steps < 6 * small_steps, (small_steps, large_steps)
