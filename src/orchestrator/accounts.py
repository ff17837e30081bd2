"""Users and their API tokens: creating them, and finding the user behind a token.

A token is random and shown once, when it is made; the database keeps only its SHA-256, so a
copy of the `api_tokens` table cannot be used to call the API. Tokens are long and random, so
an unsalted hash is enough (there is nothing to guess) and lets a request find its token with
one indexed lookup. Shared by the API and the `orchestrator users create` command; nothing here
prints or commits: the caller owns the transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from sqlalchemy import Select, bindparam, select
from sqlalchemy.exc import IntegrityError

from orchestrator.models import ApiToken, User

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

# Recognisable in logs and by secret scanners; the rest is 256 random bits.
TOKEN_PREFIX = "orch_"
# How much of a token is kept in clear to tell tokens apart (the random part starts after 5).
SHOWN_PREFIX_LENGTH = 12
EMAIL_MAX_LENGTH = 320
# No spaces or control characters; explicit ranges, because `\s` differs between the regex
# engines of Python, pydantic (Rust) and JSON Schema.
EMAIL_PATTERN = r"^[^@\x00-\x20]+@[^@\x00-\x20]+\.[^@\x00-\x20]+$"
_EMAIL = re.compile(EMAIL_PATTERN)


class AccountError(ValueError):
    """A user or token cannot be created as asked; the message says why."""


class DuplicateEmailError(AccountError):
    """Another user already has this email."""


def generate_token() -> str:
    """A new random API token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The hex SHA-256 stored for `token`."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def normalize_email(email: str) -> str:
    """`email` trimmed and lower-cased; raises AccountError when it is not an address."""
    value = email.strip().lower()
    if len(value) > EMAIL_MAX_LENGTH or not _EMAIL.match(value):
        raise AccountError(f"{email!r} is not an email address (expected e.g. ada@example.com)")
    return value


def create_user(session: Session, email: str, name: str) -> tuple[User, str]:
    """Add a user with a first token; returns the user and the token (its only showing)."""
    email = normalize_email(email)
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise DuplicateEmailError(f"a user with email {email} already exists")
    user = User(email=email, name=name)
    session.add(user)
    try:
        session.flush()
    except IntegrityError:
        # Another request added the same email between our check and our insert.
        session.rollback()
        raise DuplicateEmailError(f"a user with email {email} already exists") from None
    _, token = issue_token(session, user.id, "first token")
    return user, token


def issue_token(session: Session, user_id: int, name: str) -> tuple[ApiToken, str]:
    """Add a token for the user; returns the stored row and the token itself."""
    token = generate_token()
    row = ApiToken(
        user_id=user_id,
        name=name,
        token_hash=hash_token(token),
        prefix=token[:SHOWN_PREFIX_LENGTH],
    )
    session.add(row)
    session.flush()
    return row, token


@dataclass(frozen=True)
class Caller:
    """The user a token belongs to, as read when the request began."""

    id: int
    email: str
    name: str
    created_at: dt.datetime
    updated_at: dt.datetime


def caller_for_token(connection: Connection, token: str) -> Caller | None:
    """The user a token belongs to, or None for an unknown or revoked token."""
    row = connection.execute(_caller_by_token_hash(), {"token_hash": hash_token(token)}).first()
    return Caller(*row) if row is not None else None


@cache
def _caller_by_token_hash() -> Select:
    # Built once, and plain rows rather than ORM objects: every request runs it.
    users, tokens = User.__table__, ApiToken.__table__
    return (
        select(users.c.id, users.c.email, users.c.name, users.c.created_at, users.c.updated_at)
        .join(tokens, tokens.c.user_id == users.c.id)
        .where(tokens.c.token_hash == bindparam("token_hash"))
    )
