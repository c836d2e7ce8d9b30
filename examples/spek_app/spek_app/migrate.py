"""The app's own migration tool: ``spek-app migrate up|down|status`` (the runbook's
``node scripts/migrate.js``).

It keeps the same books as spek-sentinel's ``MigrationRunner``
(src/spek_sentinel/rollback/migrations.py), so either can carry on where the other stopped:

- files ``NNN_name.up.sql`` / ``NNN_name.down.sql`` in ``migrations/``;
- a ``schema_migrations`` table (version bigint primary key, name, applied_at, checksum =
  sha256 of the up file's bytes), one row per applied version;
- each file runs in its own transaction together with its row, so a failing file leaves
  nothing behind and the database at the last version completed;
- the same advisory lock key, so the app and the sentinel never migrate at the same time.

``up`` goes to the release's schema (``Release.schema``); ``down`` and ``status`` see every file
shipped, so any release's command can roll back a newer release's migrations.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

Conn = psycopg.Connection[TupleRow]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
TABLE = "schema_migrations"
# spek-sentinel's MigrationRunner takes this lock for the table named schema_migrations.
LOCK_KEY = int.from_bytes(
    hashlib.sha256(f"spek-sentinel migrations {TABLE}".encode()).digest()[:8], "big", signed=True
)
STATEMENT_TIMEOUT_MS = 300_000
LOCK_TIMEOUT_MS = 10_000
_FILE = re.compile(r"^(?P<version>\d+)_(?P<name>[A-Za-z0-9][A-Za-z0-9_-]*)\.(?P<dir>up|down)\.sql$")


class MigrateError(Exception):
    """A migration command could not do what was asked; the message says why."""


class MigrationFailedError(MigrateError):
    """A migration file failed; its transaction rolled back and ``version`` is where the
    database is now."""

    def __init__(self, file: str, version: int, cause: str) -> None:
        self.file = file
        self.version = version
        super().__init__(
            f"Migration failed: {file}: {cause}. Its transaction was rolled back; the database "
            f"is at version {version}"
        )


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    up_sql: str
    down_sql: str
    checksum: str

    def file(self, direction: str) -> str:
        return f"{self.version:03d}_{self.name}.{direction}.sql"


@dataclass(frozen=True, slots=True)
class State:
    version: int
    name: str
    applied: bool
    drifted: bool = False  # applied from an up file that differs from the one shipped

    def __str__(self) -> str:
        state = "pending" if not self.applied else "applied, drifted" if self.drifted else "applied"
        return f"{self.version:03d}_{self.name}: {state}"


def load(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    files: dict[int, dict[str, tuple[str, bytes]]] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise MigrateError(f"{path.name}: not named NNN_name.up.sql or NNN_name.down.sql")
        files.setdefault(int(match["version"]), {})[match["dir"]] = (
            match["name"],
            path.read_bytes(),
        )
    migrations = []
    for version, pair in sorted(files.items()):
        if set(pair) != {"up", "down"}:
            raise MigrateError(f"migration {version:03d} needs both an up and a down file")
        (name, up), (_, down) = pair["up"], pair["down"]
        migrations.append(
            Migration(version, name, up.decode(), down.decode(), hashlib.sha256(up).hexdigest())
        )
    return migrations


class Migrator:
    def __init__(self, dsn: str, directory: Path = MIGRATIONS_DIR) -> None:
        self.dsn = dsn
        self.migrations = load(directory)

    def status(self) -> list[State]:
        with self._connect() as conn:
            recorded = self._recorded(conn)
        states = [
            State(m.version, m.name, m.version in recorded, _drifted(m, recorded.get(m.version)))
            for m in self.migrations
        ]
        known = {m.version for m in self.migrations}
        states += [State(v, name, True) for v, (name, _) in recorded.items() if v not in known]
        return sorted(states, key=lambda s: s.version)

    def version(self) -> int:
        with self._connect() as conn:
            return max(self._recorded(conn), default=0)

    def up(self, to: int) -> list[str]:
        """Apply pending migrations up to and including ``to``; the files applied."""
        done: list[str] = []
        with self._connect() as conn, self._locked(conn):
            self._ensure_table(conn)
            recorded = self._recorded(conn)
            head = max(recorded, default=0)
            for m in self.migrations:
                if m.version <= head or m.version > to:
                    continue
                try:
                    with conn.transaction():
                        _timeouts(conn)
                        conn.execute(m.up_sql.encode())
                        conn.execute(
                            sql.SQL(
                                "INSERT INTO {} (version, name, applied_at, checksum)"
                                " VALUES (%s, %s, now(), %s)"
                            ).format(sql.Identifier(TABLE)),
                            (m.version, m.name, m.checksum),
                        )
                except psycopg.Error as exc:
                    raise MigrationFailedError(m.file("up"), head, _one_line(exc)) from None
                head = m.version
                done.append(m.file("up"))
        return done

    def down(self, steps: int | None = 1, to: int | None = None) -> list[str]:
        """Roll back the last ``steps`` applied migrations, or every one above ``to``."""
        done: list[str] = []
        by_version = {m.version: m for m in self.migrations}
        with self._connect() as conn, self._locked(conn):
            applied = sorted(self._recorded(conn) if self._has_table(conn) else {}, reverse=True)
            chosen = [v for v in applied if v > to] if to is not None else applied[: steps or 1]
            if to is None and len(chosen) < (steps or 1):
                raise MigrateError(f"asked to roll back {steps}, but {len(applied)} applied")
            missing = [v for v in chosen if v not in by_version]
            if missing:
                raise MigrateError(f"no files for applied version(s) {missing}")
            for version in chosen:
                m = by_version[version]
                try:
                    with conn.transaction():
                        _timeouts(conn)
                        conn.execute(m.down_sql.encode())
                        conn.execute(
                            sql.SQL("DELETE FROM {} WHERE version = %s").format(
                                sql.Identifier(TABLE)
                            ),
                            (version,),
                        )
                except psycopg.Error as exc:
                    raise MigrationFailedError(m.file("down"), version, _one_line(exc)) from None
                done.append(m.file("down"))
        return done

    @contextmanager
    def _connect(self) -> Iterator[Conn]:
        try:
            conn = psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=5, application_name="spek-app migrate"
            )
        except psycopg.Error as exc:
            raise MigrateError(f"cannot connect to the database: {_one_line(exc)}") from None
        with conn:
            yield conn

    @contextmanager
    def _locked(self, conn: Conn) -> Iterator[None]:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        if not row or not row[0]:
            raise MigrateError("another migration is running on this database; nothing ran")
        try:
            yield
        finally:
            if not conn.closed and not conn.broken:
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))

    def _has_table(self, conn: Conn) -> bool:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()
        return bool(row and row[0])

    def _ensure_table(self, conn: Conn) -> None:
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (version bigint PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now(), checksum text NOT NULL)"
            ).format(sql.Identifier(TABLE))
        )

    def _recorded(self, conn: Conn) -> dict[int, tuple[str, str]]:
        if not self._has_table(conn):
            return {}
        rows = conn.execute(
            sql.SQL("SELECT version, name, checksum FROM {}").format(sql.Identifier(TABLE))
        ).fetchall()
        return {int(r[0]): (str(r[1]), str(r[2])) for r in rows}


def _drifted(m: Migration, row: tuple[str, str] | None) -> bool:
    return row is not None and (row[0] != m.name or row[1] != m.checksum)


def _timeouts(conn: Conn) -> None:
    conn.execute(
        "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)",
        (str(STATEMENT_TIMEOUT_MS), str(LOCK_TIMEOUT_MS)),
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500] or type(exc).__name__
