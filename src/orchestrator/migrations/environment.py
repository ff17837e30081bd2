"""What `env.py` does, as importable, testable code.

The same scripts and settings serve `alembic upgrade head` in a checkout, `orchestrator db
upgrade`, the API's start-up and pytest-alembic. A caller that already holds a connection passes
it in `config.attributes["connection"]` (Alembic's connection-sharing recipe); otherwise one is
made from the database URL (the caller's, `sqlalchemy.url`, or the settings').
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.db import backend_name

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

SCRIPT_LOCATION = "orchestrator.migrations:alembic"
# The same folder as a path, which the manager hands Alembic: resolving the package resource
# above imports importlib's resource readers, 1.4 ms more for every command.
SCRIPT_DIRECTORY = str(Path(__file__).with_name("alembic"))
FILE_TEMPLATE = "%%(rev)s_%%(slug)s"
# Tables that exist beside the schema but are not part of the models.
UNMANAGED_TABLES = frozenset({"migration_history"})
_NUMERIC_ID = re.compile(r"^\d+$")
logger = logging.getLogger(__name__)


def next_revision_id(script: ScriptDirectory) -> str:
    """The next number in the 001, 002, ... sequence."""
    numbers = [int(rev.revision) for rev in script.walk_revisions() if _NUMERIC_ID.match(rev.revision)]
    return f"{max(numbers, default=0) + 1:03d}"


def database_url(config: Config) -> str:
    """The URL to migrate: the caller's, then `sqlalchemy.url`, then the settings'."""
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from orchestrator.settings import get_settings

    return get_settings().database_url


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Leave tables that are not models (the migration history) out of autogenerate."""
    return not (type_ == "table" and name in UNMANAGED_TABLES)


def run(context: EnvironmentContext) -> None:
    """Entry point called by `alembic/env.py`."""
    config = context.config
    if config.config_file_name is not None and not config.attributes.get("managed"):
        from logging.config import fileConfig

        fileConfig(config.config_file_name, disable_existing_loggers=False)
    if context.is_offline_mode():
        _run_offline(context)
    else:
        _run_online(context)


def _configure_options(context: EnvironmentContext) -> dict[str, Any]:
    from orchestrator.models import Base

    config = context.config
    return {
        "target_metadata": Base.metadata,
        "include_object": include_object,
        # One transaction per revision: a failure leaves the database at the last good one.
        "transaction_per_migration": True,
        "compare_type": True,
        "process_revision_directives": _number_revisions,
        "on_version_apply": config.attributes.get("on_version_apply"),
    }


def _number_revisions(context, _revision, directives) -> None:
    """Give new scripts the next sequential id, so `alembic revision` keeps the sequence too."""
    from alembic.script import ScriptDirectory

    script_directory = ScriptDirectory.from_config(context.config)
    for directive in directives:
        if not _NUMERIC_ID.match(directive.rev_id or ""):
            directive.rev_id = next_revision_id(script_directory)


def _run_offline(context: EnvironmentContext) -> None:
    context.configure(
        url=database_url(context.config),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_configure_options(context),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_online(context: EnvironmentContext) -> None:
    from sqlalchemy.engine import Engine

    config = context.config
    connection = config.attributes.get("connection")
    if isinstance(connection, Engine):
        # pytest-alembic hands over an engine rather than a connection.
        with connection.connect() as own_connection:
            _migrate(context, own_connection)
        return
    if connection is not None:
        _migrate(context, connection)
        return
    from sqlalchemy.pool import NullPool

    from orchestrator.db import create_engine

    url = database_url(config)
    engine = create_engine(url, poolclass=NullPool, **_connect_args(url))
    try:
        with _plain_command_lock(context, engine), engine.connect() as connection:
            _migrate(context, connection)
    finally:
        engine.dispose()


def _connect_args(url: str) -> dict[str, Any]:
    if backend_name(url) != "postgresql":
        return {}
    from orchestrator.migrations.lock import holder_description

    # What a migrator waiting for our lock is told holds it.
    return {"connect_args": {"application_name": f"alembic {holder_description()}"}}


@contextlib.contextmanager
def _plain_command_lock(context: EnvironmentContext, engine) -> Iterator[None]:
    """The migration lock around a plain `alembic upgrade`, `downgrade` or `stamp`.

    The manager takes it itself. Without it, an operator's `alembic upgrade head` could run
    beside replicas running `orchestrator db upgrade`, and both apply the same revision. Alembic
    reads the database's revision after this returns, so a run that waited applies only what
    is still missing. Other commands (current, history, --sql) take no lock.
    """
    command = getattr(context.config.cmd_opts, "cmd", None)
    name = getattr(command[0], "__name__", None) if command else None
    if name not in ("upgrade", "downgrade", "stamp") or context.config.attributes.get("managed"):
        yield
        return
    from orchestrator.db import sqlite_path
    from orchestrator.migrations import lock
    from orchestrator.settings import get_settings

    timeout = get_settings().migration_lock_timeout
    path = sqlite_path(engine.url)
    if path is not None:
        with lock.file_lock(lock.lock_file_for(path), timeout, logger.warning):
            yield
        return
    with engine.connect() as connection, lock.advisory_lock(connection, timeout, logger.warning):
        yield


def _migrate(context: EnvironmentContext, connection) -> None:
    options = _configure_options(context)
    if backend_name(connection.engine.url) == "postgresql":
        _set_lock_timeout(context.config, connection)
    else:
        # Our SQLite engines emit a real BEGIN (see orchestrator.db), so DDL is transactional.
        options["transactional_ddl"] = True
    unmanaged = None
    if options["on_version_apply"] is None and not context.config.attributes.get("managed"):
        # Plain `alembic upgrade` (or pytest-alembic): the history is written here instead.
        unmanaged = _UnmanagedHistory(context)
        options["on_version_apply"] = unmanaged.step_done
    context.configure(connection=connection, **options)
    try:
        with context.begin_transaction():
            context.run_migrations()
    except Exception as exc:
        if unmanaged is not None:
            unmanaged.step_failed(connection, exc)
        raise


class _UnmanagedHistory:
    """`migration_history` for Alembic runs the manager did not start, written as it writes it.

    Each step's row goes into the step's own transaction. A failed upgrade or downgrade step is
    recorded after its transaction was rolled back, when the command is known (Alembic's command
    line says which it runs; code calling `alembic.command` directly does not).
    """

    def __init__(self, context: EnvironmentContext) -> None:
        from orchestrator.migrations import history

        self._context = context
        self._recorder = history.Recorder(history.UPGRADE, self._script_path)

    def _script_path(self, revision: str | None) -> str | None:
        script = self._context.script.get_revision(revision) if revision else None
        return script.path if script is not None else None

    def step_done(self, *, step, ctx, **_: Any) -> None:
        from orchestrator.migrations import history

        if step.is_stamp:
            direction = history.STAMP
            revision = next(iter(step.destination_revision_ids), "base")
        else:
            # For both directions the revision whose script ran.
            direction = history.UPGRADE if step.is_upgrade else history.DOWNGRADE
            revision = step.up_revision_id
        history.ensure_table(ctx.connection)
        self._recorder.step_done(ctx.connection, revision, direction)

    def step_failed(self, connection, exc: Exception) -> None:
        from orchestrator.migrations import history

        try:
            connection.rollback()  # what the failed step left, if anything
            failed = self._failed_step()
            if failed is None:
                return
            history.ensure_table(connection)
            self._recorder.step_failed(connection, failed[1], f"{type(exc).__name__}: {exc}",
                                       failed[0])
            connection.commit()
        except Exception as error:  # the migration's own error is the one to report
            logger.warning("could not record the failed step in %s: %s", history.HISTORY_TABLE,
                           error)

    def _failed_step(self) -> tuple[str, str] | None:
        """(direction, revision) of the step that failed, or None when it cannot be told."""
        from orchestrator.migrations import history

        command = getattr(self._context.config.cmd_opts, "cmd", None)
        direction = getattr(command[0], "__name__", None) if command else None
        if direction not in (history.UPGRADE, history.DOWNGRADE):
            return None
        # The failed step was rolled back: the database is at the last good revision, and the
        # step that failed is the one after it toward the target (or, going down, that revision).
        current = self._context.get_context().get_current_revision()
        try:
            if direction == history.DOWNGRADE:
                failed = current
            else:
                target = self._context.get_revision_argument()
                failed = list(self._context.script.iterate_revisions(target, current))[-1].revision
        except Exception:  # the target itself was bad: no step ran, none failed
            return None
        return direction, failed


def _set_lock_timeout(config: Config, connection) -> None:
    """Fail fast when a table lock is held by traffic, instead of queueing all traffic behind us."""
    from sqlalchemy import text

    timeout = config.attributes.get("db_lock_timeout")
    if timeout is None:
        from orchestrator.settings import get_settings

        timeout = get_settings().db_lock_timeout
    connection.execute(text("SELECT set_config('lock_timeout', :value, false)"), {"value": timeout})
    # The setting is session-wide; end the implicit transaction so Alembic starts its own.
    connection.commit()
