"""The state database: one small DB-API-style interface, on SQLite (the default: one file under
``state_dir``) or on PostgreSQL (replicas on several hosts share one database).

The stores write their SQL once, in the dialect both understand: ``?`` placeholders,
``INSERT ... ON CONFLICT ... DO NOTHING / DO UPDATE``, no SQLite-only functions; ``insert``
returns the new row's ``id`` (``lastrowid`` on SQLite, ``RETURNING id`` on PostgreSQL).

Transactions (``transaction()``) serialise writers the way SQLite's ``BEGIN IMMEDIATE`` does, so
a read that decides and the write that acts on it cannot interleave with another writer's:

* SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock up front.
* PostgreSQL: ``LOCK TABLE <every state table> IN SHARE ROW EXCLUSIVE MODE`` first thing. That
  mode conflicts with itself (two write transactions queue) and with the ROW EXCLUSIVE lock any
  INSERT/UPDATE/DELETE takes (a single autocommit write waits for the transaction, as on
  SQLite), but not with reads (ACCESS SHARE), which go on. One statement locking the tables in a
  fixed order cannot deadlock with another transaction doing the same. An advisory lock would
  serialise the transactions only, not the autocommit writes between them; SERIALIZABLE would
  need every caller to retry.

Outside a transaction every statement commits on its own (autocommit) on both.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from spek_sentinel.store import schema
from spek_sentinel.store.schema import SchemaTooNewError

Dialect = Literal["sqlite", "postgresql"]
Row = tuple[Any, ...]

STATE_FILE = "sentinel.sqlite3"
DEFAULT_BUSY_TIMEOUT_MS = 5000

# pg_advisory_xact_lock key of the schema migration (one bigint; the [ha] leader lock uses
# its own lock_id)
SCHEMA_LOCK = 0x5E4C_5354_4154_4501


@dataclass(frozen=True, slots=True)
class Result:
    """What a statement returned: its rows (none for a write) and how many rows it changed."""

    rows: list[Row]
    rowcount: int

    def one(self) -> Row | None:
        return self.rows[0] if self.rows else None


class StateDb(Protocol):
    """A connection to the state database. Thread-safe: one statement or transaction at a time;
    a thread inside ``transaction()`` holds the connection until it ends."""

    @property
    def dialect(self) -> Dialect: ...

    @property
    def where(self) -> str:
        """The file, or the database without credentials: safe to print and log."""
        ...

    def execute(self, statement: str, params: Sequence[object] = ()) -> Result:
        """Run one statement with ``?`` placeholders."""
        ...

    def insert(self, statement: str, params: Sequence[object] = ()) -> int:
        """Run one ``INSERT`` into a table with an ``id`` key; the new row's id."""
        ...

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """One write transaction that serialises writers; nested calls join the outer one.
        Commits when the block ends, rolls back when it raises."""
        ...

    def close(self) -> None: ...


# -- SQLite -----------------------------------------------------------------------------------


def migrate_sqlite(connection: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; returns it. Refuses a newer schema than known,
    which means a newer spek-sentinel wrote this file: downgrading would lose data."""
    # BEGIN IMMEDIATE takes the write lock before the version is read, so two processes
    # opening a new state file at once do not both run the same migration
    migrations = schema.MIGRATIONS
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = int(connection.execute("PRAGMA user_version").fetchone()[0])
        if version > len(migrations):
            raise SchemaTooNewError(version, len(migrations), "state file")
        for index in range(version, len(migrations)):
            for statement in schema.statements(migrations[index]):
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {index + 1}")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return len(migrations)


def open_sqlite(path: Path, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """A connection to the state file: autocommit (transactions are explicit), WAL, durable
    commits, the schema migrated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        db.execute("PRAGMA synchronous = FULL")
        migrate_sqlite(db)
    except BaseException:
        db.close()
        raise
    return db


class SqliteDb:
    """The state file (``state_dir/sentinel.sqlite3``): WAL, ``synchronous = FULL``, a busy
    timeout, the schema versioned by ``PRAGMA user_version``."""

    dialect: Dialect = "sqlite"

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self.connection = connection
        self.path = path
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: Path, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> SqliteDb:
        return cls(open_sqlite(path, busy_timeout_ms), path)

    @property
    def where(self) -> str:
        return str(self.path)

    def execute(self, statement: str, params: Sequence[object] = ()) -> Result:
        with self._lock:
            cursor = self.connection.execute(statement, tuple(params))
            rows = cursor.fetchall() if cursor.description is not None else []
            return Result(rows, cursor.rowcount)

    def insert(self, statement: str, params: Sequence[object] = ()) -> int:
        with self._lock:
            cursor = self.connection.execute(statement, tuple(params))
            if cursor.lastrowid is None:
                raise RuntimeError(f"no row inserted by {statement[:60]!r}")
            return int(cursor.lastrowid)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self.connection.in_transaction:
                yield
                return
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self.connection.close()


# -- PostgreSQL ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def to_format(statement: str) -> str:
    """``?`` placeholders as psycopg's ``%s``, a literal ``%`` as ``%%``; a ``?`` inside a
    quoted string or identifier stays."""
    out: list[str] = []
    quote: str | None = None
    for char in statement:
        if char == "%":
            out.append("%%")
        elif quote is not None:
            out.append(char)
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
            out.append(char)
        elif char == "?":
            out.append("%s")
        else:
            out.append(char)
    return "".join(out)


def _param(value: object) -> object:
    if isinstance(value, bool):
        return int(value)  # stored as 0/1, as SQLite does (the columns are integers)
    if isinstance(value, str) and "\x00" in value:
        # PostgreSQL text cannot hold NUL; command output may: keep the rest of it
        return value.replace("\x00", "\ufffd")
    return value


def _params(params: Sequence[object]) -> tuple[object, ...]:
    return tuple(_param(value) for value in params)


def describe_dsn(dsn: str) -> str:
    """The database a DSN names, without user or password: safe to print."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql (unparsable DSN)"
    host = str(parts.get("host") or parts.get("hostaddr") or "localhost")
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{host}{port}/{parts.get('dbname') or ''}"


def migrate_postgres(connection: psycopg.Connection[Row]) -> int:
    """Bring the schema to the newest version under a transaction-level advisory lock, so
    replicas starting together migrate once (the others wait, then find nothing to do).
    The version lives in ``sentinel_schema`` (one row). Refuses a newer schema than known."""
    migrations = schema.MIGRATIONS
    with connection.transaction():
        # a replica waits for another's migration longer than for an ordinary writer
        connection.execute("SET LOCAL lock_timeout = '60s'")
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        connection.execute(
            "CREATE TABLE IF NOT EXISTS sentinel_schema ("
            " only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),"
            " version BIGINT NOT NULL)"
        )
        connection.execute(
            "INSERT INTO sentinel_schema (version) VALUES (0) ON CONFLICT DO NOTHING"
        )
        row = connection.execute("SELECT version FROM sentinel_schema").fetchone()
        assert row is not None
        version = int(row[0])
        if version > len(migrations):
            raise SchemaTooNewError(version, len(migrations), "state database")
        for index in range(version, len(migrations)):
            for statement in schema.ddl(migrations[index], "postgresql"):
                connection.execute(statement.encode())  # DDL: no placeholders
            connection.execute("UPDATE sentinel_schema SET version = %s", (index + 1,))
    return len(migrations)


def _schema_version(connection: psycopg.Connection[Row]) -> int | None:
    """The recorded version without taking the migration lock; None before the first one."""
    row = connection.execute("SELECT to_regclass('sentinel_schema') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return None
    found = connection.execute("SELECT version FROM sentinel_schema").fetchone()
    return int(found[0]) if found is not None else None


class PostgresDb:
    """A PostgreSQL state database: one session, autocommit outside ``transaction()``.

    Sessions get ``lock_timeout`` (the busy timeout: a writer that waits longer fails, as on
    SQLite) and ``idle_in_transaction_session_timeout`` (a process frozen inside a transaction
    cannot hold every other replica's writes for ever). A session the server or the network
    dropped is replaced on the next call; the call that met the failure raises.
    """

    dialect: Dialect = "postgresql"

    IDLE_IN_TRANSACTION_MS = 60_000

    def __init__(self, dsn: str, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> None:
        self._dsn = dsn
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._lock = threading.RLock()
        self._closed = False
        self._depth = 0
        self._connection = self._connect()
        try:
            if _schema_version(self._connection) != len(schema.MIGRATIONS):
                migrate_postgres(self._connection)
        except BaseException:
            self._connection.close()
            raise
        self._lock_tables = sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
            sql.SQL(", ").join(sql.Identifier(table) for table in schema.TABLES)
        )

    @classmethod
    def open(cls, dsn: str, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> PostgresDb:
        return cls(dsn, busy_timeout_ms)

    @property
    def where(self) -> str:
        return describe_dsn(self._dsn)

    def _connect(self) -> psycopg.Connection[Row]:
        given = conninfo_to_dict(self._dsn)
        defaults: dict[str, str | int] = {
            "connect_timeout": 10,
            "application_name": "spek-sentinel",
        }
        conninfo = make_conninfo(
            self._dsn, **{key: value for key, value in defaults.items() if key not in given}
        )
        connection = psycopg.connect(conninfo, autocommit=True)
        try:
            connection.execute(
                "SELECT set_config('lock_timeout', %s, false),"
                " set_config('idle_in_transaction_session_timeout', %s, false)",
                (f"{self._busy_timeout_ms}ms", f"{self.IDLE_IN_TRANSACTION_MS}ms"),
            )
        except BaseException:
            connection.close()
            raise
        return connection

    def _session(self) -> psycopg.Connection[Row]:
        if self._closed:
            raise psycopg.OperationalError("the state database connection is closed")
        if self._connection.closed and self._depth == 0:
            self._connection = self._connect()
        return self._connection

    def execute(self, statement: str, params: Sequence[object] = ()) -> Result:
        with self._lock:
            cursor = self._session().execute(to_format(statement).encode(), _params(params))
            rows = cursor.fetchall() if cursor.description is not None else []
            return Result(rows, cursor.rowcount)

    def insert(self, statement: str, params: Sequence[object] = ()) -> int:
        with self._lock:
            cursor = self._session().execute(
                (to_format(statement) + " RETURNING id").encode(), _params(params)
            )
            row = cursor.fetchone()
            if row is None:
                raise RuntimeError(f"no row inserted by {statement[:60]!r}")
            return int(row[0])

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self._depth:
                yield
                return
            connection = self._session()
            with connection.transaction():
                connection.execute(self._lock_tables)
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._connection.close()


def sqlite_or_given(db: StateDb | Path, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> StateDb:
    """``db`` itself, or the SQLite state file at that path opened (the stores' constructors
    take either)."""
    if isinstance(db, Path):
        return SqliteDb.open(db, busy_timeout_ms)
    return db
