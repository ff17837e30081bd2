"""Settings: environments, their defaults, and one-line errors that name the variable."""

from __future__ import annotations

import pytest

from orchestrator.settings import Environment, SettingsError, get_settings, load_settings


def test_development_is_the_default_with_sqlite_and_auto_migrate():
    settings = load_settings()
    assert settings.environment is Environment.development
    assert settings.database_url == "sqlite:///orchestrator_dev.db"
    assert settings.auto_migrate is True
    assert settings.backup_before_migrate is False


def test_staging_defaults_to_its_own_sqlite_file_and_no_auto_migrate(monkeypatch):
    monkeypatch.setenv("ENVIRONMENT", "staging")
    settings = load_settings()
    assert settings.database_url == "sqlite:///orchestrator_staging.db"
    assert settings.auto_migrate is False
    assert settings.backup_before_migrate is True


def test_production_requires_database_url(monkeypatch):
    monkeypatch.setenv("ENVIRONMENT", "production")
    with pytest.raises(SettingsError, match="DATABASE_URL is required when ENVIRONMENT=production"):
        load_settings()
    monkeypatch.setenv("DATABASE_URL", "postgres://app:pw@db/orchestrator")
    settings = load_settings()
    assert settings.database_url == "postgresql+psycopg://app:pw@db/orchestrator"
    assert settings.auto_migrate is False


def test_unknown_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv("ENVIRONMENT", "prod")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value) == (
        "ENVIRONMENT='prod' is not valid; use one of: development, staging, production"
    )


def test_malformed_url_names_the_variable_and_hides_the_password(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "not a url:secret@")
    with pytest.raises(SettingsError, match="^DATABASE_URL is invalid") as info:
        load_settings()
    assert "\n" not in str(info.value)


def test_in_memory_sqlite_is_refused():
    with pytest.raises(SettingsError, match="in-memory"):
        load_settings(database_url="sqlite://")


def test_bad_boolean_names_the_variable(monkeypatch):
    monkeypatch.setenv("AUTO_MIGRATE", "perhaps")
    with pytest.raises(SettingsError, match="^AUTO_MIGRATE is invalid"):
        load_settings()


DURATION_VARIABLES = ["DB_LOCK_TIMEOUT", "MIGRATION_LOCK_TIMEOUT"]


@pytest.mark.parametrize("variable", DURATION_VARIABLES)
@pytest.mark.parametrize("value", ["abc", "5 seconds", "-1s", "", "1h", "2d", "500us", "nan"])
def test_a_malformed_duration_is_refused_before_anything_runs(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=f"^{variable} is invalid: .* is not a duration; give "
                                            "seconds .* ms, s or min"):
        load_settings()


@pytest.mark.parametrize("variable", DURATION_VARIABLES)
@pytest.mark.parametrize(("value", "seconds"), [
    ("5", 5.0), ("300", 300.0), ("2.5", 2.5), ("5s", 5.0), ("500ms", 0.5), ("1min", 60.0),
    ("1.5 s", 1.5), (" 0 ", 0.0),
])
def test_a_bare_number_is_seconds_for_every_duration(monkeypatch, variable, value, seconds):
    """DB_LOCK_TIMEOUT=5 once meant 5 ms (PostgreSQL's unit) beside MIGRATION_LOCK_TIMEOUT=300
    in seconds; both now read a bare number as seconds, and take ms, s and min alike."""
    monkeypatch.setenv(variable, value)
    settings = load_settings()
    assert getattr(settings, variable.lower()) == seconds


def test_db_lock_timeout_stays_within_what_postgresql_takes(monkeypatch):
    monkeypatch.setenv("DB_LOCK_TIMEOUT", "40000min")
    with pytest.raises(SettingsError, match="^DB_LOCK_TIMEOUT is invalid: .*longer than PostgreSQL"):
        load_settings()


def test_durations_given_as_numbers_are_seconds():
    assert load_settings(db_lock_timeout=2, migration_lock_timeout=1.5).db_lock_timeout == 2.0
    with pytest.raises(SettingsError, match="^DB_LOCK_TIMEOUT is invalid: .* 0 or more"):
        load_settings(db_lock_timeout=-1)


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_migration_lock_timeout_must_be_a_finite_number_of_seconds(monkeypatch, value):
    monkeypatch.setenv("MIGRATION_LOCK_TIMEOUT", value)
    with pytest.raises(SettingsError, match="^MIGRATION_LOCK_TIMEOUT is invalid"):
        load_settings()


def test_overrides_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("ENVIRONMENT", "staging")
    settings = load_settings(environment="development", database_url="sqlite:///x.db")
    assert settings.environment is Environment.development and settings.database_url == "sqlite:///x.db"


def test_dotenv_file_is_read(tmp_path):
    (tmp_path / ".env").write_text("ENVIRONMENT=staging\nAUTO_MIGRATE=true\n")
    settings = get_settings()
    assert settings.environment is Environment.staging and settings.auto_migrate is True
    assert get_settings() is settings


# -- names that are not settings ----------------------------------------------------------


def test_a_misspelt_key_in_env_file_is_an_error_naming_it_and_the_closest_setting(tmp_path):
    (tmp_path / ".env").write_text("# local\nDATABSE_URL=sqlite:///other.db\nUNKNOWN_KEY=1\n")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value) == (
        ".env: line 2: unknown setting DATABSE_URL (did you mean DATABASE_URL?); "
        "line 3: unknown setting UNKNOWN_KEY (did you mean BACKUP_KEEP?); fix or remove them"
    )


def test_an_env_file_of_settings_is_read_whatever_their_case(tmp_path):
    (tmp_path / ".env").write_text("export database_url=sqlite:///mine.db\nBACKUP_KEEP=3\n")
    settings = load_settings()
    assert (settings.database_url, settings.backup_keep) == ("sqlite:///mine.db", 3)


def test_an_empty_unknown_key_is_refused_too(tmp_path):
    (tmp_path / ".env").write_text("ENVIROMENT=\n")
    expected = r"unknown setting ENVIROMENT \(did you mean ENVIRONMENT\?\)"
    with pytest.raises(SettingsError, match=expected):
        load_settings()


def test_the_cli_refuses_a_misspelt_env_file_with_one_line(tmp_path, run_cli):
    (tmp_path / ".env").write_text("DATABSE_URL=sqlite:///other.db\n")
    result = run_cli("db", "current")
    assert result.returncode == 2
    assert result.stderr == (
        "Error: .env: line 1: unknown setting DATABSE_URL (did you mean DATABASE_URL?); "
        "fix or remove it\n"
    )
    assert not (tmp_path / "orchestrator_dev.db").exists()


def test_unknown_variables_that_look_like_settings_get_a_warning(monkeypatch, caplog):
    from orchestrator import settings as module

    monkeypatch.setattr(module, "_warned", set())
    for name, value in [("ORCHESTRATOR_DATABASE_URL", "sqlite:///a.db"),
                        ("DATABSE_URL", "sqlite:///b.db"), ("TEST_DATABASE_URL", "x"),
                        ("HOME", "/root")]:
        monkeypatch.setenv(name, value)
    load_settings()
    load_settings()  # once per process, not once per call
    warnings = [r.getMessage() for r in caplog.records if r.name == "orchestrator.settings"]
    assert warnings == [
        "ignoring environment variable DATABSE_URL, which is not a setting: "
        "did you mean DATABASE_URL?",
        "ignoring environment variable ORCHESTRATOR_DATABASE_URL, which is not a setting: "
        "settings have no ORCHESTRATOR_ prefix; did you mean DATABASE_URL?",
    ]


@pytest.mark.parametrize(("environment", "auto", "backs_up", "asks", "refuses", "disposable",
                          "needs_db"), [
    ("development", True, False, False, False, True, False),
    ("staging", False, True, False, True, False, False),
    ("production", False, True, True, True, False, True),
])
def test_each_environment_answers_its_policy_questions(environment, auto, backs_up, asks,
                                                       refuses, disposable, needs_db):
    policy = Environment(environment)
    assert str(policy) == f"{policy}" == environment
    assert (policy.auto_migrates, policy.backs_up_before_migrating, policy.asks_before_downgrade,
            policy.refuses_edited_scripts, policy.is_disposable,
            policy.needs_database_to_start) == (auto, backs_up, asks, refuses, disposable,
                                                needs_db)
