"""What the rules look at, computed once and on demand: the scripts, the chain, the linter's
findings, the live database's status, and the scratch database climbed to head."""

from __future__ import annotations

import contextlib
from functools import cached_property
from pathlib import Path

from sqlalchemy import MetaData

from orchestrator.db import mask_url
from orchestrator.migrations import forks, lint
from orchestrator.migrations.errors import DatabaseUnreachableError, UnknownRevisionError
from orchestrator.migrations.manager import MigrationManager
from orchestrator.migrations.scratch import DatabaseNotCreated, scratch_database
from orchestrator.migrations.validate.chain import chain_findings
from orchestrator.migrations.validate.report import ERROR, WARNING, Finding, Progress, Skip
from orchestrator.migrations.validate.roundtrip import Scratch
from orchestrator.migrations.validate.schema import SchemaReader
from orchestrator.migrations.validate.scripts import ScriptFile, read_scripts
from orchestrator.models import Base


# The scratch database's name (`orchestrator_validate_<random>`) or folder's
# (`orchestrator-validate-…`): a validation killed with SIGKILL leaves one, which the next
# validation drops (runner.validate).
SCRATCH_PREFIX = "orchestrator_validate"


class Context:
    """What the rules look at, computed once and on demand."""

    def __init__(
        self,
        database_url: str,
        script_location: str,
        strict: bool,
        metadata: MetaData | None,
        since: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.database_url = database_url
        self.script_location = script_location
        self.strict = strict
        self.since = since
        self.progress = progress
        self._metadata = metadata
        self._cleanup = contextlib.ExitStack()
        self._scratch: Scratch | Skip | None = None
        self._steps = (0, 0)
        self.schema_reader = SchemaReader()

    def close(self) -> None:
        self._cleanup.close()

    @cached_property
    def manager(self) -> MigrationManager:
        manager = MigrationManager(self.database_url, script_location=self.script_location)
        self._cleanup.callback(manager.close)
        return manager

    @cached_property
    def scripts(self) -> list[ScriptFile]:
        return read_scripts(Path(self.manager.script.versions))

    @cached_property
    def metadata(self) -> MetaData:
        if self._metadata is not None:
            return self._metadata
        return Base.metadata

    @cached_property
    def chain_findings(self) -> dict[str, list[Finding]]:
        """MIG001 and MIG002 findings, computed together from the scripts' own text."""
        return chain_findings(self.scripts)

    @cached_property
    def fork(self) -> forks.Fork | None:
        """Where branches that each added migrations left the numbered chain forked."""
        return forks.describe(forks.read_refs(Path(self.manager.script.versions)))

    def require_chain(self) -> None:
        if self.chain_findings["MIG001"] or self.chain_findings["MIG002"] or self.fork:
            raise Skip("the scripts do not form one complete chain in number order (see MIG001, "
                       "MIG002, MIG023)")

    @cached_property
    def chain(self) -> tuple[str, ...]:
        return self.manager.chain.revisions

    @cached_property
    def since_position(self) -> int:
        """How many revisions, from the first, `since` leaves to the chain rules (0: none)."""
        if self.since is None:
            return 0
        self.require_chain()
        if self.since not in self.chain:
            raise UnknownRevisionError(
                f"--since {self.since}: no such revision in {self.script_location}; give one "
                "that `orchestrator db history` lists"
            )
        return self.chain.index(self.since) + 1

    @cached_property
    def lint(self) -> list[Finding]:
        """The linter's findings for every revision (orchestrator.migrations.lint); with
        `since`, for the revisions after it (the linter still reads the older ones' upgrade
        SQL: what they created decides whether a later change is dangerous)."""
        self.require_chain()
        return [
            Finding(f.code, f.name, self.severity(), f.message, f.fix, f.file, f.line)
            for f in lint.lint(self.manager.script, self.chain, self.since_position)
        ]

    def script_for(self, revision: str) -> ScriptFile:
        return next(s for s in self.scripts if s.revision == revision)

    def live_status(self):
        """The live database's status, or Skip when it cannot be read."""
        try:
            status = self.manager.status()
        except DatabaseUnreachableError as exc:
            raise Skip(f"no database to compare with: {exc}") from None
        if not status.database_exists:
            raise Skip(f"the database {self.manager.masked_url} does not exist yet")
        return status

    @property
    def scratch(self) -> Scratch:
        """A scratch database migrated to head one step at a time (Skip when it cannot be)."""
        self.require_chain()
        if isinstance(self._scratch, Skip):
            # Tried once already: several rules need it, one unreachable server is enough.
            raise Skip(str(self._scratch))
        if self._scratch is None:
            stops = self._stops()
            try:
                url = self._cleanup.enter_context(
                    scratch_database(self.database_url, SCRATCH_PREFIX))
            except DatabaseNotCreated as exc:
                self._scratch = Skip(f"cannot create a scratch database beside "
                                     f"{mask_url(self.database_url)}: {exc}")
                raise self._scratch from None
            self._scratch = Scratch(url, self)
            self._cleanup.callback(self._scratch.close)
            round_trip = len(self.chain) - self.since_position
            self._steps = (0, len(self.chain) + 3 * round_trip)
            self._scratch.climb(stops)
        return self._scratch

    def _stops(self) -> set[int]:
        """Where the climb takes a snapshot: every position the round trip compares with,
        and the live database's (for the drift rule)."""
        stops = set(range(self.since_position, len(self.chain) + 1))
        if self.since_position:
            with contextlib.suppress(Skip):
                status = self.live_status()
                if not (status.ahead or status.unversioned):
                    stops.add(self.manager.chain.position(status.current))
        return stops

    def steps_done(self, count: int) -> None:
        """`count` more migration steps ran on the scratch database."""
        done, total = self._steps
        self._steps = (done + count, total)
        if self.progress is not None:
            self.progress.step(done + count, total)

    def severity(self) -> str:
        return ERROR if self.strict else WARNING

