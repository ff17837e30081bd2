"""`validate()` tunes Python's garbage collector for the run (issue 17) and puts it back as it
was, also when it raises, and never unfreezes what its caller froze."""

from __future__ import annotations

import gc
import threading

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
        thresholds = gc.get_threshold()
        check(sqlite_url, chain, rules=["MIG008"])
        # Still frozen (an unfreeze empties the permanent generation; objects freed since
        # leave it one by one).
        assert gc.get_freeze_count() > 0 and gc.get_threshold() == thresholds
    finally:
        gc.unfreeze()


def test_validations_in_two_threads_run_one_at_a_time(sqlite_url, chain, tmp_path):
    """Alembic's `op` and `context` are the process's: two threads validating at once would
    run each other's migrations. The second waits for the first; both pass."""
    other = long_chain(tmp_path / "other", 5, through=None)
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    MigrationManager(other_url, script_location=str(other)).upgrade()
    thresholds = gc.get_threshold()
    reports = {}

    def run(name: str, url: str, scripts) -> None:
        reports[name] = check(url, scripts, strict=True)

    threads = [threading.Thread(target=run, args=("A", sqlite_url, chain)),
               threading.Thread(target=run, args=("B", other_url, other))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert reports["A"].ok and reports["B"].ok
    assert reports["A"].findings == reports["B"].findings == []
    assert gc.get_threshold() == thresholds and gc.get_freeze_count() == 0
