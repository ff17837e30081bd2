"""Which database a backup belongs to: a URL's identity without password or options (backups
are grouped by it), whether two identities name one database, and a URL without its secrets."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url

from orchestrator.db import backend_name, is_secret_parameter, sqlite_path


def database_identity(database_url: str) -> str:
    """The database a URL points at, without password or options: backups are grouped by it."""
    path = sqlite_path(database_url)
    if path is not None:
        return f"sqlite:///{path.resolve()}"
    return without_secrets(make_url(database_url), query=False)


def same_database(identity: str, other: str) -> bool:
    """Whether two identities name one database (for PostgreSQL: whoever connects to it)."""
    if identity == other:
        return True
    try:
        first, second = make_url(identity), make_url(other)
    except Exception:  # noqa: BLE001 - a sidecar edited by hand: not the same
        return False
    if backend_name(first) != "postgresql" or backend_name(second) != "postgresql":
        return False
    return (first.host or "", first.port or 5432, first.database) == (
        second.host or "", second.port or 5432, second.database)


def without_secrets(url, query: bool) -> str:
    """A PostgreSQL URL without password or secret options (`query`: keep the other options)."""
    # Built afresh: `URL.set(password=None)` keeps the password (None means "unchanged").
    options = {key: value for key, value in url.query.items() if not is_secret_parameter(key)}
    bare = URL.create("postgresql", url.username, None, url.host, url.port, url.database,
                      options if query else {})
    return bare.render_as_string(hide_password=False)
