"""What the rendered SQL cannot show, read from the script's own Python (`ast`, `tokenize`).

- Loops: offline, a loop over rows read from the database runs zero times, and a loop over a
  list renders as separate statements; only the source shows that `upgrade()` changes rows one
  by one inside its transaction (MIG022). Helpers defined in the script and called from
  `upgrade()` are followed, and so are `op.get_context().autocommit_block()` and the
  dialect branches (`if op.get_context().dialect.name == "sqlite": ...`).
- Reviews: `# validate: ignore[CODE] reason` comments, read as comments by `tokenize` (a string
  that happens to contain the words is not one).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

_DIALECTS = frozenset({"sqlite", "postgresql"})
# `validate: ignore[MIG012]` or `validate: ignore[MIG012, MIG016]`, then the reason.
_IGNORE = re.compile(r"validate:\s*ignore\[([A-Z0-9_,\s]+)\](.*)")
# What an f-string's hole reads as: a name, so the SQL still parses whatever the hole stands for.
HOLE = "lint_hole"
# The codes an ignore comment of the old single dangerous-operation rule still covers.
LEGACY_CODE = "MIG007"


def read_source(path: Path) -> str:
    """A script's text as Python reads it: its coding line or UTF-8, a byte-order mark dropped
    (as `tokenize.open` and `compile()` do). A byte the encoding cannot decode raises a
    UnicodeDecodeError whose `start` is its offset in the file."""
    data = path.read_bytes()
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    return data.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")


@dataclass
class Ignore:
    codes: frozenset[str]
    reason: str


@dataclass
class Source:
    """One revision script's source, parsed."""

    path: str
    text: str
    tree: ast.Module
    constants: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, path: str, text: str) -> Source:
        tree = ast.parse(text, filename=path)
        constants = {
            node.targets[0].id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign) and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        }
        return cls(path, text, tree, constants)

    def functions(self) -> dict[str, ast.FunctionDef]:
        return {n.name: n for n in self.tree.body if isinstance(n, ast.FunctionDef)}

    # -- reviews ------------------------------------------------------------------------------

    @cached_property
    def ignores(self) -> dict[int, Ignore]:
        """`# validate: ignore[...]` comments by line."""
        found = {}
        tokens = tokenize.generate_tokens(io.StringIO(self.text).readline)
        for token in tokens:
            if token.type == tokenize.COMMENT and (match := _IGNORE.search(token.string)):
                codes = frozenset(c.strip() for c in match.group(1).split(",") if c.strip())
                found[token.start[0]] = Ignore(codes, match.group(2).strip(" \t-–—:;,."))
        return found

    def statement_span(self, line: int) -> tuple[int, int]:
        """The lines of the innermost statement at `line` (only the header of a compound one,
        so a comment on a `with` or `for` line covers that line, not the whole block)."""
        best: tuple[int, int] | None = None
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.stmt):
                continue
            body = getattr(node, "body", None)
            end = (max(node.lineno, body[0].lineno - 1) if isinstance(body, list) and body
                   else node.end_lineno)
            if node.lineno <= line <= end and (best is None or end - node.lineno < best[1] - best[0]):
                best = (node.lineno, end)
        return best or (line, line)

    def ignore_for(self, lines: tuple[int, ...], code: str) -> Ignore | None:
        """The ignore comment covering `code` on the statements at `lines`, if any."""
        ignores = self.ignores
        for line in lines:
            start, end = self.statement_span(line)
            for number in range(start, end + 1):
                ignore = ignores.get(number)
                if ignore and (code in ignore.codes or LEGACY_CODE in ignore.codes):
                    return ignore
        return None

    # -- loops --------------------------------------------------------------------------------

    def row_by_row_loops(self) -> list[tuple[int, int]]:
        """(loop line, statement line) of each loop of `upgrade()` (helpers followed) that
        changes rows inside the migration's transaction, on PostgreSQL."""
        functions = self.functions()
        upgrade = functions.get("upgrade")
        found: dict[int, int] = {}
        if upgrade is not None:
            _LoopFinder(self, functions, found).block(upgrade.body, _DIALECTS, None, False,
                                                      frozenset({"upgrade"}))
        return sorted(found.items())

    def sql_text(self, node: ast.expr | None) -> str | None:
        """A SQL argument as text where the source says it: a literal, a module constant, an
        f-string (its holes read as the name `HOLE`), `sa.text(...)`, `.bindparams(...)` on one
        of those."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return self.constants.get(node.id)
        if isinstance(node, ast.JoinedStr):
            return "".join(
                str(v.value) if isinstance(v, ast.Constant)
                else (self.sql_text(v.value) or HOLE) for v in node.values
            )
        if isinstance(node, ast.Call):
            name = _call_name(node)
            if name == "text" and node.args:
                return self.sql_text(node.args[0])
            if name in ("bindparams", "columns") and isinstance(node.func, ast.Attribute):
                return self.sql_text(node.func.value)
        return None


def _call_name(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


class _LoopFinder:
    def __init__(self, source: Source, functions: dict[str, ast.FunctionDef],
                 found: dict[int, int]) -> None:
        self.source = source
        self.functions = functions
        self.found = found

    def block(self, statements: list[ast.stmt], dialects: frozenset[str], loop: int | None,
              autocommit: bool, seen: frozenset[str]) -> None:
        for statement in statements:
            if "postgresql" not in dialects:
                return
            if isinstance(statement, ast.If) and (on := dialect_test(statement.test)) is not None:
                self.block(statement.body, dialects & on, loop, autocommit, seen)
                self.block(statement.orelse, dialects - on, loop, autocommit, seen)
                # `if sqlite: ...; return` leaves the rest of the block to the other dialects.
                if _leaves(statement.body):
                    dialects = dialects - on
                elif _leaves(statement.orelse):
                    dialects = dialects & on
                continue
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            inner_loop, inner_autocommit = loop, autocommit
            if isinstance(statement, (ast.For, ast.AsyncFor, ast.While)) and loop is None:
                inner_loop = statement.lineno
            if isinstance(statement, (ast.For, ast.AsyncFor)) and not autocommit:
                if (changed := _object_change(statement)) is not None:
                    self.found.setdefault(loop or statement.lineno, changed)
            if isinstance(statement, (ast.With, ast.AsyncWith)) and any(
                isinstance(item.context_expr, ast.Call)
                and _call_name(item.context_expr) == "autocommit_block"
                for item in statement.items
            ):
                inner_autocommit = True
            for name, value in ast.iter_fields(statement):
                values = value if isinstance(value, list) else [value]
                if values and all(isinstance(v, ast.stmt) for v in values):
                    body_loop = inner_loop if name in ("body", "orelse") else loop
                    self.block(values, dialects, body_loop, inner_autocommit, seen)
                    continue
                for item in values:
                    if isinstance(item, ast.AST):
                        self.expression(item, loop, autocommit, seen)

    def expression(self, node: ast.AST, loop: int | None, autocommit: bool,
                   seen: frozenset[str]) -> None:
        for sub in _walk(node, loop):
            current, inner = sub
            if not isinstance(inner, ast.Call):
                continue
            name = _call_name(inner)
            if (isinstance(inner.func, ast.Name) and name in self.functions
                    and name not in seen):
                self.block(self.functions[name].body, _DIALECTS, current, autocommit,
                           seen | {name})
            elif current is not None and not autocommit and self._changes_rows(inner):
                self.found.setdefault(current, inner.lineno)

    def _changes_rows(self, call: ast.Call) -> bool:
        """An execute() of an UPDATE or DELETE, or an ORM query's update()/delete()."""
        name = _call_name(call)
        if name in ("execute", "exec_driver_sql") and (call.args or call.keywords):
            argument = call.args[0] if call.args else call.keywords[0].value
            text = self.source.sql_text(argument)
            if text is not None:
                return _is_row_change(text)
            return any(isinstance(n, ast.Call) and _call_name(n) in ("update", "delete")
                       for n in ast.walk(argument))
        if name in ("update", "delete") and isinstance(call.func, ast.Attribute):
            return any(isinstance(n, ast.Call) and _call_name(n) in ("query", "filter",
                                                                     "filter_by")
                       for n in ast.walk(call.func.value))
        return False


def _object_change(loop: ast.For | ast.AsyncFor) -> int | None:
    """The line where a loop over ORM objects changes one (`for w in session.query(W): w.x = 1`):
    the session flushes one UPDATE per object, all in the migration's transaction."""
    targets = {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)}
    for node in (n for statement in loop.body for n in ast.walk(statement)):
        assigned = (node.targets if isinstance(node, ast.Assign)
                    else [node.target] if isinstance(node, ast.AugAssign) else [])
        for target in assigned:
            if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                    and target.value.id in targets):
                return node.lineno
    return None


def _walk(node: ast.AST, loop: int | None) -> Iterator[tuple[int | None, ast.AST]]:
    """Every node under `node`, with the line of the loop it runs in (comprehensions are loops)."""
    yield loop, node
    inner = loop
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)) and loop is None:
        inner = node.lineno
    if isinstance(node, (ast.Lambda, ast.FunctionDef)):
        return
    for child in ast.iter_child_nodes(node):
        yield from _walk(child, inner)


def _is_row_change(sql: str) -> bool:
    # PostgreSQL's dialect and pglast (~0.2 s with -X importtime) load when a loop is judged,
    # not when the validator imports the linter to read scripts (`read_source`).
    from sqlalchemy import text
    from sqlalchemy.dialects import postgresql

    from orchestrator.migrations.lint.sql import ParseError, ast as pg, parse

    # `:name` parameters, as sa.text() takes them, become PostgreSQL's own `$1`.
    dialect = postgresql.dialect(paramstyle="numeric_dollar")
    try:
        statements = parse(str(text(sql).compile(dialect=dialect)))
    except ParseError:
        return False
    # A loop whose variable is the table (`f"UPDATE {table} ..."`) runs one statement per
    # table, not per row: the SQL rules judge each of them as rendered.
    return any(isinstance(s, (pg.UpdateStmt, pg.DeleteStmt)) and s.relation.relname != HOLE
               for s in statements)


def dialect_test(test: ast.expr) -> frozenset[str] | None:
    """The dialects for which `test` is true, when it compares the dialect's name."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = dialect_test(test.operand)
        return None if inner is None else _DIALECTS - inner
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    left, op, right = test.left, test.ops[0], test.comparators[0]
    if "dialect" not in ast.unparse(left):
        left, right = right, left
    if "dialect" not in ast.unparse(left):
        return None
    names = _names(right)
    if names is None:
        return None
    if isinstance(op, (ast.Eq, ast.In)):
        return _DIALECTS & names
    if isinstance(op, (ast.NotEq, ast.NotIn)):
        return _DIALECTS - names
    return None


def _names(node: ast.expr) -> frozenset[str] | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return frozenset({node.value})
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts
    ):
        return frozenset(e.value for e in node.elts)
    return None


def _leaves(statements: list[ast.stmt]) -> bool:
    return bool(statements) and isinstance(statements[-1], (ast.Return, ast.Raise))
