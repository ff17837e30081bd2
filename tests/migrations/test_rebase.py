"""Two branches, one chain: teammates who both ran `db create` from the same head, merged with
real git. Every command names the fork in one line; `orchestrator db rebase` renumbers this
branch's migrations after the other line's, and the result upgrades, validates and round-trips.

The scenarios are built in temporary git repositories holding a copy of the project's scripts
folder, so they hold whatever the project's head is.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

from orchestrator.db import mask_url
from orchestrator.migrations import ForkedChainError, MigrationManager
from orchestrator.migrations import rebase as rebasing
from orchestrator.migrations.validate import validate
from orchestrator.migrations.forks import ScriptRef, describe, in_number_order, read_refs
from tests.fixtures import PROJECT_SCRIPTS, cli_argv, command_runner, head_of
from tests.schema import scalar

_GIT_IDENTITY = ("-c", "user.name=Teammate", "-c", "user.email=teammate@example.com",
                 "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main")


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *_GIT_IDENTITY, "-C", str(repo), *args], capture_output=True,
                          text=True, check=True)
    return done.stdout.strip()


class Team:
    """A repository with the project's migrations on main, and teammates' branches."""

    def __init__(self, root: Path, run) -> None:
        self.root = root
        self.scripts = root / "migrations"
        self.run = run
        self.base = head_of(self.scripts)

    @property
    def versions(self) -> Path:
        return self.scripts / "versions"

    def names(self) -> list[str]:
        return sorted(path.name for path in self.versions.glob("*.py"))

    def number(self, offset: int) -> str:
        """The id `offset` places after the project's head."""
        return f"{int(self.base) + offset:03d}"

    def url(self, who: str) -> str:
        return f"sqlite:///{self.root.parent / who}.db"

    def branch(self, name: str, *tables: str, start: str = "main") -> list[str]:
        """A branch from `start` where a teammate runs `db create` once per table (with their
        own database at head first, as `db create` asks); returns the files made."""
        git(self.root, "checkout", "-q", "-b", name, start)
        made = []
        for table in tables:
            assert self.run("db", "upgrade", "--database-url", self.url(name)).returncode == 0
            created = self.run("db", "create", "--empty", "-m", f"add {table}",
                               "--database-url", self.url(name))
            assert created.returncode == 0, created.stderr
            path = next(self.versions.glob(f"*_add_{table}.py"))
            write_table(path, table)
            made.append(path.name)
        git(self.root, "add", "-A")
        git(self.root, "commit", "-q", "-m", f"{name}: add {', '.join(tables)}")
        git(self.root, "checkout", "-q", "main")
        return made

    def merge(self, into: str, other: str) -> None:
        git(self.root, "checkout", "-q", into)
        git(self.root, "merge", "-q", "--no-edit", other)


def write_table(path: Path, table: str) -> None:
    text = path.read_text()
    text = text.replace("def upgrade() -> None:\n    pass", (
        "def upgrade() -> None:\n"
        f"    op.create_table({table!r}, sa.Column('id', sa.Integer(), primary_key=True))"), 1)
    text = text.replace("def downgrade() -> None:\n    pass",
                        f"def downgrade() -> None:\n    op.drop_table({table!r})", 1)
    path.write_text(text)


@pytest.fixture
def team(tmp_path, monkeypatch, capsys) -> Team:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(PROJECT_SCRIPTS, root / "migrations",
                    ignore=shutil.ignore_patterns("__pycache__"))
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "the project's migrations")
    real = MigrationManager.from_settings.__func__

    def from_settings(cls, settings, **options):
        return real(cls, settings, script_location=str(root / "migrations"), **options)

    monkeypatch.setattr(MigrationManager, "from_settings", classmethod(from_settings))
    return Team(root, command_runner(monkeypatch, capsys))


@pytest.fixture
def forked(team) -> Team:
    """Alice and Bob each added the next migration from main's head; Alice's was merged into
    main first, and Bob merged main into his branch."""
    team.branch("alice", "notes")
    team.branch("bob", "tags")
    team.merge("main", "alice")
    team.merge("bob", "main")
    return team


def _applies(url: str, scripts: Path) -> list[str]:
    with MigrationManager(url, script_location=str(scripts)) as manager:
        return manager.upgrade()


def _models_with(*tables: str):
    """The project's models, and the tables the teammates' migrations add."""
    from sqlalchemy import Column, Integer, MetaData, Table

    from orchestrator.models import Base

    metadata = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(metadata)
    for name in tables:
        Table(name, metadata, Column("id", Integer, primary_key=True))
    return metadata


def _tables(url: str) -> set[str]:
    from sqlalchemy import inspect

    from orchestrator.db import create_engine

    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


# -- detection ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ("db", "status"), ("db", "check"), ("db", "current"), ("db", "history"), ("db", "upgrade"),
    ("db", "upgrade", "--sql"), ("db", "downgrade", "-1"), ("db", "stamp", "head"),
    ("db", "show", "head"), ("db", "create", "--empty", "-m", "more"),
    ("users", "create", "--email", "a@example.com", "--name", "A"), ("serve", "--port", "1"),
], ids=" ".join)
def test_every_command_names_both_files_and_the_fix(forked, command):
    new = forked.number(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw Alembic warning reaches the user
        result = forked.run(*command, "--database-url", forked.url("bob"))
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"Error: the migration scripts {new}_add_notes.py and {new}_add_tags.py both have "
        f"revision {new} (branches made from the same revision each added one); run "
        "`orchestrator db rebase` to renumber this branch's migrations after the other line's "
        "(docs/migrations.md, \"Working on a team\")\n")
    assert result.stdout == ""
    assert forked.names()[-2:] == [f"{new}_add_notes.py", f"{new}_add_tags.py"]  # no file made


def test_a_new_process_prints_the_one_line_and_no_warning(forked):
    result = subprocess.run(cli_argv(forked.scripts, "db", "status", "--database-url",
                                     forked.url("bob")), capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("Error: the migration scripts ")
    assert result.stderr.count("\n") == 1 and "Warning" not in result.stderr


def test_validate_has_a_rule_of_its_own(forked):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = forked.run("db", "validate", "--database-url", forked.url("bob"))
    assert result.returncode == 1
    new = forked.number(1)
    assert (f"ERROR   MIG023 numbered-line  project/migrations/versions/{new}_add_tags.py\n"
            f"        the migration scripts {new}_add_notes.py and {new}_add_tags.py both have "
            f"revision {new}") in result.stdout
    assert "skipped MIG008 round-trip: the scripts do not form one complete chain" in result.stdout


def test_two_heads_and_an_order_broken_are_each_named(team, sqlite_url):
    versions = team.versions
    head = team.base
    first, second = team.number(1), team.number(2)
    template = (versions / next(n for n in team.names() if n.startswith(head))).read_text()

    def script(name: str, revision: str, parent: str) -> None:
        text = template.replace(f'"{head}"', f'"{revision}"', 1)
        text = text.replace(f'down_revision: str | Sequence[str] | None = "{int(head) - 1:03d}"',
                            f'down_revision: str | Sequence[str] | None = "{parent}"')
        (versions / name).write_text(text)

    script(f"{first}_a.py", first, head)
    script(f"{second}_b.py", second, head)
    with MigrationManager(sqlite_url, script_location=str(team.scripts)) as manager:
        with pytest.raises(ForkedChainError, match=rf"^the migration scripts {first}_a.py and "
                           rf"{second}_b.py both revise {head}, so the chain forks there; run "):
            manager.status()
    # One line, but 002 revising 001's successor's successor: out of number order.
    (versions / f"{first}_a.py").unlink()
    script(f"{first}_a.py", first, second)
    (versions / f"{second}_b.py").unlink()
    script(f"{second}_b.py", second, head)
    with MigrationManager(sqlite_url, script_location=str(team.scripts)) as manager:
        with pytest.raises(ForkedChainError, match=rf"^the migration script {first}_a.py "
                           rf"revises {second}, but the script before it in number order is "
                           rf"{head}_"):
            manager.status()


def test_the_fork_rules_read_scripts_as_written(tmp_path):
    versions = tmp_path / "versions"
    versions.mkdir()
    (versions / "001_a.py").write_text('revision = "001"\ndown_revision = None\nop.x = 1\n')
    (versions / "002_b.py").write_text('revision: str = "002"\ndown_revision = ("001",)\n')
    (versions / "broken.py").write_text("revision = (\n")
    (versions / "dynamic.py").write_text('revision = "x"\ndown_revision = compute()\n')
    (versions / "__init__.py").write_text("")
    refs = read_refs(versions)
    assert [(r.name, r.revision, r.down_revisions) for r in refs] == [
        ("001_a.py", "001", ()), ("002_b.py", "002", ("001",)), ("broken.py", None, ()),
        ("dynamic.py", None, ())]
    assert describe(refs) is None
    (versions / "000_c.py").write_text('revision = "000"\ndown_revision = None\n')
    assert str(describe(read_refs(versions))).startswith(
        "the migration scripts 000_c.py and 001_a.py both start the history (revise nothing)")
    # Three claimants, and the first script revising something.
    three = [ScriptRef(Path(f"{n}.py"), "001", ()) for n in "abc"]
    assert describe(three).problem.startswith("the migration scripts a.py, b.py and c.py all have")
    late = [ScriptRef(Path("1.py"), "001", ("002",)), ScriptRef(Path("2.py"), "002", ())]
    assert describe(late).problem == (
        "the migration script 1.py revises 002, but it is the first in number order")
    first = [ScriptRef(Path("1.py"), "001", ("000",))]
    assert describe(first) is None  # a missing parent is MIG002's
    assert in_number_order(["a", "c", "b"]) and not in_number_order(["002", "001"])


def test_other_warnings_while_loading_still_reach_the_user(team, sqlite_url):
    path = team.versions / next(n for n in team.names() if n.startswith(team.base))
    path.write_text("import warnings\nwarnings.warn('the old way')\n" + path.read_text())
    with MigrationManager(sqlite_url, script_location=str(team.scripts)) as manager:
        with pytest.warns(UserWarning, match="the old way"):
            assert manager.get_head_revision() == team.base


# -- db rebase --------------------------------------------------------------------------------


def test_rebase_moves_this_branch_after_the_other_and_the_chain_upgrades(forked, tmp_path,
                                                                        db_url):
    new, after = forked.number(1), forked.number(2)
    # Alice's database applied her migration before the merge; a new one is empty.
    alice = db_url
    git(forked.root, "checkout", "-q", "alice")
    assert forked.run("db", "upgrade", "--database-url", alice).returncode == 0
    git(forked.root, "checkout", "-q", "bob")
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    result = forked.run("db", "rebase", "--database-url", fresh)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"Staying: the scripts on main (no origin/HEAD; the local main branch), up to {new}.\n"
        "Moving 1 migration on top:\n"
        f"  {new}_add_tags.py -> {after}_add_tags.py  (revision {new} -> {after}, revises {new})\n"
        "Done. Review and commit the renamed files, then run `orchestrator db upgrade`.\n")
    moved = forked.versions / f"{after}_add_tags.py"
    text = moved.read_text()
    assert f"revision: str = {after!r}" in text
    assert f"down_revision: str | Sequence[str] | None = {new!r}" in text
    assert f"Revision ID: {after}\nRevises: {new}\n" in text
    assert "op.create_table('tags'" in text  # the content is kept
    assert not (forked.versions / f"{new}_add_tags.py").exists()
    # One chain: from empty, and from the database that applied the other branch's migration.
    assert forked.run("db", "upgrade", "--database-url", fresh).returncode == 0
    assert {"notes", "tags"} <= _tables(fresh)
    assert _applies(alice, forked.scripts) == [after]
    assert {"notes", "tags"} <= _tables(alice)
    # Round trip and every other rule, strict, with models that have the branches' tables.
    strict = validate(fresh, script_location=str(forked.scripts), strict=True,
                      metadata=_models_with("notes", "tags"))
    assert strict.ok and not strict.findings and not strict.skipped, strict.findings
    assert {"MIG023", "MIG008"} <= set(strict.passed)
    again = forked.run("db", "rebase", "--database-url", fresh)
    assert again.stdout == ("Nothing to rebase: the migrations in project/migrations/versions "
                            "form one line.\n")


def test_dry_run_changes_nothing(forked):
    before = {p.name: p.read_bytes() for p in forked.versions.glob("*.py")}
    result = forked.run("db", "rebase", "--dry-run", "--database-url", forked.url("bob"))
    assert result.returncode == 0, result.stderr
    assert "Would move 1 migration on top:" in result.stdout
    assert result.stdout.endswith("Dry run: nothing was changed.\n")
    assert {p.name: p.read_bytes() for p in forked.versions.glob("*.py")} == before


def test_a_development_database_that_applied_the_moved_migration_is_brought_back(forked, db_url):
    new, after = forked.number(1), forked.number(2)
    bob = db_url
    git(forked.root, "checkout", "-q", "HEAD^1")  # Bob's branch before the merge
    assert forked.run("db", "upgrade", "--database-url", bob).returncode == 0
    git(forked.root, "checkout", "-q", "bob")
    assert "tags" in _tables(bob)
    dry = forked.run("db", "rebase", "--dry-run", "--database-url", bob)
    assert dry.returncode == 0, dry.stderr
    assert f"Would downgrade it to {forked.base} first" in dry.stdout
    # Without a terminal, a database is not downgraded unasked.
    refused = forked.run("db", "rebase", "--database-url", bob)
    assert refused.returncode == 2
    assert "refusing to downgrade the database without confirmation" in refused.stderr
    assert (forked.versions / f"{new}_add_tags.py").exists()
    result = forked.run("db", "rebase", "--yes", "--database-url", bob)
    assert result.returncode == 0, result.stderr
    assert (f"The database {mask_url(bob)} applied {new}_add_tags.py under the old revision; once "
            f"renumbered they are new revisions, so it must go back to {forked.base} "
            "first.\n") in result.stdout
    assert f"Undid {new}: the database is at {forked.base}.\n" in result.stdout
    assert "tags" not in _tables(bob)
    assert _applies(bob, forked.scripts) == [new, after]
    assert {"notes", "tags"} <= _tables(bob)
    # The history of the old id is left as it was: applied, then undone.
    steps = scalar(bob, f"SELECT count(*) FROM migration_history WHERE revision = '{new}'")
    assert steps >= 3


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_staging_and_production_databases_are_not_touched(forked, environment):
    bob = forked.url("bob")
    git(forked.root, "checkout", "-q", "HEAD^1")
    assert forked.run("db", "upgrade", "--database-url", bob).returncode == 0
    git(forked.root, "checkout", "-q", "bob")
    before = sorted(forked.names())
    result = forked.run("db", "rebase", "--yes", "--env", environment, "--database-url", bob)
    assert result.returncode == 2
    assert result.stderr.startswith(f"Error: refusing to downgrade a {environment} database")
    assert f"`orchestrator db downgrade {forked.base}`" in result.stderr
    assert sorted(forked.names()) == before
    assert "tags" in _tables(bob)


def test_a_branch_with_two_migrations_moves_both_in_order(team, sqlite_url):
    team.branch("alice", "notes")
    team.branch("bob", "tags", "labels")
    team.merge("main", "alice")
    team.merge("bob", "main")
    one, two, three = team.number(1), team.number(2), team.number(3)
    result = team.run("db", "rebase", "--database-url", sqlite_url)
    assert result.returncode == 0, result.stderr
    assert (f"  {one}_add_tags.py -> {two}_add_tags.py  (revision {one} -> {two}, revises "
            f"{one})\n  {two}_add_labels.py -> {three}_add_labels.py  (revision {two} -> "
            f"{three}, revises {two})\n") in result.stdout
    assert team.names()[-3:] == [f"{one}_add_notes.py", f"{two}_add_tags.py",
                                 f"{three}_add_labels.py"]
    assert _applies(sqlite_url, team.scripts) [-3:] == [one, two, three]


def test_three_branches_each_rebased_in_turn(team, sqlite_url):
    team.branch("alice", "notes")
    team.branch("bob", "tags")
    team.branch("carol", "labels")
    team.merge("main", "alice")
    team.merge("bob", "main")
    assert team.run("db", "rebase", "--database-url", sqlite_url).returncode == 0
    git(team.root, "add", "-A")
    git(team.root, "commit", "-q", "-m", "bob's migration after alice's")
    team.merge("main", "bob")
    team.merge("carol", "main")
    result = team.run("db", "rebase", "--database-url", sqlite_url)
    assert result.returncode == 0, result.stderr
    assert f"{team.number(1)}_add_labels.py -> {team.number(3)}_add_labels.py" in result.stdout
    assert team.names()[-3:] == [f"{team.number(1)}_add_notes.py",
                                 f"{team.number(2)}_add_tags.py",
                                 f"{team.number(3)}_add_labels.py"]
    assert _applies(sqlite_url, team.scripts)[-3:] == [team.number(n) for n in (1, 2, 3)]


def test_three_branches_merged_at_once_move_after_the_kept_line(team, sqlite_url):
    team.branch("alice", "notes")
    team.branch("bob", "tags")
    team.branch("carol", "labels")
    team.merge("main", "alice")
    team.merge("carol", "bob")
    team.merge("carol", "main")
    result = team.run("db", "rebase", "--onto", "main", "--database-url", sqlite_url)
    assert result.returncode == 0, result.stderr
    assert "Staying: the scripts on main (--onto)" in result.stdout
    assert _applies(sqlite_url, team.scripts)[-3:] == [team.number(n) for n in (1, 2, 3)]
    assert team.names()[-2:] == [f"{team.number(2)}_add_labels.py",
                                 f"{team.number(3)}_add_tags.py"]


def test_on_main_right_after_the_merge_the_merged_branch_moves(team, sqlite_url):
    team.branch("alice", "notes")
    team.branch("bob", "tags")
    team.merge("main", "alice")
    git(team.root, "merge", "-q", "--no-ff", "--no-edit", "bob")
    result = team.run("db", "rebase", "--database-url", sqlite_url)
    assert result.returncode == 0, result.stderr
    assert "Staying: the scripts on main before its merge (HEAD^1" in result.stdout
    assert team.names()[-1] == f"{team.number(2)}_add_tags.py"


def test_without_git_keep_decides_and_its_absence_is_an_error(forked, tmp_path, sqlite_url):
    plain = tmp_path / "plain"
    shutil.copytree(forked.scripts, plain, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(forked.root / ".git")
    shutil.rmtree(forked.scripts)
    shutil.copytree(plain, forked.scripts)
    new, after = forked.number(1), forked.number(2)
    missing = forked.run("db", "rebase", "--database-url", sqlite_url)
    assert missing.returncode == 2
    assert missing.stderr == (
        f"Error: {forked.versions} is not in a git repository, so which line stays cannot be "
        "told; name the last migration that stays: `orchestrator db rebase --keep REVISION` (a "
        "revision id or a file name)\n")
    ambiguous = forked.run("db", "rebase", "--keep", new, "--database-url", sqlite_url)
    assert ambiguous.stderr == (
        f"Error: --keep {new} names {new}_add_notes.py and {new}_add_tags.py; give the file "
        f"name of the one that stays (e.g. --keep {new}_add_notes.py)\n")
    unknown = forked.run("db", "rebase", "--keep", "999", "--database-url", sqlite_url)
    assert unknown.stderr.startswith("Error: --keep 999 names no migration script")
    kept = forked.run("db", "rebase", "--keep", f"{new}_add_tags", "--database-url", sqlite_url)
    assert kept.returncode == 0, kept.stderr
    assert f"Staying: --keep {new}_add_tags and the scripts before it, up to {new}." in kept.stdout
    assert forked.names()[-2:] == [f"{new}_add_tags.py", f"{after}_add_notes.py"]
    assert _applies(sqlite_url, forked.scripts)[-2:] == [new, after]


def test_keeping_the_fork_point_renumbers_every_line_after_it(forked, sqlite_url):
    result = forked.run("db", "rebase", "--keep", forked.base, "--database-url", sqlite_url)
    assert result.returncode == 0, result.stderr
    # The first line in number order (file name breaking ties) is already in its place.
    assert "Moving 1 migration on top:" in result.stdout
    assert forked.names()[-1] == f"{forked.number(2)}_add_tags.py"


def test_git_that_cannot_tell_the_lines_apart_says_what_to_pass(forked, sqlite_url):
    git(forked.root, "branch", "-m", "main", "trunk")
    result = forked.run("db", "rebase", "--database-url", sqlite_url)
    assert result.stderr == (
        "Error: cannot tell which branch holds the other line (no origin/HEAD, main or master); "
        "pass --onto BRANCH, or name the last migration that stays with --keep REVISION\n")
    wrong = forked.run("db", "rebase", "--onto", "nowhere", "--database-url", sqlite_url)
    assert wrong.stderr.startswith("Error: --onto nowhere is not a branch or commit")
    both = forked.run("db", "rebase", "--onto", "trunk", "--keep", "001",
                      "--database-url", sqlite_url)
    assert both.returncode == 2 and "give one of them" in both.stderr
    # On the branch that holds both lines, without a merge to look behind, nothing can move.
    git(forked.root, "checkout", "-q", "-b", "both")
    git(forked.root, "commit", "-q", "--allow-empty", "-m", "after the merge")
    itself = forked.run("db", "rebase", "--onto", "both", "--database-url", sqlite_url)
    assert itself.stderr.startswith("Error: HEAD is both itself, which holds every script")
    # A remote's default branch is preferred.
    git(forked.root, "update-ref", "refs/remotes/origin/trunk", "trunk")
    git(forked.root, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/trunk")
    git(forked.root, "checkout", "-q", "bob")
    chosen = forked.run("db", "rebase", "--dry-run", "--database-url", sqlite_url)
    assert chosen.stdout.startswith(
        "Staying: the scripts on origin/trunk (the remote's default branch, origin/HEAD), up to ")


def test_the_kept_line_must_be_one_line_itself(forked, sqlite_url):
    # Both lines on main already: the fork is main's to fix.
    git(forked.root, "checkout", "-q", "main")
    git(forked.root, "merge", "-q", "--no-edit", "bob")
    git(forked.root, "checkout", "-q", "-b", "later")
    git(forked.root, "commit", "-q", "--allow-empty", "-m", "after the merge")
    result = forked.run("db", "rebase", "--onto", "main", "--database-url", sqlite_url)
    assert result.stderr.startswith("Error: every script is in the scripts on main (--onto)")
    new = forked.number(1)
    stays = forked.run("db", "rebase", "--keep", f"{new}_add_tags.py", "--database-url",
                       sqlite_url)
    assert stays.returncode == 0  # --keep settles it without git


def test_plans_refuse_what_cannot_be_renumbered(tmp_path):
    versions = tmp_path / "versions"
    versions.mkdir()

    def script(name: str, revision: str, parent: str | None) -> None:
        (versions / name).write_text(f'revision = "{revision}"\ndown_revision = {parent!r}\n')

    script("001_a.py", "001", None)
    script("002_b.py", "002", "001")
    script("002_c.py", "002", "001")
    (versions / "broken.py").write_text("revision = (\n")
    with pytest.raises(rebasing.RebaseError, match="broken.py does not state its revision"):
        rebasing.plan(versions, keep="002_b.py")
    (versions / "broken.py").unlink()
    script("abc_d.py", "abc", "002")
    with pytest.raises(rebasing.RebaseError, match="abc_d.py has revision abc, which is not a"):
        rebasing.plan(versions, keep="002_b.py")
    (versions / "abc_d.py").unlink()
    script("003_d.py", "003", "002")
    with pytest.raises(rebasing.RebaseError, match="003_d.py follows revision 002, which "
                       "002_b.py and 002_c.py both claim"):
        rebasing.plan(versions, keep="003_d.py")
    script("003_e.py", "003", "009")
    with pytest.raises(rebasing.RebaseError, match="which no script has"):
        rebasing.plan(versions, keep="003_e.py")
    (versions / "003_e.py").unlink()
    (versions / "003_d.py").unlink()
    (versions / "002_b.py").rename(versions / "003_c.py")  # a kept script, oddly named
    with pytest.raises(rebasing.RebaseError, match="002_c.py would be renamed 003_c.py, which "
                       "another script already has"):
        rebasing.plan(versions, keep="003_c.py")
    # The line kept is out of number order itself.
    for path in versions.glob("*.py"):
        path.unlink()
    script("001_a.py", "001", None)
    script("003_b.py", "003", "001")
    script("002_c.py", "002", "003")
    script("004_d.py", "004", "001")
    with pytest.raises(rebasing.RebaseError, match=r"the scripts that stay \(--keep 002_c.py and "
                       r"the scripts before it\) do not form one line themselves: the migration "
                       r"script 002_c.py revises 003"):
        rebasing.plan(versions, keep="002_c.py")


def test_which_line_a_database_applied_is_told_by_its_history(tmp_path):
    def ref(name: str, revision: str, parent: str | None, body: str = "") -> ScriptRef:
        path = tmp_path / name
        path.write_text(f"{name}{body}")
        return ScriptRef(path, revision, (parent,) if parent else ())

    from orchestrator.migrations.history import checksum

    base = ref("001_a.py", "001", None)
    ours, theirs = ref("002_b.py", "002", "001"), ref("002_c.py", "002", "001")
    later = ref("003_b.py", "003", "002")
    plan = rebasing.RebasePlan(
        (base, theirs),
        (rebasing.Move(ours, "003", "002", tmp_path / "003_b.py"),
         rebasing.Move(later, "004", "003", tmp_path / "004_b.py")), "test")
    assert rebasing.applied_moves(plan, None, {}) is None
    assert rebasing.applied_moves(plan, "001", {}) is None
    assert rebasing.applied_moves(plan, "002", {"002": checksum(theirs.path)}) is None
    applied = rebasing.applied_moves(plan, "002", {"002": checksum(ours.path)})
    assert (applied.scripts, applied.fork_point) == ((ours,), "001")
    applied = rebasing.applied_moves(plan, "003", {})
    assert (applied.scripts, applied.fork_point) == ((ours, later), "001")
    with pytest.raises(rebasing.RebaseError, match="does not say which it applied"):
        rebasing.applied_moves(plan, "002", {})
    # A line from the very first revision goes back to base.
    alone = rebasing.RebasePlan((), (rebasing.Move(base, "002", None, tmp_path / "x.py"),), "t")
    assert rebasing.applied_moves(alone, "001", {}).fork_point is None


def test_renumbering_keeps_quotes_and_everything_else():
    source = (b'"""Add x.\n\nRevision ID: 005\nRevises: 004\nCreate Date: today\n"""\n'
              b"import sqlalchemy as sa\nrevision = '005'\ndown_revision = '004'\n"
              b'branch_labels = None\n')
    assert rebasing._renumbered(source, "006", "005") == (
        b'"""Add x.\n\nRevision ID: 006\nRevises: 005\nCreate Date: today\n"""\n'
        b"import sqlalchemy as sa\nrevision = '006'\ndown_revision = '005'\n"
        b'branch_labels = None\n')
    first = b"revision = '005'\ndown_revision = '004'\nx = 1\nrevision_note: int\n"
    assert rebasing._renumbered(first, "001", None) == (
        b"revision = '001'\ndown_revision = None\nx = 1\nrevision_note: int\n")
    renumbered = rebasing._renumbered(
        b'"""X.\nRevision ID: 2\nRevises: 1\n"""\nrevision = None\n', "3", None)
    assert renumbered == b'"""X.\nRevision ID: 3\nRevises:\n"""\nrevision = "3"\n'


def test_without_a_git_command_the_folder_is_not_in_a_repository(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert rebasing._git(tmp_path, "status") is None


def test_a_database_that_cannot_be_read_does_not_stop_the_rebase(forked):
    unreachable = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    result = forked.run("db", "rebase", "--database-url", unreachable)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("Note: the database could not be read (cannot reach")
    assert "downgrade it from this branch as it was before the merge" in result.stderr
    assert forked.names()[-1] == f"{forked.number(2)}_add_tags.py"


# -- stopped part way -------------------------------------------------------------------------


def _stop_on(monkeypatch, method: str, call: int) -> None:
    """`Path.<method>` raises KeyboardInterrupt (Ctrl-C) on its `call`-th use on a staged
    script (.NNN_name.py.rebase), as a rebase stopped at that point would."""
    real = getattr(Path, method)
    calls = []

    def stopping(self, *args, **kwargs):
        if self.name.endswith(".rebase"):
            calls.append(self)
            if len(calls) == call:
                raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, method, stopping)


@pytest.fixture
def two_moves(team) -> Team:
    """Bob's branch has two migrations; Alice's one was merged first."""
    team.branch("alice", "notes")
    team.branch("bob", "tags", "labels")
    team.merge("main", "alice")
    team.merge("bob", "main")
    return team


def _rebased_names(team: Team) -> list[str]:
    return [f"{team.number(1)}_add_notes.py", f"{team.number(2)}_add_tags.py",
            f"{team.number(3)}_add_labels.py"]


@pytest.mark.parametrize("renamed", [1, 2], ids=["before-any-rename", "after-one-rename"])
def test_a_rebase_stopped_while_renaming_is_finished_by_the_next(two_moves, sqlite_url,
                                                                 monkeypatch, renamed):
    team = two_moves
    with monkeypatch.context() as patched:
        _stop_on(patched, "replace", renamed)
        stopped = team.run("db", "rebase", "--database-url", sqlite_url)
    assert stopped.returncode != 0
    # Every command says what happened, not a shorter chain without Bob's migrations.
    status = team.run("db", "status", "--database-url", sqlite_url)
    assert status.returncode == 2
    assert status.stderr.startswith("Error: an interrupted `orchestrator db rebase` left its "
                                    "renames unfinished")
    dry = team.run("db", "rebase", "--dry-run", "--database-url", sqlite_url)
    assert dry.returncode == 2 and "run `orchestrator db rebase` to finish them" in dry.stderr
    again = team.run("db", "rebase", "--database-url", sqlite_url)
    assert again.returncode == 0, again.stderr
    one, two, three = team.number(1), team.number(2), team.number(3)
    assert again.stdout.startswith(
        "Finished the renames of an interrupted `db rebase`: "
        f"{one}_add_tags.py -> {two}_add_tags.py, {two}_add_labels.py -> {three}_add_labels.py.\n")
    assert team.names()[-3:] == _rebased_names(team)
    assert not [path.name for path in team.versions.iterdir() if path.name.startswith(".")]
    assert "op.create_table('labels'" in (team.versions / f"{three}_add_labels.py").read_text()
    assert _applies(sqlite_url, team.scripts)[-3:] == [one, two, three]


def test_a_rebase_stopped_while_writing_changes_nothing(two_moves, sqlite_url, monkeypatch):
    team = two_moves
    before = {path.name: path.read_bytes() for path in team.versions.iterdir()}
    with monkeypatch.context() as patched:
        _stop_on(patched, "write_bytes", 2)
        stopped = team.run("db", "rebase", "--database-url", sqlite_url)
    assert stopped.returncode != 0
    assert {path.name: path.read_bytes() for path in team.versions.iterdir()} == before
    again = team.run("db", "rebase", "--database-url", sqlite_url)
    assert again.returncode == 0, again.stderr
    assert team.names()[-3:] == _rebased_names(team)


def test_a_read_only_script_stays_read_only_and_a_stale_staged_file_is_replaced(forked,
                                                                                sqlite_url):
    moving = forked.versions / f"{forked.number(1)}_add_tags.py"
    moving.chmod(0o444)
    stale = forked.versions / f".{forked.number(2)}_add_tags.py.rebase"
    stale.write_text("left by a run stopped while writing")
    stale.chmod(0o640)
    result = forked.run("db", "rebase", "--database-url", sqlite_url)
    assert result.returncode == 0, result.stderr
    moved = forked.versions / f"{forked.number(2)}_add_tags.py"
    assert moved.stat().st_mode & 0o777 == 0o444
    assert "op.create_table('tags'" in moved.read_text()
    assert not stale.exists()


def test_renames_onto_a_moved_scripts_old_name_survive_a_stop_at_any_point(tmp_path,
                                                                         monkeypatch):
    versions = tmp_path / "versions"
    versions.mkdir()

    def script(name: str, revision: str, parent: str | None, body: str) -> None:
        (versions / name).write_text(
            f'revision = "{revision}"\ndown_revision = {parent!r}\n{body} = 1\n')

    script("001_a.py", "001", None, "a")
    script("002_b.py", "002", "001", "b")
    script("002_x.py", "002", "001", "first")   # becomes 003_x.py, the next one's old name
    script("003_x.py", "003", "002", "second")  # becomes 004_x.py
    plan = rebasing.plan(versions, keep="002_b.py")
    assert [(move.script.name, move.path.name) for move in plan.moves] == [
        ("002_x.py", "003_x.py"), ("003_x.py", "004_x.py")]
    real = Path.replace

    for stop_after in (rebasing.JOURNAL, "003_x.py"):
        for path in versions.iterdir():
            path.unlink()
        script("001_a.py", "001", None, "a")
        script("002_b.py", "002", "001", "b")
        script("002_x.py", "002", "001", "first")
        script("003_x.py", "003", "002", "second")

        def stop(self, target, stop_after=stop_after):
            done = real(self, target)
            if Path(target).name == stop_after:
                monkeypatch.setattr(Path, "replace", real)
                raise KeyboardInterrupt
            return done

        monkeypatch.setattr(Path, "replace", stop)
        with pytest.raises(KeyboardInterrupt):
            rebasing.apply(plan)
        monkeypatch.setattr(Path, "replace", real)
        assert rebasing.resume(versions) == [("002_x.py", "003_x.py"), ("003_x.py", "004_x.py")]
        assert sorted(path.name for path in versions.iterdir()) == [
            "001_a.py", "002_b.py", "003_x.py", "004_x.py"]
        assert (versions / "003_x.py").read_text() == (
            'revision = "003"\ndown_revision = \'002\'\nfirst = 1\n')
        assert (versions / "004_x.py").read_text() == (
            'revision = "004"\ndown_revision = \'003\'\nsecond = 1\n')
        assert rebasing.resume(versions) == []


def test_a_rebase_undone_with_git_checkout_is_not_moved_twice(two_moves, sqlite_url):
    team = two_moves
    assert team.run("db", "rebase", "--database-url", sqlite_url).returncode == 0
    # "Undo": the deleted scripts come back; the renamed ones stay, untracked.
    git(team.root, "checkout", "-q", "--", ".")
    before = team.names()
    result = team.run("db", "rebase", "--database-url", sqlite_url)
    assert result.returncode == 2
    one, two, three = team.number(1), team.number(2), team.number(3)
    assert result.stderr == (
        f"Error: {two}_add_tags.py and {one}_add_tags.py are the same migration under two "
        "revision ids (an earlier `db rebase` undone with git checkout or git restore leaves "
        "its renamed files behind); delete the one that should not be there (`git clean` "
        "removes untracked ones), then run `orchestrator db rebase` again\n")
    assert team.names() == before
    git(team.root, "clean", "-q", "-f", "--", ".")
    again = team.run("db", "rebase", "--database-url", sqlite_url)
    assert again.returncode == 0, again.stderr
    assert team.names()[-3:] == _rebased_names(team)
    assert _applies(sqlite_url, team.scripts)[-3:] == [one, two, three]


def test_a_database_on_the_kept_line_and_a_moved_child_goes_back_only_that_far(two_moves,
                                                                             db_url):
    # Bob keeps his first migration (--keep) and moves Alice's and his second after it: the
    # second's parent id is claimed by his kept one and Alice's moved one; history tells.
    team = two_moves
    one, two, three = team.number(1), team.number(2), team.number(3)
    git(team.root, "checkout", "-q", "HEAD^1")  # Bob's branch before the merge
    assert team.run("db", "upgrade", "--database-url", db_url).returncode == 0
    git(team.root, "checkout", "-q", "bob")
    result = team.run("db", "rebase", "--keep", f"{one}_add_tags.py", "--yes",
                      "--database-url", db_url)
    assert result.returncode == 0, result.stderr
    assert (f"applied {two}_add_labels.py under the old revision; once renumbered they are new "
            f"revisions, so it must go back to {one} first.\nUndid {two}: the database is at "
            f"{one}.\n") in result.stdout
    assert team.names()[-3:] == [f"{one}_add_tags.py", f"{two}_add_notes.py",
                                 f"{three}_add_labels.py"]
    assert _applies(db_url, team.scripts) == [two, three]
    assert {"notes", "tags", "labels"} <= _tables(db_url)
