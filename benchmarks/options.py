"""Where things are, how big the data is, and the run's options (`Options`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Built databases are cached here between runs (git-ignored).
DATA = Path(__file__).resolve().parent / ".data"
BIN = Path(sys.executable).parent
VERSIONS = ROOT / "src" / "orchestrator" / "migrations" / "alembic" / "versions"

DEFAULT_ROWS = 1_000_000
SMOKE_ROWS = 2_000
# The five indexes revision 003 builds, as plain SQL (the naive migration and the reference).
TASK_INDEXES = {
    "ix_tasks_status": "status",
    "ix_tasks_priority_level": "priority_level",
    "ix_tasks_project_id": "project_id",
    "ix_tasks_agent_id": "agent_id",
    "ix_tasks_status_priority_created": "status, priority_level, created_at",
}


@dataclass(frozen=True)
class Options:
    """How big and how often: the full run, or `--smoke`'s tiny one."""

    smoke: bool = False
    rows: int = DEFAULT_ROWS
    # Scratch files of the run (deleted afterwards).
    workdir: Path = Path("/tmp")
    # Where plots go (docs/ for the full run, the scratch folder for --smoke).
    plot_dir: Path = DOCS

    def repeats(self, full: int, smoke: int = 1) -> int:
        return smoke if self.smoke else full
