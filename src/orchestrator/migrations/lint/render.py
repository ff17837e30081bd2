"""The SQL each revision runs on PostgreSQL, rendered offline, with the script line behind it.

Alembic's offline mode (`db upgrade --sql`) turns every `op` call into the SQL PostgreSQL would
run; here each revision's `upgrade()` (and `downgrade()`) is called in such a context, and every
statement Alembic writes is taken with the lines of the script that were running when it was
written (the `op` call, and the statement of `upgrade()` that led to it through a helper). The
transaction each statement runs in is followed as Alembic writes it: a revision is one
transaction, and `autocommit_block()` ends it and starts another afterwards.

A script that reads the database (`op.get_bind().execute(...).fetchall()`) is rendered as if
every query returned no rows, so that it renders at all; what it would do with the rows is left
to the source rules (loops). A script that still fails is rendered up to the failure, and the
failure is reported with its line.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import alembic.context
from alembic import op
from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from sqlalchemy import bindparam, text
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.types import NullType

if TYPE_CHECKING:
    from alembic.script import Script, ScriptDirectory

UPGRADE, DOWNGRADE = "upgrade", "downgrade"


@dataclass(frozen=True)
class Statement:
    """One SQL text Alembic wrote (it may hold several statements), and where it came from."""

    sql: str
    # Lines of the script on the stack when it was written, innermost (the `op` call) first.
    lines: tuple[int, ...]
    # Which transaction of the revision it runs in (0, 1, ...), None outside any (autocommit).
    transaction: int | None

    @property
    def in_transaction(self) -> bool:
        return self.transaction is not None


@dataclass
class Rendered:
    """What one direction of one revision runs."""

    revision: str
    path: str
    direction: str
    statements: list[Statement] = field(default_factory=list)
    # Why rendering stopped early, and the script line it stopped at.
    error: str | None = None
    error_lines: tuple[int, ...] = ()
    # Tables that `batch_alter_table(recreate="always")` would copy, with the script lines.
    batch_recreates: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)


class _Tracer:
    """The output buffer Alembic writes to: each write is one statement, BEGIN, COMMIT or a
    comment. Statements are attributed to the script being rendered by walking the stack."""

    def __init__(self) -> None:
        self.target: Rendered | None = None
        self.transactions = 0
        self.in_transaction = False

    def write(self, text: str) -> None:
        sql = text.strip()
        keyword = sql.rstrip(";").strip().upper()
        if keyword == "BEGIN":
            self.in_transaction = True
            self.transactions += 1
        elif keyword == "COMMIT":
            self.in_transaction = False
        else:
            self.target.statements.append(
                Statement(sql, script_lines(self.target.path),
                          self.transactions if self.in_transaction else None)
            )

    def flush(self) -> None:
        pass


def script_lines(path: str, frame: Any = None) -> tuple[int, ...]:
    """The lines of `path` on the current stack, innermost first."""
    frame = frame or sys._getframe(1)
    lines = []
    while frame is not None:
        if frame.f_code.co_filename == path:
            lines.append(frame.f_lineno)
        frame = frame.f_back
    return tuple(lines)


def render(script: ScriptDirectory, revisions: Iterable[str],
           directions: tuple[str, ...] = (UPGRADE, DOWNGRADE)) -> list[Rendered]:
    """Upgrade and downgrade SQL (or those of `directions`) of each revision, in the order
    given, as PostgreSQL would run it."""
    tracer = _Tracer()
    context = _offline_context(tracer)
    rendered = []
    with Operations.context(context), _environment(script, context), _batch_in_place(tracer):
        for revision in revisions:
            found = script.get_revision(revision)
            for direction in directions:
                rendered.append(_render_one(context, tracer, found, direction))
    return rendered


@contextlib.contextmanager
def _environment(script: ScriptDirectory, context: MigrationContext) -> Iterator[None]:
    """`from alembic import context` as env.py would leave it for an offline run, so that a script
    that asks `context.is_offline_mode()` (Alembic's documented test) renders as `--sql` does."""
    if getattr(alembic.context, "_proxy", None) is not None:  # already inside an env.py run
        yield
        return
    environment = EnvironmentContext(Config(), script, as_sql=True)
    environment._migration_context = context
    with environment:
        yield


@contextlib.contextmanager
def _batch_in_place(tracer: _Tracer) -> Iterator[None]:
    """`op.batch_alter_table(recreate="always")` without `copy_from` cannot be rendered offline
    (Alembic would have to reflect the table). While rendering, it is noted as a recreate and its
    operations are rendered as PostgreSQL runs them in place (recreate="auto"), so that the rest
    of the revision is rendered and checked too."""
    original = op.batch_alter_table

    @contextlib.contextmanager
    def batch_alter_table(table_name: str, *args: Any, **kwargs: Any) -> Iterator[Any]:
        if kwargs.get("recreate") == "always" and tracer.target is not None:
            tracer.target.batch_recreates.append(
                (table_name, script_lines(tracer.target.path)))
            if kwargs.get("copy_from") is None:
                kwargs["recreate"] = "auto"
        with original(table_name, *args, **kwargs) as batch:
            yield batch

    # `op` is Alembic's module proxy: its functions are set as module attributes while a
    # context is installed, and removed with it.
    op.batch_alter_table = batch_alter_table
    try:
        yield
    finally:
        op.batch_alter_table = original


def _render_one(context: MigrationContext, tracer: _Tracer, script: Script,
                direction: str) -> Rendered:
    result = Rendered(script.revision, script.path, direction)
    function = getattr(script.module, direction, None)
    if function is None:
        return result
    tracer.target = result
    # transaction_per_migration, as env.py configures it: each revision is one transaction.
    context.impl.emit_begin()
    try:
        function()
    except Exception as exc:  # the script's own failure, whatever it is
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result.error = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
        result.error_lines = tuple(_traceback_lines(exc.__traceback__, script.path))
    finally:
        context.impl.emit_commit()
        tracer.target = None
    return result


def _traceback_lines(traceback: Any, path: str) -> list[int]:
    """The lines of `path` in a traceback, innermost first."""
    lines = []
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename == path:
            lines.append(traceback.tb_lineno)
        traceback = traceback.tb_next
    return list(reversed(lines))


def _offline_context(tracer: _Tracer) -> MigrationContext:
    context = MigrationContext.configure(
        dialect_name="postgresql",
        dialect_opts={"paramstyle": "named"},
        opts={"as_sql": True, "output_buffer": tracer, "literal_binds": True,
              "transactional_ddl": True},
    )
    context.connection = context.impl.connection = _DryRunConnection(context)
    return context


class _DryRunConnection:
    """`op.get_bind()` offline: what is executed is written out like any other statement, and
    every query returns no rows (Alembic's own offline connection returns None)."""

    def __init__(self, context: MigrationContext) -> None:
        self._mock = context.connection
        self._impl = context.impl

    def __getattr__(self, name: str) -> Any:
        return getattr(self._mock, name)

    def execute(self, statement: Any, parameters: Any = None, execution_options: Any = None):
        if isinstance(statement, str):
            statement = text(statement)
        self._impl._exec(_with_values(statement, parameters))
        return _no_rows()

    def exec_driver_sql(self, statement: str, parameters: Any = None, execution_options: Any = None):
        return self.execute(statement, parameters)


def _with_values(statement: Any, parameters: Any) -> Any:
    """The statement with its bound parameters filled in (the first row of many), so that it
    renders as literal SQL; a parameter that has no value renders as NULL."""
    if isinstance(parameters, (list, tuple)):
        parameters = parameters[0] if parameters else None
    given = dict(parameters or {})

    def fill(element: Any) -> Any:
        if not isinstance(element, BindParameter):
            return None
        if element.key in given:
            value = given[element.key]
        elif element.value is None and element.callable is None:
            value = None
        else:
            return None
        # The value's own type when the parameter has none, so that it renders.
        kind = None if isinstance(element.type, NullType) else element.type
        return bindparam(element.key, value, type_=kind)

    return visitors.replacement_traverse(statement, {}, fill)


def _no_rows() -> Any:
    class NoRows(IteratorResult):
        # A loop that runs until a batch changes nothing (`while result.rowcount:`) stops.
        rowcount = 0

    return NoRows(SimpleResultMetaData([]), iter([]))
