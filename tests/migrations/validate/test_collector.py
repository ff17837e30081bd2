"""`validate()` tunes Python's garbage collector for the run (issue 17) and puts it back as it
was, also when it raises, and never unfreezes what its caller froze."""

from __future__ import annotations

import gc

import pytest

from orchestrator.migrations import MigrationManager, UnknownRevisionError
from orchestrator.migrations.validate import Progress, validate
from tests.fixtures.long_chain import long_chain, long_chain_metadata


@pytest.fixture
def chain(sqlite_url, tmp_path):
    scripts = long_chain(tmp_path, 3, through=None)
    MigrationManager(sqlite_url, script_location=str(scripts)).upgrade()
    return scripts


class Watcher(Progress):
    def __init__(self, look) -> None:
        self.look = look

    def rule_started(self, rule) -> None:
        self.look()


def check(url, scripts, **options):
    return validate(url, script_location=str(scripts), metadata=long_chain_metadata(scripts),
                    **options)


def test_the_collector_is_as_it_was_after_a_validation(sqlite_url, chain):
    thresholds = gc.get_threshold()
    during = []
    report = check(sqlite_url, chain, rules=["MIG008"],
                   progress=Watcher(lambda: during.append((gc.get_threshold()[0],
                                                           gc.get_freeze_count()))))
    assert report.passed == ["MIG008"]
    # Tuned while it ran: the youngest generation collected less often, the start-up frozen.
    assert during and all(threshold >= 50_000 and frozen > 0 for threshold, frozen in during)
    assert gc.get_threshold() == thresholds and gc.get_freeze_count() == 0


def test_the_collector_is_as_it_was_when_validate_raises(sqlite_url, chain):
    thresholds = gc.get_threshold()
    with pytest.raises(UnknownRevisionError):
        check(sqlite_url, chain, since="999")
    assert gc.get_threshold() == thresholds and gc.get_freeze_count() == 0


def test_what_the_caller_froze_stays_frozen(sqlite_url, chain):
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        thresholds = gc.get_threshold()
        check(sqlite_url, chain, rules=["MIG008"])
        assert gc.get_freeze_count() >= frozen and gc.get_threshold() == thresholds
    finally:
        gc.unfreeze()
