"""Races between real concurrent clients: whatever another request or an operator does at the same
moment, every answer is a documented 2xx/4xx/503 with a JSON body, never a 500, and the stored
tasks keep their invariants.

The server is uvicorn on a local port (as `orchestrator serve` runs it); each client is a thread
with its own keep-alive connection, released together at a barrier, round after round.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from orchestrator.api.app import create_app
from orchestrator.db import create_engine
from orchestrator.migrations import MigrationManager
from orchestrator.models import Agent, Project, Task
from orchestrator.settings import Settings
from tests.api.conformance import assert_conforms

pytestmark = pytest.mark.slow

ROUNDS = 5
CLIENTS = 8


@dataclass
class Server:
    url: str
    app: object
    engine: object
    answers: list[httpx.Response] = field(default_factory=list)

    def check_answers(self, allowed: dict[tuple[str, str], set[int]]) -> dict[int, int]:
        """Every answer documented, JSON unless 204, and of a status allowed for its kind of
        request; returns how many of each status there were."""
        counts: dict[int, int] = {}
        for response in self.answers:
            counts[response.status_code] = counts.get(response.status_code, 0) + 1
            kind = (response.request.method, _shape(response.request.url.path))
            assert response.status_code in allowed[kind], (kind, response.status_code,
                                                           response.text)
            if response.status_code != 204:
                assert "detail" in response.json() or response.status_code < 300
            assert_conforms(self.app, response)
        return counts


def _shape(path: str) -> str:
    return "/".join("{id}" if part.isdigit() else part for part in path.split("/"))


@pytest.fixture
def server(api_db: str) -> Iterator[Server]:
    app = create_app(Settings(database_url=api_db, environment="development"))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                            access_log=False)
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not runner.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = runner.servers[0].sockets[0].getsockname()[1]
    engine = create_engine(api_db)
    try:
        yield Server(f"http://127.0.0.1:{port}", app, engine)
    finally:
        runner.should_exit = True
        thread.join(timeout=30)
        engine.dispose()


def _together(server: Server, headers: dict, *work: Callable[[httpx.Client], None]) -> None:
    """Run each `work(client)` on its own thread and connection, released at once."""
    barrier = threading.Barrier(len(work))
    failures: list[BaseException] = []

    def run(job):
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
            barrier.wait()
            try:
                job(client)
            except BaseException as exc:  # reported below, in the test's thread
                failures.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures


def _keep(server: Server, response: httpx.Response) -> httpx.Response:
    response.read()
    server.answers.append(response)
    return response


def _seed_tasks(server: Server, project_id: int, count: int) -> None:
    with Session(server.engine) as session:
        session.execute(insert(Task), [{"project_id": project_id, "title": f"t{i}"}
                                       for i in range(count)])
        session.commit()


def _assert_task_invariants(server: Server) -> None:
    with Session(server.engine) as session:
        agents = dict(session.execute(select(Agent.id, Agent.status)).all())
        for task_id, status, agent_id in session.execute(
            select(Task.id, Task.status, Task.agent_id)
        ):
            if status == "in_progress":
                assert agent_id in agents and agents[agent_id] != "offline", (task_id, agent_id)
            if status == "pending":
                assert agent_id is None, task_id


def test_claims_racing_the_agents_delete(server, alice):
    """The issue's race: agents claim and finish work in a loop while the agent is deleted. The
    delete sets agent_id to null on the agent's thousands of finished tasks, which takes a
    while; claims that began meanwhile answered 500 (ForeignKeyViolation) on PostgreSQL."""
    headers = alice.headers
    with httpx.Client(base_url=server.url, headers=headers) as setup:
        project = setup.post("/api/v1/projects", json={"name": "p"}).json()
    _seed_tasks(server, project["id"], 5_000)
    for _ in range(3):
        with httpx.Client(base_url=server.url, headers=headers) as setup:
            agent = setup.post("/api/v1/agents", json={"name": "doomed"}).json()
        with Session(server.engine) as session:
            session.execute(insert(Task), [
                {"project_id": project["id"], "title": "old", "status": "done",
                 "agent_id": agent["id"]} for _ in range(3_000)
            ])
            session.commit()
        path = f"/api/v1/agents/{agent['id']}"

        def work(client, path=path):
            while (claimed := _keep(server, client.post(f"{path}/claim"))).status_code == 200:
                task = claimed.json()["id"]
                _keep(server, client.patch(f"/api/v1/tasks/{task}", json={"status": "done"}))

        def delete(client, path=path):
            time.sleep(0.05)
            while _keep(server, client.delete(path)).status_code == 409:
                pass

        # Few workers: with many, one of them nearly always holds a task, and the delete is
        # refused (409) for as long as they have work.
        _together(server, headers, *[work] * 3, delete)
        _assert_task_invariants(server)
    counts = server.check_answers({
        ("POST", "/api/v1/agents/{id}/claim"): {200, 404},
        ("PATCH", "/api/v1/tasks/{id}"): {200},
        ("DELETE", "/api/v1/agents/{id}"): {204, 409},
    })
    assert counts.get(200) and counts.get(404) and counts.get(204) == 3, counts


def test_tasks_created_racing_the_projects_delete(server, alice):
    """The issue's race: creating a task while its project is deleted answered 500."""
    headers = alice.headers
    for _ in range(ROUNDS):
        with httpx.Client(base_url=server.url, headers=headers) as setup:
            project = setup.post("/api/v1/projects", json={"name": "doomed"}).json()

        def create(client, project_id=project["id"]):
            for _ in range(3):
                _keep(server, client.post("/api/v1/tasks",
                                          json={"project_id": project_id, "title": "t"}))

        delete = lambda c, p=project["id"]: _keep(server, c.delete(f"/api/v1/projects/{p}"))
        _together(server, headers, *[create] * CLIENTS, delete)
    counts = server.check_answers({
        ("POST", "/api/v1/tasks"): {201, 404},
        ("DELETE", "/api/v1/projects/{id}"): {204},
    })
    assert counts.get(201), counts
    with Session(server.engine) as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 0  # deleted with them


def test_claims_racing_the_agent_going_offline(server, alice):
    headers = alice.headers
    with httpx.Client(base_url=server.url, headers=headers) as setup:
        project = setup.post("/api/v1/projects", json={"name": "p"}).json()
    _seed_tasks(server, project["id"], ROUNDS * CLIENTS)
    for _ in range(ROUNDS):
        with httpx.Client(base_url=server.url, headers=headers) as setup:
            agent = setup.post("/api/v1/agents", json={"name": "sleepy"}).json()
        path = f"/api/v1/agents/{agent['id']}"
        claim = lambda c, p=path: _keep(server, c.post(f"{p}/claim"))
        offline = lambda c, p=path: _keep(server, c.patch(p, json={"status": "offline"}))
        _together(server, headers, *[claim] * CLIENTS, offline)
        _assert_task_invariants(server)
    server.check_answers({
        ("POST", "/api/v1/agents/{id}/claim"): {200, 204, 409},
        ("PATCH", "/api/v1/agents/{id}"): {200, 409},
    })


def test_tasks_handed_to_an_agent_racing_its_delete(server, alice):
    headers = alice.headers
    with httpx.Client(base_url=server.url, headers=headers) as setup:
        project = setup.post("/api/v1/projects", json={"name": "p"}).json()
    _seed_tasks(server, project["id"], ROUNDS * CLIENTS)
    with Session(server.engine) as session:
        pending = list(session.scalars(select(Task.id).order_by(Task.id)))
    for round_ in range(ROUNDS):
        with httpx.Client(base_url=server.url, headers=headers) as setup:
            agent = setup.post("/api/v1/agents", json={"name": "doomed"}).json()
        batch = pending[round_ * CLIENTS:(round_ + 1) * CLIENTS]
        body = {"status": "in_progress", "agent_id": agent["id"]}
        hand = [lambda c, t=t, b=body: _keep(server, c.patch(f"/api/v1/tasks/{t}", json=b))
                for t in batch]
        delete = lambda c, a=agent["id"]: _keep(server, c.delete(f"/api/v1/agents/{a}"))
        _together(server, headers, *hand, delete)
        _assert_task_invariants(server)
    server.check_answers({
        ("PATCH", "/api/v1/tasks/{id}"): {200, 404},
        ("DELETE", "/api/v1/agents/{id}"): {204, 409},
    })


def test_a_user_deleting_themselves_while_their_requests_run(server, make_user):
    for _ in range(ROUNDS):
        user = make_user()
        create = lambda c: _keep(server, c.post("/api/v1/projects", json={"name": "p"}))
        token = lambda c: _keep(server, c.post("/api/v1/users/me/tokens", json={"name": "t"}))
        leave = lambda c, u=user.id: _keep(server, c.delete(f"/api/v1/users/{u}"))
        _together(server, user.headers, *[create, token] * (CLIENTS // 2), leave)
    server.check_answers({
        ("POST", "/api/v1/projects"): {201, 401, 409},
        ("POST", "/api/v1/users/me/tokens"): {201, 401, 409},
        ("DELETE", "/api/v1/users/{id}"): {204},
    })
    with Session(server.engine) as session:
        assert session.scalar(select(func.count()).select_from(Project)) == 0


def _downgrade_to_001(url: str) -> None:
    # Each step of a SQLite migration begins IMMEDIATE: it waits for the API's writes
    # instead of failing with "database is locked", so one run is enough.
    with MigrationManager(url, lock_timeout=60) as manager:
        manager.downgrade("001")


def test_a_downgrade_while_the_api_serves_answers_503_not_500(server, api_db, alice):
    """The issue's SQLite case: `db downgrade` under traffic gave a 500 (no column
    priority_level). Clients write and read throughout; the schema goes to 001 midway."""
    headers = alice.headers
    with httpx.Client(base_url=server.url, headers=headers) as setup:
        project = setup.post("/api/v1/projects", json={"name": "p"}).json()
    stop = threading.Event()

    def traffic(client):
        body = {"project_id": project["id"], "title": "t", "priority_level": 2}
        while not stop.is_set():
            _keep(server, client.post("/api/v1/tasks", json=body))
            _keep(server, client.get("/api/v1/tasks", params={"priority_level": 2}))
            # Gaps between requests, as real clients leave: under back-to-back traffic a
            # SQLite downgrade cannot get the file to itself (docs/api.md, "Races").
            time.sleep(0.02)

    def operator(_client):
        try:
            time.sleep(0.5)
            _downgrade_to_001(api_db)
            time.sleep(0.5)
        finally:
            stop.set()

    _together(server, headers, *[traffic] * 4, operator)
    counts = server.check_answers({
        ("POST", "/api/v1/tasks"): {201, 503},
        ("GET", "/api/v1/tasks"): {200, 503},
    })
    assert counts.get(503) and (counts.get(201) or counts.get(200)), counts
    last = server.answers[-1]
    assert last.status_code == 503 and last.headers["retry-after"] == "1"
    with server.engine.connect() as connection:
        assert connection.scalar(text("SELECT version_num FROM alembic_version")) == "001"
