"""Where the numbered chain of migrations forks: what two branches that each ran `db create`
leave behind once they are merged.

Revision ids are numbers (001, 002, ...), so two branches made from 004 both add a 005. After
the merge the scripts hold two files with revision 005 (Alembic keeps one of them and warns), or
two scripts revising the same parent, or a script whose `down_revision` is not the script
before it in number order. Every command that loads the scripts, and `db validate` (MIG023),
reports each of these with one line naming the files, and `orchestrator db rebase` fixes them.

Pure: the scripts are read with `ast`, never imported, so a fork is described the same way
whether Alembic can load it or not.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

FIX = (
    "run `orchestrator db rebase` to renumber this branch's migrations after the other "
    "line's (docs/migrations.md, \"Working on a team\")"
)
# Written by `db rebase` once its renumbered scripts are staged, removed when they are in place:
# while it exists the versions folder is half renamed (rebase.resume() finishes it).
JOURNAL = ".rebase-journal"
INTERRUPTED = (
    "an interrupted `orchestrator db rebase` left its renames unfinished (the moved migrations "
    "are staged in {folder} as .NNN_name.py.rebase); run `orchestrator db rebase` to finish them"
)
# Alembic's warning when two scripts claim the same revision; the fork is reported instead.
DUPLICATE_WARNING = r"Revision \S+ is present more than once"
_NUMERIC = re.compile(r"^\d+$")


@dataclass(frozen=True)
class ScriptRef:
    """A revision script as its source states it: file, revision and parents."""

    path: Path
    revision: str | None
    down_revisions: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def number(self) -> int:
        return int(self.revision or "")


def read_refs(versions: Path) -> list[ScriptRef]:
    """Every script of a versions folder (as Alembic finds them), by file name. A script that
    does not parse, or states its ids other than as plain strings, has no revision here:
    loading it fails on its own, with its own message."""
    refs = []
    for path in sorted(versions.glob("*.py")):
        if path.name == "__init__.py" or path.name.startswith(".#"):
            continue
        refs.append(_read(path))
    return refs


def _read(path: Path) -> ScriptRef:
    try:
        # From bytes, as compile() reads a file: the coding line and a byte-order mark count.
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
        return ScriptRef(path, None, ())
    values: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name):
            values.setdefault(target.id, value)
    revision = _string(values.get("revision"))
    parents = values.get("down_revision")
    if parents is None or isinstance(parents, ast.Constant) and parents.value is None:
        down: tuple[str | None, ...] = ()
    elif isinstance(parents, (ast.Tuple, ast.List)):
        down = tuple(_string(element) for element in parents.elts)
    else:
        down = (_string(parents),)
    if revision is None or None in down:
        return ScriptRef(path, None, ())
    return ScriptRef(path, revision, down)  # type: ignore[arg-type]


def _string(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def in_number_order(chain: list[str]) -> bool:
    """Whether a linear chain of ids (oldest first) counts up, when every id is a number."""
    if not all(_NUMERIC.match(revision) for revision in chain):
        return True
    numbers = [int(revision) for revision in chain]
    return numbers == sorted(set(numbers))


@dataclass(frozen=True)
class Fork:
    """What is wrong with the chain, and the scripts involved."""

    problem: str
    paths: tuple[Path, ...]

    def __str__(self) -> str:
        return f"{self.problem}; {FIX}"


def describe(refs: list[ScriptRef]) -> Fork | None:
    """Where the chain forks (its `str` is one line naming the scripts and the command that
    fixes it), or None when the scripts form one line in number order."""
    refs = [ref for ref in refs if ref.revision is not None]
    by_id: dict[str, list[ScriptRef]] = defaultdict(list)
    for ref in refs:
        by_id[ref.revision].append(ref)  # type: ignore[index]
    duplicated = [group for group in by_id.values() if len(group) > 1]
    if duplicated:
        claims = "; ".join(
            f"{_names(group)} {'both' if len(group) == 2 else 'all'} have revision "
            f"{group[0].revision}"
            for group in duplicated
        )
        return Fork(f"the migration scripts {claims} (branches made from the same revision "
                    "each added one)", _paths(ref for group in duplicated for ref in group))
    children: dict[str | None, list[ScriptRef]] = defaultdict(list)
    for ref in refs:
        for parent in ref.down_revisions or (None,):
            children[parent].append(ref)
    for parent, group in sorted(children.items(), key=lambda item: _sort_key(item[0])):
        if len(group) > 1:
            what = f"revise {parent}" if parent else "start the history (revise nothing)"
            return Fork(f"the migration scripts {_names(group)} "
                        f"{'both' if len(group) == 2 else 'all'} {what}, so the chain forks "
                        "there", _paths(group))
    # A parent no script has is another problem (`db validate`'s MIG002), not an order.
    complete = all(parent in by_id for ref in refs for parent in ref.down_revisions)
    if complete and all(_NUMERIC.match(ref.revision or "") for ref in refs):
        ordered = sorted(refs, key=lambda ref: ref.number)
        for before, ref in zip([None, *ordered], ordered, strict=False):
            expected = (before.revision,) if before is not None else ()
            if ref.down_revisions != expected:
                revises = ", ".join(ref.down_revisions) or "nothing"
                previous = (f"the script before it in number order is {before.name}"
                            if before is not None else "it is the first in number order")
                return Fork(f"the migration script {ref.name} revises {revises}, but {previous}",
                            _paths([ref] if before is None else [before, ref]))
    return None


def _paths(refs) -> tuple[Path, ...]:
    return tuple(sorted({ref.path for ref in refs}))


def _names(group: list[ScriptRef]) -> str:
    names = sorted(ref.name for ref in group)
    return ", ".join(names[:-1]) + f" and {names[-1]}"


def _sort_key(revision: str | None) -> tuple[int, int, str]:
    if revision is None:
        return (0, 0, "")
    return (1, int(revision), revision) if _NUMERIC.match(revision) else (2, 0, revision)
