"""What `env.py` does, as importable, testable code.

The same scripts and settings serve `alembic upgrade head` in a checkout, `orchestrator db
upgrade`, the API's start-up and pytest-alembic. The manager hands each run its `RunOptions`
(`config.attributes["run_options"]`): the database, the connection it lends, its callbacks and
the table-lock timeout. Without them (the `alembic` command) the settings give what is needed.
Code that holds a connection may also lend it as Alembic's connection-sharing recipe does,
in `config.attributes["connection"]`; otherwise one is made from the database URL (the run
options', `sqlalchemy.url`, or the settings').
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from orchestrator.db import backend_name, create_engine, sqlite_path
from orchestrator.migrations import lock
from orchestrator.migrations.errors import DatabaseUnreachableError, MigrationError
from orchestrator.migrations.steps import UnmanagedHistory, watch_steps
from orchestrator.settings import get_settings, parse_duration

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
# The key of the run options in `Config.attributes`: the one way the manager talks to env.py.
RUN_OPTIONS = "run_options"


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What the manager tells `env.py` about one Alembic command. A field left None is taken
    as the `alembic` command takes it: from `sqlalchemy.url` and the settings."""

    # The database to migrate (before `sqlalchemy.url` and the settings').
    database_url: str | None = None
    # A connection the caller lends (its transaction stays the caller's), else None.
    connection: Any = None
    # Alembic's `on_version_apply`: called in each step's transaction once the step is done.
    on_version_apply: Callable[..., None] | None = None
    # Called with (step, connection) as each step is taken from the plan, before its
    # transaction begins.
    on_step_start: Callable[[Any, Any], None] | None = None
    # How long a statement waits for a table lock (DB_LOCK_TIMEOUT's format).
    db_lock_timeout: str | float | None = None


def run_options(config: Config) -> RunOptions:
    """The options `config` carries (all defaults when the caller set none)."""
    return config.attributes.get(RUN_OPTIONS) or RunOptions()


@contextlib.contextmanager
def running_with(config: Config, **changes: Any) -> Iterator[None]:
    """`config`'s run options with `changes`, for the commands run inside; then as they were."""
    before = config.attributes.get(RUN_OPTIONS)
    config.attributes[RUN_OPTIONS] = dataclasses.replace(run_options(config), **changes)
    try:
        yield
    finally:
        config.attributes[RUN_OPTIONS] = before


def next_revision_id(script: ScriptDirectory) -> str:
    """The next number in the 001, 002, ... sequence."""
    numbers = [int(rev.revision) for rev in script.walk_revisions() if _NUMERIC_ID.match(rev.revision)]
    return f"{max(numbers, default=0) + 1:03d}"


def database_url(config: Config) -> str:
    """The URL to migrate: the run options', then `sqlalchemy.url`, then the settings'."""
    url = run_options(config).database_url or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    return get_settings().database_url


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Leave tables that are not models (the migration history) out of autogenerate."""
    return not (type_ == "table" and name in UNMANAGED_TABLES)


def run(context: EnvironmentContext) -> None:
    """Entry point called by `alembic/env.py`."""
    config = context.config
    if config.config_file_name is not None and not config.attributes.get("managed"):
        # Only the `alembic` command reads its ini's logging: ~30 ms that every other command
        # and the API would pay at import.
        from logging.config import fileConfig

        fileConfig(config.config_file_name, disable_existing_loggers=False)
    if context.is_offline_mode():
        _run_offline(context)
    else:
        _run_online(context)


def _configure_options(context: EnvironmentContext) -> dict[str, Any]:
    # The models load SQLAlchemy's ORM (0.5-0.9 s measured on this loaded machine), which
    # `import orchestrator.migrations` need not pay until a command runs.
    from orchestrator.models import Base

    config = context.config
    return {
        "target_metadata": Base.metadata,
        "include_object": include_object,
        # One transaction per revision: a failure leaves the database at the last good one.
        "transaction_per_migration": True,
        "compare_type": True,
        "process_revision_directives": _number_revisions,
        "on_version_apply": run_options(config).on_version_apply,
    }


def _number_revisions(context, _revision, directives) -> None:
    """Give new scripts the next sequential id, so `alembic revision` keeps the sequence too."""
    # Only `revision` calls this; Alembic is loaded then, not at import (see CommandError).
    from alembic.script import ScriptDirectory

    script_directory = ScriptDirectory.from_config(context.config)
    for directive in directives:
        if not _NUMERIC_ID.match(directive.rev_id or ""):
            directive.rev_id = next_revision_id(script_directory)


def _run_offline(context: EnvironmentContext) -> None:
    url = database_url(context.config)
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_configure_options(context),
    )
    if backend_name(url) == "postgresql":
        # The script is applied by hand (psql -f): it must give up on a busy table as online
        # runs do. A session-level SET holds across the script's transactions.
        context.execute(text("SET lock_timeout = :value").bindparams(
            value=lock_timeout(context.config)))
    with context.begin_transaction():
        context.run_migrations()


def _run_online(context: EnvironmentContext) -> None:
    config = context.config
    connection = run_options(config).connection or config.attributes.get("connection")
    if isinstance(connection, Engine):
        # pytest-alembic hands over an engine rather than a connection.
        with connection.connect() as own_connection:
            _migrate(context, own_connection, owned=True)
        return
    if connection is not None:
        _migrate(context, connection, owned=False)
        return
    url = database_url(config)
    engine = create_engine(url, poolclass=NullPool, **_connect_args(url))
    try:
        with _plain_command_lock(context, engine) as locked, engine.connect() as connection:
            with _migrating(connection, locked):
                _migrate(context, connection, owned=True)
    finally:
        engine.dispose()


def _connect_args(url: str) -> dict[str, Any]:
    if backend_name(url) != "postgresql":
        return {}
    # What a migrator waiting for our lock is told holds it.
    return {"connect_args": {"application_name": f"alembic {lock.holder_description()}",
                             **lock.KEEPALIVES}}


@contextlib.contextmanager
def _migrating(connection, locked: bool) -> Iterator[None]:
    """PostgreSQL: the migrating connection's own key (see the lock package), when the lock was
    taken."""
    if not locked or backend_name(connection.engine.url) != "postgresql":
        yield
        return
    with lock.migrating(connection, get_settings().migration_lock_timeout):
        yield


@contextlib.contextmanager
def _plain_command_lock(context: EnvironmentContext, engine) -> Iterator[bool]:
    """The migration lock around a plain `alembic upgrade`, `downgrade` or `stamp`.

    The manager takes it itself. Without it, an operator's `alembic upgrade head` could run
    beside replicas running `orchestrator db upgrade`, and both apply the same revision. Alembic
    reads the database's revision after this returns, so a run that waited applies only what
    is still missing. Other commands (current, history, --sql) take none.
    """
    command = getattr(context.config.cmd_opts, "cmd", None)
    name = getattr(command[0], "__name__", None) if command else None
    if name not in ("upgrade", "downgrade", "stamp"):
        yield False
        return
    # Alembic is loaded by now (it runs this); at the top it would add Alembic (0.3-0.6 s
    # measured on this loaded machine) to every `import orchestrator.migrations`.
    from alembic.util import CommandError

    timeout = get_settings().migration_lock_timeout
    path = sqlite_path(engine.url)
    with contextlib.ExitStack() as stack:
        try:
            if path is not None:
                stack.enter_context(_sqlite_lock(path, timeout))
            else:
                connection = stack.enter_context(engine.connect())
                stack.enter_context(lock.advisory_lock(connection, timeout, logger.warning))
        except MigrationError as exc:  # Alembic prints a CommandError as one line
            raise CommandError(str(exc)) from None
        yield True


@contextlib.contextmanager
def _sqlite_lock(path: Path, timeout: float) -> Iterator[None]:
    lock_path = lock.lock_file_for(path)
    held = contextlib.ExitStack()
    try:
        held.enter_context(lock.file_lock(lock_path, timeout, logger.warning))
    except DatabaseUnreachableError:
        if not path.parent.is_dir():
            raise
        # A folder we may not write in: nor can we change the database in it (SQLite writes
        # its journal beside it), so there is nothing to serialise; an up-to-date database is
        # fine, and a change fails with SQLite's own "readonly database".
        logger.warning("cannot create the migration lock file %s; going on without it", lock_path)
    with held:
        yield


def _migrate(context: EnvironmentContext, connection, owned: bool) -> None:
    options = _configure_options(context)
    if backend_name(connection.engine.url) == "postgresql":
        _set_session_limits(context.config, connection)
    else:
        # Our SQLite engines emit a real BEGIN (see orchestrator.db), so DDL is transactional.
        options["transactional_ddl"] = True
        if not connection.in_transaction():
            # Each step writes: take the write lock as its transaction begins, waiting through
            # busy_timeout, rather than fail with "database is locked" when a deferred read lock
            # cannot be upgraded while the API writes.
            connection.execution_options(sqlite_begin="BEGIN IMMEDIATE")
    unmanaged = None
    on_start = run_options(context.config).on_step_start
    if options["on_version_apply"] is None and not context.config.attributes.get("managed"):
        # Plain `alembic upgrade` (or pytest-alembic): the history is written here instead.
        unmanaged = UnmanagedHistory(context)
        options["on_version_apply"] = unmanaged.step_done
        on_start = unmanaged.step_started
    context.configure(connection=connection, **options)
    if on_start is not None:
        watch_steps(context.get_context(), lambda step: on_start(step, connection))
    try:
        with context.begin_transaction():
            context.run_migrations()
    except Exception as exc:
        # A connection the caller lent us is in the caller's transaction: not ours to end.
        if unmanaged is not None and owned:
            unmanaged.step_failed(connection, exc)
        raise


def lock_timeout(config: Config) -> str:
    """How long a statement waits for a table lock (the caller's, else DB_LOCK_TIMEOUT), as
    PostgreSQL reads it: milliseconds with their unit."""
    timeout = run_options(config).db_lock_timeout
    seconds = parse_duration(get_settings().db_lock_timeout if timeout is None else timeout)
    # PostgreSQL reads a bare number as milliseconds and rounds a fraction of one down to 0,
    # which would wait forever.
    milliseconds = 0 if seconds == 0 else max(1, round(seconds * 1000))
    return f"{milliseconds}ms"


def _set_session_limits(config: Config, connection) -> None:
    """Fail fast when a table lock is held by traffic, instead of queueing all traffic behind us."""
    connection.execute(text("SELECT set_config('lock_timeout', :value, false)"),
                       {"value": lock_timeout(config)})
    # A migrator killed mid-statement leaves its server session running the statement (an
    # index build goes on, and the next migrator's CREATE INDEX CONCURRENTLY waits for it): the
    # server checks every second that the client is still there (PostgreSQL 14 and later).
    connection.execute(text(
        "SELECT set_config('client_connection_check_interval', '1s', false) "
        "WHERE current_setting('server_version_num')::int >= 140000"))
    # A step may sit in Python between statements, in a transaction (a backfill's loop).
    lock.protect_session(connection)
    # The settings are session-wide; end the implicit transaction so Alembic starts its own.
    connection.commit()
