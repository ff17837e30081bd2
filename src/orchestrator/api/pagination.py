"""Paging through lists: by cursor (keyset), or by a capped offset.

Every list has a fixed order that ends in a unique column (tasks: priority level, age, id;
everything else: id). A page's `next_cursor` holds the sort key of its last row, and the next
page asks the database for the rows after that key, never for the rows before it: a cursor page
deep in a long list costs about what the first page costs (docs/benchmarks.md), and rows
inserted or deleted meanwhile neither repeat nor skip the rows already listed. An offset makes
the database read and drop every row before it, so offsets stop at `MAX_OFFSET`.

The cursor is opaque to clients (URL-safe base64 of a small JSON document); it names the list
it belongs to and is checked on the way in, so a damaged or foreign cursor is a 422 that says
so, never a database error.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

from fastapi import Depends, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from sqlalchemy import ColumnElement, DateTime, Select, String, and_, cast, literal, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from orchestrator.api.schemas import (
    DEFAULT_PAGE_SIZE,
    MAX_CURSOR_LENGTH,
    MAX_OFFSET,
    MAX_PAGE_SIZE,
    Page,
)

_CURSOR_VERSION = 1
# Keys are compared with 32-bit columns on PostgreSQL: anything wider fails in the query.
_MIN_INT, _MAX_INT = -(2**31), 2**31 - 1
_MAX_TEXT_KEY = 64


@dataclass(frozen=True)
class PageParams:
    limit: int
    offset: int
    cursor: str | None


def page_params(
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"At most {MAX_PAGE_SIZE} items.")
    ] = DEFAULT_PAGE_SIZE,
    offset: Annotated[
        int,
        Query(
            ge=0,
            # Checked below, to say what to do instead.
            json_schema_extra={"maximum": MAX_OFFSET},
            description=f"Items to skip, at most {MAX_OFFSET:,}; go further with `cursor`.",
        ),
    ] = 0,
    cursor: Annotated[
        str | None,
        Query(
            max_length=MAX_CURSOR_LENGTH,
            description="A page's `next_cursor`: the page after it. Not with `offset`.",
        ),
    ] = None,
) -> PageParams:
    """The `limit`, `offset` and `cursor` query parameters of every list."""
    if offset > MAX_OFFSET:
        _invalid("offset", offset, f"is at most {MAX_OFFSET}: an offset makes the database read "
                                   "and drop every item before it; page further with `cursor` "
                                   "(each page's next_cursor)")
    if cursor is not None and offset:
        _invalid("offset", offset, "give either offset or cursor, not both")
    return PageParams(limit, offset, cursor)


PageDep = Annotated[PageParams, Depends(page_params)]


def page_of(
    session: Session,
    statement: Select,
    params: PageParams,
    schema: type[BaseModel],
    *,
    order: Sequence[InstrumentedAttribute],
    name: str,
) -> Page:
    """One page of `statement`, which must be ordered by `order` (ascending, unique at the end).

    `name` ties the page's cursor to this list.
    """
    sqlite = session.get_bind().dialect.name == "sqlite"
    if params.cursor is not None:
        statement = statement.where(after(order, _decode(params.cursor, name, order, sqlite)))
    # The sort key is read back as stored: SQLite keeps timestamps as text in more than one
    # format, and compares them as text, so the cursor must carry the text itself.
    keys = [
        (cast(column, String) if sqlite and _is_datetime(column) else column).label(f"_key{i}")
        for i, column in enumerate(order)
    ]
    rows = session.execute(
        statement.add_columns(*keys).limit(params.limit + 1).offset(params.offset)
    ).all()
    more = len(rows) > params.limit
    rows = rows[: params.limit]
    return Page[schema](
        items=[schema.model_validate(row[0]) for row in rows],
        limit=params.limit,
        offset=params.offset,
        next_offset=params.offset + params.limit if more and params.cursor is None else None,
        next_cursor=encode_cursor(name, tuple(rows[-1])[1:]) if more else None,
    )


def after(order: Sequence[InstrumentedAttribute], key: Sequence[Any]) -> ColumnElement[bool]:
    """The rows whose sort key comes after `key` in `order`.

    Spelt out, `a >= x AND (a > x OR (a = x AND (b > y OR (b = y AND c > z))))`, rather than
    as the row comparison `(a, b, c) > (x, y, z)`: PostgreSQL estimates a row comparison by
    its first column alone (`a > x`), which finds no rows when the key is in the last block of
    equal `a` (all tasks of priority 3, say), and then joins the user's projects by a nested
    loop over what are really all the rows (docs/benchmarks.md has the page this struck). The
    leading `a >= x` lets an index on `a` narrow the scan.
    """
    condition = order[-1] > key[-1]
    for column, value in zip(reversed(order[:-1]), reversed(key[:-1]), strict=True):
        condition = or_(column > value, and_(column == value, condition))
    if len(order) > 1:
        condition = and_(order[0] >= key[0], condition)
    return condition


def _is_datetime(column: InstrumentedAttribute) -> bool:
    return isinstance(column.type, DateTime)


def encode_cursor(name: str, key: Sequence[Any]) -> str:
    """The cursor of the page after the row whose sort key (as stored) is `key`."""
    values = [value.isoformat() if isinstance(value, dt.datetime) else value for value in key]
    document = json.dumps({"v": _CURSOR_VERSION, "list": name, "after": values},
                          separators=(",", ":"))
    return base64.urlsafe_b64encode(document.encode()).decode().rstrip("=")


def _decode(
    cursor: str, name: str, order: Sequence[InstrumentedAttribute], sqlite: bool
) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        document = json.loads(raw)
    except (binascii.Error, ValueError):
        _invalid("cursor", cursor, "is not a cursor this API gave; start again without it")
    if not isinstance(document, dict) or document.get("v") != _CURSOR_VERSION:
        _invalid("cursor", cursor, "is not a cursor this API gave; start again without it")
    if document.get("list") != name:
        _invalid("cursor", cursor, f"belongs to another list, not to {name}; start again "
                                   "without it")
    if not isinstance(document.get("after"), list) or len(document["after"]) != len(order):
        _invalid("cursor", cursor, "is not a cursor this API gave; start again without it")
    return [
        _key(cursor, column, value, sqlite)
        for column, value in zip(order, document["after"], strict=True)
    ]


def _key(cursor: str, column: InstrumentedAttribute, value: Any, sqlite: bool) -> Any:
    if _is_datetime(column):
        if isinstance(value, str) and len(value) <= _MAX_TEXT_KEY:
            if sqlite:
                # Compared as the text it is stored as, not converted as a datetime would be.
                return literal(value, String())
            try:
                moment = dt.datetime.fromisoformat(value)
            except ValueError:
                pass
            else:
                return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    elif isinstance(value, int) and not isinstance(value, bool) and _MIN_INT <= value <= _MAX_INT:
        return value
    _invalid("cursor", cursor, "is not a cursor this API gave; start again without it")


def _invalid(parameter: str, value: Any, message: str) -> NoReturn:
    raise RequestValidationError(
        [{"type": "value_error", "loc": ("query", parameter), "msg": message, "input": value}]
    )
