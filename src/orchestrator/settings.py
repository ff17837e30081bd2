"""All settings in one place: environment variables, an optional `.env`, and their defaults.

Settings are built, never imported as a ready object: call `get_settings()` (cached) or build
`Settings(...)` directly in tests.
"""

from __future__ import annotations

import difflib
import enum
import logging
import math
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from dotenv import dotenv_values
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.db import normalize_url
from orchestrator.errors import SettingsError


class Environment(str, enum.Enum):
    """Where the service runs, and the policy that follows from it, answered here only."""

    development = "development"
    staging = "staging"
    production = "production"

    def __str__(self) -> str:
        return self.value

    @property
    def auto_migrates(self) -> bool:
        """Whether the API migrates its database at start-up (AUTO_MIGRATE's default)."""
        return self is Environment.development

    @property
    def backs_up_before_migrating(self) -> bool:
        """Whether each upgrade and downgrade is preceded by a backup (BACKUP_BEFORE_MIGRATE's
        default)."""
        return self is not Environment.development

    @property
    def asks_before_downgrade(self) -> bool:
        """Whether a command that takes the database back (downgrade, stamp) asks first,
        unless --yes."""
        return self is Environment.production

    @property
    def refuses_edited_scripts(self) -> bool:
        """Whether an upgrade refuses to run over applied scripts edited since they ran
        (unless --allow-changed)."""
        return self is not Environment.development

    @property
    def is_disposable(self) -> bool:
        """Whether its database may be taken back by a tool on its own (`db rebase` undoing
        a branch's migrations)."""
        return self is Environment.development

    @property
    def needs_database_to_start(self) -> bool:
        """Whether the API refuses to start while its database cannot be reached."""
        return self is Environment.production


DEFAULT_DATABASE_URLS = {
    Environment.development: "sqlite:///orchestrator_dev.db",
    Environment.staging: "sqlite:///orchestrator_staging.db",
}

# Which variable each field is read from, for error messages.
_VARIABLES = {
    "environment": "ENVIRONMENT",
    "database_url": "DATABASE_URL",
    "auto_migrate": "AUTO_MIGRATE",
    "migration_lock_timeout": "MIGRATION_LOCK_TIMEOUT",
    "db_lock_timeout": "DB_LOCK_TIMEOUT",
    "backup_dir": "BACKUP_DIR",
    "backup_keep": "BACKUP_KEEP",
    "backup_before_migrate": "BACKUP_BEFORE_MIGRATE",
}


# A bare number is seconds, for every duration setting alike.
_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|min)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "min": 60.0, None: 1.0}
# PostgreSQL's lock_timeout is an int of milliseconds.
_MAX_LOCK_TIMEOUT = 2_147_483.647


def parse_duration(value: object) -> float:
    """Seconds from `5` (seconds), `5s`, `500ms` or `1min`; a number is taken as seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{value!r} is not a duration; give a number of seconds, 0 or more")
        return float(value)
    match = _DURATION.fullmatch(str(value).strip())
    if match is None:
        raise ValueError(
            f"{value!r} is not a duration; give seconds (e.g. 5), or a number with ms, s or min "
            "(500ms, 5s, 1min)"
        )
    return float(match["number"]) * _UNIT_SECONDS[match["unit"]]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _env_file_sets_only_settings(cls, data: object) -> object:
        check_env_file(Path(str(cls.model_config["env_file"])))
        return data

    environment: Environment = Environment.development
    database_url: str | None = None
    # None means "the environment's default": on in development, off elsewhere.
    auto_migrate: bool | None = None
    # Seconds a migrator waits for another one to finish before giving up.
    migration_lock_timeout: float = Field(default=300.0, ge=0, allow_inf_nan=False)
    # Seconds of PostgreSQL `lock_timeout` for migration sessions: fail fast instead of
    # queueing traffic (0 waits forever).
    db_lock_timeout: float = Field(default=5.0, ge=0, allow_inf_nan=False)
    backup_dir: Path = Path("backups")
    backup_keep: int = Field(default=10, ge=1)
    # None means "the environment's default": on in staging and production.
    backup_before_migrate: bool | None = None

    @field_validator("database_url")
    @classmethod
    def _url_is_well_formed(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return normalize_url(value.strip())

    @field_validator("migration_lock_timeout", "db_lock_timeout", mode="before")
    @classmethod
    def _is_a_duration(cls, value: object, info: ValidationInfo) -> float:
        seconds = parse_duration(value)
        if info.field_name == "db_lock_timeout" and seconds > _MAX_LOCK_TIMEOUT:
            raise ValueError(f"{value!r} is longer than PostgreSQL's lock_timeout allows (24 days)")
        return seconds

    @model_validator(mode="after")
    def _apply_environment_defaults(self) -> Settings:
        if self.database_url is None:
            default = DEFAULT_DATABASE_URLS.get(self.environment)
            if default is None:
                raise ValueError(
                    "DATABASE_URL is required when ENVIRONMENT=production; "
                    "set it to the production database, e.g. postgresql://user@host/orchestrator"
                )
            self.database_url = default
        if self.auto_migrate is None:
            self.auto_migrate = self.environment.auto_migrates
        if self.backup_before_migrate is None:
            self.backup_before_migrate = self.environment.backs_up_before_migrating
        return self


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus `overrides`, turning errors into one line."""
    warn_about_unknown_variables(os.environ)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment and `.env`."""
    return load_settings()


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else ""
    message = str(error["msg"]).removeprefix("Value error, ")
    if not field:
        return message
    variable = _VARIABLES.get(field, field.upper())
    if field == "environment":
        return (
            f"{variable}={error.get('input')!r} is not valid; "
            "use one of: development, staging, production"
        )
    return f"{variable} is invalid: {message}"


# -- names that are not settings ----------------------------------------------------------

logger = logging.getLogger("orchestrator.settings")
# A variable close to a setting's name is probably that setting misspelt (DATABSE_URL), but
# other programs' names may resemble ours (TEST_DATABASE_URL): only near misses are flagged.
_CLOSE_ENOUGH = 0.85
_PREFIX = "ORCHESTRATOR_"
_warned: set[str] = set()


def check_env_file(path: Path) -> None:
    """Refuse a `.env` that sets a name that is not a setting: a misspelt name would otherwise
    be ignored, and the setting's default (another database!) used without a word."""
    if not path.is_file():
        return
    known = set(_VARIABLES.values())
    unknown = [key for key in dotenv_values(path) if key.upper() not in known]
    if not unknown:
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    problems = [
        f"{_line_of(key, lines)}unknown setting {key} (did you mean {_closest(key)}?)"
        for key in unknown
    ]
    raise ValueError(f"{path}: {'; '.join(problems)}; fix or remove "
                     f"{'them' if len(problems) > 1 else 'it'}")


def warn_about_unknown_variables(environ: Mapping[str, str]) -> None:
    """Log a warning, once per process, for each environment variable that looks meant for
    this program but is not a setting (ORCHESTRATOR_DATABASE_URL, DATABSE_URL)."""
    known = set(_VARIABLES.values())
    for name in sorted(environ):
        upper = name.upper()
        if upper in known or name in _warned:
            continue
        if upper.startswith(_PREFIX):
            meant = _closest(upper.removeprefix(_PREFIX))
            hint = f"settings have no {_PREFIX} prefix; did you mean {meant}?"
        elif difflib.get_close_matches(upper, known, n=1, cutoff=_CLOSE_ENOUGH):
            hint = f"did you mean {_closest(upper)}?"
        else:
            continue
        _warned.add(name)
        logger.warning("ignoring environment variable %s, which is not a setting: %s", name, hint)


def _closest(name: str) -> str:
    return difflib.get_close_matches(name.upper(), _VARIABLES.values(), n=1, cutoff=0)[0]


def _line_of(key: str, lines: list[str]) -> str:
    pattern = re.compile(rf"\s*(export\s+)?{re.escape(key)}\s*=")
    number = next((i for i, line in enumerate(lines, 1) if pattern.match(line)), None)
    return f"line {number}: " if number else ""
