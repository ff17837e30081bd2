"""The `orchestrator` command (`main`, the console script's entry point).

    entry.py     the root group and main(): the one place an error becomes a message and an
                 exit code (`--verbose` adds the traceback)
    options.py   what every command shares: --env/--database-url/--verbose, the settings and
                 manager a command runs with, REVISION and its completion, the confirmation
    db/          the `db` commands by theme: reading, changing, rebase, backups, quality
    users.py     the `users` commands;  serve.py  the API server
    render.py    results as text and JSON;  progress.py  bars and progress lines on stderr

Each command calls the manager (or the validator, or accounts) and renders the result.

Imports stay cheap, because `--help` and shell completion (run at each TAB) load every command
module: `orchestrator --help` takes 0.2 s, and importing the settings (pydantic) would add
0.7 s, the migration package (SQLAlchemy, Alembic) 1.4 s, Rich 0.14 s, the web layer 0.7 s
(`python -X importtime -m orchestrator --help`). So these are imported inside the functions
that use them, each with a comment naming the cost; `orchestrator db ...` never imports
FastAPI or uvicorn (only `serve` does).
"""

from orchestrator.cli.entry import main

__all__ = ["main"]
