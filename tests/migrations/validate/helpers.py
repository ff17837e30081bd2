"""What the validator's tests share: the models the sets build, and running the rules on a set."""

from __future__ import annotations

import textwrap
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table

from orchestrator.migrations import lint
from orchestrator.migrations.validate import (
    RULES,
    validate,
)
from orchestrator.models import NAMING_CONVENTION
from tests.fixtures import VALIDATOR_SETS, copy_scripts

ALL_CODES = [rule.code for rule in RULES]
LINT_CODES = [rule.code for rule in lint.RULES]


def widgets(colour: bool = True, gadgets: bool = False) -> MetaData:
    """The models the validator's migration sets are meant to build."""
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    columns = [Column("id", Integer, primary_key=True), Column("name", String(100), nullable=False)]
    if colour:
        columns.append(Column("colour", String(20)))
    Table("widgets", metadata, *columns)
    if gadgets:
        Table("gadgets", metadata, Column("id", Integer, primary_key=True))
    return metadata



def check(url: str, scripts: Path, metadata: MetaData | None = None, **options):
    return validate(url, script_location=str(scripts), metadata=metadata or widgets(), **options)


def _versions(tmp_path: Path, **scripts: str) -> Path:
    folder = copy_scripts(tmp_path, VALIDATOR_SETS / "good")
    for old in (folder / "versions").glob("*.py"):
        old.unlink()
    for name, text in scripts.items():
        (folder / "versions" / f"{name}.py").write_text(textwrap.dedent(text))
    return folder


def _rev(revision: str, down: str | None) -> str:
    return (f'revision = "{revision}"\ndown_revision = {down!r}\n'
            "def upgrade():\n    pass\ndef downgrade():\n    pass\n")
