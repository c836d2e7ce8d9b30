"""From the ``[rollback]`` section to the things the rollback package acts on."""

from __future__ import annotations

from collections.abc import Mapping

from spek_sentinel.config import Config
from spek_sentinel.domain.errors import ConfigError, ConfigProblem
from spek_sentinel.rollback.backup import DatabaseTarget
from spek_sentinel.secrets import read_secret


def database_target(config: Config, environ: Mapping[str, str]) -> DatabaseTarget | None:
    """The database to back up and roll back, or None when the table names none. A secret that
    is missing is a ConfigError naming where it should come from."""
    model = config.model.rollback.database
    if model is None:
        return None
    section = "rollback.database"
    if model.container is not None:
        password = None
        if model.password_env is not None:
            secret = read_secret(
                section, environ, field="password", env=model.password_env, file=None
            )
            password = secret.value
        return DatabaseTarget(
            container=model.container, dbname=model.dbname, user=model.user, password=password
        )
    secret = read_secret(section, environ, field="dsn", env=model.dsn_env, file=model.dsn_file)
    try:
        return DatabaseTarget(dsn=secret.value)
    except ValueError as exc:
        raise ConfigError([ConfigProblem(secret.source, secret.key, str(exc))]) from None
