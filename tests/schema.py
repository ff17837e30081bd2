"""Helpers that read a database's schema and contents, for comparisons in tests."""

from __future__ import annotations

import hashlib

from sqlalchemy import inspect, text

from orchestrator.db import create_engine

APP_TABLES = ("users", "projects", "agents", "tasks")


def snapshot(url: str, exclude: tuple[str, ...] = ("alembic_version", "migration_history")) -> dict:
    """Tables, columns, indexes and constraints, in a form that compares with ==."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            inspector = inspect(connection)
            result = {}
            for table in sorted(set(inspector.get_table_names()) - set(exclude)):
                result[table] = {
                    "columns": [
                        (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                        for c in inspector.get_columns(table)
                    ],
                    "pk": inspector.get_pk_constraint(table)["constrained_columns"],
                    "indexes": sorted(
                        (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                        for i in inspector.get_indexes(table)
                    ),
                    "foreign_keys": sorted(
                        (fk["name"] or "", tuple(fk["constrained_columns"]), fk["referred_table"])
                        for fk in inspector.get_foreign_keys(table)
                    ),
                    "unique": sorted(
                        (u["name"] or "", tuple(u["column_names"]))
                        for u in inspector.get_unique_constraints(table)
                    ),
                    "checks": sorted(
                        (ck["name"] or "", " ".join(ck["sqltext"].split()))
                        for ck in inspector.get_check_constraints(table)
                    ),
                }
            return result
    finally:
        engine.dispose()


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
