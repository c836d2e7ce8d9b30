"""The ``[rollback]`` section: where backups go, what the database and the application are, and
how a rollback is verified. The rollback package carries it out."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from spek_sentinel.config.types import Duration, PositiveDuration, StrictModel

Argv = Annotated[list[str], Field(min_length=1)]


class DatabaseTarget(StrictModel):
    """The database to back up and roll back: by DSN (from env or file), or only inside its
    container as in the runbook (``docker exec spek-postgres pg_dump -U spek_user -d spek_db``)."""

    dsn_env: str | None = None
    dsn_file: str | None = None
    container: str | None = None
    dbname: str | None = None  # with container
    user: str | None = None  # with container
    password_env: str | None = None  # with container, when the server asks for one
    migrations_dir: str | None = None  # NNN_name.up.sql / NNN_name.down.sql
    migrate_down_command: Argv | None = None  # the app's own, e.g. node scripts/migrate.js down
    migrate_down_all_command: Argv | None = None
    migrate_status_command: Argv | None = None
    migrate_cwd: str | None = None

    @model_validator(mode="after")
    def _one_way_in(self) -> DatabaseTarget:
        ways = [self.dsn_env, self.dsn_file, self.container]
        if sum(way is not None for way in ways) != 1:
            raise ValueError("set exactly one of dsn_env, dsn_file or container")
        if self.container is not None and (self.dbname is None or self.user is None):
            raise ValueError("a database inside a container needs dbname and user")
        if self.migrations_dir is not None and self.migrate_down_command is not None:
            raise ValueError("set migrations_dir or migrate_down_command, not both")
        commands = (
            self.migrate_down_command,
            self.migrate_down_all_command,
            self.migrate_status_command,
        )
        if any(c is not None for c in commands) and not all(c is not None for c in commands):
            raise ValueError(
                "the app's migrate commands come as a set: migrate_down_command, "
                "migrate_down_all_command and migrate_status_command"
            )
        return self


class DockerApplication(StrictModel):
    kind: Literal["docker"]
    container: str


class GitApplication(StrictModel):
    kind: Literal["git"]
    repo: str
    clean_commands: list[Argv] = []
    build_commands: list[Argv] = []
    stop_command: Argv
    start_command: Argv


class CommandApplication(StrictModel):
    kind: Literal["command"]
    stop_command: Argv
    rollback_command: Argv  # "{release}" in an argument is replaced by the target release
    start_command: Argv
    current_release_command: Argv
    target_exists_command: Argv  # exit 0: the release exists (pre-flight, before any stop)


_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ProcessApplication(StrictModel):
    """spek-sentinel runs the release's process itself (rollback/apps/process.py)."""

    kind: Literal["process"]
    # the release in the foreground; "{release}" in an argument is replaced by the release
    command: Argv
    name: str = Field(default="app", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    cwd: str | None = None
    # the process's environment besides PATH and LANG: literal values, so nothing secret
    env: dict[str, str] = {}
    # secrets: the process's variable -> the sentinel's variable holding the value
    env_from: dict[str, str] = {}
    # what "the rollback target exists" means: one of the releases listed, or the command's exit 0
    releases: list[str] | None = Field(default=None, min_length=1)
    target_exists_command: Argv | None = None
    state_dir: str | None = None  # record, pid file and log; default <[sentinel] state_dir>/apps
    stop_grace: PositiveDuration = 10.0  # SIGTERM, then SIGKILL after this long
    ready_url: str | None = None  # start returns once this answers 2xx
    start_check: PositiveDuration = 2.0  # without ready_url: the process must stay up this long
    start_timeout: PositiveDuration = 60.0  # for ready_url to answer

    @model_validator(mode="after")
    def _consistent(self) -> ProcessApplication:
        if (self.releases is None) == (self.target_exists_command is None):
            raise ValueError(
                "set releases (the releases there are) or target_exists_command, exactly one"
            )
        for name in (*self.env, *self.env_from, *self.env_from.values()):
            if not _VARIABLE.fullmatch(name):
                # not echoed: a value pasted here by mistake must not reach the logs
                raise ValueError("env and env_from take environment variable names")
        both = sorted(set(self.env) & set(self.env_from))
        if both:
            raise ValueError(f"{', '.join(both)} set in both env and env_from")
        if self.ready_url is not None and not re.match(r"https?://[^/@\s]+", self.ready_url):
            raise ValueError("ready_url: an http:// or https:// URL without credentials")
        return self


Application = Annotated[
    DockerApplication | GitApplication | CommandApplication | ProcessApplication,
    Field(discriminator="kind"),
]


class RollbackSettings(StrictModel):
    backup_dir: str = "/var/lib/spek-sentinel/backups"
    incidents_dir: str = "/var/lib/spek-sentinel/incidents"
    downtime_budget: PositiveDuration = 600.0  # the runbook's "maximum downtime: 10 minutes"
    downtime_target: PositiveDuration = 300.0  # "target: 5 minutes"
    step_timeout: PositiveDuration = 300.0
    keep_backups: int = Field(default=10, ge=1)
    known_good_after: Duration = 3600.0  # a release healthy this long becomes "known good"
    # the daemon takes a verified "last_known_good" backup this often while every rule is OK
    backup_every: Duration = 0.0  # 0: never (cron `spek-sentinel backup` instead)
    env_file: str | None = None  # the app's .env, where a playbook's rotate_secrets live
    database: DatabaseTarget | None = None
    application: Application | None = None
