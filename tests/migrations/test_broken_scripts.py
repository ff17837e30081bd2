"""A migration script that cannot be loaded is the user's to fix: every command says which
file and line, in one line, with exit 2; scripts Python reads in another encoding (a coding
line, a byte-order mark) work for every command, as Alembic runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.migrations import MigrationManager
from orchestrator.migrations.errors import BrokenScriptError
from tests.fixtures import command_runner, copy_scripts

_HEADER = '''"""{doc}

Revision ID: 005
Revises: 004
"""

from alembic import op
import sqlalchemy as sa

revision = "005"
down_revision = "004"
'''

_BROKEN = {
    # (the script's text, the line named, the error named)
    "syntax-error": (_HEADER.format(doc="Add a note.") + '''

def upgrade() -> None:
    op.add_column("agents", sa.Column("note", sa.Text())


def downgrade() -> None:
    op.drop_column("agents", "note")
''', 15, "SyntaxError: '(' was never closed"),
    "raises-on-import": (_HEADER.format(doc="Add a note.") + '''
NOTE_LENGTH = int("forty")


def upgrade() -> None:
    op.add_column("agents", sa.Column("note", sa.String(NOTE_LENGTH)))


def downgrade() -> None:
    op.drop_column("agents", "note")
''', 13, "ValueError: invalid literal for int() with base 10: 'forty'"),
}


@pytest.fixture
def cli_with(monkeypatch, capsys, tmp_path):
    """Run `orchestrator ...` in-process with the migration scripts at `scripts`."""

    def use(scripts: Path):
        real = MigrationManager.from_settings.__func__

        def from_settings(cls, settings, **options):
            return real(cls, settings, script_location=str(scripts), **options)

        monkeypatch.setattr(MigrationManager, "from_settings", classmethod(from_settings))
        return command_runner(monkeypatch, capsys)

    return use


@pytest.mark.parametrize("kind", sorted(_BROKEN))
@pytest.mark.parametrize("command", [
    ("db", "status"), ("db", "check"), ("db", "history"), ("db", "upgrade"),
    ("db", "upgrade", "--sql"), ("db", "downgrade", "-1"), ("db", "stamp", "head"),
    ("serve", "--port", "1"),
], ids=" ".join)
def test_every_command_names_the_broken_script_and_its_line(cli_with, tmp_path, sqlite_url,
                                                           kind, command):
    scripts = copy_scripts(tmp_path)
    with MigrationManager(sqlite_url, script_location=str(scripts)) as manager:
        manager.upgrade()
    text, line, error = _BROKEN[kind]
    broken = scripts / "versions" / "005_add_a_note.py"
    broken.write_text(text)
    run = cli_with(scripts)
    result = run(*command, "--database-url", sqlite_url)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"Error: the migration script {broken}, line {line}, cannot be loaded: {error}; fix "
        "the script (every command loads all of them; --verbose shows the traceback)\n")
    with MigrationManager(sqlite_url) as manager:
        assert manager.get_current_revision() == "004"  # nothing was done
    # Backups and restores are about data: they do not need the scripts.
    backed_up = run("db", "backup", "--database-url", sqlite_url)
    assert backed_up.returncode == 0, backed_up.stderr


_ENCODED = '''{coding}"""Note the café's opening hours: a naïve column.

Revision ID: {revision}
Revises: {parent}
"""

from alembic import op
import sqlalchemy as sa

revision = "{revision}"
down_revision = "{parent}"


def upgrade() -> None:
    op.add_column("agents", sa.Column("{column}", sa.String(20), server_default="déjà vu"))


def downgrade() -> None:
    op.drop_column("agents", "{column}")
'''


def test_scripts_with_a_coding_line_or_a_byte_order_mark_work_for_every_command(
    cli_with, tmp_path, sqlite_url
):
    scripts = copy_scripts(tmp_path)
    latin = _ENCODED.format(coding="# -*- coding: latin-1 -*-\n", revision="005", parent="004",
                            column="hours")
    (scripts / "versions" / "005_latin.py").write_bytes(latin.encode("latin-1"))
    marked = _ENCODED.format(coding="", revision="006", parent="005", column="menu")
    (scripts / "versions" / "006_bom.py").write_bytes(b"\xef\xbb\xbf" + marked.encode())
    run = cli_with(scripts)
    title = "Note the café's opening hours: a naïve column."
    for command, shown in [
        (("db", "upgrade"), "  006  "),
        (("db", "status"), "state:    up to date"),
        (("db", "check"), "state:    up to date"),
        (("db", "history"), f"006  [applied, head]  {title}"),
        (("db", "upgrade", "004:head", "--sql"), "DEFAULT 'déjà vu'"),
        (("db", "downgrade", "004"), "Undid 006, 005"),
        (("db", "upgrade", "005"), "Applied 005"),
    ]:
        result = run(*command, "--database-url", sqlite_url)
        assert result.returncode == 0, (command, result.stderr)
        assert shown in result.stdout, command
    with MigrationManager(sqlite_url, script_location=str(scripts)) as manager:
        assert manager.changed_scripts() == []
        assert [e.revision for e in manager.applied_history()][-3:] == ["006", "005", "005"]
        assert manager.history()[-2].message.startswith(title)


def test_a_scripts_folder_that_is_not_one_is_named_without_alembics_init_advice(sqlite_url,
                                                                                tmp_path):
    for folder in (tmp_path / "missing", tmp_path):  # absent; present without env.py
        with pytest.raises(BrokenScriptError) as raised:
            MigrationManager(sqlite_url, script_location=str(folder)).script  # noqa: B018
        assert str(raised.value) == (f"{folder} is not a migration scripts folder (it has no "
                                     "env.py); check the scripts folder given")
    with pytest.raises(BrokenScriptError, match="^an empty path is not a migration scripts "):
        MigrationManager(sqlite_url, script_location="").script  # noqa: B018
