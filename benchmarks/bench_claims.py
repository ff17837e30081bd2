"""Claims per second over HTTP, 16 agents at once, on PostgreSQL and SQLite (issue 5).

The API runs in its own process (uvicorn, one worker, as `orchestrator serve` runs it); 16
client threads, one per agent, each with a keep-alive HTTP connection, call
`POST /api/v1/agents/{id}/claim` until they get 204. Every claim is timed. Afterwards the
claimed ids are checked: a task handed out twice is a double claim.

Target: ≥ 300 claims/s on PostgreSQL, with zero double claims. Reference, in the same run and
against the same server: the same 16 clients calling `GET /health/live` (no database, no
auth), the HTTP floor of this machine; the ratio says what share of it claiming keeps.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import (
    ROOT,
    median,
    metric,
    percentile,
    postgres_or_skip,
    project_env,
    result,
    scratch_database,
    sqlite_url,
)

TITLE = "Claims over HTTP, 16 agents at once"
AGENTS = 16
TARGET_PER_SECOND = 300


def run(smoke: bool) -> dict[str, Any]:
    """Measure both databases; `smoke` uses a few hundred tasks and one round."""
    tasks = 300 if smoke else 5_000
    rounds = 1 if smoke else 3
    admin_url, skip = postgres_or_skip(TITLE, 5)
    metrics: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    notes = [] if admin_url else [skip["skipped"] + "; PostgreSQL not measured"]
    for dialect in (["postgresql"] if admin_url else []) + ["sqlite"]:
        measured = [_measure(dialect, admin_url, tasks) for _ in range(rounds)]
        rates = [m["claims_per_second"] for m in measured]
        floors = [m["floor_per_second"] for m in measured]
        doubles = sum(m["double_claims"] for m in measured)
        rate = median(rates)
        target = dialect == "postgresql"
        metrics += [
            metric(
                f"claims/s, {dialect}",
                rate,
                "claims/s",
                reference=median(floors),
                reference_name="GET /health/live, same clients",
                ratio=median([r / f for r, f in zip(rates, floors, strict=True)]),
                target=f"≥ {TARGET_PER_SECOND}/s" if target else None,
                passed=rate >= TARGET_PER_SECOND if target and not smoke else None,
                runs=rounds,
            ),
            metric(f"claim latency p50, {dialect}", median([m["p50"] for m in measured]), "ms",
                   runs=rounds),
            metric(f"claim latency p99, {dialect}", median([m["p99"] for m in measured]), "ms",
                   runs=rounds),
            metric(f"double claims, {dialect}", doubles, "claims", target="0",
                   passed=doubles == 0, runs=rounds),
        ]
        for i, m in enumerate(measured, 1):
            rows.append([
                dialect, i, m["claims"], f"{m['seconds']:.2f} s", f"{m['claims_per_second']:.0f}",
                f"{m['p50'] * 1000:.1f} ms", f"{m['p99'] * 1000:.1f} ms",
                f"{m['floor_per_second']:.0f}", m["double_claims"], m["unclaimed"],
            ])
    return result(
        TITLE,
        5,
        f"{tasks:,} pending tasks with priorities 1-5 in one user's project; {AGENTS} agents "
        "claim over HTTP at once (one thread and one keep-alive connection each) until nothing "
        "is left; the server is uvicorn in a separate process with one worker. Claims/s is "
        "claims divided by the wall time from the first request to the last 204; latency is "
        "per request as the client sees it. Medians over rounds, each on a fresh database.",
        metrics,
        notes=notes,
        tables=[{
            "title": "Rounds",
            "header": ["database", "round", "claims", "wall time", "claims/s", "p50", "p99",
                       "floor req/s", "double claims", "left unclaimed"],
            "rows": rows,
        }],
        rows=tasks,
    )


# -- one round ----------------------------------------------------------------------------


def _measure(dialect: str, admin_url: str | None, tasks: int) -> dict[str, Any]:
    with _database(dialect, admin_url) as url:
        token, agent_ids = _seed(url, tasks)
        with serve_api(url) as base:
            import httpx

            headers = {"Authorization": f"Bearer {token}"}
            clients = [httpx.Client(base_url=base, headers=headers, timeout=60)
                       for _ in range(AGENTS)]
            try:
                floor = _floor(clients, tasks)
                claimed, latencies, seconds, errors = _claim_all(clients, agent_ids)
            finally:
                for client in clients:
                    client.close()
        if errors:
            raise RuntimeError(f"{len(errors)} claims failed, e.g. {errors[0]}")
        everything = [task_id for ids in claimed for task_id in ids]
        return {
            "claims": len(everything),
            "seconds": seconds,
            "claims_per_second": len(everything) / seconds,
            "p50": percentile(latencies, 0.50),
            "p99": percentile(latencies, 0.99),
            "double_claims": len(everything) - len(set(everything)),
            "unclaimed": _count_pending(url),
            "floor_per_second": floor,
        }


def _claim_all(clients, agent_ids: list[int]):
    claimed: list[list[int]] = [[] for _ in agent_ids]
    latencies: list[list[float]] = [[] for _ in agent_ids]
    errors: list[str] = []
    start = threading.Barrier(len(agent_ids) + 1)

    def agent(index: int) -> None:
        client, path = clients[index], f"/api/v1/agents/{agent_ids[index]}/claim"
        start.wait()
        while True:
            began = time.perf_counter()
            response = client.post(path)
            latencies[index].append(time.perf_counter() - began)
            if response.status_code == 204:
                return
            if response.status_code != 200:
                errors.append(f"{response.status_code} {response.text[:200]}")
                return
            claimed[index].append(response.json()["id"])

    seconds = _together(agent, len(agent_ids), start)
    return claimed, [x for per_agent in latencies for x in per_agent], seconds, errors


def _floor(clients, requests: int) -> float:
    """Requests per second for GET /health/live with the same clients and threads."""
    per_client = max(1, requests // len(clients))
    start = threading.Barrier(len(clients) + 1)

    def caller(client) -> None:
        start.wait()
        for _ in range(per_client):
            client.get("/health/live").raise_for_status()

    return per_client * len(clients) / _together(lambda i: caller(clients[i]), len(clients), start)


def _together(work, count: int, start: threading.Barrier) -> float:
    """Run `work(i)` for i in range(count) on threads that wait at `start`; seconds from the
    moment they are let go to the last one's end."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began


# -- database and server ------------------------------------------------------------------


@contextlib.contextmanager
def _database(dialect: str, admin_url: str | None) -> Iterator[str]:
    from orchestrator.migrations import MigrationManager

    if dialect == "sqlite":
        with tempfile.TemporaryDirectory(prefix="orch-bench-claims-") as folder:
            url = sqlite_url(Path(folder) / "claims.db")
            with MigrationManager(url) as manager:
                manager.upgrade()
            yield url
        return
    assert admin_url is not None
    with scratch_database(admin_url, "orch_bench_claims") as url:
        with MigrationManager(url) as manager:
            manager.upgrade()
        yield url


def _seed(url: str, tasks: int) -> tuple[str, list[int]]:
    """A user with a token, a project of pending tasks, and the agents."""
    import datetime as dt
    import random

    from sqlalchemy import insert, text
    from sqlalchemy.orm import Session

    from orchestrator import accounts
    from orchestrator.db import create_engine
    from orchestrator.models import Agent, Project, Task

    rng = random.Random(7)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            user, token = accounts.create_user(session, "bench@example.com", "Bench")
            project = Project(owner_id=user.id, name="claims")
            agents = [Agent(owner_id=user.id, name=f"agent {i}") for i in range(AGENTS)]
            session.add_all([project, *agents])
            session.flush()
            session.execute(insert(Task), [
                {"project_id": project.id, "title": f"task {i}",
                 "priority_level": rng.randint(1, 5),
                 "created_at": start + dt.timedelta(seconds=i)}
                for i in range(tasks)
            ])
            session.commit()
            agent_ids = [agent.id for agent in agents]
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.execute(text("VACUUM ANALYZE"))
    finally:
        engine.dispose()
    return token, agent_ids


def _count_pending(url: str) -> int:
    from sqlalchemy import text

    from orchestrator.db import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.scalar(text("SELECT count(*) FROM tasks WHERE status = 'pending'"))
    finally:
        engine.dispose()


@contextlib.contextmanager
def serve_api(url: str) -> Iterator[str]:
    """uvicorn serving the app on a free local port; yields its base URL."""
    port = _free_port()
    env = project_env(DATABASE_URL=url, ENVIRONMENT="development", AUTO_MIGRATE="false")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "orchestrator.api.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
         "--no-access-log"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_live(base, process)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_live(base: str, process: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stderr.read()[-2000:]
            raise RuntimeError(f"the server exited {process.returncode}: {output}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("the server did not become ready within 30 s")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":  # pragma: no cover - a quick look without the runner
    import json

    print(json.dumps(run(smoke="--smoke" in sys.argv), indent=2, default=str))
