"""`--since-git REF`: the newest revision of the chain whose script is on a git branch, tag or
commit (what was merged, reviewed and validated there)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from orchestrator.migrations.environment import SCRIPT_DIRECTORY
from orchestrator.migrations.errors import GitRefError
from orchestrator.migrations.manager import MigrationManager
from orchestrator.migrations.validate.scripts import read_scripts


def newest_revision_on_git_ref(
    ref: str, database_url: str, script_location: str = SCRIPT_DIRECTORY
) -> str | None:
    """The newest revision of the chain whose script is present on git `ref` (None: none is).

    A script counts as present when its file exists at the same path on `ref`: what a branch
    such as `origin/main` has is what was merged, reviewed and validated there."""
    with MigrationManager(database_url, script_location=script_location) as manager:
        versions = Path(manager.script.versions).resolve()
        chain = manager.chain.revisions

    def git(*args: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(["git", "-C", str(versions), *args], capture_output=True,
                                  text=True, timeout=60)
        except FileNotFoundError:
            raise GitRefError(f"--since-git {ref}: git is not installed; install it or give "
                              "the revision with --since REV") from None

    top = git("rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise GitRefError(f"--since-git {ref}: {versions} is not in a git checkout; give the "
                          "revision with --since REV")
    if git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode != 0:
        raise GitRefError(f"--since-git {ref}: no such branch, tag or commit in "
                          f"{top.stdout.strip()}; fetch it first (`git fetch origin main`) or "
                          "name one that exists")
    listed = git("ls-tree", "-r", "--name-only", "--full-name", ref, "--", ".")
    root = Path(top.stdout.strip()).resolve()
    present = {(root / line).resolve() for line in listed.stdout.splitlines()}
    on_ref = {script.revision for script in read_scripts(versions) if script.path.resolve() in present}
    found = [revision for revision in chain if revision in on_ref]
    return found[-1] if found else None
