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


def test_overlapping_validations_put_the_collector_back_when_the_last_one_ends(sqlite_url, chain):
    """Two threads validate at once (A starts, B starts, A ends, B ends)."""
    thresholds = gc.get_threshold()
    both_started, first_done = threading.Barrier(2), threading.Event()
    seen: dict[str, tuple] = {}

    def run(name: str) -> None:
        def started():
            both_started.wait(30)
            if name == "B":
                first_done.wait(30)
            seen[name] = (gc.get_threshold()[0], gc.get_freeze_count() > 0)

        check(sqlite_url, chain, rules=["MIG001"], progress=Watcher(started))
        if name == "A":
            seen["after A"] = (gc.get_threshold()[0], gc.get_freeze_count() > 0)
            first_done.set()

    threads = [threading.Thread(target=run, args=(name,)) for name in "AB"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert seen["A"][0] >= 50_000 and seen["after A"] == (seen["A"][0], True)
    assert seen["B"] == seen["A"]  # still tuned while B runs
    assert gc.get_threshold() == thresholds and gc.get_freeze_count() == 0
