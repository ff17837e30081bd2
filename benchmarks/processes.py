"""Running the project's commands in child processes, with a clean environment, timed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.options import BIN, ROOT

# Variables the project reads; benchmark subprocesses get only what each benchmark sets.
_PROJECT_VARIABLES = (
    "ENVIRONMENT", "DATABASE_URL", "AUTO_MIGRATE", "BACKUP_DIR", "BACKUP_KEEP",
    "BACKUP_BEFORE_MIGRATE", "MIGRATION_LOCK_TIMEOUT", "DB_LOCK_TIMEOUT",
)



def project_env(**variables: str) -> dict[str, str]:
    """This process's environment without the project's settings, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if k not in _PROJECT_VARIABLES}
    env.update(variables)
    return env


def timed_run(cmd: Sequence[str], env: dict[str, str] | None = None, cwd: Path = ROOT,
              check: bool = True, timeout: float = 600) -> tuple[float, subprocess.CompletedProcess]:
    """Run a process to completion; (wall seconds from spawn to exit, the completed process)."""
    started = time.perf_counter()
    done = subprocess.run(list(cmd), env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    elapsed = time.perf_counter() - started
    if check and done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
    return elapsed, done


def orchestrator_cmd(*args: str) -> list[str]:
    """The installed `orchestrator` console script, as a user runs it."""
    return [str(BIN / "orchestrator"), *args]


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]
