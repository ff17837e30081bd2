"""`orchestrator serve`: the API server, after the start-up migration policy."""

from __future__ import annotations

import logging
import os

import click

from orchestrator.cli.options import common_options, manager_for, settings_for


@click.command()
@common_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes (uvicorn workers), each applying the start-up checks.")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, workers: int) -> None:
    """Serve the API (development migrates its database first)."""
    # Imported here: the web layer (FastAPI 0.7 s, uvicorn 0.03 s), which no `db` command
    # may load (DEVELOPERS.md; tests/cli/test_db_commands.py checks `db check`).
    import uvicorn

    from orchestrator.api.app import create_app
    from orchestrator.migrations.startup import prepare_database

    logging.basicConfig(level=logging.INFO, format="%(levelname)-8s %(name)s: %(message)s")
    # Alembic announces its plugins and each step at INFO; start-up logs each step once itself.
    for name in ("alembic.runtime.plugins", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    settings = settings_for(ctx)
    # Apply the start-up policy before uvicorn starts, so that a database that must stop
    # start-up gives the usual one-line error instead of a lifespan traceback; the lifespan
    # is handed the result rather than applying the policy (and logging it) a second time.
    with manager_for(ctx) as manager:
        report = prepare_database(settings, manager)
    if workers == 1:
        uvicorn.run(create_app(settings, startup=report), host=host, port=port, log_level="info")
        return
    # Each worker process builds the app from the environment and applies the start-up policy
    # in its lifespan: the database is at head by now, and were it not, the migration lock
    # lets one worker migrate while the others wait and then find nothing to do.
    os.environ["ENVIRONMENT"] = settings.environment.value
    os.environ["DATABASE_URL"] = settings.database_url
    uvicorn.run("orchestrator.api.app:create_app", factory=True, host=host, port=port,
                workers=workers, log_level="info")
