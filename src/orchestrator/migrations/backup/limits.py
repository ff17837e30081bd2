"""How long backups and restores wait for other sessions, and how often they look.

Read at call time (`limits.BUSY_TIMEOUT`, not a copy taken at import), so that a test may
shorten a wait by setting the attribute here.
"""

from __future__ import annotations

# Seconds a backup or restore waits for a writer to finish its transaction.
BUSY_TIMEOUT = 30.0
# Seconds between two looks at a running tool or at the sessions in a restore's way.
POLL_SECONDS = 0.1
