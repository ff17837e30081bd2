"""The manager's scripts: loading them (a script that cannot be loaded, or a forked chain,
reported as one line naming the file) and the revision chain they form."""

from __future__ import annotations

import re
import traceback
import warnings
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from alembic.script import ScriptDirectory

from orchestrator.migrations import forks
from orchestrator.migrations.chain import Chain
from orchestrator.migrations.errors import BrokenScriptError, ForkedChainError, MultipleHeadsError

if TYPE_CHECKING:
    from alembic.script import Script


class Scripts:
    """`MigrationManager`'s scripts folder (`config`'s script_location), loaded once."""

    @cached_property
    def script(self) -> ScriptDirectory:
        location = self.config.get_main_option("script_location")
        if not location or (":" not in location
                            and not (Path(location) / "env.py").is_file()):
            # Alembic would say "Path doesn't exist ... use the 'init' command" (or fail on an
            # empty one): this is a wrong path given, not a project to create.
            raise BrokenScriptError(f"{location or 'an empty path'} is not a migration scripts "
                                    "folder (it has no env.py); check the scripts folder given")
        return ScriptDirectory.from_config(self.config)

    def _reload_scripts(self) -> None:
        self.__dict__.pop("script", None)
        self.__dict__.pop("chain", None)
        self.__dict__.pop("_heads", None)

    @cached_property
    def _heads(self) -> tuple[str, ...]:
        """The scripts' heads, once every script is loaded and the chain is known to be one
        numbered line (migrations/forks.py): a script that cannot be loaded, or a fork left
        by two branches, is reported here as one line."""
        versions = Path(self.script.versions)
        if (versions / forks.JOURNAL).exists():
            raise ForkedChainError(forks.INTERRUPTED.format(folder=versions))
        # Alembic warns when two scripts claim one revision and keeps either; the fork is
        # reported instead, naming both files. Any other warning goes on as it came.
        with warnings.catch_warnings(record=True) as caught:
            warnings.filterwarnings("always", message=forks.DUPLICATE_WARNING, category=UserWarning)
            try:
                heads = tuple(self.script.get_heads())
            except Exception as exc:
                raise _broken_script(exc, Path(self.script.dir)) from exc
        duplicated = False
        for warning in caught:
            if re.match(forks.DUPLICATE_WARNING, str(warning.message)):
                duplicated = True
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                       warning.lineno, source=warning.source)
        if (duplicated or len(heads) > 1 or not forks.in_number_order(
                [rev.revision for rev in reversed(list(self.script.walk_revisions()))])):
            fork = forks.describe(forks.read_refs(Path(self.script.versions)))
            if fork is not None:
                raise ForkedChainError(str(fork))
            raise MultipleHeadsError(  # pragma: no cover - forks.describe names every fork
                f"the migration scripts have {len(heads)} heads ({', '.join(sorted(heads))}); "
                f"{forks.FIX}")
        return heads

    @cached_property
    def chain(self) -> Chain:
        """The scripts' revisions, oldest first (migrations/chain.py), once they are known
        to form one line (one head is enforced)."""
        self.get_head_revision()
        return Chain.from_scripts(self.script)

    def get_head_revision(self) -> str | None:
        """The newest revision in the scripts (None when there are none).

        Every command asks this first, and it loads every script: one that cannot be loaded
        is reported here, naming its file and line.
        """
        heads = self._heads
        return heads[0] if heads else None

    def _script_for(self, revision: str) -> Script:
        return self.script.get_revision(revision)

    def _script_path(self, revision: str | None) -> str | None:
        return self._script_for(revision).path if revision is not None else None


def _broken_script(exc: Exception, folder: Path) -> BrokenScriptError:
    """What went wrong loading the scripts of `folder`, as one line naming the file and line
    when a script raised (or does not parse), or what Alembic found wrong with the chain."""
    folder = folder.resolve()

    def in_folder(filename: str | None) -> bool:
        return filename is not None and Path(filename).resolve().is_relative_to(folder)

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if in_folder(f.filename)]
    if isinstance(exc, SyntaxError) and in_folder(exc.filename):
        where, line, reason = exc.filename, exc.lineno, exc.msg
    elif frames:
        where, line, reason = frames[-1].filename, frames[-1].lineno, str(exc).strip()
    else:
        # Alembic's own complaint: a parent no script has (a KeyError naming it), a cycle.
        return BrokenScriptError(
            f"the migration scripts in {folder} do not form a chain ({type(exc).__name__}: "
            f"{exc}); `orchestrator db validate` names the script at fault"
        )
    reason = reason.splitlines()[0] if reason else ""
    return BrokenScriptError(
        f"the migration script {where}, line {line}, cannot be loaded: {type(exc).__name__}: "
        f"{reason}; fix the script (every command loads all of them; --verbose shows the "
        "traceback)"
    )
