"""Running PostgreSQL's client tools (pg_dump, pg_restore): finding them, handing them the
connection's secrets through the environment (never the command line, which `ps` shows to
everyone), running them so that they die with us, and turning a failure into a one-line
`BackupError` with the tool's first error line, secrets masked."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from orchestrator.db import is_secret_parameter, mask_url
from orchestrator.migrations.backup import limits
from orchestrator.migrations.backup.identity import without_secrets
from orchestrator.migrations.errors import BackupError, BackupToolMissing

# Our sessions write even in a database whose new sessions are read-only by default (a restore
# makes them so: see the window).
READ_WRITE = "-c default_transaction_read_only=off"
_CLIENT_PACKAGE = (
    "install the PostgreSQL client tools, matching the server's major version: "
    "`apt-get install postgresql-client` (Debian/Ubuntu; the package `postgresql-client`)"
)


def tool(name: str) -> str:
    """The path of a client tool, or BackupToolMissing naming the package to install."""
    path = shutil.which(name)
    if path is None:
        raise BackupToolMissing(f"{name} is not installed (or not on PATH); {_CLIENT_PACKAGE}")
    return path


@contextlib.contextmanager
def libpq(database_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A libpq connection string without any secret, and the environment that carries them:
    the password in PGPASSWORD; other secret options (`sslpassword`) in a service file readable
    by us only, deleted afterwards. Never the command line, which `ps` shows to everyone.

    The environment also lets the tools write while a restore makes new sessions read-only.
    """
    url = make_url(database_url)
    env = dict(os.environ)
    env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} {READ_WRITE}".strip()
    password = url.password if url.password is not None else url.query.get("password")
    if password is not None:
        env["PGPASSWORD"] = str(password if isinstance(password, str) else password[-1])
    secrets = {key: value for key, value in url.query.items()
               if key != "password" and is_secret_parameter(key)}
    conninfo = without_secrets(url, query=True)
    if not secrets:
        yield conninfo, env
        return
    service = f"orchestrator-{uuid.uuid4().hex[:12]}"
    with tempfile.NamedTemporaryFile("w", prefix="orchestrator-", suffix=".conf") as file:
        os.chmod(file.name, 0o600)
        file.write(f"[{service}]\n")
        for key, value in secrets.items():
            file.write(f"{key}={value if isinstance(value, str) else value[-1]}\n")
        file.flush()
        env["PGSERVICEFILE"] = file.name
        separator = "&" if "?" in conninfo else "?"
        yield f"{conninfo}{separator}service={service}", env


def run_tool(
    command: list[str],
    env: dict[str, str] | None,
    database_url: str,
    *,
    stdin: Any = None,
    poll: Callable[[], object] = lambda: None,
    capture: bool = False,
    die_with_us: bool = True,
) -> str:
    """Run pg_dump or pg_restore; a failure becomes a BackupError with a masked message.

    `die_with_us`: the tool is killed if this process is (a dump nobody will finish or name
    is only load on the server); a restore is not, and completes in its one transaction.
    """
    # stderr goes to a file, not a pipe: a chatty tool can never block on a full pipe while we
    # poll it.
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            stderr=errors,
            preexec_fn=functools.partial(_die_with, os.getpid()) if die_with_us else None,
        )
        try:
            output = process.communicate()[0] if capture else b""
            while process.poll() is None:
                poll()
                time.sleep(limits.POLL_SECONDS)
            poll()  # the final figure
        except BaseException:  # Ctrl-C, or the progress display failed: the tool stops too
            process.kill()
            process.wait()
            raise
        errors.seek(0)
        message = errors.read().decode(errors="replace")
    if process.returncode != 0:
        raise BackupError(
            f"{Path(command[0]).name} failed for {mask_url(database_url)}: "
            f"{first_error(message, database_url)}"
        )
    return output.decode()


def _die_with(parent: int) -> None:  # pragma: no cover - runs in the child, before exec
    """Linux: the child gets SIGKILL when the process that started it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def first_error(message: str, database_url: str) -> str:
    """The first line of a tool's output that says "error" (else its first line), with the
    URL's secrets masked."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "")
    url = make_url(database_url)
    secrets = [url.password] if url.password else []
    for key, value in url.query.items():
        if is_secret_parameter(key):
            secrets.extend([value] if isinstance(value, str) else value)
    for secret in filter(None, secrets):
        text = text.replace(str(secret), "***")
    return text or "no error message"


def archive_listing(database_url: str, path: Path) -> str:
    """The archive's table of contents (a restore has read the whole archive first, so a
    failure here is pg_restore's own one-line BackupError)."""
    command = [tool("pg_restore"), "--list", str(path)]
    with libpq(database_url) as (_, env):
        return run_tool(command, env, database_url, capture=True)
