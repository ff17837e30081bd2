"""Revision scripts read as ASTs, never imported, so that broken ones can be judged too.

A script is decoded as Python decodes it (`lint.read_source`: its PEP 263 coding line or UTF-8,
a byte-order mark dropped, as `tokenize.open` and Alembic's import do)."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.migrations import lint
from orchestrator.migrations.history import assignment


@dataclass
class ScriptFile:
    """A revision script as its source says, so broken ones can be judged too."""

    path: Path
    source: str
    tree: ast.Module | None = None
    syntax_error: str | None = None
    revision: str | None = None
    # None when `down_revision` cannot be read statically.
    down_revisions: tuple[str, ...] | None = ()
    irreversible: bool = False
    constants: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> ScriptFile:
        """Read as Python compiles it: the coding line (or UTF-8) decides the text, a byte-order
        mark is dropped; a file Python cannot read is reported with the line, not raised."""
        try:
            source = lint.read_source(path)
            tree = ast.parse(source, filename=str(path))
        except (SyntaxError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            line = getattr(exc, "lineno", None) or _decode_error_line(path, exc)
            script = cls(path=path, source="", syntax_error=f"line {line}: {_reason(exc)}")
            script.lines["revision"] = line
            return script
        script = cls(path=path, source=source, tree=tree)
        for node in script.tree.body:
            target, value = assignment(node)
            if target is None:
                continue
            script.lines.setdefault(target, node.lineno)
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                script.constants[target] = value.value
            if target == "revision":
                script.revision = script.constants.get("revision")
            elif target == "down_revision":
                script.down_revisions = _revision_tuple(value)
            elif target == "irreversible":
                script.irreversible = isinstance(value, ast.Constant) and value.value is True
        return script

    def function(self, name: str) -> ast.FunctionDef | None:
        for node in self.tree.body if self.tree else ():
            if isinstance(node, ast.FunctionDef) and node.name == name:
                return node
        return None



def _decode_error_line(path: Path, exc: Exception) -> int:
    """The line of the first byte the file's encoding cannot decode (1 otherwise)."""
    start = getattr(exc, "start", None)
    if start is None:
        return 1
    return path.read_bytes()[:start].count(b"\n") + 1


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid {exc.encoding} text ({exc.reason}); save it as UTF-8 or fix its coding line"
    return getattr(exc, "msg", None) or str(exc)


def _revision_tuple(value: ast.expr) -> tuple[str, ...] | None:
    if isinstance(value, ast.Constant) and value.value is None:
        return ()
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return (value.value,)
    if isinstance(value, (ast.Tuple, ast.List)) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts
    ):
        return tuple(e.value for e in value.elts)
    return None


def read_scripts(versions: Path) -> list[ScriptFile]:
    """Every revision script in a versions folder (as Alembic finds them), by file name."""
    return [
        ScriptFile.read(path)
        for path in sorted(versions.glob("*.py"))
        if path.name != "__init__.py" and not path.name.startswith(".#")
    ]

