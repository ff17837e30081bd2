"""Alembic's entry point; the logic lives in `orchestrator.migrations.environment`."""

from alembic import context

from orchestrator.migrations.environment import run

run(context)
