"""The task queries use migration 003's indexes, on SQLite (EXPLAIN QUERY PLAN) and PostgreSQL.

The data is shaped like a working orchestrator: many tasks, most of them finished, spread over
a few users. Statistics are gathered (ANALYZE) so PostgreSQL plans from real numbers.
"""

from __future__ import annotations

import random

import pytest
from sqlalchemy import insert, text
from sqlalchemy.orm import Session

from orchestrator.api.routes.agents import claim_statement
from orchestrator.api.routes.tasks import list_tasks_statement
from orchestrator.db import create_engine
from orchestrator.migrations import MigrationManager
from orchestrator.migrations.scratch import scratch_database
from orchestrator.models import Agent, Project, Task, User
from tests.conftest import require_postgres

INDEXES_003 = {
    "ix_tasks_status",
    "ix_tasks_priority_level",
    "ix_tasks_project_id",
    "ix_tasks_agent_id",
    "ix_tasks_status_priority_created",
}
PAGE = 51  # what a default page asks for: limit + 1


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def plan_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A database at head, made once per module (seeding it is the slow part)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('plans') / 'plans.db'}"
        with MigrationManager(url) as manager:
            manager.upgrade()
        yield url
        return
    with scratch_database(require_postgres(), "orch_test_plans") as url:
        with MigrationManager(url) as manager:
            manager.upgrade()
        yield url


@pytest.fixture(scope="module")
def planned(plan_db: str):
    """An engine on a database with 20,000 tasks, and the ids to query them by."""
    rng = random.Random(3)
    engine = create_engine(plan_db)
    with Session(engine) as session:
        users = [User(email=f"u{i}@example.com", name="u") for i in range(2)]
        session.add_all(users)
        session.flush()
        projects = [Project(owner_id=user.id, name="p") for user in users for _ in range(5)]
        agents = [Agent(owner_id=users[i % 2].id, name=f"a{i}") for i in range(10)]
        session.add_all(projects + agents)
        session.flush()
        statuses = ["pending", "in_progress", "done", "done", "done", "failed"]
        session.execute(
            insert(Task),
            [
                {
                    "project_id": rng.choice(projects).id,
                    "title": "t",
                    "priority_level": rng.randint(1, 5),
                    "status": rng.choice(statuses),
                    "agent_id": rng.choice([None, *(agent.id for agent in agents)]),
                }
                for _ in range(20_000)
            ],
        )
        session.commit()
        ids = {"owner": users[0].id, "project": projects[0].id, "agent": agents[0].id}
    with engine.begin() as connection:
        connection.execute(text("ANALYZE"))
    yield engine, ids
    engine.dispose()


def _plan(engine, statement, parameters: dict | None = None) -> str:
    """The plan of `statement` as the application sends it (bound parameters and all)."""
    compiled = statement.compile(dialect=engine.dialect)
    values = compiled.construct_params(parameters or {})
    if compiled.positiontup is not None:  # SQLite's "?" placeholders
        values = tuple(values[name] for name in compiled.positiontup)
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(explain + compiled.string, values).all()
        connection.rollback()  # EXPLAIN of an UPDATE plans it without running it; be sure
    return "\n".join(" | ".join(str(column) for column in row) for row in rows)


def _full_scan_of_tasks(plan: str) -> bool:
    # SQLite's "SCAN tasks USING INDEX ..." walks an index in order; bare "SCAN tasks" reads
    # the table.
    return "Seq Scan on tasks" in plan or any(
        line.rsplit("|", 1)[-1].strip() == "SCAN tasks" for line in plan.splitlines()
    )


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, INDEXES_003),
        ({"project_id": "project"}, INDEXES_003),
        ({"status": "pending"}, {"ix_tasks_status_priority_created"}),
        ({"agent_id": "agent"}, {"ix_tasks_agent_id"}),
        ({"priority_level": 1}, {"ix_tasks_priority_level"}),
        ({"status": "pending", "priority_level": 2}, {"ix_tasks_status_priority_created"}),
    ],
)
def test_task_lists_use_the_003_indexes(planned, filters, expected):
    engine, ids = planned
    values = {key: ids.get(value, value) if isinstance(value, str) else value
              for key, value in filters.items()}
    plan = _plan(engine, list_tasks_statement(ids["owner"], **values).limit(PAGE))
    assert any(index in plan for index in expected), plan
    assert not _full_scan_of_tasks(plan), plan


@pytest.mark.parametrize("by_token", [False, True])
@pytest.mark.parametrize("by_project", [False, True])
def test_the_claim_finds_its_task_through_an_index(planned, by_project, by_token):
    engine, ids = planned
    statement = claim_statement(engine.dialect.name, by_project, by_token)
    plan = _plan(engine, statement, {"claimer": ids["agent"], "owner": ids["owner"],
                                     "token_hash": "0" * 64, "project": ids["project"]})
    assert any(index in plan for index in INDEXES_003), plan
    assert not _full_scan_of_tasks(plan), plan
    if not by_project:
        assert "ix_tasks_status_priority_created" in plan, plan


def _last_block_key(engine, owner: int) -> tuple:
    """The sort key of the first task of the highest priority level: a cursor there leaves the
    rest of that block, which a row comparison's estimate says is nothing."""
    from sqlalchemy import String, cast, select

    from orchestrator.api.routes.tasks import TASK_ORDER

    sqlite = engine.dialect.name == "sqlite"
    keys = [cast(c, String) if sqlite and c is Task.created_at else c for c in TASK_ORDER]
    with engine.connect() as connection:
        return tuple(connection.execute(
            select(*keys).where(Task.priority_level == 5).order_by(*TASK_ORDER).limit(1)
        ).one())


def test_a_cursor_page_is_planned_from_sound_estimates(planned):
    from sqlalchemy import String, literal

    from orchestrator.api.pagination import after
    from orchestrator.api.routes.tasks import TASK_ORDER

    engine, ids = planned
    key = list(_last_block_key(engine, ids["owner"]))
    if engine.dialect.name == "sqlite":
        key[1] = literal(key[1], String())
    statement = list_tasks_statement(ids["owner"]).where(after(TASK_ORDER, key)).limit(PAGE)
    if engine.dialect.name == "sqlite":
        plan = _plan(engine, statement)
        assert not _full_scan_of_tasks(plan), plan
        return
    compiled = statement.compile(dialect=engine.dialect)
    with engine.connect() as connection:
        document = connection.exec_driver_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + compiled.string, compiled.params
        ).scalar()
    scans = []

    def walk(node):
        if node.get("Relation Name") == "tasks":
            scans.append(node)
        for child in node.get("Plans", []):
            walk(child)

    walk(document[0]["Plan"])
    assert scans
    for scan in scans:
        # Both per loop (per worker for a parallel scan). Within a factor of ten, not "1 row"
        # for thousands, which made the planner join the projects by nested loop over them all.
        assert scan["Plan Rows"] * 10 >= scan["Actual Rows"], scan
