#!/usr/bin/env python
"""The seed's migration script, kept for muscle memory: a thin wrapper over `orchestrator db`.

    python scripts/run_migrations.py check
    python scripts/run_migrations.py upgrade [-r REV]
    python scripts/run_migrations.py downgrade -r REV
    python scripts/run_migrations.py current
    python scripts/run_migrations.py create -m "Add user preferences table"

`-e ENV` selects the environment. Exit codes are those of `orchestrator db` (check: 0 up to
date, 1 pending, 2 or more on errors). Any Python may run it: one that cannot import the
project hands the run to the project's environment (`.venv`, or `uv run`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Set when this script has handed itself to the project's environment, so it does so once.
_HANDED_OVER = "ORCHESTRATOR_RUN_MIGRATIONS_REEXEC"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, as every `orchestrator` error
        print(f"Error: {message}; see `python scripts/run_migrations.py --help`", file=sys.stderr)
        sys.exit(2)


def build_argv(argv: list[str] | None = None) -> list[str]:
    """Translate this script's arguments into `orchestrator db ...` arguments."""
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["upgrade", "downgrade", "current", "check", "create"])
    parser.add_argument("-r", "--revision", help="target revision (upgrade: head by default)")
    parser.add_argument("-m", "--message", help="message for create")
    parser.add_argument("-e", "--env", choices=["development", "staging", "production"])
    args = parser.parse_args(argv)
    if args.command == "downgrade" and not args.revision:
        parser.error("downgrade needs -r REV (e.g. -r -1 or -r base)")
    if args.command == "create" and not args.message:
        parser.error("create needs -m MESSAGE")
    out = ["db", args.command]
    if args.command in ("upgrade", "downgrade") and args.revision:
        out.append(args.revision)
    if args.command == "create":
        out += ["-m", args.message]
    if args.env:
        out += ["--env", args.env]
    return out


def _project_command() -> list[str] | None:
    """How to run this script in the project's environment, or None when there is none."""
    venv_python = ROOT / ".venv" / "bin" / "python"
    if venv_python.exists():
        return [str(venv_python)]
    uv = shutil.which("uv")
    if uv is not None:
        return [uv, "run", "--project", str(ROOT), "python"]
    return None


def _hand_over(missing: str) -> None:
    """Run this script again in the project's environment; or say how, and exit 2."""
    command = _project_command()
    if command is None or os.environ.get(_HANDED_OVER):
        print(
            f"Error: {sys.executable} cannot import {missing!r} and the project's environment "
            f"was not found; run `uv sync` in {ROOT}, then run this script again",
            file=sys.stderr,
        )
        sys.exit(2)
    os.environ[_HANDED_OVER] = "1"
    argv = [*command, str(Path(__file__).resolve()), *sys.argv[1:]]
    os.execv(argv[0], argv)


if __name__ == "__main__":
    arguments = build_argv(sys.argv[1:])  # usage errors need nothing from the project
    try:
        from orchestrator.cli import main as orchestrator_main
    except ModuleNotFoundError as exc:  # a Python outside the project's environment
        _hand_over(exc.name or "orchestrator")
    orchestrator_main(arguments)
