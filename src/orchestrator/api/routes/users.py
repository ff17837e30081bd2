"""Users and their API tokens.

Users are admins or members. Admins create users (a new user's first token is in the response,
once), list them, read, change, promote, demote and delete any of them; a member reads, changes
and deletes only themselves (`/users/me`) and gets 403 for another user that exists (404 for
one that does not). The last admin cannot be demoted or deleted (409). Everyone manages only
their own tokens (`/users/me/tokens`); a revoked token is refused from the next request on.
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


@router.post(
    "", status_code=status.HTTP_201_CREATED, responses={**BODY_PROBLEMS, **problems(403, 409)}
)
def create_user(body: UserCreate, session: SessionDep, caller: CurrentUser) -> NewUser:
    """Create a user (admins only); the response holds their first API token, shown once."""
    _require_admin(caller, "create users")
    try:
        user, token = accounts.create_user(session, body.email, body.name, admin=body.is_admin)
    except accounts.DuplicateEmailError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    session.commit()
    return NewUser(**UserRead.model_validate(user).model_dump(), token=token)


@router.get("", responses=problems(403))
def list_users(session: SessionDep, caller: CurrentUser, page: PageDep) -> Page[UserRead]:
    """All users, by id (admins only)."""
    _require_admin(caller, "list users")
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


@router.get("/{user_id}", responses=problems(403, 404))
def read_user(user_id: IdPath, session: SessionDep, caller: CurrentUser) -> UserRead:
    """One user: yourself, or anyone for an admin."""
    return UserRead.model_validate(_managed_user(session, caller, user_id))


@router.patch("/{user_id}", responses={**BODY_PROBLEMS, **problems(403, 404, 409)})
def update_user(
    user_id: IdPath, body: UserUpdate, session: SessionDep, caller: CurrentUser
) -> UserRead:
    """Change a name or email (your own; an admin's, anyone's); `is_admin` is for admins."""
    changes = body.changes()
    if "is_admin" in changes:
        _require_admin(caller, "promote or demote users")
    user = _managed_user(session, caller, user_id, lock="is_admin" in changes)
    if "email" in changes and changes["email"] != user.email:
        _require_free_email(session, changes["email"])
    if "is_admin" in changes:
        try:
            accounts.set_admin(session, user, bool(changes.pop("is_admin")))
        except accounts.LastAdminError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    for name, value in changes.items():
        setattr(user, name, value)
    try:
        save(session, user)
    except IntegrityError:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"a user with email {changes.get('email')} already exists"
        ) from None
    return UserRead.model_validate(user)


@router.delete(
    "/{user_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(403, 404, 409)
)
def delete_user(user_id: IdPath, session: SessionDep, caller: CurrentUser) -> Response:
    """Delete a user (yourself; an admin, anyone) with their projects, tasks, agents, tokens."""
    user = _managed_user(session, caller, user_id, lock=True)
    if user.is_admin:
        try:
            accounts.require_other_admin(session, user.id, "deleted")
        except accounts.LastAdminError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    # The database cascades to projects, tasks, agents and tokens.
    session.execute(delete(User).where(User.id == user.id))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _require_admin(caller: Caller, action: str) -> None:
    if not caller.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"only an admin can {action}")


def _managed_user(session: SessionDep, caller: Caller, user_id: int, *, lock: bool = False) -> User:
    """The user `user_id` if the caller may manage them (themself; anyone for an admin): 404
    for an unknown id, 403 for another user a member cannot manage."""
    user = session.get(User, user_id, with_for_update=lock or None)
    if user is None:
        raise not_found("user", user_id)
    if user.id != caller.id and not caller.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "a member can see and change only themself")
    return user


def _require_free_email(session: SessionDep, email: str) -> None:
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"a user with email {email} already exists")
