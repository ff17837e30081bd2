"""The application factory and its lifespan (the start-up migration policy)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from orchestrator import __version__
from orchestrator.api.deps import open_database
from orchestrator.api.errors import add_error_handlers
from orchestrator.api.routes import agents, health, projects, tasks, users
from orchestrator.migrations import MigrationManager
from orchestrator.migrations.startup import StartupReport, prepare_database
from orchestrator.settings import Settings, get_settings

logger = logging.getLogger("orchestrator.api")


def create_app(settings: Settings | None = None, startup: StartupReport | None = None) -> FastAPI:
    """Build the API for `settings` (default: the environment's).

    `startup` is the report of a start-up policy the caller already applied (`orchestrator
    serve` applies it before uvicorn starts); the lifespan then does not apply it again.
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        manager = MigrationManager.from_settings(settings, notify=logger.warning)
        app.state.migrations = manager
        # Requests get their sessions from these engines (orchestrator.api.deps).
        app.state.db = open_database(settings.database_url)
        try:
            app.state.startup = startup or await run_in_threadpool(
                prepare_database, settings, manager
            )
            yield
        finally:
            manager.close()
            await app.state.db.aclose()

    app = FastAPI(title="Orchestrator", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.include_router(health.router)
    # Agents first: requests are matched against the routes in order, and claims (agents'
    # routes) are the hot path.
    for resource in (agents, users, projects, tasks):
        app.include_router(resource.router, prefix="/api/v1")
    add_error_handlers(app)
    return app
