"""The round trip on a scratch database: the migrations climbed to head one step at a time
(snapshots on the way, the models compared at the top), then each revision down, up and down
again, every step through Alembic and the scripts' own env.py as `db upgrade` runs it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import RevisionStep
from sqlalchemy import MetaData
from sqlalchemy.pool import NullPool

from orchestrator.db import create_engine
from orchestrator.migrations.environment import include_object, running_with
from orchestrator.migrations.errors import MigrationError, MigrationFailedError
from orchestrator.migrations.manager import MigrationManager, alembic_config
from orchestrator.migrations.manager.failures import is_interrupted
from orchestrator.migrations.validate.report import ERROR, Finding
from orchestrator.migrations.validate.schema import SchemaReader, diff_schemas
from orchestrator.migrations.validate.scripts import ScriptFile


class Context(Protocol):
    """What a scratch run needs of the validator's Context (context.py)."""

    script_location: str
    chain: tuple[str, ...]
    manager: MigrationManager
    metadata: MetaData
    schema_reader: SchemaReader
    script_for: Callable[[str], ScriptFile]
    # `count` more migration steps ran on the scratch database.
    steps_done: Callable[[int], None]


class _StepFailed(Exception):
    """A scratch step failed: which revision, which way, and why, as `db upgrade` or
    `db downgrade` would have said it (not where that left the scratch database)."""

    def __init__(self, revision: str, upgrading: bool, error: MigrationError) -> None:
        self.why = error.failure if isinstance(error, MigrationFailedError) else str(error)
        super().__init__(self.why)
        self.revision = revision
        self.upgrading = upgrading


class _Different(Exception):
    """A round-trip step left another schema than the one first built there."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message)
        self.finding = finding


class Scratch:
    """The migrations run on an empty database: up one step at a time, then down and up again.

    Every step runs through Alembic and the scripts' own env.py, as `db upgrade` runs it (one
    transaction per revision), on one connection held for the whole validation, with the
    scripts Alembic loaded once for every rule: a step costs the step, not a reload of the
    chain and a new connection.
    """

    def __init__(self, url: str, ctx: Context) -> None:
        self.url = url
        self.ctx = ctx
        # Names a failed step as `db upgrade` and `db downgrade` would.
        self.manager = MigrationManager(url, script_location=ctx.script_location)
        self.script = ctx.manager.script
        self.config = alembic_config(url, script_location=ctx.script_location,
                                     db_lock_timeout=self.manager.db_lock_timeout)
        self.reader = ctx.schema_reader
        # snapshots[n]: the schema after the n-th revision (0: base), at the positions asked for.
        self.snapshots: dict[int, dict[str, dict]] = {}
        # The position the climb reached (revisions applied without error).
        self.reached = 0
        self.failed: Finding | None = None
        self.model_differences: list[str] = []
        self._engine = create_engine(url, poolclass=NullPool)
        self.connection = self._engine.connect()
        # The database is thrown away afterwards: no flush to disk at each of its commits, and
        # (SQLite) no journal file created and deleted at each step.
        if self.connection.dialect.name == "sqlite":
            driver = self.connection.connection.driver_connection
            driver.execute("PRAGMA synchronous=OFF")
            driver.execute("PRAGMA journal_mode=MEMORY")
        else:
            self.connection.exec_driver_sql("SET synchronous_commit = off")
            self.connection.commit()
        self.reader.watch(self.connection)

    def close(self) -> None:
        self.connection.close()
        self._engine.dispose()
        self.manager.close()

    def snapshot(self) -> dict[str, dict]:
        """The schema now, outside a migration run."""
        try:
            return self.reader.snapshot(self.connection)
        finally:
            self.connection.rollback()

    def climb(self, stops: set[int]) -> None:
        """Up to head, one revision at a time, with a snapshot at each position in `stops`."""
        chain = self.ctx.chain
        if 0 in stops:
            self.snapshots[0] = self.snapshot()

        def applied(index: int) -> None:
            self.reached = index + 1
            if self.reached in stops:
                # In the step's transaction, on its connection: what the step built.
                self.snapshots[self.reached] = self.reader.snapshot(self.connection)

        try:
            self._run([(revision, True) for revision in chain], applied)
        except _StepFailed as failed:
            self.failed = self._finding(failed.revision, "upgrade", f"upgrade fails on a "
                                        f"fresh database: {failed.why}", "fix upgrade() so "
                                        "that it runs from the previous revision's schema")
            return
        self.model_differences = self._compare_models()

    def round_trip(self, lowest: int = 0) -> list[Finding]:
        """From head down to the revision after position `lowest`, each revision: down, up
        again, and down (pytest-alembic's up/down consistency), comparing the schema with the
        one first built at every stop."""
        if self.failed is not None:
            return [self.failed]
        chain = self.ctx.chain
        positions = []
        for position in range(len(chain), lowest, -1):
            if self.ctx.script_for(chain[position - 1]).irreversible:
                break  # downgrade refuses to cross it, by design
            positions.append(position)
        steps = [(chain[p - 1], upgrading) for p in positions for upgrading in (False, True, False)]

        def applied(index: int) -> None:
            position, phase = positions[index // 3], index % 3
            revision = chain[position - 1]
            below = chain[position - 2] if position > 1 else "base"
            if phase == 2:
                return
            differences = diff_schemas(self.snapshots[position - 1 + phase],
                                       self.reader.snapshot(self.connection))
            if not differences:
                return
            if phase == 0:
                raise _Different(self._finding(
                    revision, "downgrade",
                    f"downgrade does not restore the schema of {below}: " + "; ".join(differences),
                    "make downgrade() undo exactly what upgrade() does"))
            raise _Different(self._finding(
                revision, "upgrade",
                "upgrading again after its downgrade gives another schema: "
                + "; ".join(differences),
                "make upgrade() depend only on the previous revision's schema"))

        try:
            self._run(steps, applied)
        except _Different as different:
            return [different.finding]
        except _StepFailed as failed:
            if failed.upgrading:
                return [self._finding(failed.revision, "upgrade", f"upgrade fails the second "
                                      f"time, after its downgrade: {failed.why}", "make "
                                      "downgrade() remove everything upgrade() adds, data "
                                      "included")]
            return [self._finding(failed.revision, "downgrade", f"downgrade fails: "
                                  f"{failed.why}", "fix downgrade() so that it runs from "
                                  "this revision's schema")]
        return []

    def _run(self, steps: list[tuple[str, bool]], applied: Callable[[int], None]) -> None:
        """Run `steps` ((revision, upgrading), in order) in one Alembic run through the scripts'
        env.py, each in its own transaction as `db upgrade` runs them; `applied(i)` is called in
        step i's transaction once the step is done (raising stops the run, the step rolled
        back)."""
        revision_map = self.script.revision_map
        plan = [_Step(revision_map, self.script.get_revision(revision), upgrading)
                for revision, upgrading in steps]
        done = 0

        def step_done(**_: Any) -> None:
            nonlocal done
            index = done
            done += 1
            self.ctx.steps_done(1)
            applied(index)

        try:
            with running_with(self.config, connection=self.connection,
                              on_version_apply=step_done), \
                    EnvironmentContext(self.config, self.script, fn=lambda _heads, _ctx: plan,
                                       as_sql=False, starting_rev=None, destination_rev=None):
                self.script.run_env()
        except _Different:
            self._end_transaction()
            raise
        except Exception as exc:
            self._end_transaction()
            if is_interrupted(exc):
                raise KeyboardInterrupt from exc  # not the migration's failure
            # A step fails before it is counted: the first one not done.
            revision, upgrading = steps[min(done, len(steps) - 1)]
            raise _StepFailed(revision, upgrading,
                              self.manager.step_failure(exc, revision, upgrading)) from exc

    def _end_transaction(self) -> None:
        self.connection.rollback()  # nothing to do when Alembic already rolled the step back

    def _finding(self, revision: str, function: str, message: str, fix: str) -> Finding:
        script = self.ctx.script_for(revision)
        node = script.function(function)
        return Finding("MIG008", "round-trip", ERROR, f"revision {revision}: {message}", fix,
                       str(script.path), node.lineno if node else None)

    def _compare_models(self) -> list[str]:
        try:
            context = MigrationContext.configure(
                self.connection,
                opts={"compare_type": True, "include_object": include_object,
                      "target_metadata": self.ctx.metadata},
            )
            differences = compare_metadata(context, self.ctx.metadata)
            return [describe_diff(diff) for diff in _flatten(differences)]
        finally:
            self.connection.rollback()


class _Step(RevisionStep):
    """Alembic's migration step, without its walk down the whole chain at each downgrade."""

    def _unmerge_to_revisions(self, heads: set[str]) -> tuple[str, ...]:
        # Alembic takes, of the revisions a downgrade goes to, those that are not an
        # ancestor of another one, listing every ancestor of each (the whole chain below):
        # a step to one revision, from the only head, goes to that revision. Once per
        # downgrade, that walk made the round trip's cost grow with the square of the chain.
        # (The chain the validator walks is a line; a merge keeps Alembic's way.)
        linear = len(self.to_revisions) == 1 and not set(heads) - {self.revision.revision}
        return tuple(self.to_revisions) if linear else super()._unmerge_to_revisions(heads)


def _flatten(diffs: list) -> Iterator[tuple]:
    for diff in diffs:
        if isinstance(diff, list):  # column modifications come grouped
            yield from diff
        else:
            yield diff


def describe_diff(diff: tuple) -> str:
    """Autogenerate's tuples, in words."""
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        where = "in the models only" if kind == "add_table" else "in the migrations only"
        return f"table {diff[1].name} is {where}"
    if kind in ("add_column", "remove_column"):
        where = "in the models only" if kind == "add_column" else "in the migrations only"
        return f"column {diff[2]}.{diff[3].name} is {where}"
    if kind in ("add_index", "remove_index", "add_constraint", "remove_constraint",
                "add_fk", "remove_fk"):
        obj = diff[1]
        where = "in the models only" if kind.startswith("add") else "in the migrations only"
        table = getattr(getattr(obj, "table", None), "name", None) or getattr(obj, "parent", None)
        return f"{kind.split('_', 1)[1]} {obj.name} on {table} is {where}"
    if kind.startswith("modify_"):
        _, _schema, table, column, _info, migrations, models = diff
        return (f"{kind.removeprefix('modify_')} of {table}.{column}: the migrations give "
                f"{migrations}, the models {models}")
    return str(diff)  # pragma: no cover - autogenerate kinds not produced by these models
