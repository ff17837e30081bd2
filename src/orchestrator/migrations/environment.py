"""What `env.py` does, as importable, testable code.

The same scripts and settings serve `alembic upgrade head` in a checkout, `orchestrator db
upgrade`, the API's start-up and pytest-alembic. A caller that already holds a connection passes
it in `config.attributes["connection"]` (Alembic's connection-sharing recipe); otherwise one is
made from the database URL (the caller's, `sqlalchemy.url`, or the settings').
"""

from __future__ import annotations

import re
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

    engine = create_engine(database_url(config), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            _migrate(context, connection)
    finally:
        engine.dispose()


def _migrate(context: EnvironmentContext, connection) -> None:
    options = _configure_options(context)
    if backend_name(connection.engine.url) == "postgresql":
        _set_lock_timeout(context.config, connection)
    else:
        # Our SQLite engines emit a real BEGIN (see orchestrator.db), so DDL is transactional.
        options["transactional_ddl"] = True
    context.configure(connection=connection, **options)
    with context.begin_transaction():
        context.run_migrations()


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
