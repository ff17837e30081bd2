"""What the figures were measured on: the machine, the versions, the commit."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from pathlib import Path

from benchmarks.options import ROOT
from benchmarks.postgres import libpq_url, postgres_admin_url


def _code_version() -> str:
    """The commit measured (BENCH_CODE_COMMIT when run from an exported tree)."""
    if os.environ.get("BENCH_CODE_COMMIT"):
        return os.environ["BENCH_CODE_COMMIT"]
    try:
        done = subprocess.run(["git", "describe", "--always"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10)
        # The run itself rewrites docs/ (the plot): only changes elsewhere make the code dirty.
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                  ".", ":!docs"], cwd=ROOT, capture_output=True, text=True,
                                 timeout=10)
    except OSError:
        return "unknown"
    commit = done.stdout.strip() or "unknown"
    return f"{commit}-dirty" if changed.stdout.strip() else commit


def machine_info() -> dict[str, str]:
    import platform

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "sqlite": sqlite3.sqlite_version,
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    info["code"] = _code_version()
    with contextlib.suppress(Exception):
        import importlib.metadata as md

        for package in ("alembic", "sqlalchemy", "psycopg"):
            info[package] = md.version(package)
    with contextlib.suppress(Exception):
        url = postgres_admin_url()
        if url:
            import psycopg

            with psycopg.connect(libpq_url(url)) as connection:
                info["postgresql"] = connection.execute("SHOW server_version").fetchone()[0]
    return info
