"""The revision chain (migrations/chain.py): pure, read from the scripts alone, no database."""

from __future__ import annotations

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from orchestrator.migrations import UnknownRevisionError
from orchestrator.migrations.chain import Chain, end_or_base, is_relative, split_range
from tests.fixtures import PROJECT_SCRIPTS, VALIDATOR_SETS
from tests.fixtures.long_chain import add_revisions, long_chain, project_head

CHAIN = Chain(("001", "002", "003", "004"))


def _scripts(folder) -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(folder))
    return ScriptDirectory.from_config(config)


def test_the_projects_scripts_make_a_chain_in_number_order_ending_at_the_head() -> None:
    chain = Chain.from_scripts(_scripts(PROJECT_SCRIPTS))
    numbers = [int(revision) for revision in chain]
    assert numbers == list(range(1, len(chain) + 1))
    assert chain.head == project_head()
    assert chain.resolve("head") == chain.head == chain.resolve("heads")


def test_a_copy_with_added_revisions_ends_at_the_last_one_added(tmp_path) -> None:
    scripts = long_chain(tmp_path, 3)
    chain = Chain.from_scripts(_scripts(scripts))
    assert chain.revisions == ("001", "002", "003", "004", "005", "006", "007")
    assert add_revisions(scripts, 1) == ["008"]
    assert Chain.from_scripts(_scripts(scripts)).head == "008"


def test_a_fixture_sets_chain_comes_from_its_scripts() -> None:
    chain = Chain.from_scripts(_scripts(VALIDATOR_SETS / "good"))
    assert len(chain) >= 1
    assert chain.resolve("+1") == chain.revisions[0]
    assert chain.resolve("head") == chain.revisions[-1]


def test_an_empty_chain_has_no_head_and_names_none_as_known() -> None:
    chain = Chain(())
    assert chain.head is None
    assert chain.resolve("head") is None
    assert chain.resolve("base") is None
    with pytest.raises(UnknownRevisionError, match=r"known: none, head, base"):
        chain.resolve("001")


def test_base_is_none_and_positions_count_from_it() -> None:
    assert CHAIN.resolve("base") is None
    assert CHAIN.position(None) == 0
    assert CHAIN.position("001") == 1
    assert CHAIN.position("004") == 4
    assert "003" in CHAIN and "005" not in CHAIN


def test_an_id_or_a_unique_prefix_resolves() -> None:
    chain = Chain(("001", "002", "1ab2", "1cd3"))
    assert chain.resolve("002") == "002"
    assert chain.resolve("1a") == "1ab2"


def test_an_unknown_or_ambiguous_revision_is_one_line_listing_the_known_ones() -> None:
    chain = Chain(("001", "002", "1ab2", "1cd3"))
    for target in ("009", "1"):  # "1" is ambiguous: a prefix of 1ab2 and 1cd3
        with pytest.raises(UnknownRevisionError) as raised:
            chain.resolve(target)
        message = str(raised.value)
        assert "\n" not in message
        assert message == (f"unknown revision {target!r} (known: 001, 002, 1ab2, 1cd3, head, "
                           "base); see `orchestrator db history`")


def test_relative_revisions_count_from_the_current_one() -> None:
    assert CHAIN.resolve("+1") == "001"  # from base
    assert CHAIN.resolve("+2", "002") == "004"
    assert CHAIN.resolve("-1", "004") == "003"
    assert CHAIN.resolve("-2", "002") is None  # back to base
    assert CHAIN.resolve("+0", "003") == "003"


@pytest.mark.parametrize(("target", "current", "end", "start"), [
    ("+1", "004", "head", "004"),
    ("+5", None, "head", "base"),
    ("-1", None, "base", "base"),
    ("-3", "002", "base", "002"),
])
def test_relative_beyond_the_ends_is_the_one_line_error(target, current, end, start) -> None:
    with pytest.raises(UnknownRevisionError) as raised:
        CHAIN.resolve(target, current)
    assert str(raised.value) == (f"{target} goes past the {end} from {start}; "
                                 "see `orchestrator db history`")


def test_relative_from_a_revision_the_scripts_do_not_have_is_refused() -> None:
    with pytest.raises(UnknownRevisionError, match=r"^\+1 counts from the database's revision "
                       r"009, which these scripts do not have; give a revision id"):
        CHAIN.resolve("+1", "009")


def test_ranges_split_on_the_last_colon() -> None:
    assert split_range("002:004") == ("002", "004")
    assert split_range("004") == (None, "004")
    assert split_range(":003") == (None, "003")
    assert split_range("003:") == ("003", "")
    assert split_range("base:+2") == ("base", "+2")


def test_a_range_resolves_its_end_from_its_start() -> None:
    assert CHAIN.resolve_range("002", "+1") == ("002", "003")
    assert CHAIN.resolve_range(None, "+1") == (None, "001")
    assert CHAIN.resolve_range("base", "head") == (None, "004")
    assert CHAIN.resolve_range("004", "-2") == ("004", "002")


def test_relative_is_plus_or_minus_a_number() -> None:
    assert is_relative("+1") and is_relative("-12")
    assert not is_relative("1") and not is_relative("-x") and not is_relative("+1:003")


def test_what_an_upgrade_applies_oldest_first() -> None:
    assert CHAIN.upgrade_steps(None, "004") == ("001", "002", "003", "004")
    assert CHAIN.upgrade_steps("002", "003") == ("003",)
    assert CHAIN.upgrade_steps("003", "003") == ()
    assert CHAIN.upgrade_steps("004", "002") == ()  # the other direction applies nothing
    assert not CHAIN.goes_down("002", "004")


def test_what_a_downgrade_undoes_newest_first() -> None:
    assert CHAIN.downgrade_steps("004", None) == ("004", "003", "002", "001")
    assert CHAIN.downgrade_steps("003", "001") == ("003", "002")
    assert CHAIN.downgrade_steps("002", "002") == ()
    assert CHAIN.downgrade_steps("001", "004") == ()
    assert CHAIN.goes_down("004", "002") and CHAIN.goes_down("001", None)


def test_applied_and_before() -> None:
    assert CHAIN.applied(None) == ()
    assert CHAIN.applied("002") == ("001", "002")
    assert CHAIN.before("003") == "002"
    assert CHAIN.before("001") is None
    assert end_or_base(None) == "base" and end_or_base("002") == "002"
