"""`orchestrator db rebase`: move one branch's migrations on top of the other line's.

Two branches made from 004 each add a 005; once merged, the chain forks (migrations/forks.py).
The fix is what `git rebase` does to commits: the scripts that exist only on this branch are
renumbered after the other line's head (file name, `revision`, `down_revision` and the
docstring's Revision ID / Revises), their content otherwise untouched.

Which line stays is decided by git: the scripts present on the branch this one is merged with
(`--onto`, by default the remote's default branch `origin/HEAD`, else `main`, else `master`), or
at its merge base with HEAD, stay; the rest move. Without git, `--keep REVISION` names the last
script that stays. Renumbered scripts are new revisions: the applied history of their old ids
is left as it was.

Nothing here prints or touches a database: the CLI asks `applied_moves()` whether the database
applied moved scripts under their old ids, and downgrades it with `old_line_scripts()`.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.migrations.errors import RebaseError
from orchestrator.migrations.forks import JOURNAL, ScriptRef, describe, read_refs
from orchestrator.migrations.history import checksum as file_checksum

_DEFAULT_BRANCHES = ("main", "master")
_DOC_FIELDS = re.compile(rb"^(?P<key>[ \t]*(?:Revision ID|Revises):)(?P<value>[^\r\n]*)",
                         re.MULTILINE)


@dataclass(frozen=True)
class Move:
    """One script renumbered: from its old file and ids to its new ones."""

    script: ScriptRef
    revision: str
    down_revision: str | None
    path: Path

    def describe(self) -> str:
        return (f"{self.script.name} -> {self.path.name}  (revision {self.script.revision} -> "
                f"{self.revision}, revises {self.down_revision or 'nothing'})")


@dataclass(frozen=True)
class RebasePlan:
    """Which scripts stay, how that was decided, and the moves that put the rest after them."""

    kept: tuple[ScriptRef, ...]
    moves: tuple[Move, ...]
    chosen_by: str

    @property
    def onto(self) -> str | None:
        """The revision the first moved script now follows."""
        return self.moves[0].down_revision


@dataclass(frozen=True)
class AppliedMoves:
    """Moved scripts a database applied under their old ids, oldest first, and the revision
    both lines share (where it goes back to)."""

    scripts: tuple[ScriptRef, ...]
    fork_point: str | None


def plan(versions: Path, *, keep: str | None = None, onto: str | None = None) -> RebasePlan | None:
    """The moves that make the scripts of `versions` one line; None when they are one already.

    `keep` (a revision id or a file name) keeps that script and its ancestors; otherwise git
    decides (`onto`: a branch or commit; by default the default branch)."""
    refs = read_refs(versions)
    if describe(refs) is None:
        return None
    for ref in refs:
        if ref.revision is None:
            raise RebaseError(f"{ref.name} does not state its revision and down_revision as plain "
                              "strings, so it cannot be renumbered; fix it first (`orchestrator "
                              "db validate` says what is wrong)")
    if keep is not None:
        kept, chosen_by = _kept_from(refs, keep)
    else:
        kept, chosen_by = _kept_by_git(versions, refs, onto)
    moving = [ref for ref in refs if ref not in kept]
    if not moving:
        raise RebaseError(f"every script is in {chosen_by}: the fork is there, not on this "
                          "branch; fix it on that branch, or name the last script that stays "
                          "with --keep")
    stays = describe(list(kept))
    if stays is not None:
        raise RebaseError(f"the scripts that stay ({chosen_by}) do not form one line themselves: "
                          f"{stays.problem}; fix that line first, or choose another with --keep")
    for ref in moving:
        if not ref.revision.isdigit():  # type: ignore[union-attr]
            raise RebaseError(f"{ref.name} has revision {ref.revision}, which is not a number: "
                              "only numbered revisions (001, 002, ...) can be renumbered")
    copies: dict[bytes, ScriptRef] = {}
    for ref in moving:
        # The same script under two ids: an earlier rebase's output beside the files that
        # `git checkout`/`git restore` brought back. Moving both would apply it twice.
        same = copies.setdefault(_renumbered(ref.path.read_bytes(), "", None), ref)
        if same is not ref:
            raise RebaseError(f"{ref.name} and {same.name} are the same migration under two "
                              "revision ids (an earlier `db rebase` undone with git checkout or "
                              "git restore leaves its renamed files behind); delete the one "
                              "that should not be there (`git clean` removes untracked ones), "
                              "then run `orchestrator db rebase` again")
    head = max(kept, key=lambda ref: ref.number).revision if kept else None
    width = max(len(ref.revision or "") for ref in refs)
    moves = []
    parent = head
    number = int(head) if head is not None else 0
    taken = {ref.path.name for ref in kept}
    # In number order, the file name breaking ties: each branch's own order is kept.
    for ref in sorted(moving, key=lambda ref: (ref.number, ref.name)):
        number += 1
        revision = f"{number:0{width}d}"
        prefix = f"{ref.revision}_"
        rest = ref.name[len(prefix):] if ref.name.startswith(prefix) else ref.name
        path = ref.path.with_name(f"{revision}_{rest}")
        if path.name in taken:
            raise RebaseError(f"{ref.name} would be renamed {path.name}, which another script "
                              "already has; rename one of them first")
        taken.add(path.name)
        moves.append(Move(ref, revision, parent, path))
        parent = revision
    # A script already in its place is no move (a fork point given to --keep, say).
    moves = [move for move in moves
             if (move.revision, move.path) != (move.script.revision, move.script.path)
             or (move.down_revision,) != (move.script.down_revisions or (None,))]
    return RebasePlan(tuple(kept), tuple(moves), chosen_by)


def apply(plan: RebasePlan) -> None:
    """Rewrite and rename the moved scripts. The new files are written aside first (stopped
    there, nothing changed), then a journal of the renames; from then on `resume()` finishes
    them if the command is stopped part way, so no script is lost."""
    versions = plan.moves[0].script.path.parent
    journal = versions / JOURNAL
    entries: list[tuple[str, str, str]] = []
    try:
        for move in plan.moves:
            text = _renumbered(move.script.path.read_bytes(), move.revision, move.down_revision)
            staged = move.path.with_name(f".{move.path.name}.rebase")
            entries.append((move.script.path.name, staged.name, move.path.name))
            staged.unlink(missing_ok=True)  # left by a run stopped here, maybe read-only
            staged.write_bytes(text)
            shutil.copymode(move.script.path, staged)
        written = journal.with_name(f"{JOURNAL}.tmp")
        written.write_text(json.dumps(entries))
        written.replace(journal)
    except BaseException:
        if not journal.exists():
            for _, staged_name, _ in entries:
                (versions / staged_name).unlink(missing_ok=True)
            journal.with_name(f"{JOURNAL}.tmp").unlink(missing_ok=True)
        raise
    resume(versions)


def resume(versions: Path) -> list[tuple[str, str]]:
    """Finish the renames of a rebase stopped after it wrote its journal: the (old, new) file
    names, or nothing when there was none. Safe to run again if stopped itself."""
    journal = versions / JOURNAL
    if not journal.exists():
        return []
    entries = [tuple(entry) for entry in json.loads(journal.read_text())]
    new_names = {new for _, _, new in entries}
    for old, _, _ in entries:
        if old not in new_names:  # a name that is also a new one is replaced below
            (versions / old).unlink(missing_ok=True)
    for _, staged, new in entries:
        if (versions / staged).exists():
            (versions / staged).replace(versions / new)
    journal.unlink()
    return [(old, new) for old, _, new in entries]


def applied_moves(
    plan: RebasePlan, current: str | None, checksums: Mapping[str, str]
) -> AppliedMoves | None:
    """The moved scripts a database at `current` applied under their old ids, or None when it
    is on the line that stays (or before the fork). `checksums` are those its history recorded
    for the scripts it applied (or stamped), by revision: they tell two scripts with one id
    apart, at `current` and below it."""
    moved = [move.script for move in plan.moves]
    line: list[ScriptRef] = []
    revision = current
    while revision is not None:
        ref = _applied_as(plan, moved, revision, checksums.get(revision), below=bool(line))
        if ref is None or ref not in moved:
            break
        line.append(ref)
        revision = ref.down_revisions[0] if ref.down_revisions else None
    if not line:
        return None
    return AppliedMoves(tuple(reversed(line)), revision)


def _applied_as(plan: RebasePlan, moved: list[ScriptRef], revision: str, checksum: str | None,
                below: bool) -> ScriptRef | None:
    """The script a database applied as `revision`, told by its recorded checksum when several
    claim the id."""
    claimants = [ref for ref in [*plan.kept, *moved] if ref.revision == revision]
    if len(claimants) < 2:
        return claimants[0] if claimants else None
    matching = [ref for ref in claimants if file_checksum(ref.path) == checksum]
    if len(matching) == 1:
        return matching[0]
    if below:  # no history of it: the line the database is on is this branch's
        return next((ref for ref in claimants if ref in moved), claimants[0])
    raise RebaseError(
        f"the database is at {revision}, which {_names(claimants)} all claim, and its "
        "history does not say which it applied; if it is this branch's, downgrade it "
        "from a checkout of this branch as it was before the merge (`orchestrator db "
        f"downgrade` to the revision before {revision}), then run `orchestrator db "
        "rebase` again")


def old_line_scripts(plan: RebasePlan, applied: AppliedMoves, script_dir: Path,
                     target: Path) -> Path:
    """A copy of the scripts folder at `target` holding the line the database is on, under
    the old ids: the kept scripts up to the fork point, then the moved scripts it applied. Their
    `downgrade()` runs from there, as it would have before the rebase."""
    shutil.copytree(script_dir, target, ignore=shutil.ignore_patterns("versions", "__pycache__"))
    versions = target / "versions"
    versions.mkdir()
    by_id = {ref.revision: ref for ref in plan.kept}
    revision = applied.fork_point
    line = list(applied.scripts)
    while revision is not None:
        ref = by_id[revision]
        line.append(ref)
        revision = ref.down_revisions[0] if ref.down_revisions else None
    for ref in line:
        shutil.copy2(ref.path, versions / ref.name)
    return target


# -- which line stays ----------------------------------------------------------------------


def _kept_from(refs: list[ScriptRef], keep: str) -> tuple[list[ScriptRef], str]:
    """The script `keep` names (a file name, with or without .py, or a revision id that one
    script has) and its ancestors."""
    named = [ref for ref in refs if keep in (ref.name, ref.path.stem)]
    if not named:
        named = [ref for ref in refs if ref.revision == keep]
    if not named:
        raise RebaseError(f"--keep {keep} names no migration script; give a revision id or a "
                          "file name from `ls` of the versions folder")
    if len(named) > 1:
        raise RebaseError(f"--keep {keep} names {_names(named)}; give the file name of the one "
                          f"that stays (e.g. --keep {named[0].name})")
    kept = [named[0]]
    while kept[-1].down_revisions:
        parent = kept[-1].down_revisions[0]
        candidates = [ref for ref in refs if ref.revision == parent]
        if len(candidates) != 1:
            owners = f"{_names(candidates)} both claim" if candidates else "no script has"
            raise RebaseError(f"{kept[-1].name} follows revision {parent}, which {owners}, so "
                              "--keep cannot tell its line apart; use git (--onto BRANCH), or "
                              "--keep a script below the fork")
        kept.append(candidates[0])
    return kept, f"--keep {keep} and the scripts before it"


def _kept_by_git(
    versions: Path, refs: list[ScriptRef], onto: str | None
) -> tuple[list[ScriptRef], str]:
    """The scripts present on `onto` (or at its merge base with HEAD): they stay."""
    if _git(versions, "rev-parse", "--show-toplevel") is None:
        raise RebaseError(f"{versions} is not in a git repository, so which line stays cannot be "
                          "told; name the last migration that stays: `orchestrator db rebase "
                          "--keep REVISION` (a revision id or a file name)")
    how = "--onto"
    if onto is None:
        onto, how = _default_branch(versions)
    commit = _git(versions, "rev-parse", "--verify", "--quiet", f"{onto}^{{commit}}")
    if commit is None:
        raise RebaseError(f"--onto {onto} is not a branch or commit of this repository; give the "
                          "branch this one was merged with (e.g. --onto main)")
    where = f"{onto} ({how})"
    head = _git(versions, "rev-parse", "HEAD")
    if commit == head:
        parents = (_git(versions, "rev-list", "--parents", "-n", "1", "HEAD") or "").split()
        if len(parents) < 3:
            raise RebaseError(f"HEAD is {onto} itself, which holds every script; run `orchestrator "
                              "db rebase` on the branch whose migrations should move, or name "
                              "the last migration that stays with --keep")
        # On the default branch right after merging the other: its first parent is the line
        # that was there before the merge.
        commit, where = parents[1], f"{onto} before its merge (HEAD^1, {how})"
    # What the merge base had stays too (unless `onto` deleted it, it is there anyway).
    base = _git(versions, "merge-base", "HEAD", commit) or commit
    names = _tracked(versions, commit) | _tracked(versions, base)
    return [ref for ref in refs if ref.name in names], f"the scripts on {where}"


def _default_branch(versions: Path) -> tuple[str, str]:
    remote = _git(versions, "symbolic-ref", "--quiet", "--short", "refs/remotes/origin/HEAD")
    if remote is not None:
        return remote, "the remote's default branch, origin/HEAD"
    for branch in _DEFAULT_BRANCHES:
        if _git(versions, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}") is not None:
            return branch, f"no origin/HEAD; the local {branch} branch"
    raise RebaseError("cannot tell which branch holds the other line (no origin/HEAD, main or "
                      "master); pass --onto BRANCH, or name the last migration that stays with "
                      "--keep REVISION")


def _tracked(versions: Path, commit: str) -> set[str]:
    """The names of the files in the versions folder at `commit`."""
    listed = _git(versions, "ls-tree", "--name-only", commit, "--", ".") or ""
    return {Path(line).name for line in listed.splitlines()}


def _git(folder: Path, *args: str) -> str | None:
    """`git ARGS` run in `folder`: its output, or None when it fails (or git is missing)."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              check=False)
    except FileNotFoundError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# -- rewriting a script --------------------------------------------------------------------


def _renumbered(source: bytes, revision: str, down_revision: str | None) -> bytes:
    """The script with its ids changed where the source states them: the `revision` and
    `down_revision` strings (found with `ast`, quotes kept) and the docstring's fields."""
    tree = ast.parse(source)
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    edits: list[tuple[int, int, bytes]] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target = node.target
        else:
            continue
        name = target.id if isinstance(target, ast.Name) else None
        if name not in ("revision", "down_revision"):
            continue
        value = node.value
        assert value.end_lineno is not None and value.end_col_offset is not None
        start = starts[value.lineno - 1] + value.col_offset
        end = starts[value.end_lineno - 1] + value.end_col_offset
        new = revision if name == "revision" else down_revision
        quote = source[start:start + 1] if source[start:start + 1] in (b"'", b'"') else b'"'
        edits.append((start, end, b"None" if new is None else quote + new.encode() + quote))
    if tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(
            getattr(tree.body[0], "value", None), ast.Constant):
        doc = tree.body[0]
        start, end = starts[doc.lineno - 1], starts[doc.end_lineno or doc.lineno]
        for field in _DOC_FIELDS.finditer(source, start, end):
            value = revision if field["key"].strip().startswith(b"Revision ID") else (
                down_revision or "")
            edits.append((field.start("value"), field.end("value"),
                          b" " + value.encode() if value else b""))
    for start, end, text in sorted(edits, reverse=True):
        source = source[:start] + text + source[end:]
    return source


def _names(refs: list[ScriptRef]) -> str:
    names = sorted(ref.name for ref in refs)
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)
