"""Where the state lives, from the config: PostgreSQL when ``[sentinel] state_dsn_env`` or
``state_dsn_file`` names the DSN (a secret), else the SQLite file under ``state_dir``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from spek_sentinel.config import Config
from spek_sentinel.config.models import SentinelSettings
from spek_sentinel.secrets import read_secret
from spek_sentinel.store.db import (
    DEFAULT_BUSY_TIMEOUT_MS,
    STATE_FILE,
    PostgresDb,
    SqliteDb,
    StateDb,
    describe_dsn,
)


@dataclass(frozen=True, slots=True)
class StateLocation:
    """The SQLite state file, or a PostgreSQL DSN (kept out of repr and ``where``)."""

    path: Path | None = None
    dsn: str | None = field(default=None, repr=False)
    source: str = ""  # where the DSN came from (variable or file), to name in messages

    def __post_init__(self) -> None:
        if (self.path is None) == (self.dsn is None):
            raise ValueError("a state location is a SQLite path or a PostgreSQL DSN")

    @classmethod
    def sqlite(cls, path: Path) -> StateLocation:
        return cls(path=path)

    @classmethod
    def postgres(cls, dsn: str, source: str = "") -> StateLocation:
        return cls(dsn=dsn, source=source)

    @property
    def dialect(self) -> str:
        return "sqlite" if self.path is not None else "postgresql"

    @property
    def where(self) -> str:
        """Safe to print and log: the file, or the database without credentials."""
        if self.path is not None:
            return str(self.path)
        assert self.dsn is not None
        return describe_dsn(self.dsn)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values the log redactor must hide."""
        return (self.dsn,) if self.dsn is not None else ()

    def open(self, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> StateDb:
        """A new connection, the schema migrated."""
        if self.path is not None:
            return SqliteDb.open(self.path, busy_timeout_ms)
        assert self.dsn is not None
        return PostgresDb.open(self.dsn, busy_timeout_ms)


StateSource = Config | SentinelSettings | StateLocation


def state_location(source: StateSource, environ: Mapping[str, str] | None = None) -> StateLocation:
    """Where the state lives. Reads the DSN secret (a ConfigError names the key when it cannot
    be read); ``environ`` defaults to the process environment."""
    if isinstance(source, StateLocation):
        return source
    settings = source.model.sentinel if isinstance(source, Config) else source
    if settings.state_dsn_env is None and settings.state_dsn_file is None:
        return StateLocation.sqlite(Path(settings.state_dir) / STATE_FILE)
    secret = read_secret(
        "sentinel",
        os.environ if environ is None else environ,
        field="state_dsn",
        env=settings.state_dsn_env,
        file=settings.state_dsn_file,
    )
    return StateLocation.postgres(secret.value, secret.source)


def open_state(
    source: StateSource,
    environ: Mapping[str, str] | None = None,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
) -> StateDb:
    """A connection to the configured state database, the schema migrated."""
    return state_location(source, environ).open(busy_timeout_ms)
