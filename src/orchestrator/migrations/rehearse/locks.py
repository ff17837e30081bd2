"""PostgreSQL's table-level lock conflict table, and what each mode keeps other sessions from.

From the documentation's "Conflicting Lock Modes" table (explicit-locking.html). A plain
`SELECT` takes ACCESS SHARE and `INSERT`/`UPDATE`/`DELETE` take ROW EXCLUSIVE, so a mode blocks
reads when it conflicts with the first and writes when it conflicts with the second.
"""

from __future__ import annotations

MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)
_CONFLICTS: dict[str, frozenset[str]] = {
    "AccessShareLock": frozenset({"AccessExclusiveLock"}),
    "RowShareLock": frozenset({"ExclusiveLock", "AccessExclusiveLock"}),
    "RowExclusiveLock": frozenset({"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock",
                                   "AccessExclusiveLock"}),
    "ShareUpdateExclusiveLock": frozenset({"ShareUpdateExclusiveLock", "ShareLock",
                                           "ShareRowExclusiveLock", "ExclusiveLock",
                                           "AccessExclusiveLock"}),
    "ShareLock": frozenset({"RowExclusiveLock", "ShareUpdateExclusiveLock",
                            "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}),
    "ShareRowExclusiveLock": frozenset({"RowExclusiveLock", "ShareUpdateExclusiveLock",
                                        "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock",
                                        "AccessExclusiveLock"}),
    "ExclusiveLock": frozenset({"RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock",
                                "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock",
                                "AccessExclusiveLock"}),
    "AccessExclusiveLock": frozenset(MODES),
}
READS_WRITES, WRITES, NONE = "reads+writes", "writes", "none"
# Worst first, for sorting findings.
SEVERITY = {READS_WRITES: 2, WRITES: 1, NONE: 0}


def conflicts(held: str, wanted: str) -> bool:
    """Whether a lock in mode `wanted` must wait for one held in mode `held`."""
    return wanted in _CONFLICTS.get(held, frozenset())


def blocks(mode: str) -> str:
    """What a lock in `mode` on a table holds up: "reads+writes", "writes" or "none"."""
    if conflicts(mode, "AccessShareLock"):
        return READS_WRITES
    if conflicts(mode, "RowExclusiveLock"):
        return WRITES
    return NONE
