"""16 agents claim 1,000 tasks at once: each task goes to exactly one agent, in urgency order."""

from __future__ import annotations

import datetime as dt
import random
import threading

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from orchestrator.db import create_engine
from orchestrator.models import Agent, Project, Task

CLAIMERS = 16
TASKS = 1_000

pytestmark = pytest.mark.slow


def _seed(url: str, owner_id: int) -> tuple[list[int], dict[int, tuple]]:
    """Agents, two projects and the tasks, with priorities and ages in random order."""
    rng = random.Random(5)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    engine = create_engine(url)
    with Session(engine) as session:
        agents = [Agent(owner_id=owner_id, name=f"agent {i}") for i in range(CLAIMERS)]
        projects = [Project(owner_id=owner_id, name=f"p{i}") for i in range(2)]
        session.add_all(agents + projects)
        session.flush()
        rows = [
            {
                "project_id": rng.choice(projects).id,
                "title": f"task {i}",
                "priority_level": rng.randint(1, 5),
                "created_at": start + dt.timedelta(seconds=rng.randrange(100_000)),
            }
            for i in range(TASKS)
        ]
        session.execute(insert(Task), rows)
        session.commit()
        keys = {
            row.id: (row.priority_level, row.created_at.replace(tzinfo=None), row.id)
            for row in session.execute(select(Task.id, Task.priority_level, Task.created_at))
        }
        agent_ids = [agent.id for agent in agents]
    engine.dispose()
    return agent_ids, keys


def test_each_task_is_claimed_exactly_once_in_priority_order_per_claimer(client, api_db, alice):
    agent_ids, keys = _seed(api_db, alice.id)
    claimed: dict[int, list[int]] = {agent_id: [] for agent_id in agent_ids}
    errors: list[str] = []
    # How many tasks were still pending when each claimer was told there was nothing to claim.
    left_at_204: list[int] = []
    engine = create_engine(api_db)
    barrier = threading.Barrier(CLAIMERS)

    def claimer(agent_id: int) -> None:
        barrier.wait()
        while True:
            response = client.post(f"/api/v1/agents/{agent_id}/claim", headers=alice.headers)
            if response.status_code == 204:
                with engine.connect() as connection:
                    left_at_204.append(
                        connection.scalar(
                            select(func.count()).select_from(Task).where(Task.status == "pending")
                        )
                    )
                return
            if response.status_code != 200:
                errors.append(f"{response.status_code}: {response.text}")
                return
            task = response.json()
            if task["agent_id"] != agent_id or task["status"] != "in_progress":
                errors.append(f"wrong claim: {task}")
            claimed[agent_id].append(task["id"])

    threads = [threading.Thread(target=claimer, args=(agent_id,)) for agent_id in agent_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    assert left_at_204 == [0] * CLAIMERS, "a claimer was told nothing was left while work was"
    everything = [task_id for tasks in claimed.values() for task_id in tasks]
    assert len(everything) == len(set(everything)) == TASKS
    assert set(everything) == set(keys)
    for agent_id, tasks in claimed.items():
        order = [keys[task_id] for task_id in tasks]
        assert order == sorted(order), f"agent {agent_id} got its tasks out of order"
    # More than one agent did work: the claims really ran side by side.
    assert sum(1 for tasks in claimed.values() if tasks) > 1

    with Session(engine) as session:
        owners = dict(session.execute(select(Task.id, Task.agent_id)).all())
        statuses = set(session.scalars(select(Task.status)))
    engine.dispose()
    assert statuses == {"in_progress"}
    assert owners == {task_id: agent_id for agent_id, tasks in claimed.items() for task_id in tasks}
