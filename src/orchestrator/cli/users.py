"""`orchestrator users`: create users, change their role, issue API tokens (docs/api.md)."""

from __future__ import annotations

import contextlib

import click

from orchestrator.cli.options import common_options, manager_for
from orchestrator.errors import BadInputError


@click.group()
@common_options
def users() -> None:
    """Manage the users who call the API."""


@users.command("create")
@common_options
@click.option("--email", required=True, help="The user's email address (unique).")
@click.option("--name", required=True, help="The user's name.")
@click.option("--admin", is_flag=True, help="Make the user an admin (the first user always is).")
@click.pass_context
def users_create(ctx: click.Context, email: str, name: str, admin: bool) -> None:
    """Create a user and print their first API token (shown only this once)."""
    # Imported here: SQLAlchemy and the models, which `--help` skips (orchestrator.cli).
    from sqlalchemy import select

    from orchestrator.accounts import create_user
    from orchestrator.models import User

    if not name.strip() or len(name.strip()) > 200:
        raise BadInputError("--name: give a name of 1 to 200 characters")
    with _user_session(ctx) as session:
        # With no admin yet, nobody could manage users through the API.
        first = session.scalar(select(User.id).where(User.is_admin).limit(1)) is None
        user, token = create_user(session, email, name.strip(), admin=admin or first)
        session.commit()
    role = "an admin" if user.is_admin else "a member"
    click.echo(
        f"Created user {user.id} <{user.email}>, {role}. Their API token, shown only this once:"
    )
    click.echo(token)


@users.command("promote")
@common_options
@click.argument("email")
@click.pass_context
def users_promote(ctx: click.Context, email: str) -> None:
    """Make a user an admin."""
    _set_role(ctx, email, admin=True)


@users.command("demote")
@common_options
@click.argument("email")
@click.pass_context
def users_demote(ctx: click.Context, email: str) -> None:
    """Make an admin a member again (not the last admin)."""
    _set_role(ctx, email, admin=False)


@users.command("token")
@common_options
@click.argument("email")
@click.option("--name", "token_name", default="issued by orchestrator users token",
              show_default=True, help="What the token is for.")
@click.pass_context
def users_token(ctx: click.Context, email: str, token_name: str) -> None:
    """Issue a new API token for an existing user and print it (shown only this once)."""
    # Imported here: SQLAlchemy and the models, which `--help` skips (orchestrator.cli).
    from orchestrator.accounts import issue_token, user_by_email

    if not token_name.strip() or len(token_name.strip()) > 200:
        raise BadInputError("--name: give a name of 1 to 200 characters")
    with _user_session(ctx) as session:
        user = user_by_email(session, email)
        row, token = issue_token(session, user.id, token_name.strip())
        session.commit()
    click.echo(f"Issued token {row.id} for user {user.id} <{user.email}>, shown only this once:")
    click.echo(token)


def _set_role(ctx: click.Context, email: str, *, admin: bool) -> None:
    # Imported here: SQLAlchemy and the models, which `--help` skips (orchestrator.cli).
    from orchestrator.accounts import set_admin, user_by_email

    with _user_session(ctx) as session:
        user = user_by_email(session, email, lock=True)
        was = user.is_admin
        set_admin(session, user, admin)
        session.commit()
    role = "an admin" if admin else "a member"
    click.echo(f"User {user.id} <{user.email}> {'was already' if was == admin else 'is now'} {role}.")


@contextlib.contextmanager
def _user_session(ctx: click.Context):
    """A session on the command's database, which must be at head; account errors are bad
    input (one line, exit 2)."""
    # Imported here: SQLAlchemy and the migration package, which `--help` skips.
    from sqlalchemy.orm import Session

    from orchestrator.accounts import AccountError
    from orchestrator.db import create_engine
    from orchestrator.migrations import NotAtHeadError

    manager = manager_for(ctx)
    state = manager.require_known_database()
    if not state.up_to_date:  # the data of a schema not at head is not touched
        raise NotAtHeadError(
            f"the database is at {state.current or 'base'}, not at head {state.head}; "
            "run `orchestrator db upgrade` first"
        )
    engine = create_engine(manager.database_url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            try:
                yield session
            except AccountError as exc:
                raise BadInputError(str(exc)) from None
    finally:
        engine.dispose()
