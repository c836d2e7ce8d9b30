"""A playbook, the [rollback] section and the release history turned into an executor Plan.

The steps follow the runbook's order: document the incident, pre-flight (before anything is
stopped), emergency backup and verify, stop traffic, database rollback, application rollback,
restart, verify. What a playbook asks for that cannot be done here is refused when the plan is
built, before anything runs ("stops and pages rather than guess").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from spek_sentinel.config import Config
from spek_sentinel.config.models import PlaybookModel
from spek_sentinel.config.rollback import (
    CommandApplication,
    DockerApplication,
    GitApplication,
    ProcessApplication,
    RollbackSettings,
)
from spek_sentinel.domain.errors import ConfigError, ConfigProblem, RollbackError
from spek_sentinel.domain.units import iso
from spek_sentinel.rollback.app_migrations import AppCommandMigrator, AppCommands
from spek_sentinel.rollback.apps.base import DEFAULT_ENV, AppBackend, StepOutput
from spek_sentinel.rollback.apps.command import CommandAppSettings, CommandBackend
from spek_sentinel.rollback.apps.docker import DockerAppSettings, DockerBackend
from spek_sentinel.rollback.apps.git import GitAppSettings, GitBackend
from spek_sentinel.rollback.apps.process import ProcessAppSettings, ProcessBackend
from spek_sentinel.rollback.backup import DatabaseTarget, create_backup, list_backups, preflight
from spek_sentinel.rollback.executor import Plan, Step, StepContext, StepFailedError, StepResult
from spek_sentinel.rollback.journal import VerifiedBackup
from spek_sentinel.rollback.migrations import (
    MigrationRunner,
    MigrationSettings,
    Migrator,
    SqlMigrator,
)
from spek_sentinel.rollback.restore import RestoreRecord, restore_and_swap, restore_in_container
from spek_sentinel.rollback.secret_rotation import check_env_file, rotate_env_secrets
from spek_sentinel.rollback.verify import verify_until
from spek_sentinel.service.rollback_targets import database_target
from spek_sentinel.store.base import IncidentRecord
from spek_sentinel.store.open import state_location
from spek_sentinel.store.records import StateStore


class PlanError(RollbackError):
    """The playbook cannot be carried out with this configuration; nothing was run."""


@dataclass(frozen=True, slots=True)
class PlanRequest:
    incident_id: str
    playbook: str
    target_release: str | None  # the known-good release to return to; None: no app rollback
    trigger: str = ""
    started_at: float = 0.0


def app_backend(
    settings: RollbackSettings,
    environ: Mapping[str, str] | None = None,
    state_dir: Path | None = None,
) -> AppBackend | None:
    """The ``[rollback.application]`` backend, or None. ``environ`` holds the secrets a process
    backend's ``env_from`` names; ``state_dir`` is ``[sentinel] state_dir``, under which a
    process backend keeps its record unless it names its own."""
    app = settings.application
    if isinstance(app, DockerApplication):
        return DockerBackend(DockerAppSettings(container=app.container))
    if isinstance(app, GitApplication):
        return GitBackend(
            GitAppSettings(
                repo=Path(app.repo),
                stop_command=tuple(app.stop_command),
                start_command=tuple(app.start_command),
                clean_commands=tuple(tuple(c) for c in app.clean_commands),
                build_commands=tuple(tuple(c) for c in app.build_commands),
            )
        )
    if isinstance(app, CommandApplication):
        return CommandBackend(
            CommandAppSettings(
                stop_command=tuple(app.stop_command),
                rollback_command=tuple(app.rollback_command),
                start_command=tuple(app.start_command),
                current_release_command=tuple(app.current_release_command),
                target_exists_command=tuple(app.target_exists_command),
            )
        )
    if isinstance(app, ProcessApplication):
        return process_backend(app, environ or {}, state_dir)
    return None


def process_backend(
    app: ProcessApplication, environ: Mapping[str, str], state_dir: Path | None
) -> ProcessBackend:
    """A ConfigError names each ``env_from`` variable that is not set."""
    secrets: dict[str, str] = {}
    problems = []
    for name, source in app.env_from.items():
        value = environ.get(source)
        if not value:
            state = "not set" if value is None else "empty"
            key = f"rollback.application.env_from.{name}"
            problems.append(ConfigProblem(source, key, f"environment variable is {state}"))
        else:
            secrets[name] = value
    if problems:
        raise ConfigError(problems)
    default_dir = (state_dir or Path("/var/lib/spek-sentinel")) / "apps"
    return ProcessBackend(
        ProcessAppSettings(
            command=tuple(app.command),
            state_dir=Path(app.state_dir) if app.state_dir is not None else default_dir,
            name=app.name,
            releases=tuple(app.releases) if app.releases is not None else None,
            target_exists_command=(
                tuple(app.target_exists_command) if app.target_exists_command else None
            ),
            cwd=Path(app.cwd) if app.cwd is not None else None,
            env={**DEFAULT_ENV, **app.env, **secrets},
            secrets=tuple(secrets.values()),
            stop_grace=app.stop_grace,
            ready_url=app.ready_url,
            start_check=app.start_check,
            start_timeout=app.start_timeout,
        )
    )


def _text(output: StepOutput) -> str:
    ran = "\n".join(f"$ {line}" for line in output.ran)
    return "\n".join(part for part in (output.action, ran, output.output) if part)


def _admin_dsn(target: DatabaseTarget) -> tuple[str, str]:
    """(a DSN to the server's ``postgres`` database, the target database's name)."""
    assert target.dsn is not None
    params = conninfo_to_dict(target.dsn)
    dbname = str(params.get("dbname") or params.get("user") or "postgres")
    params["dbname"] = "postgres"
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None}), dbname


def _restored(record: RestoreRecord) -> str:
    """The restore step's output: what moved where, and anything a human should know."""
    return "\n".join((record.describe(), *record.notes))


def _restore_source(settings: RollbackSettings, playbook: PlaybookModel) -> Path:
    label = playbook.restore_from or ""
    for backup in list_backups(Path(settings.backup_dir)):
        if backup.label == label and backup.sha256 is not None:
            return backup.path
    hint = "release record takes them" if label == "pre_deployment" else "none is taken yet"
    raise PlanError(f"no verified {label!r} backup in {settings.backup_dir} to restore ({hint})")


class _Builder:
    def __init__(self, config: Config, request: PlanRequest, environ: Mapping[str, str]) -> None:
        self.config = config
        self.request = request
        self.environ = environ
        self.settings = config.model.rollback
        playbook = config.model.playbooks.get(request.playbook)
        if playbook is None:
            known = ", ".join(sorted(config.model.playbooks)) or "none"
            raise PlanError(f"unknown playbook {request.playbook!r}; defined: {known}")
        self.playbook = playbook
        if playbook.rotate_secrets and self.settings.env_file is None:
            raise PlanError(
                f"playbook {request.playbook} rotates {', '.join(playbook.rotate_secrets)}, "
                "but [rollback] env_file is not set"
            )
        self.database = database_target(config, environ)
        self.app = app_backend(self.settings, environ, Path(config.model.sentinel.state_dir))
        self.steps: list[Step] = []

    def step(
        self,
        name: str,
        action: Callable[[StepContext], StepResult | str],
        *,
        idempotent: bool,
        destructive: bool,
        detail: str,
        requires_verified_backup: bool = False,
        starts_downtime: bool = False,
        ends_downtime: bool = False,
    ) -> None:
        self.steps.append(
            Step(
                name=name,
                action=action,
                timeout=self.settings.step_timeout,
                idempotent=idempotent,
                destructive=destructive,
                requires_verified_backup=requires_verified_backup,
                starts_downtime=starts_downtime,
                ends_downtime=ends_downtime,
                detail=detail,
            )
        )

    def build(self) -> Plan:
        self._document()
        self._preflight_and_backup()
        self._stop()
        self._database()
        self._rotate_secrets()
        self._application()
        self._verify()
        return Plan(self.request.incident_id, tuple(self.steps), playbook=self.request.playbook)

    def _document(self) -> None:
        directory = Path(self.settings.incidents_dir)
        request = self.request
        path = directory / f"{request.incident_id}.md"

        components = [
            part
            for part in (
                self.database.describe() if self.database is not None else "",
                self.app.description if self.app is not None else "",
            )
            if part
        ]
        record = IncidentRecord(
            id=request.incident_id,
            opened_at=request.started_at,
            trigger=request.trigger or "manual rollback",
            playbook=request.playbook,
            target_release=request.target_release,
            details=f"Affected components: {'; '.join(components) or 'none configured'}",
        )
        state = state_location(self.config, self.environ)

        def document(context: StepContext) -> str:
            store = StateStore.open(state)
            try:
                store.record_incident(record)
            finally:
                store.close()
            directory.mkdir(parents=True, exist_ok=True)
            path.write_text(
                "INCIDENT REPORT\n===============\n"
                f"Date/Time: {iso(record.opened_at)}\n"
                f"Issue: {record.trigger}\n"
                f"Playbook: {record.playbook} ({self.playbook.scenario})\n"
                f"Rollback target: {record.target_release or 'none'}\n"
                f"{record.details}\n",
                encoding="utf-8",
            )
            return f"incident record written to the state store and {path}"

        self.step(
            "document the incident", document, idempotent=True, destructive=False, detail=str(path)
        )

    def _preflight_and_backup(self) -> None:
        target, app, release = self.database, self.app, self.request.target_release
        backup_dir = Path(self.settings.backup_dir)
        wants_app = self.playbook.application != "none"
        if wants_app and app is None:
            raise PlanError(
                f"playbook {self.request.playbook} rolls the application back, "
                "but [rollback.application] is not set"
            )
        if self.playbook.application == "previous_release" and release is None:
            raise PlanError(
                "no known-good release to roll back to (spek-sentinel releases); pass --to RELEASE"
            )
        if self.playbook.database and target is None:
            raise PlanError(
                f"playbook {self.request.playbook} changes the database, "
                "but [rollback.database] is not set"
            )
        restore_from = (
            _restore_source(self.settings, self.playbook)
            if "restore" in self.playbook.database
            else None
        )
        self.restore_from = restore_from
        env_file = (
            Path(self.settings.env_file)
            if self.playbook.rotate_secrets and self.settings.env_file
            else None
        )

        def check(context: StepContext) -> str:
            lines = []
            if target is not None:
                found = preflight(target, backup_dir, context.remaining())
                lines.append(
                    f"{target.describe()}: server {found.server_version}, "
                    f"pg_dump {found.pg_dump_version}, {found.free_bytes} bytes free for "
                    f"~{found.estimated_bytes}"
                )
            if self.playbook.application == "previous_release" and app and release:
                if not app.target_exists(release, context.remaining()):
                    raise StepFailedError(
                        f"rollback target {release} does not exist ({app.description})"
                    )
                lines.append(f"rollback target {release} exists ({app.description})")
            if restore_from is not None:
                lines.append(f"restore source {restore_from}")
            if env_file is not None:
                check_env_file(env_file)
                lines.append(f"env file {env_file} can be rewritten")
            return "\n".join(lines) or "nothing to check"

        self.step(
            "pre-flight",
            check,
            idempotent=True,
            destructive=False,
            detail=f"target {release}; backup dir {backup_dir}",
        )
        if target is None:
            return

        def backup(context: StepContext) -> StepResult:
            record = create_backup(target, backup_dir, "emergency", context.remaining())
            tables = ", ".join(record.tables)
            return StepResult(
                f"{record.path}: {record.size} bytes, sha256 {record.sha256}, tables {tables}",
                verified_backup=VerifiedBackup(
                    str(record.path), record.size, record.sha256, "emergency"
                ),
            )

        self.step(
            "emergency backup and verify",
            backup,
            idempotent=True,
            destructive=False,
            detail=str(backup_dir),
        )

    def _stop(self) -> None:
        app = self.app
        if app is None or (self.playbook.application == "none" and not self.playbook.stop_first):
            return
        self.step(
            "stop traffic",
            lambda context: _text(app.stop(context.remaining())),
            idempotent=True,
            destructive=False,
            starts_downtime=True,
            detail=app.description,
        )

    def _database(self) -> None:
        target = self.database
        model = self.settings.database
        for action in self.playbook.database:
            if target is None or model is None:
                return
            if action == "restore":
                self._restore(target)
                continue
            migrator = self._migrator(target)
            to_version = self.playbook.migrate_to_version
            if action == "migrate_down" and to_version is not None:
                if not isinstance(migrator, SqlMigrator):
                    raise PlanError(
                        "migrate_to_version needs the migration runner (migrations_dir)"
                    )

                def down_to(
                    context: StepContext,
                    migrator: SqlMigrator = migrator,
                    version: int = to_version,
                ) -> str:
                    outcome = migrator.down_to(version)
                    return f"{outcome.summary}\n{outcome.output}".strip()

                self.step(
                    f"migrate down to version {to_version}",
                    down_to,
                    idempotent=True,  # a second call finds nothing left to do
                    destructive=True,
                    requires_verified_backup=True,
                    detail=migrator.description,
                )
            elif action == "migrate_down":

                def down(context: StepContext, migrator: Migrator = migrator) -> str:
                    outcome = migrator.down(1)
                    return f"{outcome.summary}\n{outcome.output}".strip()

                self.step(
                    "migrate down one step",
                    down,
                    idempotent=False,
                    destructive=True,
                    requires_verified_backup=True,
                    detail=migrator.description,
                )
            else:

                def down_all(context: StepContext, migrator: Migrator = migrator) -> str:
                    outcome = migrator.down_all()
                    return f"{outcome.summary}\n{outcome.output}".strip()

                self.step(
                    "migrate down to zero",
                    down_all,
                    idempotent=True,
                    destructive=True,
                    requires_verified_backup=True,
                    detail=migrator.description,
                )

    def _restore(self, target: DatabaseTarget) -> None:
        """Runbook phase 2 option C: the backup restored beside the live database and swapped
        in, the damaged one kept; by DSN, or inside the database's container."""
        source = self.restore_from
        assert source is not None
        restore: Callable[[StepContext], str]
        if target.container is not None:
            where = f"{target.dbname} in container {target.container}"

            def restore(context: StepContext) -> str:
                record = restore_in_container(
                    target, source, context.remaining(), check=context.check
                )
                return _restored(record)

        else:
            admin, dbname = _admin_dsn(target)
            where = dbname

            def restore(context: StepContext) -> str:
                record = restore_and_swap(
                    admin, dbname, source, context.remaining(), check=context.check
                )
                return _restored(record)

        self.step(
            "database restore",
            restore,
            idempotent=False,
            destructive=True,
            requires_verified_backup=True,
            detail=f"{where} from {source}",
        )

    def _migrator(self, target: DatabaseTarget) -> Migrator:
        return migrator_for(self.settings, target)

    def _rotate_secrets(self) -> None:
        keys = self.playbook.rotate_secrets
        if not keys or self.settings.env_file is None:
            return
        env_file = Path(self.settings.env_file)

        def rotate(context: StepContext) -> str:
            rotated = rotate_env_secrets(env_file, keys)
            return f"fresh values for {', '.join(rotated)} in {env_file} (old values not kept)"

        self.step(
            "rotate secrets",
            rotate,
            idempotent=True,
            destructive=False,
            detail=f"{', '.join(keys)} in {env_file}",
        )

    def _application(self) -> None:
        app, release = self.app, self.request.target_release
        if app is None:
            return
        if self.playbook.application == "previous_release" and release is not None:
            self.step(
                "application rollback",
                lambda context: _text(app.rollback_to(release, context.remaining())),
                idempotent=True,
                destructive=False,
                detail=f"{app.description} -> {release}",
            )
        elif self.playbook.application == "rebuild":
            # runbook phase 3 option B: keep the current code, clear the cache, rebuild

            def rebuild(context: StepContext) -> str:
                current = app.current_release(context.remaining())
                return _text(app.rollback_to(current, context.remaining()))

            self.step(
                "application rebuild",
                rebuild,
                idempotent=True,
                destructive=False,
                detail=f"{app.description}: the current release, rebuilt",
            )
        if self.playbook.application != "none" or self.playbook.stop_first:
            self.step(
                "restart",
                lambda context: _text(app.start(context.remaining())),
                idempotent=True,
                destructive=False,
                detail=app.description,
            )

    def _verify(self) -> None:
        config, environ = self.config, self.environ

        def verify(context: StepContext) -> str:
            report = asyncio.run(
                verify_until(config, environ, timeout=max(context.remaining() - 5, 1))
            )
            lines = [f"{'ok ' if c.passed else 'FAIL'} {c.name}: {c.detail}" for c in report.checks]
            if not report.passed:
                failed = ", ".join(c.name for c in report.failures())
                raise StepFailedError(
                    f"verification failed after {report.attempts} attempts: {failed}",
                    "\n".join(lines),
                )
            return "\n".join(lines)

        self.step(
            "verify",
            verify,
            idempotent=True,
            destructive=False,
            ends_downtime=True,
            detail="every up signal 1; every validation check within its limit",
        )


def migrator_for(settings: RollbackSettings, target: DatabaseTarget) -> Migrator:
    """The database's migrations: spek-sentinel's runner over a directory, or the app's own
    commands. PlanError when the table names neither (or the runner has no DSN)."""
    model = settings.database
    assert model is not None
    if model.migrations_dir is not None:
        if target.dsn is None:
            raise PlanError("the migration runner needs the database by DSN (dsn_env/dsn_file)")
        runner = MigrationRunner(Path(model.migrations_dir), MigrationSettings())
        return SqlMigrator(runner, target.dsn)
    down, down_all, status = (
        model.migrate_down_command,
        model.migrate_down_all_command,
        model.migrate_status_command,
    )
    if down is None or down_all is None or status is None:
        raise PlanError(
            "migrating down needs [rollback.database] migrations_dir or the app's migrate "
            "commands (migrate_down_command, migrate_down_all_command, migrate_status_command)"
        )
    commands = AppCommands(
        down=tuple(down),
        down_all=tuple(down_all),
        status=tuple(status),
        cwd=Path(model.migrate_cwd or "."),
        timeout=settings.step_timeout,
    )
    return AppCommandMigrator(commands)


def build_plan(config: Config, request: PlanRequest, environ: Mapping[str, str]) -> Plan:
    return _Builder(config, request, environ).build()


def describe_plan(plan: Plan) -> str:
    lines = [f"rollback plan for incident {plan.incident_id} (playbook {plan.playbook}):"]
    for index, step in enumerate(plan.steps, start=1):
        flags = [
            f
            for f, on in (
                ("destructive", step.destructive),
                ("needs verified backup", step.requires_verified_backup),
                ("stops traffic", step.starts_downtime),
            )
            if on
        ]
        suffix = f"  [{', '.join(flags)}]" if flags else ""
        lines.append(f"  {index}. {step.name}: {step.detail}{suffix}")
    return "\n".join(lines)
