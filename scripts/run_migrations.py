#!/usr/bin/env python
"""The seed's migration script, kept for muscle memory: a thin wrapper over `orchestrator db`.

    python scripts/run_migrations.py check
    python scripts/run_migrations.py upgrade [-r REV]
    python scripts/run_migrations.py downgrade -r REV
    python scripts/run_migrations.py current
    python scripts/run_migrations.py create -m "Add user preferences table"

`-e ENV` selects the environment. Exit codes are those of `orchestrator db` (check: 0 up to
date, 1 pending, 2 or more on errors).
"""

from __future__ import annotations

import argparse
import sys

from orchestrator.cli import main as orchestrator_main


def build_argv(argv: list[str] | None = None) -> list[str]:
    """Translate this script's arguments into `orchestrator db ...` arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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


if __name__ == "__main__":
    orchestrator_main(build_argv(sys.argv[1:]))
