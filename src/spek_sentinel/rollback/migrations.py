"""Runbook phase 2, options A and B: roll migrations back, one step, to a version, or to zero.

Two ways to do it, behind one ``Migrator`` Protocol, chosen by configuration:

- ``SqlMigrator`` runs spek-sentinel's own ``MigrationRunner`` over a directory of
  ``NNN_name.up.sql`` / ``NNN_name.down.sql`` files, with a ``schema_migrations`` table
  (version, name, applied_at, checksum of the up file) as the record of what is applied.
- ``AppCommandMigrator`` runs the application's own command (``node scripts/migrate.js down``)
  from argv lists, with the database password in the child's environment, never in argv.

The runner's guarantees:

- The whole directory is checked before anything runs: names, unique numbers, an up and a
  down file for every version, no empty down file, no transaction control inside a file (the
  runner wraps each file in its own transaction). A broken directory runs nothing.
- Each migration runs in one transaction together with its bookkeeping row, under a
  statement and lock timeout. A failure rolls that migration back whole, stops the run, and
  the error names the file and the version the database is left at: the last one completed.
- A down step re-reads its bookkeeping row with ``FOR UPDATE`` inside its transaction, and a
  run holds an advisory lock, so two runners, or a retried call, never roll a version back
  twice. ``down(to_version=V)`` is idempotent; prefer it to ``down(steps=N)`` where a call may
  be repeated (after a crash), since steps count from wherever the database is now.
- Rolling back a migration whose up file changed since it was applied (checksum drift), or
  whose files are gone, is refused unless ``allow_drift``: its down file may not undo what
  was actually applied.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from spek_sentinel.domain.errors import RollbackError
from spek_sentinel.secrets import redact

Direction = Literal["up", "down"]
Conn = psycopg.Connection[TupleRow]

_FILE = re.compile(r"^(?P<version>\d+)_(?P<name>[A-Za-z0-9][A-Za-z0-9_-]*)\.(?P<dir>up|down)\.sql$")
# Statements that would end the runner's transaction early (a COMMIT inside a file makes the
# first half of the file permanent even when the second half fails). PL/pgSQL's ``BEGIN``
# block opener has no semicolon after it and ``END;`` is not listed, so function bodies pass.
_TRANSACTION_CONTROL = re.compile(
    r"^\s*(BEGIN|COMMIT|ROLLBACK|ABORT|START\s+TRANSACTION|END\s+(WORK|TRANSACTION))"
    r"(\s+(WORK|TRANSACTION))?\s*;",
    re.IGNORECASE | re.MULTILINE,
)
_COMMENT_LINE = re.compile(r"^\s*(--.*)?$")
_REQUIRED_COLUMNS = frozenset({"version", "name", "applied_at", "checksum"})
_ERROR_CHARS = 600


# --- errors ---


class MigrationError(RollbackError):
    """A migration step did not do what was asked. ``reason`` says why and what to do;
    ``destructive`` is True when the database may have lost schema or data on the way (a down
    migration committed before the failure, or an app command whose effect is unknown)."""

    def __init__(self, reason: str, *, destructive: bool) -> None:
        self.reason = reason
        self.destructive = destructive
        super().__init__(reason)


class MigrationLayoutError(MigrationError):
    """The migrations directory is not usable; nothing ran."""

    def __init__(self, directory: Path, problems: Sequence[str]) -> None:
        self.directory = directory
        self.problems = tuple(problems)
        listing = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(
            f"migrations directory {directory} is not usable, nothing ran "
            f"({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):\n{listing}",
            destructive=False,
        )


class MigrationRefusedError(MigrationError):
    """The request cannot be carried out safely as asked (unknown version, drift, nothing
    applied, another runner busy, database unreachable); nothing ran."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, destructive=False)


class MigrationStepError(MigrationError):
    """A migration file failed. Its own transaction rolled back; the ones before it stay."""

    def __init__(
        self,
        reason: str,
        *,
        failed: str,
        completed: tuple[str, ...],
        version: int | None,
        destructive: bool,
    ) -> None:
        self.failed = failed  # the file that failed
        self.completed = completed  # files completed before it, in order
        self.version = version  # where the database is now; None when it could not be read
        super().__init__(reason, destructive=destructive)


class AppCommandError(MigrationError):
    """The application's own migrate command could not start, failed or ran out of time."""

    def __init__(
        self, reason: str, *, destructive: bool, output: str = "", completed: int = 0
    ) -> None:
        self.output = output  # redacted tail of the command's output
        self.completed = completed  # runs of the command that succeeded before this one
        super().__init__(reason, destructive=destructive)


# --- the directory ---


@dataclass(frozen=True, slots=True)
class Migration:
    """One version's pair of files, read once: the run executes exactly what was checked."""

    version: int
    name: str
    up_file: Path
    down_file: Path
    up_sql: str = field(repr=False)
    down_sql: str = field(repr=False)
    checksum: str  # sha256 of the up file's bytes

    def file(self, direction: Direction) -> str:
        return (self.up_file if direction == "up" else self.down_file).name


def load_migrations(directory: Path) -> tuple[Migration, ...]:
    """Every migration in ``directory``, by version; MigrationLayoutError listing every
    problem found when the directory is not usable as a whole."""
    if not directory.is_dir():
        raise MigrationLayoutError(directory, ["not a directory (or it does not exist)"])
    problems: list[str] = []
    found: dict[int, dict[str, tuple[str, Path, bytes]]] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue  # READMEs and the like
        match = _FILE.match(path.name)
        if match is None:
            problems.append(
                f"{path.name}: not named NNN_name.up.sql or NNN_name.down.sql (a file the "
                "runner would silently skip is more likely a mistake)"
            )
            continue
        version = int(match["version"])
        if version == 0:
            problems.append(f"{path.name}: version 0 means 'nothing applied'; start at 1")
            continue
        try:
            content = path.read_bytes()
        except OSError as exc:
            problems.append(f"{path.name}: cannot be read: {exc.strerror or exc}")
            continue
        pair = found.setdefault(version, {})
        if match["dir"] in pair:
            other = pair[match["dir"]][1].name
            problems.append(f"{path.name}: version {version} is also used by {other}")
            continue
        pair[match["dir"]] = (match["name"], path, content)
    migrations: list[Migration] = []
    for version, pair in sorted(found.items()):
        built = _pair(version, pair, problems)
        if built is not None:
            migrations.append(built)
    if problems:
        raise MigrationLayoutError(directory, problems)
    return tuple(migrations)


def _pair(
    version: int, pair: Mapping[str, tuple[str, Path, bytes]], problems: list[str]
) -> Migration | None:
    start = len(problems)
    for missing, present in (("down", "up"), ("up", "down")):
        if missing not in pair and present in pair:
            name, path, _ = pair[present]
            problems.append(
                f"{path.name}: no {version:03d}_{name}.{missing}.sql beside it; every version "
                "needs both files"
            )
    if len(problems) > start:
        return None
    (up_name, up_path, up_bytes), (down_name, down_path, down_bytes) = pair["up"], pair["down"]
    if up_name != down_name:
        problems.append(f"{up_path.name} and {down_path.name}: same version, different names")
    texts: dict[str, str] = {}
    for label, path, content in (("up", up_path, up_bytes), ("down", down_path, down_bytes)):
        try:
            texts[label] = content.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{path.name}: not UTF-8 text")
            continue
        statement = _TRANSACTION_CONTROL.search(texts[label])
        if statement is not None:
            problems.append(
                f"{path.name}: contains {statement.group(1).upper()}; the runner runs each file "
                "in its own transaction with its bookkeeping row, so a file must not start or "
                "end transactions"
            )
    if "down" in texts and all(_COMMENT_LINE.match(line) for line in texts["down"].splitlines()):
        problems.append(
            f"{down_path.name}: is empty; rolling back would record {version} as removed without "
            "undoing anything (write the SQL, or `SELECT 1;` with a comment to say so on purpose)"
        )
    if len(problems) > start:
        return None
    return Migration(
        version=version,
        name=up_name,
        up_file=up_path,
        down_file=down_path,
        up_sql=texts["up"],
        down_sql=texts["down"],
        checksum=hashlib.sha256(up_bytes).hexdigest(),
    )


# --- state ---


@dataclass(frozen=True, slots=True)
class MigrationState:
    """One version as the directory and the bookkeeping table see it together."""

    version: int
    name: str  # from the directory; from the table when the files are gone
    applied: bool
    applied_at: datetime | None = None
    checksum: str | None = None  # of the up file on disk; None when the files are gone
    recorded_checksum: str | None = None  # in schema_migrations; None when not applied
    recorded_name: str | None = None

    @property
    def file_missing(self) -> bool:
        return self.checksum is None

    @property
    def drift(self) -> bool:
        """Applied from an up file that differs from the one on disk now (or another name)."""
        if not self.applied or self.file_missing:
            return False
        return self.recorded_checksum != self.checksum or self.recorded_name != self.name

    @property
    def state(self) -> str:
        if not self.applied:
            return "pending"
        if self.file_missing:
            return "applied, files missing"
        return "applied, drifted" if self.drift else "applied"

    def __str__(self) -> str:
        text = f"{self.version:03d}_{self.name}: {self.state}"
        if self.drift:
            text += (
                f" (up file sha256 {_short(self.checksum)}, applied as "
                f"{self.recorded_name} with {_short(self.recorded_checksum)})"
            )
        return text


def current_version(states: Sequence[MigrationState]) -> int:
    """The highest applied version; 0 when nothing is applied."""
    return max((s.version for s in states if s.applied), default=0)


@dataclass(frozen=True, slots=True)
class MigrationStep:
    """One migration file that ran and committed."""

    version: int
    file: str
    seconds: float


@dataclass(frozen=True, slots=True)
class MigrationRun:
    """What one up or down call did."""

    direction: Direction
    steps: tuple[MigrationStep, ...]
    version_before: int
    version_after: int
    seconds: float

    def describe(self) -> str:
        if not self.steps:
            return f"nothing to migrate {self.direction}: the database is at {self.version_after}"
        files = ", ".join(step.file for step in self.steps)
        return (
            f"migrated {self.direction} {self.version_before} -> {self.version_after} "
            f"({len(self.steps)} step{'s' if len(self.steps) != 1 else ''}: {files})"
        )


# --- the runner ---


@dataclass(frozen=True, slots=True)
class MigrationSettings:
    """Timeouts in seconds. ``table`` may be schema-qualified (``app.schema_migrations``)."""

    table: str = "schema_migrations"
    statement_timeout: float = 300.0  # each migration file's statements
    lock_timeout: float = 10.0  # waiting for a lock held by someone else (the app, a backup)
    query_timeout: float = 30.0  # the runner's own bookkeeping queries
    connect_timeout: float = 10.0


class MigrationRunner:
    """Applies and rolls back the migrations of one directory on the database given per call."""

    def __init__(self, directory: Path, settings: MigrationSettings | None = None) -> None:
        self.directory = directory
        self.settings = settings or MigrationSettings()
        parts = self.settings.table.split(".")
        if not 1 <= len(parts) <= 2 or not all(parts):
            raise MigrationRefusedError(
                f"bookkeeping table {self.settings.table!r} is not `name` or `schema.name`"
            )
        self._table_parts = tuple(parts)

    def migrations(self) -> tuple[Migration, ...]:
        """The directory, checked (again: files may have changed since the last call)."""
        return load_migrations(self.directory)

    def status(self, dsn: str) -> list[MigrationState]:
        """Every version in the directory or the table: applied, pending, drifted, files
        missing. Read-only: it does not create the bookkeeping table."""
        migrations = self.migrations()
        with self._connect(dsn) as conn:
            table = self._find_table(conn)
            return _states(migrations, self._recorded(conn, table) if table else {})

    def up(self, dsn: str, to: int | None = None, *, allow_drift: bool = False) -> MigrationRun:
        """Apply pending migrations in order, up to and including ``to`` (all when None)."""
        migrations = self.migrations()
        started = time.monotonic()
        with self._connect(dsn) as conn, self._locked(conn):
            table = self._find_table(conn)
            states = _states(migrations, self._recorded(conn, table) if table else {})
            head = current_version(states)
            if to is not None and to not in {m.version for m in migrations}:
                raise MigrationRefusedError(f"no migration {to} in {self.directory}")
            if to is not None and to < head:
                raise MigrationRefusedError(
                    f"the database is at {head}, above {to}: migrating to {to} is a down"
                )
            late = [s for s in states if not s.applied and s.version < head]
            if late:
                raise MigrationRefusedError(
                    f"pending {_names(late)} older than the applied version {head}: applying "
                    "out of order is a decision for a human"
                )
            _refuse_drift([s for s in states if s.applied], allow_drift, "migrating up from")
            targets = [
                m for m in migrations if m.version > head and (to is None or m.version <= to)
            ]
            if table is None and targets:
                table = self._create_table(conn)  # only once there is something to record
            return self._run(
                conn=conn,
                dsn=dsn,
                table=table or self._table_parts,
                direction="up",
                targets=targets,
                applied=[s.version for s in states if s.applied],
                head=head,
                started=started,
            )

    def down(
        self,
        dsn: str,
        steps: int | None = None,
        *,
        to_version: int | None = None,
        allow_drift: bool = False,
    ) -> MigrationRun:
        """Roll back the last ``steps`` applied migrations (1 by default), or every one above
        ``to_version`` (0 or an applied version). Everything is checked before the first file
        runs: the versions exist, their down files are there, nothing drifted."""
        if steps is not None and to_version is not None:
            raise MigrationRefusedError("give steps or to_version, not both")
        if steps is not None and steps < 1:
            raise MigrationRefusedError(f"steps must be 1 or more, not {steps}")
        migrations = self.migrations()
        started = time.monotonic()
        with self._connect(dsn) as conn, self._locked(conn):
            table = self._find_table(conn)
            states = _states(migrations, self._recorded(conn, table) if table else {})
            applied = sorted((s for s in states if s.applied), key=lambda s: -s.version)
            head = current_version(states)
            if to_version is not None:
                if to_version != 0 and to_version not in {s.version for s in applied}:
                    raise MigrationRefusedError(
                        f"version {to_version} is not applied (applied: "
                        f"{_versions(applied) or 'none'}); roll back to 0 or an applied version"
                    )
                chosen = [s for s in applied if s.version > to_version]
            else:
                count = steps or 1
                if count > len(applied):
                    raise MigrationRefusedError(
                        f"asked to roll back {count} migration{'s' if count != 1 else ''} but "
                        f"{len(applied)} {'is' if len(applied) == 1 else 'are'} applied "
                        f"({_versions(applied) or 'none'})"
                    )
                chosen = applied[:count]
            missing = [s for s in chosen if s.file_missing]
            if missing:
                raise MigrationRefusedError(
                    f"applied {_names(missing)} ha{'s' if len(missing) == 1 else 've'} no files "
                    f"in {self.directory}: nothing to roll {'it' if len(missing) == 1 else 'them'} "
                    "back with"
                )
            _refuse_drift(chosen, allow_drift, "rolling back")
            by_version = {m.version: m for m in migrations}
            targets = [by_version[s.version] for s in chosen]
            assert table is not None or not targets  # something applied means a table exists
            return self._run(
                conn=conn,
                dsn=dsn,
                table=table or self._table_parts,
                direction="down",
                targets=targets,
                applied=[s.version for s in applied],
                head=head,
                started=started,
            )

    def down_all(self, dsn: str, *, allow_drift: bool = False) -> MigrationRun:
        """Roll back every applied migration (runbook option B, "resets database")."""
        return self.down(dsn, to_version=0, allow_drift=allow_drift)

    # --- execution ---

    def _run(
        self,
        *,
        conn: Conn,
        dsn: str,
        table: tuple[str, ...],
        direction: Direction,
        targets: Sequence[Migration],
        applied: Sequence[int],
        head: int,
        started: float,
    ) -> MigrationRun:
        done: list[MigrationStep] = []
        version = head
        for migration in targets:
            step_started = time.monotonic()
            try:
                self._step(conn, table, direction, migration)
            except (psycopg.Error, _VanishedError) as exc:
                raise self._step_failed(
                    conn=conn,
                    dsn=dsn,
                    table=table,
                    direction=direction,
                    migration=migration,
                    done=done,
                    exc=exc,
                ) from None
            done.append(
                MigrationStep(migration.version, migration.file(direction), _since(step_started))
            )
            version = migration.version if direction == "up" else _next_below(applied, migration)
        return MigrationRun(direction, tuple(done), head, version, _since(started))

    def _step(self, conn: Conn, table: tuple[str, ...], direction: Direction, m: Migration) -> None:
        ident = sql.Identifier(*table)
        with conn.transaction():
            conn.execute(
                "SELECT set_config('statement_timeout', %s, true),"
                " set_config('lock_timeout', %s, true)",
                (_ms(self.settings.statement_timeout), _ms(self.settings.lock_timeout)),
            )
            if direction == "down":
                row = conn.execute(
                    sql.SQL("SELECT checksum FROM {} WHERE version = %s FOR UPDATE").format(ident),
                    (m.version,),
                ).fetchone()
                if row is None:
                    raise _VanishedError(m.version)
                # the operator's own SQL from the checked directory, sent as-is without parameters
                conn.execute(m.down_sql.encode())
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE version = %s").format(ident), (m.version,)
                )
            else:
                conn.execute(m.up_sql.encode())
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (version, name, applied_at, checksum)"
                        " VALUES (%s, %s, now(), %s)"
                    ).format(ident),
                    (m.version, m.name, m.checksum),
                )

    def _step_failed(
        self,
        *,
        conn: Conn,
        dsn: str,
        table: tuple[str, ...],
        direction: Direction,
        migration: Migration,
        done: Sequence[MigrationStep],
        exc: BaseException,
    ) -> MigrationStepError:
        file = migration.file(direction)
        broke = conn.broken or conn.closed
        version = self._version_after_failure(conn, dsn, table)
        completed = tuple(step.file for step in done)
        before = (
            f"completed before it: {', '.join(completed)}"
            if completed
            else "no migration completed before it"
        )
        where = (
            f"the database is at version {version}"
            if version is not None
            else "the database's version could not be read afterwards (check status)"
        )
        outcome = (
            "The connection broke, so whether its transaction committed is known only from the "
            "version read afterwards"
            if broke
            else "Its transaction was rolled back, so none of it applied"
        )
        reason = (
            f"{direction} migration {file} failed: {self._describe(exc)}. {outcome}; {before}; "
            f"{where}. Stopped there: nothing after it ran."
        )
        return MigrationStepError(
            reason,
            failed=file,
            completed=completed,
            version=version,
            destructive=direction == "down" and bool(completed),
        )

    def _version_after_failure(self, conn: Conn, dsn: str, table: tuple[str, ...]) -> int | None:
        """The head after a failed step, read on the same connection or, when that broke
        (a lost connection leaves even the COMMIT's outcome unknown), on a new one."""
        try:
            if not conn.broken and not conn.closed:
                return self._head(conn, table)
            with self._connect(dsn) as fresh:
                return self._head(fresh, table)
        except (psycopg.Error, MigrationError):
            return None

    def _head(self, conn: Conn, table: tuple[str, ...]) -> int:
        row = conn.execute(
            sql.SQL("SELECT coalesce(max(version), 0) FROM {}").format(sql.Identifier(*table))
        ).fetchone()
        return int(row[0]) if row else 0

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return (
                f"waited longer than lock_timeout ({self.settings.lock_timeout:g}s) for a lock "
                "another session holds (is the application still running?)"
            )
        if isinstance(exc, psycopg.errors.QueryCanceled):
            return f"ran past statement_timeout ({self.settings.statement_timeout:g}s)"
        return _one_line(exc)

    # --- connection, lock, bookkeeping table ---

    @contextmanager
    def _connect(self, dsn: str) -> Iterator[Conn]:
        try:
            conn = psycopg.connect(
                dsn,
                autocommit=True,
                prepare_threshold=None,
                connect_timeout=max(2, math.ceil(self.settings.connect_timeout)),
                application_name="spek-sentinel migrations",
            )
        except psycopg.Error as exc:
            raise MigrationRefusedError(
                f"cannot connect to the database: {_one_line(exc, _dsn_secrets(dsn))}"
            ) from None
        try:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false)",
                (_ms(self.settings.query_timeout),),
            )
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _locked(self, conn: Conn) -> Iterator[None]:
        key = int.from_bytes(
            hashlib.sha256(f"spek-sentinel migrations {self.settings.table}".encode()).digest()[:8],
            "big",
            signed=True,
        )
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if not row or not row[0]:
            raise MigrationRefusedError(
                "another migration runner is working on this database (advisory lock held); "
                "nothing ran"
            )
        try:
            yield
        finally:
            if not conn.broken and not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def _find_table(self, conn: Conn) -> tuple[str, ...] | None:
        """The bookkeeping table's schema and name, resolved once so that a migration that
        changes search_path cannot make the runner write to another table."""
        name = sql.Identifier(*self._table_parts).as_string(conn)
        row = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
            (name,),
        ).fetchone()
        if row is None:
            return None
        table = (str(row[0]), str(row[1]))
        columns = {
            str(r[0])
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s)"
                " AND attnum > 0 AND NOT attisdropped",
                (name,),
            ).fetchall()
        }
        if not columns >= _REQUIRED_COLUMNS:
            raise MigrationRefusedError(
                f"table {name} exists but is not spek-sentinel's bookkeeping table (columns "
                f"{', '.join(sorted(columns))}; expected {', '.join(sorted(_REQUIRED_COLUMNS))});"
                " it may belong to the application's own migration tool: set another table"
            )
        return table

    def _create_table(self, conn: Conn) -> tuple[str, ...]:
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (version bigint PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now(), checksum text NOT NULL)"
            ).format(sql.Identifier(*self._table_parts))
        )
        table = self._find_table(conn)
        assert table is not None
        return table

    def _recorded(self, conn: Conn, table: tuple[str, ...]) -> dict[int, _Row]:
        rows = conn.execute(
            sql.SQL("SELECT version, name, applied_at, checksum FROM {} ORDER BY version").format(
                sql.Identifier(*table)
            )
        ).fetchall()
        return {int(r[0]): _Row(str(r[1]), r[2], str(r[3])) for r in rows}


# --- one Protocol for both ways ---


@dataclass(frozen=True, slots=True)
class MigratorOutcome:
    """What a Migrator call did, for the journal. ``output`` is redacted."""

    action: str  # "down 1", "down --all", "status"
    summary: str  # one line
    output: str  # the app command's output tail; the runner's state, one line per version
    seconds: float
    version: int | None = None  # the version now, when the migrator can tell (the runner)
    states: tuple[MigrationState, ...] = ()  # the runner's status; empty for an app command


class Migrator(Protocol):
    """Runbook phase 2 options A and B: roll migrations back, then look at the status."""

    @property
    def description(self) -> str: ...

    def down(self, steps: int = 1) -> MigratorOutcome:
        """Roll back the last ``steps`` migrations; MigrationError when that fails."""
        ...

    def down_all(self) -> MigratorOutcome:
        """Roll back every migration (the runbook's ``down --all``)."""
        ...

    def status(self) -> MigratorOutcome:
        """What is applied now (the runbook's "verify with status")."""
        ...


class SqlMigrator:
    """The ``Migrator`` of a ``MigrationRunner`` bound to one database."""

    def __init__(self, runner: MigrationRunner, dsn: str, *, allow_drift: bool = False) -> None:
        self._runner = runner
        self._dsn = dsn
        self._allow_drift = allow_drift

    @property
    def description(self) -> str:
        return f"migrations in {self._runner.directory}"

    def down(self, steps: int = 1) -> MigratorOutcome:
        run = self._runner.down(self._dsn, steps, allow_drift=self._allow_drift)
        return self._outcome(f"down {steps}", run)

    def down_to(self, version: int) -> MigratorOutcome:
        """Roll back every migration above ``version``. Unlike ``down(steps)`` this is safe to
        repeat (after a crash): a second call finds nothing left to do."""
        run = self._runner.down(self._dsn, to_version=version, allow_drift=self._allow_drift)
        return self._outcome(f"down to {version}", run)

    def down_all(self) -> MigratorOutcome:
        return self._outcome(
            "down --all", self._runner.down_all(self._dsn, allow_drift=self._allow_drift)
        )

    def status(self) -> MigratorOutcome:
        started = time.monotonic()
        states = tuple(self._runner.status(self._dsn))
        version = current_version(states)
        flagged = [s for s in states if s.drift or s.file_missing]
        summary = f"at version {version}" + (
            f"; attention: {'; '.join(str(s) for s in flagged)}" if flagged else ""
        )
        output = "\n".join(str(s) for s in states)
        return MigratorOutcome("status", summary, output, _since(started), version, states)

    def _outcome(self, action: str, run: MigrationRun) -> MigratorOutcome:
        output = "\n".join(f"{step.file}: {step.seconds:.3f}s" for step in run.steps)
        return MigratorOutcome(action, run.describe(), output, run.seconds, run.version_after)


# --- the application's own command ---


@dataclass(frozen=True, slots=True)
class _Row:
    name: str
    applied_at: datetime
    checksum: str


class _VanishedError(Exception):
    def __init__(self, version: int) -> None:
        super().__init__(
            f"version {version} is no longer recorded as applied: someone else rolled it back "
            "meanwhile"
        )


def _next_below(applied: Sequence[int], migration: Migration) -> int:
    """The version left after rolling ``migration`` back: the applied one below it, or 0."""
    return max((v for v in applied if v < migration.version), default=0)


def _states(migrations: Sequence[Migration], recorded: Mapping[int, _Row]) -> list[MigrationState]:
    states = []
    for m in migrations:
        row = recorded.get(m.version)
        states.append(
            MigrationState(
                version=m.version,
                name=m.name,
                applied=row is not None,
                applied_at=row.applied_at if row else None,
                checksum=m.checksum,
                recorded_checksum=row.checksum if row else None,
                recorded_name=row.name if row else None,
            )
        )
    known = {m.version for m in migrations}
    states.extend(
        MigrationState(
            version=version,
            name=row.name,
            applied=True,
            applied_at=row.applied_at,
            recorded_checksum=row.checksum,
            recorded_name=row.name,
        )
        for version, row in recorded.items()
        if version not in known
    )
    return sorted(states, key=lambda s: s.version)


def _refuse_drift(states: Sequence[MigrationState], allow: bool, doing: str) -> None:
    drifted = [s for s in states if s.drift]
    if drifted and not allow:
        details = "; ".join(str(s) for s in drifted)
        raise MigrationRefusedError(
            f"{doing} migrations whose up file changed since it was applied is refused, since "
            f"the down file may not undo what was applied: {details}. Restore the files as "
            "applied, or pass allow_drift after checking the down files by hand"
        )


def _names(states: Sequence[MigrationState]) -> str:
    return ", ".join(f"{s.version:03d}_{s.name}" for s in states)


def _versions(states: Sequence[MigrationState]) -> str:
    return ", ".join(str(s.version) for s in states)


def _short(checksum: str | None) -> str:
    return checksum[:12] if checksum else "none"


def _ms(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


def _since(started: float) -> float:
    return time.monotonic() - started


def _dsn_secrets(dsn: str) -> tuple[str, ...]:
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        return ()
    return (str(password),) if password else ()


def _one_line(exc: BaseException, secrets: Sequence[str] = ()) -> str:
    text = redact(" ".join(str(exc).split()), secrets) or type(exc).__name__
    return text[:_ERROR_CHARS]
