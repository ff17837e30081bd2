"""Claims per second over HTTP, 16 agents at once, on PostgreSQL and SQLite (issues 5, 15).

The API runs in its own process (uvicorn, one worker, as `orchestrator serve` runs it; and a
row with `--workers 2` on PostgreSQL); 16 client threads, one per agent, each with a keep-alive
HTTP connection, call `POST /api/v1/agents/{id}/claim` until they get 204. Every claim is
timed. Afterwards the claimed ids are checked: a task handed out twice is a double claim.

Target (issue 15): claims/s ≥ 0.5 × the HTTP floor on PostgreSQL with one worker, zero double
claims. The floor, in the same run and against the same server: the same 16 clients calling
`GET /health/live` (no database, no auth); the ratio says what share of it claiming keeps.

Where a claim's time goes is measured two ways. In every round, the CPU time each party
spends per claim and per floor request: the server process (all its workers), the database's
backends for the benchmark database, and the clients. And apart, in-process and one claim at a
time (no HTTP): the token check, the claim statement and the serialisation of the task, for the
path claims took before issue 15 (a token query, then the claim through an ORM session, the
task validated again as FastAPI's response model) and the one they take now (one precompiled
statement that checks the token and claims, sent from the event loop on an async connection,
the task serialised once).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
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
TARGET_RATIO = 0.5
BEFORE_AND_AFTER = (
    "Before: issue 15's first measurement (2026-12-07 12:26 UTC) sent the claim's one "
    "statement from a worker thread through the synchronous engine, planned again on every "
    "execution: 434 claims/s against a floor of 1,149 requests/s, 0.41 ×, p99 119 ms "
    "(PostgreSQL, one worker). Now it is sent from the event loop on an async connection "
    "(`orchestrator.api.aio`: no thread-pool trip, no engine checkout) with a generic plan, "
    "made once per connection. The CPU table says where a claim's time goes in the running "
    "server; the last table, part by part in-process (its statement times include each "
    "commit's wait for the WAL flush). A same-machine A/B with more load from other jobs "
    "(load average 9-10 on the 2 cores; the code before and after alternated, 3 rounds of "
    "5,000 claims each, one worker, 2026-12-07 16:05 UTC): the server's CPU per claim fell "
    "from 1.73-1.97 ms to 1.04-1.27 ms, but claims/s did not rise (164-254 after, 218-243 "
    "before), because the server process got less of the contended CPU (0.19-0.26 of a core "
    "against 0.42-0.46; most likely as the scheduler shares CPU by thread, and the claims "
    "now run on one thread where they ran on many). The ratio above comes from a run with "
    "less contention; on a machine that busy, expect less."
)
# The process id of each server `serve_api` runs, by its URL.
_SERVERS: dict[str, int] = {}


def run(smoke: bool) -> dict[str, Any]:
    """Measure both databases; `smoke` uses a few hundred tasks and one round."""
    tasks = 300 if smoke else 5_000
    rounds = 1 if smoke else 3
    admin_url, skip = postgres_or_skip(TITLE, 15)
    metrics: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    cpu_rows: list[list[Any]] = []
    notes = [] if admin_url else [skip["skipped"] + "; PostgreSQL not measured"]
    notes.append(BEFORE_AND_AFTER)
    setups = ([("postgresql", 1), ("postgresql", 2)] if admin_url else []) + [("sqlite", 1)]
    for dialect, workers in setups:
        label = dialect if workers == 1 else f"{dialect}, {workers} workers"
        measured = [_measure(dialect, admin_url, tasks, workers) for _ in range(rounds)]
        rates = [m["claims_per_second"] for m in measured]
        floors = [m["floor_per_second"] for m in measured]
        doubles = sum(m["double_claims"] for m in measured)
        ratio = median([r / f for r, f in zip(rates, floors, strict=True)])
        target = dialect == "postgresql" and workers == 1
        metrics += [
            metric(
                f"claims/s, {label}",
                median(rates),
                "claims/s",
                reference=median(floors),
                reference_name="GET /health/live, same clients and server",
                ratio=ratio,
                target=f"≥ {TARGET_RATIO} × floor" if target else None,
                passed=ratio >= TARGET_RATIO if target and not smoke else None,
                runs=rounds,
            ),
            metric(f"claim latency p50, {label}", median([m["p50"] for m in measured]), "ms",
                   runs=rounds),
            metric(f"claim latency p99, {label}", median([m["p99"] for m in measured]), "ms",
                   runs=rounds),
            metric(f"double claims, {label}", doubles, "claims", target="0",
                   passed=doubles == 0, runs=rounds),
        ]
        for i, m in enumerate(measured, 1):
            rows.append([
                label, i, m["claims"], f"{m['seconds']:.2f} s", f"{m['claims_per_second']:.0f}",
                f"{m['p50'] * 1000:.1f} ms", f"{m['p99'] * 1000:.1f} ms",
                f"{m['floor_per_second']:.0f}", m["double_claims"], m["unclaimed"],
            ])
            cpu_rows.append([label, i, *(
                _ms(m["cpu"][phase].get(party)) for phase in ("claim", "floor")
                for party in ("server", "database", "clients")
            )])
    tables = [{
        "title": "Rounds",
        "header": ["database", "round", "claims", "wall time", "claims/s", "p50", "p99",
                   "floor req/s", "double claims", "left unclaimed"],
        "rows": rows,
    }, {
        "title": "CPU time per claim and per floor request (ms; server: the uvicorn process and "
                 "its workers; database: the backends serving the benchmark database; clients: "
                 "the 16 client threads)",
        "header": ["database", "round", "claim: server", "claim: database", "claim: clients",
                   "floor: server", "floor: database", "floor: clients"],
        "rows": cpu_rows,
    }]
    if admin_url:
        tables.append(_breakdown(admin_url, 200 if smoke else 2_000, rounds))
    return result(
        TITLE,
        15,
        f"{tasks:,} pending tasks with priorities 1-5 in one user's project; {AGENTS} agents "
        "(owned by that user) claim over HTTP at once (one thread and one keep-alive "
        "connection each) until nothing is left; the server is uvicorn in a separate process "
        "with one worker (and two, `orchestrator serve --workers 2`, in the second row). "
        "Claims/s is claims divided by the wall time from the first request to the last 204; "
        "latency is per request as the client sees it. Medians over rounds, each on a fresh "
        "database. The breakdown times each part of a claim in-process, one claim at a time.",
        metrics,
        notes=notes,
        tables=tables,
        rows=tasks,
    )


# -- where a claim's time goes --------------------------------------------------------------


def _breakdown(admin_url: str, claims: int, rounds: int) -> dict[str, Any]:
    """Milliseconds per claim for each part, before and after issue 15, in-process."""
    parts: dict[str, list[float]] = {}
    for _ in range(rounds):
        with _database("postgresql", admin_url) as url:
            token, agent_ids = _seed(url, 2 * claims)
            for name, value in _time_parts(url, token, agent_ids, claims).items():
                parts.setdefault(name, []).append(value)
    order = ["token check", "claim statement", "serialisation", "total"]
    return {
        "title": "Where a claim's time goes (PostgreSQL, in-process, ms per claim, median)",
        "header": ["path", *order],
        "rows": [
            [path, *(f"{median(parts[f'{path}: {part}']):.3f}" if f"{path}: {part}" in parts
                     else "— (in the statement)" for part in order)]
            for path in ("before", "after")
        ],
    }


def _time_parts(url: str, token: str, agent_ids: list[int], claims: int) -> dict[str, float]:
    from fastapi.security import HTTPAuthorizationCredentials
    from sqlalchemy.orm import Session

    from orchestrator.accounts import hash_token
    from orchestrator.api import deps
    from orchestrator.api.routes import agents
    from orchestrator.api.schemas import TaskRead

    db = deps.open_database(url)
    assert db.statements is not None
    loop = asyncio.new_event_loop()
    credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
    spent = {key: 0.0 for key in ("auth", "claim", "ser", "claim2", "ser2")}
    clock = time.perf_counter
    try:
        deps.authenticate(db, credentials)  # records the token's use: not timed below
        for i in range(claims):
            agent_id = agent_ids[i % len(agent_ids)]
            # Before: the token's query, then the claim through a session, and the task
            # validated by the route and again as FastAPI's response model.
            began = clock()
            user = deps.authenticate(db, credentials)
            authed = clock()
            with Session(db.writer, expire_on_commit=False) as session:
                session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
                row = session.execute(
                    agents.claim_statement("postgresql"),
                    {"claimer": agent_id, "owner": user.id, "project": None},
                ).first()
                session.commit()
            claimed = clock()
            task = TaskRead.model_validate(dict(row._mapping))
            TaskRead.model_validate(task.model_dump()).model_dump_json()
            done = clock()
            spent["auth"] += authed - began
            spent["claim"] += claimed - authed
            spent["ser"] += done - claimed
            # After: one precompiled statement checks the token and claims, sent on an async
            # connection (the server sends it from its event loop); serialised once.
            began = clock()
            sql, constants = agents._compiled_claim_by_token(db.auth, False)
            parameters = {**constants, "claimer": agent_id, "project": None,
                          "token_hash": hash_token(token)}
            row = loop.run_until_complete(db.statements.fetch_one(sql, parameters))
            claimed = clock()
            agents._task_response(row)
            done = clock()
            spent["claim2"] += claimed - began
            spent["ser2"] += done - claimed
    finally:
        loop.run_until_complete(db.aclose())
        loop.close()
    per = {key: value * 1000 / claims for key, value in spent.items()}
    return {
        "before: token check": per["auth"],
        "before: claim statement": per["claim"],
        "before: serialisation": per["ser"],
        "before: total": per["auth"] + per["claim"] + per["ser"],
        "after: claim statement": per["claim2"],
        "after: serialisation": per["ser2"],
        "after: total": per["claim2"] + per["ser2"],
    }


# -- one round ----------------------------------------------------------------------------


def _measure(dialect: str, admin_url: str | None, tasks: int, workers: int) -> dict[str, Any]:
    with _database(dialect, admin_url) as url:
        token, agent_ids = _seed(url, tasks)
        with serve_api(url, workers) as base:
            import httpx

            headers = {"Authorization": f"Bearer {token}"}
            clients = [httpx.Client(base_url=base, headers=headers, timeout=60)
                       for _ in range(AGENTS)]
            meter = _CpuMeter(_SERVERS[base], url)
            try:
                before = meter.read()
                floor = _floor(clients, tasks)
                between = meter.read()
                claimed, latencies, seconds, errors = _claim_all(clients, agent_ids)
                after = meter.read()
            finally:
                for client in clients:
                    client.close()
                meter.close()
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
            "cpu": {
                "claim": _CpuMeter.per(between, after, len(everything)),
                "floor": _CpuMeter.per(before, between, _floor_requests(tasks)),
            },
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


def _floor_requests(requests: int) -> int:
    return max(1, requests // AGENTS) * AGENTS


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


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


class _CpuMeter:
    """CPU seconds used so far by the server's processes, the database's backends for one
    database, and this process (the clients), read from /proc (Linux; None elsewhere)."""

    def __init__(self, server_pid: int, url: str) -> None:
        from sqlalchemy import text

        from orchestrator.db import create_engine

        self._server = server_pid
        self._engine = create_engine(url)
        self._query = text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._backends: dict[int, float] = {}

    def close(self) -> None:
        self._engine.dispose()

    def read(self) -> dict[str, float | None]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        reading: dict[str, float | None] = {"clients": usage.ru_utime + usage.ru_stime}
        if not Path("/proc/self/stat").exists():
            return reading
        reading["server"] = sum(self._cpu(pid) or 0.0 for pid in self._tree(self._server))
        if self._engine.dialect.name == "postgresql":
            with self._engine.connect() as connection:
                pids = connection.scalars(self._query).all()
            # A backend that exited keeps the CPU it used while it was seen.
            for pid in pids:
                used = self._cpu(pid)
                if used is not None:
                    self._backends[pid] = used
            reading["database"] = sum(self._backends.values())
        return reading

    @staticmethod
    def per(start: dict[str, float | None], end: dict[str, float | None],
            count: int) -> dict[str, float | None]:
        """Milliseconds of CPU per request for each party between two readings."""
        return {
            party: None if start.get(party) is None or end.get(party) is None
            else (end[party] - start[party]) * 1000 / count
            for party in end
        }

    def _cpu(self, pid: int) -> float | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / self._tick

    @staticmethod
    def _tree(root: int) -> list[int]:
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        found, todo = [], [root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found


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
def serve_api(url: str, workers: int = 1) -> Iterator[str]:
    """uvicorn serving the app on a free local port (`workers` processes); yields its URL."""
    port = _free_port()
    env = project_env(DATABASE_URL=url, ENVIRONMENT="development", AUTO_MIGRATE="false")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "orchestrator.api.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
         "--no-access-log", "--workers", str(workers)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    _SERVERS[base] = process.pid
    try:
        _wait_until_live(base, process)
        yield base
    finally:
        _SERVERS.pop(base, None)
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
