"""`python -m orchestrator.cli` is the `orchestrator` command too, as it was when the CLI was one
module."""

from orchestrator.cli.entry import main

main()
