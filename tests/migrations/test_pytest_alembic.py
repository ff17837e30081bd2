"""pytest-alembic's built-in tests, on SQLite and on PostgreSQL.

They are imported rather than bound by the plugin's collector, so that the `alembic_engine`
fixture (parametrised through `db_url`) runs them once per database.
"""

from pytest_alembic.tests import (  # noqa: F401 - collected by pytest
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
