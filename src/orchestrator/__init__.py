"""Orchestrator: users, projects, tasks and the agents that work on them."""

__version__ = "0.1.0"
