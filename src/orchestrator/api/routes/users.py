"""Users and their API tokens.

Any user may list users and create new ones (a new user's first token is in the response, once);
a user changes or deletes only themselves, and manages only their own tokens.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from orchestrator import accounts
from orchestrator.accounts import Caller
from orchestrator.api.deps import (
    API_PROBLEMS,
    BODY_PROBLEMS,
    CurrentUser,
    IdPath,
    SessionDep,
    not_found,
    problems,
    save,
)
from orchestrator.api.pagination import PageDep, page_of
from orchestrator.api.schemas import (
    NewToken,
    NewUser,
    Page,
    TokenCreate,
    TokenRead,
    UserCreate,
    UserRead,
    UserUpdate,
)
from orchestrator.models import ApiToken, User

router = APIRouter(prefix="/users", tags=["users"], responses=API_PROBLEMS)


@router.post("", status_code=status.HTTP_201_CREATED, responses={**BODY_PROBLEMS, **problems(409)})
def create_user(body: UserCreate, session: SessionDep, _: CurrentUser) -> NewUser:
    """Create a user; the response holds their first API token, shown only this once."""
    try:
        user, token = accounts.create_user(session, body.email, body.name)
    except accounts.DuplicateEmailError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    session.commit()
    return NewUser(**UserRead.model_validate(user).model_dump(), token=token)


@router.get("")
def list_users(session: SessionDep, _: CurrentUser, page: PageDep) -> Page[UserRead]:
    """All users, by id."""
    statement = select(User).order_by(User.id)
    return page_of(session, statement, page, UserRead, order=(User.id,), name="users")


@router.get("/me")
def read_me(user: CurrentUser) -> UserRead:
    """The user the token belongs to."""
    return UserRead.model_validate(user)


@router.get("/me/tokens")
def list_tokens(session: SessionDep, user: CurrentUser, page: PageDep) -> Page[TokenRead]:
    """Your tokens (never the tokens themselves, only their first characters)."""
    statement = select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)
    return page_of(session, statement, page, TokenRead, order=(ApiToken.id,), name="tokens")


@router.post(
    "/me/tokens", status_code=status.HTTP_201_CREATED, responses={**BODY_PROBLEMS, **problems(409)}
)
def create_token(body: TokenCreate, session: SessionDep, user: CurrentUser) -> NewToken:
    """Make another token for yourself; the response is its only showing."""
    row, token = accounts.issue_token(session, user.id, body.name)
    session.commit()
    return NewToken(**TokenRead.model_validate(row).model_dump(), token=token)


@router.delete(
    "/me/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(404)
)
def revoke_token(token_id: IdPath, session: SessionDep, user: CurrentUser) -> Response:
    """Revoke one of your tokens (it may be the one this request uses)."""
    result = session.execute(
        delete(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user.id)
    )
    if result.rowcount == 0:
        raise not_found("token", token_id)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{user_id}", responses=problems(404))
def read_user(user_id: IdPath, session: SessionDep, _: CurrentUser) -> UserRead:
    """One user."""
    user = session.get(User, user_id)
    if user is None:
        raise not_found("user", user_id)
    return UserRead.model_validate(user)


@router.patch("/{user_id}", responses={**BODY_PROBLEMS, **problems(403, 404, 409)})
def update_user(
    user_id: IdPath, body: UserUpdate, session: SessionDep, caller: CurrentUser
) -> UserRead:
    """Change your own name or email."""
    _require_self(session, caller, user_id)
    user = session.get_one(User, caller.id)
    changes = body.changes()
    if "email" in changes and changes["email"] != user.email:
        _require_free_email(session, changes["email"])
    for name, value in changes.items():
        setattr(user, name, value)
    try:
        save(session, user)
    except IntegrityError:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"a user with email {changes.get('email')} already exists"
        ) from None
    return UserRead.model_validate(user)


@router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(403, 404))
def delete_user(user_id: IdPath, session: SessionDep, user: CurrentUser) -> Response:
    """Delete yourself, with your projects, their tasks and your tokens."""
    _require_self(session, user, user_id)
    # The database cascades to projects, tasks and tokens.
    session.execute(delete(User).where(User.id == user.id))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _require_self(session: SessionDep, user: Caller, user_id: int) -> None:
    if user_id == user.id:
        return
    if session.get(User, user_id) is None:
        raise not_found("user", user_id)
    raise HTTPException(status.HTTP_403_FORBIDDEN, "you can change only your own user")


def _require_free_email(session: SessionDep, email: str) -> None:
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"a user with email {email} already exists")
