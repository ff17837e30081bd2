"""The HTTP API. Nothing in `orchestrator.migrations` imports from here."""
