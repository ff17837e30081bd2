"""The rules that read a revision's PostgreSQL SQL, one small function per danger.

Each rule looks at one parsed statement (or one `ALTER TABLE` command) together with where the
migration stands when it runs (`At`): the schema the earlier revisions built, what this revision
created so far, and which tables its current transaction already holds a lock on that blocks
writers. A rule yields `Hit`s: the code, what is wrong with the names involved, and the fix.

Everything is judged for PostgreSQL 12 or later with live traffic: what matters is how long a
lock that blocks readers or writers is held, whether a table is rewritten, and whether the code
still running against the previous schema breaks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from orchestrator.migrations.lint.render import Statement
from orchestrator.migrations.lint.sql import (
    BATCH_TEMP_PREFIX,
    SERIAL_TYPES,
    AlterTableType,
    ConstrType,
    ObjectType,
    Schema,
    ast,
    constraints,
    default_of,
    deparse,
    TypeKey,
    names,
    relname,
    rewrites,
    type_key,
    volatile_call,
)

AUTOCOMMIT = "`with op.get_context().autocommit_block():`"
_SERIAL_BASE = {"serial": "integer", "serial4": "integer", "bigserial": "bigint",
                "serial8": "bigint", "smallserial": "smallint", "serial2": "smallint"}


@dataclass(frozen=True)
class Hit:
    code: str
    message: str
    fix: str
    # The table a later statement of the revision can make safe (a view under a renamed name).
    subject: str | None = None


@dataclass
class At:
    """Where the migration stands when a statement runs."""

    statement: Statement
    # The schema before this statement (earlier revisions and this one's earlier statements).
    schema: Schema
    # Tables and (table, column)s this revision created before this statement.
    new_tables: set[str] = field(default_factory=set)
    new_columns: set[tuple[str, str]] = field(default_factory=set)
    # Tables on which the current transaction already holds a lock that blocks writers: it is
    # held until COMMIT, so anything slow later in the same transaction blocks them all along.
    # (Emptied when a transaction ends, and before each statement run outside one.)
    locked: set[str] = field(default_factory=set)
    # Views this revision created (a view under a renamed table's old name keeps old code working).
    views: set[str] = field(default_factory=set)

    def existing(self, table: str) -> bool:
        """The table existed before this revision (one it does not create is assumed to)."""
        return table not in self.new_tables

    def existing_column(self, table: str, column: str) -> bool:
        return self.existing(table) and (table, column) not in self.new_columns


StatementRule = Callable[[ast.Node, At], Iterator[Hit]]
CommandRule = Callable[[str, ast.AlterTableCmd, At], Iterator[Hit]]
STATEMENT_RULES: list[tuple[tuple[type, ...], StatementRule]] = []
COMMAND_RULES: list[tuple[tuple[AlterTableType, ...], CommandRule]] = []


def on_statement(*kinds: type) -> Callable[[StatementRule], StatementRule]:
    def register(rule: StatementRule) -> StatementRule:
        STATEMENT_RULES.append((kinds, rule))
        return rule
    return register


def on_command(*kinds: AlterTableType) -> Callable[[CommandRule], CommandRule]:
    def register(rule: CommandRule) -> CommandRule:
        COMMAND_RULES.append((kinds, rule))
        return rule
    return register


# -- MIG010, MIG011: adding columns -----------------------------------------------------------


@on_command(AlterTableType.AT_AddColumn)
def not_null_column_without_default(table: str, cmd: ast.AlterTableCmd, at: At) -> Iterator[Hit]:
    """MIG010. A NOT NULL column without a default cannot be added to a table that has rows:
    PostgreSQL refuses (every existing row would be NULL), and the deploy stops there."""
    column = cmd.def_
    generated = constraints(column, ConstrType.CONSTR_IDENTITY, ConstrType.CONSTR_GENERATED)
    if (at.existing(table) and constraints(column, ConstrType.CONSTR_NOTNULL)
            and default_of(column) is None and not generated
            and names(column.typeName.names)[-1] not in SERIAL_TYPES):
        yield Hit(
            "MIG010",
            f"adds {table}.{column.colname} NOT NULL without a default: PostgreSQL refuses it "
            "on a table that has rows",
            f"add {column.colname} with a constant server_default (kept in the catalogue, no "
            "rewrite), or add it nullable, backfill it in batches and make it NOT NULL later "
            "with the CHECK … NOT VALID recipe (MIG012)",
        )


@on_command(AlterTableType.AT_AddColumn)
def volatile_default(table: str, cmd: ast.AlterTableCmd, at: At) -> Iterator[Hit]:
    """MIG011. A column whose default must be computed for each row (a volatile function such
    as random() or clock_timestamp(), a uuid generator, a serial's nextval(), an identity or a
    stored generated column) makes PostgreSQL rewrite the whole table under an ACCESS EXCLUSIVE
    lock: no reads, no writes until it is done. Constant and STABLE defaults (now()) are not."""
    column = cmd.def_
    if not at.existing(table):
        return
    name, kind = column.colname, names(column.typeName.names)[-1]
    plain = f"add {name} nullable, without that default, "
    backfill = "and backfill the existing rows in batches"
    if (called := volatile_call(default_of(column))) is not None:
        why = f"the volatile default {called}()"
        fix = (plain + f"then `ALTER TABLE {table} ALTER COLUMN {name} SET DEFAULT "
               f"{deparse(default_of(column))}` for new rows (no rewrite), " + backfill)
    elif kind in SERIAL_TYPES:
        why = f"the serial type {kind} (a nextval() default)"
        sequence = f"{table}_{name}_seq"
        fix = (f"add {name} as a nullable {_SERIAL_BASE[kind]}, `CREATE SEQUENCE {sequence} "
               f"OWNED BY {table}.{name}`, then `ALTER TABLE {table} ALTER COLUMN {name} SET "
               f"DEFAULT nextval('{sequence}')` for new rows (no rewrite), " + backfill)
    elif constraints(column, ConstrType.CONSTR_IDENTITY):
        why = "GENERATED … AS IDENTITY"
        fix = (plain + backfill + ", make it NOT NULL with the CHECK … NOT VALID recipe "
               f"(MIG012), then `ALTER TABLE {table} ALTER COLUMN {name} ADD GENERATED BY "
               "DEFAULT AS IDENTITY` (no rewrite) and move its sequence past the highest value")
    elif constraints(column, ConstrType.CONSTR_GENERATED):
        why = "a stored generated expression"
        fix = (f"add {name} as a plain nullable column, fill it for new rows from the code or "
               "a BEFORE INSERT OR UPDATE trigger, " + backfill)
    else:
        return
    yield Hit(
        "MIG011",
        f"adds {table}.{name} with {why}: PostgreSQL computes it for every row and "
        "rewrites the table under an ACCESS EXCLUSIVE lock",
        fix,
    )


# -- MIG012: SET NOT NULL -----------------------------------------------------------------------


@on_command(AlterTableType.AT_SetNotNull)
def set_not_null(table: str, cmd: ast.AlterTableCmd, at: At) -> Iterator[Hit]:
    """MIG012. SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock to prove there
    is no NULL, unless a valid CHECK (col IS NOT NULL) already proves it. A server_default set at
    the same time changes nothing: a default does not fill the NULLs already there. A column
    added by the same migration is scanned too: the table's rows all have it."""
    column = cmd.name
    if not at.existing(table) or at.schema.proves_not_null(table, column):
        return
    check = f"ck_{table}_{column}_not_null"
    if (table, column) in at.new_columns:
        fix = (f"if every existing row gets the same value, add {column} NOT NULL with that "
               "constant server_default in the ADD COLUMN itself (stored in the catalogue, no "
               "scan); otherwise add it nullable here, backfill it in batches, and make it NOT "
               f"NULL in later migrations with `CHECK ({column} IS NOT NULL) NOT VALID`, "
               "`VALIDATE CONSTRAINT`, then SET NOT NULL")
    else:
        fix = (f"backfill the NULLs, then `ALTER TABLE {table} ADD CONSTRAINT {check} CHECK "
               f"({column} IS NOT NULL) NOT VALID`; in a later migration `VALIDATE CONSTRAINT "
               f"{check}` (no write lock), then SET NOT NULL (no scan) and drop the check")
    yield Hit(
        "MIG012",
        f"makes {table}.{column} NOT NULL: PostgreSQL scans the whole table under an ACCESS "
        "EXCLUSIVE lock (and fails if a NULL is left; a server_default does not fill them)",
        fix,
    )


# -- MIG013, MIG014: indexes ----------------------------------------------------------------------


def _concurrently(node: ast.Node) -> bool:
    if isinstance(node, ast.ReindexStmt):
        return any(p.defname == "concurrently" for p in node.params or ())
    return bool(node.concurrent)


def _index_table(node: ast.Node, at: At) -> tuple[str, str] | None:
    """(what, table) of an index statement; None for what this revision created."""
    if isinstance(node, ast.IndexStmt):
        table = relname(node.relation)
        return (f"builds index {node.idxname or '(unnamed)'} on {table}", table) \
            if at.existing(table) else None
    if isinstance(node, ast.ReindexStmt):
        target = node.relation.relname if node.relation else node.name
        return f"rebuilds {target}", target
    if node.removeType != ObjectType.OBJECT_INDEX:
        return None
    for index in (names(o)[-1] for o in node.objects):
        table = at.schema.indexes.get(index)
        if table is None or at.existing(table):
            return f"drops index {index}" + (f" on {table}" if table else ""), table or index
    return None


@on_statement(ast.IndexStmt, ast.DropStmt, ast.ReindexStmt)
def index_not_concurrent(node: ast.Node, at: At) -> Iterator[Hit]:
    """MIG013. CREATE INDEX blocks every write to the table until the whole index is built (a
    SHARE lock); DROP INDEX and REINDEX take locks that block reads too. CONCURRENTLY does the
    same work without blocking writers."""
    found = _index_table(node, at)
    if found is None or _concurrently(node):
        return
    what, _table = found
    statement = {ast.IndexStmt: "CREATE INDEX", ast.DropStmt: "DROP INDEX",
                 ast.ReindexStmt: "REINDEX"}[type(node)]
    if isinstance(node, ast.IndexStmt) and node.unique:
        statement = "CREATE UNIQUE INDEX"
    blocked = "writes to the table" if isinstance(node, ast.IndexStmt) else \
        "reads and writes of the table"
    yield Hit(
        "MIG013",
        f"{what} without CONCURRENTLY: PostgreSQL blocks {blocked} until it is done",
        f"use `{statement} CONCURRENTLY` (`postgresql_concurrently=True`) inside {AUTOCOMMIT}",
    )


@on_statement(ast.IndexStmt, ast.DropStmt, ast.ReindexStmt)
def concurrently_in_transaction(node: ast.Node, at: At) -> Iterator[Hit]:
    """MIG014. CONCURRENTLY cannot run inside a transaction block, and every revision runs in
    one: PostgreSQL refuses the statement and the migration fails, unless it is inside
    `autocommit_block()`."""
    if isinstance(node, ast.DropStmt) and node.removeType != ObjectType.OBJECT_INDEX:
        return
    if _concurrently(node) and at.statement.in_transaction:
        yield Hit(
            "MIG014",
            "runs CONCURRENTLY inside the migration's transaction: PostgreSQL refuses it "
            "(cannot run inside a transaction block)",
            f"move it into {AUTOCOMMIT}, which commits the transaction before and starts a new "
            "one after",
        )


# -- MIG015, MIG016: constraints ------------------------------------------------------------------


@on_command(AlterTableType.AT_AddConstraint, AlterTableType.AT_AddColumn)
def unique_constraint(table: str, cmd: ast.AlterTableCmd, at: At) -> Iterator[Hit]:
    """MIG015. ADD CONSTRAINT … UNIQUE (or PRIMARY KEY), or a new column declared UNIQUE,
    builds its index while holding an ACCESS EXCLUSIVE lock: no reads or writes for the whole
    build. Built first with CREATE UNIQUE INDEX CONCURRENTLY, the index can be attached as the
    constraint instantly."""
    kinds = {ConstrType.CONSTR_UNIQUE: "UNIQUE", ConstrType.CONSTR_PRIMARY: "PRIMARY KEY"}
    if (cmd.subtype == AlterTableType.AT_AddConstraint and at.existing(table)
            and cmd.def_.contype == ConstrType.CONSTR_EXCLUSION):
        yield _exclusion_hit(table, cmd.def_)
        return
    if cmd.subtype == AlterTableType.AT_AddColumn:
        found = [(c, (cmd.def_.colname,)) for c in constraints(cmd.def_, *kinds)]
    else:
        found = [(cmd.def_, names(cmd.def_.keys))]
    for constraint, keys in found:
        if constraint.contype not in kinds or constraint.indexname or not at.existing(table):
            continue
        columns = ", ".join(keys)
        name = constraint.conname or (
            f"{table}_pkey" if constraint.contype == ConstrType.CONSTR_PRIMARY
            else f"{table}_{'_'.join(keys)}_key")
        yield Hit(
            "MIG015",
            f"adds {kinds[constraint.contype]} constraint {name} to {table}: PostgreSQL builds "
            "its index under an ACCESS EXCLUSIVE lock (no reads or writes meanwhile)",
            f"build the index first, `CREATE UNIQUE INDEX CONCURRENTLY {name} ON {table} "
            f"({columns})` inside {AUTOCOMMIT}, then `ALTER TABLE {table} ADD CONSTRAINT "
            f"{name} {kinds[constraint.contype]} USING INDEX {name}`",
        )


def _exclusion_hit(table: str, constraint: ast.Constraint) -> Hit:
    """An exclusion constraint has no concurrent build and no USING INDEX form."""
    name = constraint.conname or f"{table}_excl"
    return Hit(
        "MIG015",
        f"adds EXCLUDE constraint {name} to {table}: PostgreSQL builds its index and checks "
        "every row under an ACCESS EXCLUSIVE lock, and offers no CONCURRENTLY form for it",
        "if every operator is `=`, use a unique index built `CONCURRENTLY` inside "
        f"{AUTOCOMMIT} instead; otherwise add the constraint to a new table and move the rows "
        "to it in batches, or run it in a maintenance window with a short lock_timeout",
    )


def _validated_later(kind: str, name: str, table: str) -> str:
    return (f"add it `NOT VALID` (`postgresql_not_valid=True`; existing rows are not checked, "
            f"new ones are), and `ALTER TABLE {table} VALIDATE CONSTRAINT {name}` in a later "
            f"migration: validating takes a lock that lets reads and writes go on")


@on_command(AlterTableType.AT_AddConstraint, AlterTableType.AT_AddColumn)
def constraint_not_valid(table: str, cmd: ast.AlterTableCmd, at: At) -> Iterator[Hit]:
    """MIG016. A FOREIGN KEY or CHECK constraint added to an existing table is checked against
    every row while a lock that blocks writes is held (ACCESS EXCLUSIVE for a CHECK, SHARE ROW
    EXCLUSIVE on both tables for a foreign key). NOT VALID skips that check; VALIDATE
    CONSTRAINT later does it under a lock that lets traffic through."""
    if not at.existing(table):
        return
    if cmd.subtype == AlterTableType.AT_AddColumn:
        found = [(c, f"{table}.{cmd.def_.colname}", f"{table}_{cmd.def_.colname}")
                 for c in constraints(cmd.def_, ConstrType.CONSTR_FOREIGN,
                                      ConstrType.CONSTR_CHECK)]
    else:
        found = [(cmd.def_, table, "_".join((table, *names(cmd.def_.fk_attrs))))] \
            if cmd.def_.contype in (ConstrType.CONSTR_FOREIGN, ConstrType.CONSTR_CHECK) else []
    for constraint, where, stem in found:
        if constraint.skip_validation:
            continue
        foreign = constraint.contype == ConstrType.CONSTR_FOREIGN
        kind = "FOREIGN KEY" if foreign else "CHECK"
        # PostgreSQL's own name for an unnamed constraint.
        name = constraint.conname or f"{stem}_{'fkey' if foreign else 'check'}"
        columns = names(constraint.fk_attrs)
        if where != table:
            first = "add the column first, then the constraint separately; "
        elif foreign and columns and all((table, c) in at.new_columns for c in columns):
            first = (f"drop the `sa.ForeignKey` from the new column {', '.join(columns)} (Alembic "
                     "adds it as a separate, validated constraint) and add the key with "
                     "`op.create_foreign_key(...)`; ")
        else:
            first = ""
        yield Hit(
            "MIG016",
            f"adds {kind} {name} on {where} without NOT VALID: PostgreSQL checks every existing "
            "row while holding a lock that blocks writes",
            first + _validated_later(kind, name, table),
        )


@on_command(AlterTableType.AT_ValidateConstraint)
def validate_under_lock(table: str, cmd: ast.AlterTableCmd, at: At) -> Iterator[Hit]:
    """MIG016 too. VALIDATE CONSTRAINT only lets traffic through when nothing earlier in the same
    transaction locked the table: after an ALTER TABLE in the same migration, the whole scan runs
    under that statement's ACCESS EXCLUSIVE lock, as if NOT VALID had not been used."""
    if at.existing(table) and table in at.locked:
        yield Hit(
            "MIG016",
            f"validates {cmd.name} in the same transaction that already locked {table}: the "
            "scan of every row runs under that lock (no reads or writes meanwhile)",
            f"move `ALTER TABLE {table} VALIDATE CONSTRAINT {cmd.name}` to a later migration",
        )


# -- MIG017: column types -----------------------------------------------------------------------


@on_command(AlterTableType.AT_AlterColumnType)
def rewriting_type_change(table: str, cmd: ast.AlterTableCmd, at: At) -> Iterator[Hit]:
    """MIG017. Changing a column's type rewrites the table (and rebuilds its indexes) under an
    ACCESS EXCLUSIVE lock, unless the new type only loosens a limit of the old one: a longer or
    unlimited varchar, varchar to text, a wider numeric. int to bigint, a shorter varchar, or
    another type family all rewrite."""
    column = cmd.name
    if not at.existing(table):  # a column the same migration added is in every row too
        return
    new = type_key(cmd.def_.typeName)
    old = at.schema.column_type(table, column)
    if old is not None and not rewrites(old, new) and _plain_using(cmd.def_.raw_default, column,
                                                                     new):
        return
    change = f"from {old} to {new}" if old is not None else f"to {new} (its old type is unknown)"
    fix = (f"add a new column of type {new}, write both from the code, backfill it in batches, "
           f"move the readers, then drop {column} in a later release")
    if old is not None and old.name in ("varchar", "text") and new.name == "varchar" \
            and new.modifiers and not old.array and not new.array:
        fix = (f"to limit {column} to {new.modifiers[0]} characters without a rewrite, keep its "
               f"type and add `CHECK (char_length({column}) <= {new.modifiers[0]}) NOT VALID`, "
               "validated in a later migration; or " + fix)
    yield Hit(
        "MIG017",
        f"changes {table}.{column} {change}: PostgreSQL rewrites the table and its indexes under "
        "an ACCESS EXCLUSIVE lock",
        fix,
    )


def _plain_using(using: object, column: str, new: TypeKey) -> bool:
    """No USING, or one that only casts the column to its new type (`USING code::text`, as
    `postgresql_using` is often written): PostgreSQL then decides as without it. Any other
    expression is computed for every row: a rewrite."""
    if isinstance(using, ast.TypeCast) and type_key(using.typeName) == new:
        using = using.arg
    return using is None or (isinstance(using, ast.ColumnRef)
                             and names(using.fields)[-1:] == (column,))


_REWRITE_FIX = ("do not rewrite a live table in a migration: rebuild it online with pg_repack "
                "(or pg_squeeze), or run it in a maintenance window")


@on_statement(ast.ClusterStmt, ast.VacuumStmt)
def table_rewrite(node: ast.Node, at: At) -> Iterator[Hit]:
    """MIG017 too. CLUSTER and VACUUM FULL copy the whole table into new files under an ACCESS
    EXCLUSIVE lock: no reads or writes until the copy and its indexes are done."""
    if isinstance(node, ast.ClusterStmt):
        what, tables = "CLUSTER", [node.relation] if node.relation else []
    elif any(option.defname == "full" for option in node.options or ()):
        what, tables = "VACUUM FULL", [r.relation for r in node.rels or ()]
    else:
        return
    targets = [relname(t) for t in tables if t is not None]
    if any(at.existing(t) for t in targets) or not targets:
        yield Hit("MIG017", f"rewrites {', '.join(targets) or 'every table'} ({what}): "
                  "PostgreSQL copies every row under an ACCESS EXCLUSIVE lock (no reads or "
                  "writes meanwhile)", _REWRITE_FIX)


@on_command(AlterTableType.AT_SetLogged, AlterTableType.AT_SetUnLogged,
            AlterTableType.AT_SetTableSpace)
def rewriting_table_command(table: str, cmd: ast.AlterTableCmd, at: At) -> Iterator[Hit]:
    """MIG017 too. SET LOGGED / UNLOGGED and SET TABLESPACE copy the whole table under an ACCESS
    EXCLUSIVE lock."""
    what = {AlterTableType.AT_SetLogged: "SET LOGGED", AlterTableType.AT_SetUnLogged:
            "SET UNLOGGED", AlterTableType.AT_SetTableSpace: "SET TABLESPACE"}[cmd.subtype]
    if at.existing(table):
        yield Hit("MIG017", f"rewrites {table} ({what}): PostgreSQL copies every row under an "
                  "ACCESS EXCLUSIVE lock (no reads or writes meanwhile)", _REWRITE_FIX)


# -- MIG018, MIG019: what the running code still uses ---------------------------------------------

_EXPAND_CONTRACT = ("first deploy code that no longer uses it; drop it in a later migration "
                    "(expand/contract), after copying the data if it is still needed")


@on_statement(ast.DropStmt)
def drop_table(node: ast.DropStmt, at: At) -> Iterator[Hit]:
    """MIG018. Dropping a table the previous release still reads or writes breaks every running
    instance at once, and destroys its data."""
    if node.removeType != ObjectType.OBJECT_TABLE:
        return
    for table in (names(o)[-1] for o in node.objects):
        if at.existing(table) and BATCH_TEMP_PREFIX + table not in at.new_tables:
            yield Hit("MIG018", f"drops table {table} and its rows while the running code "
                      "may still use it", _EXPAND_CONTRACT)


@on_command(AlterTableType.AT_DropColumn)
def drop_column(table: str, cmd: ast.AlterTableCmd, at: At) -> Iterator[Hit]:
    """MIG018. Dropping a column the previous release still selects or inserts breaks it, and
    destroys the column's data."""
    if at.existing_column(table, cmd.name):
        yield Hit("MIG018", f"drops column {table}.{cmd.name} and its data while the running "
                  "code may still use it", _EXPAND_CONTRACT)


@on_statement(ast.RenameStmt)
def rename(node: ast.RenameStmt, at: At) -> Iterator[Hit]:
    """MIG019. A rename is a drop for the code still running against the old name: every query
    that names it fails from the moment the migration commits."""
    table = relname(node.relation)
    if node.renameType == ObjectType.OBJECT_TABLE and not table.startswith(BATCH_TEMP_PREFIX):
        what = f"table {table} to {node.newname}"
        fix = (f"create {node.newname}, write to both, copy the rows, move the readers, then "
               f"drop {table} in a later release (or keep a view named {table} meanwhile)")
    elif node.renameType == ObjectType.OBJECT_COLUMN:
        what = f"column {table}.{node.subname} to {node.newname}"
        fix = (f"add {node.newname}, write to both, backfill it, move the readers, then drop "
               f"{node.subname} in a later release")
    else:
        return
    if at.existing(table) and (node.renameType == ObjectType.OBJECT_TABLE
                               or at.existing_column(table, node.subname)):
        subject = table if node.renameType == ObjectType.OBJECT_TABLE else None
        yield Hit("MIG019", f"renames {what}: the running code still uses the old name", fix,
                  subject)


# -- MIG020: batch mode recreating a table --------------------------------------------------------


@on_statement(ast.CreateStmt)
def batch_recreate(node: ast.CreateStmt, at: At) -> Iterator[Hit]:
    """MIG020. batch_alter_table with recreate="always" copies the table into a new one (CREATE,
    INSERT … SELECT, DROP, RENAME): on PostgreSQL the whole table is rewritten while it is
    locked, and its indexes are rebuilt, for changes PostgreSQL can make in place."""
    table = relname(node.relation)
    if table.startswith(BATCH_TEMP_PREFIX) and at.existing(table[len(BATCH_TEMP_PREFIX):]):
        yield batch_hit(table[len(BATCH_TEMP_PREFIX):])


def batch_hit(table: str) -> Hit:
    return Hit(
        "MIG020",
        f"recreates table {table} (batch_alter_table recreate=\"always\"): PostgreSQL copies "
        "every row into a new table under an ACCESS EXCLUSIVE lock",
        "use plain op.add_column/op.alter_column on PostgreSQL (batch mode's default "
        "recreate=\"auto\" does that), and keep recreate=\"always\" in a SQLite-only branch",
    )


# -- MIG021: data changes -----------------------------------------------------------------------


def _whole_table(where: object) -> bool:
    """No condition, or only `col IS [NOT] NULL` tests: the backfill shape, every row."""
    if where is None:
        return True
    if isinstance(where, ast.NullTest):
        return True
    if isinstance(where, ast.BoolExpr) and where.boolop.name == "AND_EXPR":
        return all(_whole_table(arg) for arg in where.args)
    return False


def _conjuncts(where: object) -> list[object]:
    if isinstance(where, ast.BoolExpr) and where.boolop.name == "AND_EXPR":
        return [c for arg in where.args for c in _conjuncts(arg)]
    return [where]


def _value(node: object) -> bool:
    """A constant, a bound parameter, arithmetic on those, an array of those (possibly cast),
    or a scalar subquery: one value, or a list of them, given to the statement."""
    if isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.A_ArrayExpr):
        return all(_value(e) for e in node.elements or ())
    if isinstance(node, ast.SubLink):
        return node.subLinkType.name == "EXPR_SUBLINK"
    if isinstance(node, ast.A_Expr) and node.kind.name == "AEXPR_OP":  # `:low + 5000`
        return all(_value(side) for side in (node.lexpr, node.rexpr) if side is not None)
    return isinstance(node, (ast.A_Const, ast.ParamRef))


def _column(node: object) -> str | None:
    return names(node.fields)[-1] if isinstance(node, ast.ColumnRef) and names(node.fields) \
        else None


def _bounded(where: object) -> bool:
    """Whether a condition picks rows the way a targeted fix or one batch does: `col = value` or
    `col IN (values)`, a key range with both ends (`id >= :low AND id < :high`, BETWEEN), or a
    subquery with a LIMIT. Anything else (IS NULL, a join, a comparison with another column or
    an open range) may select every row of the table."""
    lower: set[str] = set()
    upper: set[str] = set()
    for condition in _conjuncts(where):
        if isinstance(condition, ast.SubLink) and getattr(condition.subselect, "limitCount", None):
            return True
        if not isinstance(condition, ast.A_Expr):
            continue
        left, right = condition.lexpr, condition.rexpr
        kind, operator = condition.kind.name, names(condition.name)[-1]
        if _column(left) is None:  # `5 = id`: read it as `id = 5`
            left, right = right, left
            operator = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(operator, operator)
        column = _column(left)
        values = right if isinstance(right, tuple) else (right,)
        if column is None or not values or not all(_value(v) for v in values):
            continue
        if kind == "AEXPR_BETWEEN" or (
                kind in ("AEXPR_OP", "AEXPR_OP_ANY", "AEXPR_IN") and operator == "="):
            return True
        if kind == "AEXPR_OP" and operator in (">", ">="):
            lower.add(column)
        elif kind == "AEXPR_OP" and operator in ("<", "<="):
            upper.add(column)
    return bool(lower & upper)


@on_statement(ast.UpdateStmt, ast.DeleteStmt)
def unbatched_dml(node: ast.Node, at: At) -> Iterator[Hit]:
    """MIG021. One UPDATE or DELETE over a whole table locks every row it touches until the
    migration commits (writers to those rows wait), writes a dead copy of each, and with the
    schema change in the same transaction keeps the table locked throughout."""
    table = relname(node.relation)
    if not at.existing(table) or (node.whereClause is not None and _bounded(node.whereClause)):
        return
    verb = "updates" if isinstance(node, ast.UpdateStmt) else "deletes"
    rows = (f"every row of {table}" if _whole_table(node.whereClause) else
            f"the rows of {table} matching a condition that is neither a key nor a key range "
            "(it may be every row)")
    yield Hit(
        "MIG021",
        f"{verb} {rows} in one statement: each row stays locked until the migration commits"
        + (", and so does the table it altered or locked" if table in at.locked else ""),
        "change it in batches of a few thousand rows by key (`WHERE id >= :low AND id < :high`), "
        f"each batch committed on its own inside {AUTOCOMMIT}, or run the backfill outside the "
        "migration",
    )


@on_statement(ast.TruncateStmt)
def truncate(node: ast.TruncateStmt, at: At) -> Iterator[Hit]:
    """MIG021 too. TRUNCATE takes an ACCESS EXCLUSIVE lock (it waits for every running query and
    blocks all that come after), and the rows the running code reads are gone at commit."""
    for table in (relname(r) for r in node.relations):
        if at.existing(table):
            yield Hit(
                "MIG021",
                f"empties {table} (TRUNCATE) under an ACCESS EXCLUSIVE lock: the running code "
                "waits for it, then finds no rows",
                f"if the rows must go while the code runs, delete them in batches inside "
                f"{AUTOCOMMIT}; if the table is retired, deploy code that no longer uses it, "
                "then drop it in a later migration",
            )


# -- the walk -------------------------------------------------------------------------------------

# LOCK TABLE modes from SHARE (5) up block writers.
_SHARE_LOCK = 5
# ALTER TABLE commands whose lock lets writers through (SHARE UPDATE EXCLUSIVE or weaker).
_LIGHT_COMMANDS = frozenset({
    AlterTableType.AT_ValidateConstraint, AlterTableType.AT_SetStatistics,
    AlterTableType.AT_ClusterOn, AlterTableType.AT_SetRelOptions,
    AlterTableType.AT_ResetRelOptions,
})


def check(node: ast.Node, at: At) -> Iterator[Hit]:
    """Every rule that applies to one parsed statement."""
    for kinds, rule in STATEMENT_RULES:
        if isinstance(node, kinds):
            yield from rule(node, at)
    if isinstance(node, ast.AlterTableStmt):
        table = relname(node.relation)
        for cmd in node.cmds:
            for kinds, command_rule in COMMAND_RULES:
                if cmd.subtype in kinds:
                    yield from command_rule(table, cmd, at)


def advance(node: ast.Node, at: At) -> None:
    """What the statement changes for the statements after it."""
    if isinstance(node, ast.CreateStmt):
        at.new_tables.add(relname(node.relation))
    elif isinstance(node, ast.AlterTableStmt):
        table = relname(node.relation)
        for cmd in node.cmds:
            if cmd.subtype == AlterTableType.AT_AddColumn:
                at.new_columns.add((table, cmd.def_.colname))
            if cmd.subtype not in _LIGHT_COMMANDS:
                at.locked.add(table)
            if (cmd.subtype == AlterTableType.AT_AddConstraint
                    and cmd.def_.contype == ConstrType.CONSTR_FOREIGN):
                at.locked.add(relname(cmd.def_.pktable))
    elif isinstance(node, ast.RenameStmt) and node.renameType == ObjectType.OBJECT_TABLE:
        old = relname(node.relation)
        if old in at.new_tables:
            at.new_tables.add(node.newname)
        at.locked.update({old, node.newname})
    elif isinstance(node, ast.RenameStmt) and node.renameType == ObjectType.OBJECT_COLUMN:
        table = relname(node.relation)
        if (table, node.subname) in at.new_columns:
            at.new_columns.add((table, node.newname))
    elif isinstance(node, ast.IndexStmt) and not node.concurrent:
        at.locked.add(relname(node.relation))
    elif isinstance(node, ast.ViewStmt):
        at.views.add(relname(node.view))
    elif isinstance(node, ast.LockStmt) and node.mode >= _SHARE_LOCK:
        at.locked.update(relname(r) for r in node.relations)
    at.schema.apply(node)
