"""Helpers that read a database's schema and contents, for comparisons in tests."""

from __future__ import annotations

import hashlib

from sqlalchemy import inspect, text

from orchestrator.db import create_engine
from orchestrator.migrations.validate import schema_snapshot

APP_TABLES = ("users", "projects", "agents", "tasks")


def snapshot(url: str, exclude: tuple[str, ...] = ()) -> dict:
    """Tables, columns, indexes and constraints, in a form that compares with ==: the
    validator's `schema_snapshot` (bookkeeping tables left out), in the shape these tests read
    (columns as a list of (name, type, nullable, default); foreign keys as (name, columns,
    referred table))."""
    return {
        table: {
            "columns": [(name, *spec) for name, spec in parts["columns"].items()],
            "pk": list(parts["primary key"]),
            "indexes": parts["indexes"],
            "foreign_keys": [fk[:3] for fk in parts["foreign keys"]],
            "unique": parts["unique constraints"],
            "checks": parts["checks"],
        }
        for table, parts in schema_snapshot(url).items()
        if table not in exclude
    }


def content_hash(url: str, tables: tuple[str, ...] = APP_TABLES) -> dict[str, tuple[int, str]]:
    """Row count and a SHA-256 of every row, per table, ordered by primary key."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            existing = set(inspect(connection).get_table_names())
            out = {}
            for table in tables:
                if table not in existing:
                    continue
                rows = connection.execute(text(f"SELECT * FROM {table} ORDER BY id")).all()
                digest = hashlib.sha256(repr([tuple(r) for r in rows]).encode()).hexdigest()
                out[table] = (len(rows), digest)
            return out
    finally:
        engine.dispose()


def execute(url: str, *statements: str, params: dict | None = None) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement), params or {})
    finally:
        engine.dispose()


def scalar(url: str, statement: str):
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text(statement)).scalar()
    finally:
        engine.dispose()


def seed_rows(url: str) -> None:
    """One user, project, agent and two tasks (revision 001 columns only, and the agent's
    owner from 005 on)."""
    execute(
        url,
        # No explicit ids, so PostgreSQL's sequences stay in step (a fresh database gives 1, 2).
        "INSERT INTO users (email, name) VALUES ('ada@example.com', 'Ada')",
        "INSERT INTO projects (owner_id, name) VALUES (1, 'Engine')",
        _AGENT if not has_column(url, "agents", "owner_id") else _OWNED_AGENT,
        "INSERT INTO tasks (project_id, agent_id, title) VALUES (1, 1, 'Design')",
        "INSERT INTO tasks (project_id, title, status) VALUES (1, 'Build', 'done')",
    )


_AGENT = "INSERT INTO agents (name) VALUES ('worker-1')"
_OWNED_AGENT = "INSERT INTO agents (name, owner_id) VALUES ('worker-1', 1)"


def has_column(url: str, table: str, column: str) -> bool:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return column in {c["name"] for c in inspect(connection).get_columns(table)}
    finally:
        engine.dispose()
