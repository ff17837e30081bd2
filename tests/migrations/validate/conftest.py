"""Fixtures of the validator's tests."""

import pytest

from tests.fixtures import command_runner


@pytest.fixture
def run_here(monkeypatch, capsys):
    return command_runner(monkeypatch, capsys)
