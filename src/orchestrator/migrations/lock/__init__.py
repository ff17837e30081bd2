"""One migrator at a time, across processes and hosts.

PostgreSQL: a session-level advisory lock on a dedicated connection. SQLite: an exclusive
`flock` on a file beside the database. Either way the operating system or the server releases
the lock when the holder dies, so a killed migrator never leaves a stale lock behind.

Waiting costs the holder nothing. A waiter never sits inside a blocking lock call on
PostgreSQL: that statement would hold a snapshot open, and `CREATE INDEX CONCURRENTLY`
(migration 003) waits for every such snapshot to end, so the holder would stall on its
waiters. Instead a waiter LISTENs on a channel that the holder NOTIFYs as it lets go, and sleeps
on its socket outside any transaction; on SQLite it probes the file for a shared lock, a system
call, every few milliseconds. Woken by a release, or every `RECHECK_SECONDS` in case the holder
died or already did the waiter's work, it asks `still_needed` and tries the lock again.

All of that waiting runs on a helper thread at the lowest CPU priority (nice 19; Linux sets it
per thread): when many replicas start at once on a small host, the ones waiting take almost no
CPU from the one migrating.

A held lock can still be lost: the server ends the lock's session (a DBA, a pooler, an idle
timeout, a failover), or a cleaner removes the lock file. So the lock's session is kept from the
server's idle timeouts and has TCP keepalives, and a `Watch` asks whether the lock is still held
before every commit and twice a second while a migration runs; once it is not, the running
statement is cancelled and nothing more is committed. That leaves the instant between the last
check and the commit, which a second guard closes: whoever commits holds it itself, so it cannot
be lost without the commit failing too. On PostgreSQL the migrating connection holds a second
advisory key (`MIGRATING_KEY`) for as long as it migrates, and a new holder waits for it; on
SQLite the new holder waits once for the database's write lock, which a step holds from its
first statement to its comm

Modules: `waiting` (waiting for a turn on a helper thread, whichever the lock), `sqlite` (the lock
file), `postgres` (the advisory locks and the session they live on), `watch` (asking whether a
held lock is still held while a migration runs).
"""

# What a lost lock raises, beside the lock (tests name it `lock.MigrationLockLost`).
from orchestrator.migrations.errors import MigrationLockLost
from orchestrator.migrations.lock.postgres import (
    ADVISORY_LOCK_KEY,
    KEEPALIVES,
    MIGRATING_KEY,
    PROTECT_SESSION_SQL,
    RELEASE_CHANNEL,
    advisory_lock,
    migrating,
    protect_new_session,
    protect_session,
)
from orchestrator.migrations.lock.sqlite import file_lock, file_lock_taken, lock_file_for
from orchestrator.migrations.lock.waiting import Notify, StillNeeded, holder_description
from orchestrator.migrations.lock.watch import Watch

__all__ = [
    "ADVISORY_LOCK_KEY",
    "KEEPALIVES",
    "MIGRATING_KEY",
    "MigrationLockLost",
    "PROTECT_SESSION_SQL",
    "RELEASE_CHANNEL",
    "Notify",
    "StillNeeded",
    "Watch",
    "advisory_lock",
    "file_lock",
    "file_lock_taken",
    "holder_description",
    "lock_file_for",
    "migrating",
    "protect_new_session",
    "protect_session",
]
