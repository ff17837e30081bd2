"""Users and their API tokens: creating them, and finding the user behind a token.

A token is random and shown once, when it is made; the database keeps only its SHA-256, so a
copy of the `api_tokens` table cannot be used to call the API. Tokens are long and random, so
an unsalted hash is enough (there is nothing to guess) and lets a request find its token with
one indexed lookup. Shared by the API and the `orchestrator users` commands; nothing here
prints or commits: the caller owns the transaction.

Users are admins or members (`users.is_admin`): admins create, list, promote and demote users.
A token's `last_used_at` is written at most once per `LAST_USED_RESOLUTION` (the look-up reads
it, and only a stale one is written), so that busy clients do not turn every request into a
write.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from sqlalchemy import Select, Update, bindparam, func, or_, select, update
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
# How stale a token's `last_used_at` may get before a request writes it again.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


class AccountError(ValueError):
    """A user or token cannot be created as asked; the message says why."""


class DuplicateEmailError(AccountError):
    """Another user already has this email."""


class UnknownUserError(AccountError):
    """No user has this email."""


class LastAdminError(AccountError):
    """The change would leave no admin to manage users."""


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


def create_user(
    session: Session, email: str, name: str, *, admin: bool = False
) -> tuple[User, str]:
    """Add a user with a first token; returns the user and the token (its only showing)."""
    email = normalize_email(email)
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise DuplicateEmailError(f"a user with email {email} already exists")
    user = User(email=email, name=name, is_admin=admin)
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


def user_by_email(session: Session, email: str, *, lock: bool = False) -> User:
    """The user with this email; UnknownUserError when there is none."""
    email = normalize_email(email)
    statement = select(User).where(User.email == email)
    user = session.scalar(statement.with_for_update() if lock else statement)
    if user is None:
        raise UnknownUserError(
            f"no user has email {email}; `orchestrator users create` makes one"
        )
    return user


def set_admin(session: Session, user: User, admin: bool) -> None:
    """Promote or demote `user`; LastAdminError when demoting the only admin."""
    if user.is_admin and not admin:
        require_other_admin(session, user.id, "demoted")
    user.is_admin = admin


def require_other_admin(session: Session, user_id: int, action: str) -> None:
    """LastAdminError unless an admin other than `user_id` exists (their rows are locked, so
    that two admins cannot demote each other at the same time)."""
    others = session.scalars(
        select(User.id).where(User.is_admin, User.id != user_id).with_for_update()
    ).first()
    if others is None:
        raise LastAdminError(
            f"user {user_id} is the only admin and cannot be {action}; promote another user "
            "first (`orchestrator users promote EMAIL`)"
        )


@dataclass(frozen=True)
class Caller:
    """The user a token belongs to, as read when the request began, and the token's row."""

    id: int
    email: str
    name: str
    is_admin: bool
    created_at: dt.datetime
    updated_at: dt.datetime
    token_id: int
    token_last_used_at: dt.datetime | None


def token_use_is_stale(last_used_at: dt.datetime | None) -> bool:
    """Whether a request should record the use of a token last used at `last_used_at`."""
    if last_used_at is None:
        return True
    if last_used_at.tzinfo is None:  # SQLite keeps UTC without a zone
        last_used_at = last_used_at.replace(tzinfo=dt.UTC)
    return dt.datetime.now(dt.UTC) - last_used_at >= LAST_USED_RESOLUTION


def caller_for_token(connection: Connection, token: str) -> Caller | None:
    """The user a token belongs to, or None for an unknown or revoked token."""
    row = connection.execute(_caller_by_token_hash(), {"token_hash": hash_token(token)}).first()
    return Caller(*row) if row is not None else None


def record_token_use(connection: Connection, token_id: int) -> None:
    """Set the token's `last_used_at` to now, unless another request just did."""
    cutoff = dt.datetime.now(dt.UTC) - LAST_USED_RESOLUTION
    connection.execute(_touch_token(), {"token_id": token_id, "cutoff": cutoff})


@cache
def _caller_by_token_hash() -> Select:
    # Built once, and plain rows rather than ORM objects: every request runs it.
    users, tokens = User.__table__, ApiToken.__table__
    return (
        select(
            users.c.id,
            users.c.email,
            users.c.name,
            users.c.is_admin,
            users.c.created_at,
            users.c.updated_at,
            tokens.c.id,
            tokens.c.last_used_at,
        )
        .join(tokens, tokens.c.user_id == users.c.id)
        .where(tokens.c.token_hash == bindparam("token_hash"))
    )


@cache
def _touch_token() -> Update:
    tokens = ApiToken.__table__
    return (
        update(tokens)
        .where(
            tokens.c.id == bindparam("token_id"),
            or_(tokens.c.last_used_at.is_(None), tokens.c.last_used_at < bindparam("cutoff")),
        )
        # updated_at keeps meaning "the token was changed"
        .values(last_used_at=func.current_timestamp(), updated_at=tokens.c.updated_at)
    )
