"""The revision chain: its order, what `head`, `base`, an id, `+N`/`-N` and `START:END` name, and
what runs between two revisions.

Pure: no database, no I/O beyond the scripts Alembic's `ScriptDirectory` reads. The manager,
the validator and the CLI all ask it; whether the scripts form one line (one head, no fork) is
the manager's check, made before a `Chain` is built from them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.migrations.errors import UnknownRevisionError

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

# A relative revision: +N or -N steps from a starting revision.
RELATIVE = re.compile(r"^([+-])(\d+)$")


def is_relative(target: str) -> bool:
    """True for +N and -N, which count from a revision (the database's, or a range's start)."""
    return RELATIVE.match(target) is not None


def split_range(revision: str) -> tuple[str | None, str]:
    """`START:END` as (START, END); a lone revision as (None, revision). Either side may be
    empty (`:END`, `START:`): an empty START is None, an empty END is ''."""
    start, _, end = revision.rpartition(":")
    return start or None, end


def end_or_base(revision: str | None) -> str:
    """A revision as Alembic and our messages name it: None is `base`."""
    return revision or "base"


@dataclass(frozen=True)
class Chain:
    """Every revision id, oldest first (a line: one head)."""

    revisions: tuple[str, ...]

    @classmethod
    def from_scripts(cls, script: ScriptDirectory) -> Chain:
        """The chain of the scripts in `script`, oldest first."""
        return cls(tuple(reversed([rev.revision for rev in script.walk_revisions()])))

    def __iter__(self) -> Iterator[str]:
        return iter(self.revisions)

    def __len__(self) -> int:
        return len(self.revisions)

    def __contains__(self, revision: object) -> bool:
        return revision in self.revisions

    @property
    def head(self) -> str | None:
        """The newest revision (None when there is none)."""
        return self.revisions[-1] if self.revisions else None

    def position(self, revision: str | None) -> int:
        """0 for base, n for the n-th revision of the chain."""
        return 0 if revision is None else self.revisions.index(revision) + 1

    def applied(self, current: str | None) -> tuple[str, ...]:
        """The revisions a database at `current` has applied, oldest first."""
        return self.revisions[: self.position(current)]

    def before(self, revision: str) -> str | None:
        """The revision just before `revision` (None: base)."""
        position = self.position(revision)
        return self.revisions[position - 2] if position > 1 else None

    def between(self, lower: str | None, upper: str | None) -> tuple[str, ...]:
        """The revisions after `lower` up to `upper`, oldest first (empty unless lower < upper)."""
        return self.revisions[self.position(lower) : self.position(upper)]

    def upgrade_steps(self, current: str | None, target: str | None) -> tuple[str, ...]:
        """What an upgrade from `current` to `target` applies, in order."""
        return self.between(current, target)

    def downgrade_steps(self, current: str | None, target: str | None) -> tuple[str, ...]:
        """What a downgrade from `current` to `target` undoes, newest first."""
        return tuple(reversed(self.between(target, current)))

    def goes_down(self, start: str | None, end: str | None) -> bool:
        """True when going from `start` to `end` is a downgrade."""
        return self.position(start) > self.position(end)

    def resolve(self, target: str, current: str | None = None) -> str | None:
        """A revision id (None for base) from an id, a unique prefix, head, base, or +N/-N
        counted from `current`."""
        if target in ("head", "heads"):
            return self.head
        if target == "base":
            return None
        relative = RELATIVE.match(target)
        if relative:
            if current is not None and current not in self.revisions:
                raise UnknownRevisionError(
                    f"{target} counts from the database's revision {current}, which these "
                    "scripts do not have; give a revision id (`orchestrator db history`)"
                )
            step = int(relative.group(2)) * (1 if relative.group(1) == "+" else -1)
            position = self.position(current) + step
            if not 0 <= position <= len(self.revisions):
                raise UnknownRevisionError(
                    f"{target} goes past the {'head' if step > 0 else 'base'} from "
                    f"{current or 'base'}; see `orchestrator db history`"
                )
            return self.revisions[position - 1] if position else None
        matches = [rev for rev in self.revisions if rev == target] or [
            rev for rev in self.revisions if rev.startswith(target)
        ]
        if len(matches) != 1:
            known = ", ".join(self.revisions) or "none"
            raise UnknownRevisionError(
                f"unknown revision {target!r} (known: {known}, head, base); "
                "see `orchestrator db history`"
            )
        return matches[0]

    def resolve_range(self, start: str | None, end: str) -> tuple[str | None, str | None]:
        """(START, END) of `START:END` as revision ids; a relative END counts from START."""
        begin = self.resolve(start) if start else None
        return begin, self.resolve(end, begin)
