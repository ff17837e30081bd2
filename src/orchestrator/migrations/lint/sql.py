"""The rendered SQL as PostgreSQL's own parser reads it (pglast, libpg_query), and the schema it
builds revision by revision.

Nothing here matches SQL text: every statement goes through the parser, and the rules look at
its parse tree. `Schema` is what the revisions so far have built, as far as their SQL says
(tables and their column types, indexes, CHECK constraints that prove a column NOT NULL), so a
rule can tell an existing table from one the same revision creates, or an old column type from
a new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pglast import ast, parse_plpgsql, parse_sql
from pglast.parser import scan
from pglast.enums import AlterTableType, ConstrType, ObjectType
from pglast.parser import ParseError

__all__ = [
    "AlterTableType", "ConstrType", "ObjectType", "ParseError", "Schema", "TypeKey", "ast",
    "default_of", "parse", "type_key", "volatile_call",
]

# Batch mode's copy of a table while it recreates it (Alembic's name for it).
BATCH_TEMP_PREFIX = "_alembic_tmp_"


def parse(sql: str) -> list[ast.Node]:
    """The statements of one SQL text (raises ParseError when PostgreSQL would not parse it);
    a PL/pgSQL `DO` block stands for the statements it runs."""
    statements = []
    for raw in parse_sql(sql):
        if isinstance(raw.stmt, ast.DoStmt) and (inner := _do_statements(raw.stmt)) is not None:
            statements += inner
        else:
            statements.append(raw.stmt)
    return statements


def _do_statements(node: ast.DoStmt) -> list[ast.Node] | None:
    """The SQL a `DO $$ ... $$` block runs, read by PostgreSQL's PL/pgSQL parser: its plain
    statements and its `EXECUTE '<constant>'`s, in order, whatever IF they sit in (the linter
    cannot know which branch runs on the database, so it judges each). None when the block is
    not PL/pgSQL or does not parse."""
    options = {d.defname: d.arg.sval for d in node.args if isinstance(d.arg, ast.String)}
    if options.get("language", "plpgsql").lower() != "plpgsql" or "as" not in options:
        return None
    try:
        tree = parse_plpgsql("CREATE FUNCTION lint_do() RETURNS void LANGUAGE plpgsql AS "
                             f"$lint_do${options['as']}$lint_do$")
    except ParseError:
        return None
    statements: list[ast.Node] = []
    variables = _variables(tree)
    for query in _plpgsql_queries(tree):
        try:
            statements += parse(_as_parameters(query, variables))
        except ParseError:
            continue  # a statement over the block's own variables, or a dynamic one
    return statements


def _variables(tree: Any) -> set[str]:
    """The names of a PL/pgSQL block's variables (`DECLARE _low bigint;`), lower case."""
    found: set[str] = set()
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "PLpgSQL_var":
                found.add(value["refname"].lower())
            else:
                found |= _variables(value)
    elif isinstance(tree, list):
        for item in tree:
            found |= _variables(item)
    return found


def _as_parameters(query: str, variables: set[str]) -> str:
    """`query` with the block's variables written as bound parameters (`$1`), which is what they
    are to the statement: `WHERE id >= _low AND id < _low + 5000` is one batch's key range. A
    bare name that is also a column is the variable (PL/pgSQL refuses the ambiguity), so any
    unqualified identifier with a variable's name is one."""
    tokens = scan(query)
    parts, last = [], 0
    for i, token in enumerate(tokens):
        qualified = (i > 0 and tokens[i - 1].name == "ASCII_46") or (
            i + 1 < len(tokens) and tokens[i + 1].name == "ASCII_46")
        if (token.name == "IDENT" and not qualified
                and query[token.start:token.end + 1].lower() in variables):
            parts += [query[last:token.start], "$1"]
            last = token.end + 1
    return "".join(parts) + query[last:]


def _plpgsql_queries(tree: Any) -> list[str]:
    """The SQL texts of a PL/pgSQL parse tree (pglast gives it as JSON), in order."""
    found: list[str] = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "PLpgSQL_stmt_execsql":
                found.append(value["sqlstmt"]["PLpgSQL_expr"]["query"])
            elif key == "PLpgSQL_stmt_dynexecute":
                if (text := _constant_text(value["query"]["PLpgSQL_expr"]["query"])) is not None:
                    found.append(text)
            else:
                found += _plpgsql_queries(value)
    elif isinstance(tree, list):
        for item in tree:
            found += _plpgsql_queries(item)
    return found


def _constant_text(expression: str) -> str | None:
    """The string an EXECUTE runs when it is a constant (`EXECUTE 'CREATE INDEX ...'`); the
    PL/pgSQL parser has checked the expression, as `SELECT <expression>`."""
    [raw] = parse_sql(f"SELECT {expression}")
    [target] = raw.stmt.targetList
    value = target.val
    if isinstance(value, ast.A_Const) and isinstance(value.val, ast.String):
        return value.val.sval
    return None


def relname(range_var: ast.RangeVar) -> str:
    return range_var.relname


def names(nodes: Any) -> tuple[str, ...]:
    return tuple(node.sval for node in nodes or () if isinstance(node, ast.String))


# -- types ----------------------------------------------------------------------------------

# Spellings of the same type, as the parser leaves them.
_ALIASES = {
    "int": "int4", "integer": "int4", "serial": "int4", "serial4": "int4",
    "bigint": "int8", "bigserial": "int8", "serial8": "int8",
    "smallint": "int2", "smallserial": "int2", "serial2": "int2",
    "decimal": "numeric", "character varying": "varchar", "bool": "boolean",
    "float8": "double precision", "float4": "real", "varbit": "bit varying",
}
SERIAL_TYPES = frozenset({"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"})


@dataclass(frozen=True)
class TypeKey:
    """A column type as compared for rewrites: its name, its modifiers (length, precision)."""

    name: str
    modifiers: tuple[int, ...] = ()
    array: bool = False

    def __str__(self) -> str:
        text = self.name + (f"({', '.join(map(str, self.modifiers))})" if self.modifiers else "")
        return text + ("[]" if self.array else "")


def type_key(type_name: ast.TypeName) -> TypeKey:
    name = names(type_name.names)[-1].lower()
    modifiers = tuple(
        m.val.ival for m in type_name.typmods or ()
        if isinstance(m, ast.A_Const) and isinstance(m.val, ast.Integer)
    )
    return TypeKey(_ALIASES.get(name, name), modifiers, bool(type_name.arrayBounds))


def rewrites(old: TypeKey, new: TypeKey) -> bool:
    """Whether changing a column from `old` to `new` makes PostgreSQL rewrite (or re-check) every
    row. The changes that do not are the binary-coercible ones that loosen a limit: a longer or
    unlimited varchar, varchar to text, a wider or unlimited numeric, cidr to inet."""
    if old == new:
        return False
    if old.array != new.array:
        return True
    loosening = {("varchar", "varchar"), ("varchar", "text"), ("text", "varchar"),
                 ("bit varying", "bit varying")}
    if (old.name, new.name) in loosening:
        if new.name == "text" or not new.modifiers:
            return False
        return bool(not old.modifiers or new.modifiers[0] < old.modifiers[0])
    if old.name == new.name == "numeric":
        if not new.modifiers:
            return False
        old_scale = old.modifiers[1] if len(old.modifiers) > 1 else 0
        new_scale = new.modifiers[1] if len(new.modifiers) > 1 else 0
        return not (old.modifiers and new_scale == old_scale
                    and new.modifiers[0] >= old.modifiers[0])
    return (old.name, new.name) != ("cidr", "inet")


# -- defaults -------------------------------------------------------------------------------

# Functions PostgreSQL marks VOLATILE (pg_proc.provolatile = 'v') that make sense in a column
# default: a default calling one is evaluated for every existing row, so adding the column
# rewrites the table. now(), current_timestamp and the other STABLE functions are evaluated
# once (PostgreSQL 11 and later) and stored in the catalogue instead.
VOLATILE_FUNCTIONS = frozenset({
    "random", "random_normal", "clock_timestamp", "timeofday", "gen_random_uuid", "uuidv4",
    "uuidv7", "nextval", "currval", "lastval", "setval", "txid_status",
    # uuid-ossp and pgcrypto
    "uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v4", "gen_random_bytes",
})


def default_of(column: ast.ColumnDef) -> Any:
    """The DEFAULT expression of a column definition, or None (an explicit DEFAULT NULL too)."""
    for constraint in column.constraints or ():
        if constraint.contype == ConstrType.CONSTR_DEFAULT:
            expr = constraint.raw_expr
            if isinstance(expr, ast.A_Const) and expr.isnull:
                return None
            return expr
    return None


def volatile_call(expr: Any) -> str | None:
    """The name of a volatile function called anywhere in `expr`, if any."""
    found: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, ast.FuncCall):
            name = names(node.funcname)[-1].lower()
            if name in VOLATILE_FUNCTIONS:
                found.append(name)
        if isinstance(node, ast.Node):
            for slot in node:
                visit(getattr(node, slot))
        elif isinstance(node, tuple):
            for item in node:
                visit(item)

    visit(expr)
    return found[0] if found else None


def deparse(expr: Any) -> str:
    """An expression as SQL text, as PostgreSQL's parser would print it back."""
    # pglast's printers add ~10 ms (measured, median of 5) to every lint run; only a fix that
    # quotes an expression (MIG011) needs them.
    from pglast.stream import RawStream

    return RawStream()(expr)


def constraints(column: ast.ColumnDef, *kinds: ConstrType) -> list[ast.Constraint]:
    return [c for c in column.constraints or () if c.contype in kinds]


def not_null_column(expr: Any) -> str | None:
    """The column a CHECK expression proves NOT NULL (`col IS NOT NULL`), if that is all it says."""
    if (isinstance(expr, ast.NullTest) and expr.nulltesttype.name == "IS_NOT_NULL"
            and isinstance(expr.arg, ast.ColumnRef)):
        return names(expr.arg.fields)[-1]
    return None


# -- the schema -----------------------------------------------------------------------------


@dataclass
class Check:
    table: str
    # The column it proves NOT NULL, when it is a `col IS NOT NULL` check.
    not_null: str | None
    valid: bool


@dataclass
class Schema:
    """What the revisions so far built, as their SQL says."""

    # table -> column -> type (None when the SQL did not say)
    tables: dict[str, dict[str, TypeKey | None]] = field(default_factory=dict)
    # index -> its table
    indexes: dict[str, str] = field(default_factory=dict)
    # constraint name -> CHECK constraint
    checks: dict[str, Check] = field(default_factory=dict)

    def column_type(self, table: str, column: str) -> TypeKey | None:
        return self.tables.get(table, {}).get(column)

    def proves_not_null(self, table: str, column: str) -> bool:
        """A valid CHECK (column IS NOT NULL): SET NOT NULL then skips its scan (PostgreSQL 12+)."""
        return any(check.valid and check.table == table and check.not_null == column
                   for check in self.checks.values())

    def apply(self, node: ast.Node) -> None:
        """Change the schema as the statement does."""
        if isinstance(node, ast.CreateStmt):
            table = relname(node.relation)
            self.tables[table] = {}
            for element in node.tableElts or ():
                if isinstance(element, ast.ColumnDef):
                    self.tables[table][element.colname] = type_key(element.typeName)
                    for check in constraints(element, ConstrType.CONSTR_CHECK):
                        self._add_check(table, check)
                elif isinstance(element, ast.Constraint):
                    self._add_check(table, element)
        elif isinstance(node, ast.IndexStmt) and node.idxname:
            self.indexes[node.idxname] = relname(node.relation)
        elif isinstance(node, ast.DropStmt):
            for dropped in (names(o)[-1] for o in node.objects if isinstance(o, tuple)):
                if node.removeType == ObjectType.OBJECT_TABLE:
                    self.tables.pop(dropped, None)
                elif node.removeType == ObjectType.OBJECT_INDEX:
                    self.indexes.pop(dropped, None)
        elif isinstance(node, ast.RenameStmt):
            self._rename(node)
        elif isinstance(node, ast.AlterTableStmt):
            table = relname(node.relation)
            for cmd in node.cmds:
                self._alter(table, cmd)

    def _rename(self, node: ast.RenameStmt) -> None:
        if node.relation is None:
            return  # a type, function, schema...: no table of this schema changes
        table = relname(node.relation)
        if node.renameType == ObjectType.OBJECT_TABLE:
            self.tables[node.newname] = self.tables.pop(table, {})
            for check in self.checks.values():
                check.table = node.newname if check.table == table else check.table
        elif node.renameType == ObjectType.OBJECT_COLUMN and table in self.tables:
            columns = self.tables[table]
            columns[node.newname] = columns.pop(node.subname, None)

    def _alter(self, table: str, cmd: ast.AlterTableCmd) -> None:
        columns = self.tables.setdefault(table, {})
        subtype = cmd.subtype
        if subtype == AlterTableType.AT_AddColumn:
            columns[cmd.def_.colname] = type_key(cmd.def_.typeName)
            for check in constraints(cmd.def_, ConstrType.CONSTR_CHECK):
                self._add_check(table, check)
        elif subtype == AlterTableType.AT_DropColumn:
            columns.pop(cmd.name, None)
        elif subtype == AlterTableType.AT_AlterColumnType:
            columns[cmd.name] = type_key(cmd.def_.typeName)
        elif subtype == AlterTableType.AT_AddConstraint:
            self._add_check(table, cmd.def_)
        elif subtype == AlterTableType.AT_ValidateConstraint and cmd.name in self.checks:
            self.checks[cmd.name].valid = True
        elif subtype == AlterTableType.AT_DropConstraint:
            self.checks.pop(cmd.name, None)

    def _add_check(self, table: str, constraint: ast.Constraint) -> None:
        if constraint.contype == ConstrType.CONSTR_CHECK and constraint.conname:
            self.checks[constraint.conname] = Check(
                table, not_null_column(constraint.raw_expr), not constraint.skip_validation
            )
