"""Runbook phase 2, option C, "Restore from Backup", without dropping anything.

The runbook drops the database and restores into an empty one: if that restore fails there is
no database at all, and the damaged one, the evidence of what went wrong, is gone. Here:

1. Pre-flight, before anything is created: the backup is there and ``pg_restore --list`` reads
   it; ``pg_restore`` of the server's major version exists (``/usr/lib/postgresql/<major>/bin``);
   the admin connection is not to the database being replaced; the names to be used are free;
   no other restore of the same database runs (an advisory lock).
2. ``<dbname>_restore_<UTC stamp>`` is created like the live database (owner, encoding, locale,
   tablespace, connection limit, ``ALTER DATABASE ... SET`` settings, privileges), and
   ``pg_restore --no-owner --exit-on-error`` loads the backup into it as that owner (``--role``),
   so the application's role still owns its tables afterwards.
3. Sanity check: at least as many tables as the backup lists, every ``count(*)`` readable.
4. The swap, one short step: connections to the live database are blocked (ALLOW_CONNECTIONS
   false), its sessions terminated, it is renamed ``<dbname>_damaged_<stamp>`` and the restored
   copy takes its name. The damaged database is kept for forensics, never dropped; it accepts
   connections again once it is out of the way.

A failure before the swap drops the half-restored database and leaves the live one as it was.
If the second rename fails, the damaged database is renamed back and the error says so; the
verified copy is kept under its restore name.

The server is reached one of two ways, with the same steps and the same guarantees:

- ``restore_and_swap``: by DSN, from this host. The password reaches pg_restore through a 0600
  PGPASSFILE in a private temporary directory, never through argv.
- ``restore_in_container``: only inside the database's container, as in the runbook
  (``docker exec spek-postgres ...``; ``pg_container.py``). The statements run in ``psql``
  sessions there (the admin session, holding the advisory lock, stays open for the whole
  restore), the backup is streamed from this host into ``pg_restore`` there (the container's
  own, so it matches the server), and the password goes only in the exec's environment.

No message shows the password.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, Protocol

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from spek_sentinel.domain.errors import RollbackError
from spek_sentinel.rollback.apps.base import CommandEnv, run_command
from spek_sentinel.rollback.backup import DatabaseTarget
from spek_sentinel.rollback.pg_container import (
    Container,
    ContainerError,
    ExecResult,
    open_psql,
    run_in_container,
)
from spek_sentinel.secrets import redact

Conn = psycopg.Connection[TupleRow]
Query = sql.SQL | sql.Composed

BIN_ROOT = Path("/usr/lib/postgresql")
_NAME_BYTES = 63  # PostgreSQL cuts longer identifiers silently: two stamps could then collide
_STAMP = "%Y%m%dT%H%M%SZ"
# "1234; 1259 16390 TABLE public projects owner"; not "TABLE DATA" or "TABLE ATTACH" entries
_TOC_TABLE = re.compile(r"^\d+;\s+\d+\s+\d+\s+TABLE\s+(?!DATA\s|ATTACH\s)", re.MULTILINE)
# settings stored as a list of identifiers ("app, public"); each element is its own literal
_LIST_SETTINGS = frozenset(
    {
        "search_path",
        "temp_tablespaces",
        "local_preload_libraries",
        "session_preload_libraries",
        "shared_preload_libraries",
    }
)
_PASS_THROUGH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "PGSERVICEFILE", "PGSYSCONFDIR")
_PASS_THROUGH_PREFIXES = ("PGSSL", "PGGSS", "PGKRB", "PGTARGET")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_APP_NAME = "spek-sentinel restore"
_TOOL_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
_ERROR_CHARS = 600
_POLL = 0.05


class RestoreError(RollbackError):
    """Restoring or swapping failed. ``stage`` is pre-flight, create, restore, verify or swap.

    ``destructive`` is True only when the live database is no longer in place under its name
    (both renames of a failed swap could not be undone); no data is ever dropped. ``kept``
    names databases left behind on purpose for a human (a verified restore that could not be
    swapped in, the damaged database).
    """

    def __init__(
        self, reason: str, *, stage: str, destructive: bool, kept: tuple[str, ...] = ()
    ) -> None:
        self.reason = reason
        self.stage = stage
        self.destructive = destructive
        self.kept = kept
        super().__init__(f"restore failed at {stage}: {reason}")


@dataclass(frozen=True, slots=True)
class Rename:
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class TableCount:
    """Rows in one table: in the database that was replaced (None: not there, or unreadable)
    and in the restored one (None: the table exists only in the replaced database)."""

    table: str  # schema.name
    before: int | None
    after: int | None


@dataclass(frozen=True, slots=True)
class Session:
    """A session on the replaced database that the swap terminated."""

    pid: int
    user: str | None
    application: str | None
    client: str | None
    state: str | None
    backend_type: str | None


@dataclass(frozen=True, slots=True)
class RestoreRecord:
    """What a restore did: the renames, row counts before/after, sessions ended, timings."""

    dbname: str
    backup: Path
    restored_as: str  # the temporary name the backup was restored under
    damaged: str | None  # where the replaced database is now; None when there was none
    renames: tuple[Rename, ...]  # in the order they happened
    tables: tuple[TableCount, ...]
    terminated: tuple[Session, ...]
    durations: Mapping[str, float]  # seconds: preflight, create, restore, verify, ..., total
    pg_restore: str  # the tool that loaded the backup: its path here, or "pg_restore in ..."
    server_major: int
    notes: tuple[str, ...] = ()  # what could not be done or read, none of it fatal

    def describe(self) -> str:
        moved = ", ".join(f"{r.old} -> {r.new}" for r in self.renames)
        rows = sum(t.after or 0 for t in self.tables)
        return (
            f"restored {self.backup.name} into {self.dbname} ({len(self.tables)} tables, "
            f"{rows} rows; {moved}; {len(self.terminated)} session(s) terminated; "
            f"{self.durations.get('total', 0.0):.1f}s)"
        )


@dataclass(frozen=True, slots=True)
class _Live:
    """The live database's properties that its replacement must carry."""

    owner: str
    encoding: str
    collate: str
    ctype: str
    icu_locale: str | None  # set when the locale provider is ICU
    tablespace: str
    connection_limit: int
    allow_connections: bool
    settings: tuple[str, ...]  # "name=value", from ALTER DATABASE ... SET
    acl: (
        tuple[tuple[str | None, str, bool], ...] | None
    )  # (grantee or PUBLIC, privilege, grantable)


@dataclass(frozen=True, slots=True)
class _Plan:
    dbname: str
    restore_name: str
    damaged_name: str
    live: _Live | None
    admin_user: str
    major: int
    pg_restore: str  # which pg_restore loads the backup, for the record


@dataclass(frozen=True, slots=True)
class _Client:
    """How the client tools and extra connections reach the server, without the password in
    argv: the DSN's parameters minus the password, and an environment with a PGPASSFILE."""

    params: Mapping[str, str] = field(repr=False)
    password: str | None = field(repr=False)
    env: Mapping[str, str] = field(repr=False)
    workdir: Path
    secrets: tuple[str, ...] = field(repr=False)

    def conninfo(self, dbname: str) -> str:
        return make_conninfo("", **{**self.params, "dbname": dbname})


class _StageError(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        self.stage = stage
        self.reason = reason
        super().__init__(reason)


class _Sql(Protocol):
    """One session on the server: a psycopg connection (by DSN) or a psql session in the
    database's container. Both raise psycopg's exceptions, by SQLSTATE."""

    @property
    def usable(self) -> bool: ...

    @property
    def pid(self) -> int: ...

    def run(self, statement: Query) -> None: ...

    def rows(self, query: Query) -> list[tuple[Any, ...]]: ...


class _Connection:
    """A psycopg connection (autocommit) as a ``_Sql``."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    @property
    def usable(self) -> bool:
        return not (self.conn.broken or self.conn.closed)

    @property
    def pid(self) -> int:
        return self.conn.info.backend_pid

    def run(self, statement: Query) -> None:
        self.conn.execute(statement)

    def rows(self, query: Query) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(query).fetchall())


@dataclass(frozen=True, slots=True)
class _Ran:
    """What one pg_restore run did: the command (for messages), why it failed (None: it did
    not), its output's redacted tail, and for ``--list`` the listing."""

    command: str
    failure: str | None
    output: str
    listing: str = ""


class _Server(Protocol):
    """How the restore reaches the server: sessions on its databases, and pg_restore."""

    @property
    def secrets(self) -> tuple[str, ...]: ...

    def session(self, dbname: str) -> AbstractContextManager[_Sql]:
        """A session on ``dbname`` for reading it (the row counts)."""
        ...

    def check_pg_restore(self, major: int) -> str:
        """Pre-flight: refuse unless a pg_restore of the server's major version is there.
        Returns which one, for the record."""
        ...

    def list_backup(self, major: int, backup: Path, timeout: float) -> _Ran: ...

    def load(
        self, major: int, backup: Path, dbname: str, options: Sequence[str], timeout: float
    ) -> _Ran: ...


def restore_and_swap(
    admin_dsn: str,
    dbname: str,
    backup_path: Path,
    timeout: float,
    *,
    sql_timeout: float = 60.0,
    swap_timeout: float = 30.0,
    connect_timeout: float = 10.0,
    bin_root: Path = BIN_ROOT,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    check: Callable[[], None] = lambda: None,
) -> RestoreRecord:
    """Restore ``backup_path`` (a ``pg_dump -Fc`` or ``-Fd`` archive) as ``dbname``, keeping the
    database it replaces as ``<dbname>_damaged_<stamp>``.

    ``admin_dsn`` connects to another database of the same server (``postgres``) as a role that
    may create databases and end sessions. ``timeout`` bounds pg_restore (seconds); every SQL
    statement runs under ``sql_timeout``, and the swap, from blocking connections to the last
    rename, under ``swap_timeout``.

    ``check`` is called between stages (the executor's deadline check); whatever it raises
    stops the restore, with the same clean-up as a failure, up to the swap, which is short and
    is not interrupted.
    """
    secrets = _dsn_secrets(admin_dsn)
    _check_backup(backup_path)
    with (
        _admin(admin_dsn, connect_timeout, secrets) as admin,
        _client(admin_dsn, connect_timeout, timeout, secrets) as client,
    ):
        return _restore(
            _DsnServer(client, bin_root, sql_timeout),
            _Connection(admin),
            dbname,
            backup_path,
            timeout,
            sql_timeout=sql_timeout,
            swap_timeout=swap_timeout,
            now=now,
            check=check,
        )


def restore_in_container(
    target: DatabaseTarget,
    backup_path: Path,
    timeout: float,
    *,
    admin_dbname: str = "postgres",
    sql_timeout: float = 60.0,
    swap_timeout: float = 30.0,
    connect_timeout: float = 10.0,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    check: Callable[[], None] = lambda: None,
) -> RestoreRecord:
    """``restore_and_swap`` for a database reachable only inside its container
    (``target.container``), as ``target.user`` with ``target.password`` (None when the
    server does not ask for one). ``backup_path`` is a ``pg_dump -Fc`` file on this host,
    streamed into the container's pg_restore.

    ``admin_dbname`` is the database the admin session connects to (``postgres``, as in the
    runbook's ``psql -U spek_user -d postgres``); ``target.user`` must be allowed to create
    databases and end sessions there. Timeouts and ``check`` as for ``restore_and_swap``; the
    tools in the container also run under its ``timeout``, so none of them outlives the
    restore's time there.
    """
    if target.container is None or not target.dbname or not target.user:
        raise ValueError("restore_in_container needs a target with container, dbname and user")
    where = Container(
        name=target.container,
        user=target.user,
        password=target.password,
        docker_host=target.docker_host,
        connect_timeout=connect_timeout,
    )
    _check_backup(backup_path)
    if backup_path.is_dir():
        _refuse(
            f"backup {backup_path} is a directory (pg_dump -Fd): only a single-file archive "
            "(pg_dump -Fc) can be streamed into the container"
        )
    server = _ContainerServer(
        where,
        reply_timeout=max(sql_timeout, swap_timeout) + connect_timeout + 5,
        # the admin session's bound inside the container: every stage's limit and a margin
        lifetime=timeout + 6 * sql_timeout + swap_timeout + 60,
        sql_timeout=sql_timeout,
    )
    stack = ExitStack()
    try:
        admin = stack.enter_context(server.session(admin_dbname))
    except psycopg.Error as exc:
        _refuse(f"cannot open the admin session: {_one_line(exc, where.secrets)}")
    with stack:
        return _restore(
            server,
            admin,
            target.dbname,
            backup_path,
            timeout,
            sql_timeout=sql_timeout,
            swap_timeout=swap_timeout,
            now=now,
            check=check,
        )


def _restore(
    server: _Server,
    admin: _Sql,
    dbname: str,
    backup_path: Path,
    timeout: float,
    *,
    sql_timeout: float,
    swap_timeout: float,
    now: Callable[[], datetime],
    check: Callable[[], None],
) -> RestoreRecord:
    started = time.monotonic()
    durations: dict[str, float] = {}
    secrets = server.secrets
    try:
        _set_timeout(admin, sql_timeout)
    except psycopg.Error as exc:
        _refuse(f"the admin connection failed: {_one_line(exc, secrets)}")
    try:
        plan = _preflight(admin, server, dbname, now())
    except psycopg.Error as exc:
        _refuse(f"a pre-flight query failed: {_one_line(exc, secrets)}")
    toc_tables = _list_backup(plan, server, backup_path, timeout)
    durations["preflight"] = time.monotonic() - started
    check()
    own: set[int] = set()
    try:
        tables, notes = _restore_and_verify(
            admin,
            server,
            plan,
            backup=backup_path,
            timeout=timeout,
            toc_tables=toc_tables,
            durations=durations,
            check=check,
            own=own,
        )
        check()
    except BaseException as exc:
        cleanup, kept = _drop_restore(admin, plan)
        if isinstance(exc, _StageError | psycopg.Error):
            stage, reason = (
                (exc.stage, exc.reason)
                if isinstance(exc, _StageError)
                else ("restore", _one_line(exc, secrets))
            )
            raise RestoreError(
                f"{reason}; {cleanup}; the live database {dbname} was not touched",
                stage=stage,
                destructive=False,
                kept=kept,
            ) from None
        raise
    step = time.monotonic()
    try:
        renames, terminated, swap_notes = _swap(admin, plan, swap_timeout, own)
    except psycopg.Error as exc:
        names = (plan.dbname, plan.damaged_name, plan.restore_name)
        raise RestoreError(
            f"the admin connection failed during the swap ({_one_line(exc, secrets)}); "
            f"which of {', '.join(names)} exist now is unknown: check pg_database",
            stage="swap",
            destructive=True,
            kept=names,
        ) from None
    durations["swap"] = time.monotonic() - step
    durations["total"] = time.monotonic() - started
    return RestoreRecord(
        dbname=dbname,
        backup=backup_path,
        restored_as=plan.restore_name,
        damaged=plan.damaged_name if plan.live is not None else None,
        renames=tuple(renames),
        tables=tuple(tables),
        terminated=tuple(terminated),
        durations=durations,
        pg_restore=plan.pg_restore,
        server_major=plan.major,
        notes=(*notes, *swap_notes),
    )


# --- pre-flight ---


def _check_backup(path: Path) -> None:
    if path.is_dir():
        if not (path / "toc.dat").is_file():
            _refuse(f"backup {path} is a directory without toc.dat (not a pg_dump -Fd archive)")
        return
    try:
        size = path.stat().st_size
        with path.open("rb"):
            pass
    except OSError as exc:
        _refuse(f"backup {path} cannot be read: {exc.strerror or exc}")
    if size == 0:
        _refuse(f"backup {path} is empty")


def _preflight(admin: _Sql, server: _Server, dbname: str, stamp: datetime) -> _Plan:
    if not dbname or dbname in ("template0", "template1"):
        _refuse(f"will not replace database {dbname!r}")
    [row] = admin.rows(
        sql.SQL(
            "SELECT current_database(), current_user, current_setting('server_version_num')::int"
        )
    )
    current, admin_user, version_num = str(row[0]), str(row[1]), int(row[2])
    if current == dbname:
        _refuse(
            f"the admin session connects to {dbname} itself; it must connect to another database "
            "of the server (postgres), since the one being replaced is renamed away"
        )
    major = version_num // 10000 if version_num >= 100000 else version_num // 100
    pg_restore = server.check_pg_restore(major)
    _lock(admin, dbname)
    text = stamp.astimezone(UTC).strftime(_STAMP)
    restore_name = _derived(dbname, "restore", text)
    damaged_name = _derived(dbname, "damaged", text)
    for name in (restore_name, damaged_name):
        if _exists(admin, name):
            _refuse(f"a database named {name} exists already (a restore in the same second?)")
    return _Plan(
        dbname, restore_name, damaged_name, _live(admin, dbname), admin_user, major, pg_restore
    )


def _lock(admin: _Sql, dbname: str) -> None:
    digest = hashlib.sha256(f"spek-sentinel restore {dbname}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    rows = admin.rows(sql.SQL("SELECT pg_try_advisory_lock({})").format(sql.Literal(key)))
    if not rows or not rows[0][0]:
        _refuse(f"another restore of {dbname} is running (advisory lock held)")


def _derived(dbname: str, kind: str, stamp: str) -> str:
    suffix = f"_{kind}_{stamp}"
    room = _NAME_BYTES - len(suffix.encode())
    base = dbname.encode()[:room].decode(errors="ignore")  # a cut multibyte char is dropped
    return base + suffix


def _exists(admin: _Sql, name: str) -> bool:
    return bool(
        admin.rows(
            sql.SQL("SELECT 1 FROM pg_database WHERE datname = {}").format(sql.Literal(name))
        )
    )


def _live(admin: _Sql, dbname: str) -> _Live | None:
    found = admin.rows(
        sql.SQL(
            "SELECT to_jsonb(d), pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding),"
            " t.spcname, (SELECT s.setconfig FROM pg_db_role_setting s"
            "   WHERE s.setdatabase = d.oid AND s.setrole = 0), d.datacl IS NULL"
            " FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace"
            " WHERE d.datname = {}"
        ).format(sql.Literal(dbname))
    )
    if not found:
        return None
    row = found[0]
    attrs: dict[str, Any] = row[0]
    acl = None
    if not row[5]:
        grants = admin.rows(
            sql.SQL(
                "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,"
                " a.privilege_type, a.is_grantable"
                " FROM pg_database d, aclexplode(d.datacl) a"
                " WHERE d.datname = {} AND a.grantee <> d.datdba"
            ).format(sql.Literal(dbname))
        )
        acl = tuple((g[0], str(g[1]), bool(g[2])) for g in grants)
    icu = attrs.get("daticulocale") or attrs.get("datlocale")
    return _Live(
        owner=str(row[1]),
        encoding=str(row[2]),
        collate=str(attrs["datcollate"]),
        ctype=str(attrs["datctype"]),
        icu_locale=str(icu) if attrs.get("datlocprovider") == "i" and icu else None,
        tablespace=str(row[3]),
        connection_limit=int(attrs["datconnlimit"]),
        allow_connections=bool(attrs["datallowconn"]),
        settings=tuple(str(s) for s in row[4] or ()),
        acl=acl,
    )


def _list_backup(plan: _Plan, server: _Server, backup: Path, timeout: float) -> int:
    """The number of tables the archive holds, from ``pg_restore --list`` (no connection)."""
    ran = server.list_backup(plan.major, backup, timeout)
    if ran.failure is not None:
        hint = ""
        if "text format dump" in ran.output:
            hint = (
                " (a plain SQL dump: option C restores pg_dump -Fc archives, which pg_restore "
                "--list can check before anything is touched)"
            )
        _refuse(f"pg_restore --list cannot read backup {backup}{hint}: {ran.failure}\n{ran.output}")
    return len(_TOC_TABLE.findall(ran.listing))


# --- restore and verify ---


def _restore_and_verify(
    admin: _Sql,
    server: _Server,
    plan: _Plan,
    *,
    backup: Path,
    timeout: float,
    toc_tables: int,
    durations: dict[str, float],
    check: Callable[[], None],
    own: set[int],
) -> tuple[list[TableCount], list[str]]:
    """Create, restore, verify, count. ``own`` collects the backend pids of the sessions
    opened here on the live database: closed, but maybe still exiting when the swap looks."""
    step = time.monotonic()
    _create(admin, plan)
    durations["create"] = time.monotonic() - step
    check()

    step = time.monotonic()
    options = ["--no-owner", "--exit-on-error", "--no-password"]
    if plan.live is not None and plan.live.owner != plan.admin_user:
        options.append(f"--role={plan.live.owner}")  # objects end up owned by the app's role
    ran = server.load(plan.major, backup, plan.restore_name, options, timeout)
    durations["restore"] = time.monotonic() - step
    if ran.failure is not None:
        raise _StageError("restore", f"`{ran.command}` {ran.failure}\n{ran.output}")
    check()

    step = time.monotonic()
    try:
        after, _ = _counts(server, plan.restore_name)
    except psycopg.Error as exc:
        raise _StageError(
            "verify",
            f"the restored database cannot be read: {_one_line(exc, server.secrets)}",
        ) from None
    unreadable = [name for name, count in after.items() if count is None]
    if unreadable:
        raise _StageError(
            "verify", f"count(*) failed in the restored database for {', '.join(unreadable)}"
        )
    if not after:
        raise _StageError(
            "verify", f"the restored database has no tables (the backup lists {toc_tables})"
        )
    if len(after) < toc_tables:
        raise _StageError(
            "verify", f"the backup lists {toc_tables} tables but only {len(after)} were restored"
        )
    durations["verify"] = time.monotonic() - step

    step = time.monotonic()
    notes: list[str] = []
    before: dict[str, int | None] = {}
    if plan.live is not None:
        try:
            before, own_pid = _counts(server, plan.dbname)
            own.add(own_pid)
        except psycopg.Error as exc:
            notes.append(
                f"row counts of {plan.dbname} before the swap could not be read: "
                f"{_one_line(exc, server.secrets)}"
            )
        notes.extend(
            f"count(*) of {name} in {plan.dbname} before the swap failed"
            for name, count in before.items()
            if count is None
        )
    durations["count_live"] = time.monotonic() - step
    names = sorted(set(after) | set(before))
    return [TableCount(n, before.get(n), after.get(n)) for n in names], notes


def _create(admin: _Sql, plan: _Plan) -> None:
    name = sql.Identifier(plan.restore_name)
    live = plan.live
    try:
        if live is None:
            admin.run(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(name))
            return
        statement = sql.SQL(
            "CREATE DATABASE {} TEMPLATE template0 OWNER {} ENCODING {} LC_COLLATE {} LC_CTYPE {}"
            " CONNECTION LIMIT {}"
        ).format(
            name,
            sql.Identifier(live.owner),
            sql.Literal(live.encoding),
            sql.Literal(live.collate),
            sql.Literal(live.ctype),
            sql.Literal(live.connection_limit),
        )
        if live.tablespace != "pg_default":  # naming even the default needs CREATE on it
            statement = sql.SQL("{} TABLESPACE {}").format(
                statement, sql.Identifier(live.tablespace)
            )
        if live.icu_locale is not None:
            statement = sql.SQL("{} LOCALE_PROVIDER icu ICU_LOCALE {}").format(
                statement, sql.Literal(live.icu_locale)
            )
        admin.run(statement)
    except psycopg.Error as exc:
        raise _StageError(
            "create", f"CREATE DATABASE {plan.restore_name} failed: {_one_line(exc)}"
        ) from None
    try:
        for setting in live.settings:
            admin.run(_alter_set(name, setting))
        if live.acl is not None:
            admin.run(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(name))
            for grantee, privilege, grantable in live.acl:
                admin.run(
                    sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                        sql.SQL(privilege),  # CREATE, CONNECT or TEMPORARY, from aclexplode
                        name,
                        sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
                        sql.SQL(" WITH GRANT OPTION" if grantable else ""),
                    )
                )
    except psycopg.Error as exc:
        raise _StageError(
            "create", f"copying settings and privileges of {plan.dbname} failed: {_one_line(exc)}"
        ) from None


def _alter_set(name: sql.Identifier, setting: str) -> sql.Composed:
    key, _, value = setting.partition("=")
    if key.lower() in _LIST_SETTINGS:
        items = [item.strip() for item in value.split(",") if item.strip()]
        literal: sql.Composable = sql.SQL(", ").join(sql.Literal(item) for item in items)
    else:
        literal = sql.Literal(value)
    return sql.SQL("ALTER DATABASE {} SET {} TO {}").format(name, sql.Identifier(key), literal)


def _counts(server: _Server, dbname: str) -> tuple[dict[str, int | None], int]:
    """count(*) of every table outside the system schemas (None where the count failed), and
    the backend pid of the session that counted. The session is read-only and under the
    statement timeout that ``server.session`` sets."""
    counts: dict[str, int | None] = {}
    with server.session(dbname) as conn:
        conn.run(sql.SQL("SELECT set_config('default_transaction_read_only', 'on', false)"))
        tables = conn.rows(
            sql.SQL(
                "SELECT n.nspname, c.relname FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema'"
                " AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2"
            )
        )
        for schema, table in tables:
            label = f"{schema}.{table}"
            try:
                found = conn.rows(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
                )
                counts[label] = int(found[0][0]) if found else None
            except psycopg.Error:
                if not conn.usable:
                    raise
                counts[label] = None
        pid = conn.pid
    return counts, pid


def _drop_restore(admin: _Sql, plan: _Plan) -> tuple[str, tuple[str, ...]]:
    """Drop the half-restored database (only ever that one); say what happened."""
    assert plan.restore_name != plan.dbname and "_restore_" in plan.restore_name
    try:
        if not admin.usable:
            raise psycopg.OperationalError("the admin connection was lost")
        admin.run(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(plan.restore_name)
            )
        )
    except psycopg.Error as exc:
        return (
            f"the half-restored database {plan.restore_name} could NOT be dropped "
            f"({_one_line(exc)}): drop it by hand",
            (plan.restore_name,),
        )
    return f"the half-restored database {plan.restore_name} was dropped", ()


# --- the swap ---


def _swap(
    admin: _Sql, plan: _Plan, swap_timeout: float, own: set[int]
) -> tuple[list[Rename], list[Session], list[str]]:
    deadline = time.monotonic() + swap_timeout
    _set_timeout(admin, swap_timeout)
    live = plan.live
    if live is None:
        try:
            _rename(admin, plan.restore_name, plan.dbname)
        except psycopg.Error as exc:
            cleanup, kept = _drop_restore(admin, plan)
            raise RestoreError(
                f"renaming {plan.restore_name} to {plan.dbname} failed: {_one_line(exc)}; "
                f"{cleanup}",
                stage="swap",
                destructive=False,
                kept=kept,
            ) from None
        return (
            [Rename(plan.restore_name, plan.dbname)],
            [],
            [f"there was no database {plan.dbname} to replace"],
        )

    terminated: dict[int, Session] = {}
    try:
        _allow_connections(admin, plan.dbname, allow=False)
        _clear_and_rename(admin, plan, deadline, terminated, own)
    except psycopg.Error as exc:
        _reopen(admin, plan.dbname, live.allow_connections)
        cleanup, kept = _drop_restore(admin, plan)
        ended = f"; {len(terminated)} session(s) on it were terminated" if terminated else ""
        raise RestoreError(
            f"could not move {plan.dbname} aside: {_swap_reason(exc, swap_timeout)}{ended}; "
            f"{plan.dbname} is in place as it was, accepting connections again; {cleanup}",
            stage="swap",
            destructive=False,
            kept=kept,
        ) from None
    renames = [Rename(plan.dbname, plan.damaged_name)]
    try:
        _rename(admin, plan.restore_name, plan.dbname)
    except psycopg.Error as exc:
        raise _undo_first_rename(admin, plan, exc, len(terminated)) from None
    renames.append(Rename(plan.restore_name, plan.dbname))
    notes = []
    try:
        _allow_connections(admin, plan.damaged_name, allow=live.allow_connections)
    except psycopg.Error as exc:
        notes.append(
            f"{plan.damaged_name} still refuses connections ({_one_line(exc)}): "
            f"ALTER DATABASE {plan.damaged_name} ALLOW_CONNECTIONS true to inspect it"
        )
    return renames, list(terminated.values()), notes


def _clear_and_rename(
    admin: _Sql, plan: _Plan, deadline: float, terminated: dict[int, Session], own: set[int]
) -> None:
    """Terminate every session on the live database and rename it, until the rename works:
    with connections blocked no new session can arrive, but an ending one takes a moment.
    Sessions in ``own`` (this restore's, already closed) are not reported as terminated."""
    pause = threading.Event()
    while True:
        for session in _sessions(admin, plan.dbname):
            admin.run(sql.SQL("SELECT pg_terminate_backend({})").format(sql.Literal(session.pid)))
            if session.pid not in own:
                terminated.setdefault(session.pid, session)
        try:
            _rename(admin, plan.dbname, plan.damaged_name)
            return
        except psycopg.errors.ObjectInUse:
            if time.monotonic() >= deadline:
                raise
        pause.wait(_POLL)


def _undo_first_rename(admin: _Sql, plan: _Plan, exc: psycopg.Error, ended: int) -> RestoreError:
    failure = f"renaming {plan.restore_name} to {plan.dbname} failed: {_one_line(exc)}"
    try:
        _rename(admin, plan.damaged_name, plan.dbname)
    except psycopg.Error as undo:
        return RestoreError(
            f"{failure}; renaming {plan.damaged_name} back to {plan.dbname} failed too "
            f"({_one_line(undo)}). NO database is named {plan.dbname} now: the replaced one is "
            f"{plan.damaged_name} (refusing connections), the verified restore is "
            f"{plan.restore_name}. Rename one of them to {plan.dbname} by hand",
            stage="swap",
            destructive=True,
            kept=(plan.damaged_name, plan.restore_name),
        )
    assert plan.live is not None
    _reopen(admin, plan.dbname, plan.live.allow_connections)
    return RestoreError(
        f"{failure}; {plan.damaged_name} was renamed back to {plan.dbname}, which is in place as "
        f"it was ({ended} session(s) on it had been terminated); the verified restore is kept "
        f"as {plan.restore_name} for a human to swap in",
        stage="swap",
        destructive=False,
        kept=(plan.restore_name,),
    )


def _sessions(admin: _Sql, dbname: str) -> list[Session]:
    rows = admin.rows(
        sql.SQL(
            "SELECT pid, usename, application_name, client_addr::text, state, backend_type"
            " FROM pg_stat_activity WHERE datname = {} AND pid <> pg_backend_pid()"
        ).format(sql.Literal(dbname))
    )
    return [Session(int(r[0]), r[1], r[2] or None, r[3], r[4], r[5]) for r in rows]


def _rename(admin: _Sql, old: str, new: str) -> None:
    admin.run(
        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
    )


def _allow_connections(admin: _Sql, dbname: str, *, allow: bool) -> None:
    admin.run(
        sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(dbname), sql.SQL("true" if allow else "false")
        )
    )


def _reopen(admin: _Sql, dbname: str, allow: bool) -> None:
    with suppress(psycopg.Error):
        _allow_connections(admin, dbname, allow=allow)


def _set_timeout(conn: _Sql, seconds: float) -> None:
    conn.run(
        sql.SQL("SELECT set_config('statement_timeout', {}, false)").format(
            sql.Literal(_ms(seconds))
        )
    )


def _swap_reason(exc: psycopg.Error, swap_timeout: float) -> str:
    if isinstance(exc, psycopg.errors.ObjectInUse):
        return f"its sessions did not end within {swap_timeout:g}s"
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return f"{_one_line(exc)} (ending sessions needs superuser or pg_signal_backend)"
    return _one_line(exc)


# --- by DSN: connections and client tools on this host ---


@contextmanager
def _admin(dsn: str, connect_timeout: float, secrets: Sequence[str]) -> Iterator[Conn]:
    try:
        conn = psycopg.connect(
            dsn,
            autocommit=True,  # CREATE/ALTER/DROP DATABASE cannot run inside a transaction
            prepare_threshold=None,
            connect_timeout=_seconds(connect_timeout),
            application_name=_APP_NAME,
        )
    except psycopg.Error as exc:
        _refuse(f"cannot connect with the admin DSN: {_one_line(exc, secrets)}")
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def _client(
    dsn: str, connect_timeout: float, timeout: float, secrets: tuple[str, ...]
) -> Iterator[_Client]:
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    except psycopg.Error:
        _refuse("the admin DSN does not parse as a connection string (value not shown)")
    password = params.pop("password", None) or os.environ.get("PGPASSWORD")
    params.setdefault("connect_timeout", str(_seconds(connect_timeout)))
    env = {
        k: v
        for k, v in os.environ.items()
        if k in _PASS_THROUGH_ENV or k.startswith(_PASS_THROUGH_PREFIXES)
    }
    env.setdefault("PATH", _DEFAULT_PATH)
    env["PGAPPNAME"] = _APP_NAME
    env["PGOPTIONS"] = f"-c statement_timeout={_ms(timeout)}"
    if "PGPASSFILE" in os.environ and not password:
        env["PGPASSFILE"] = os.environ["PGPASSFILE"]
    with _private_dir() as workdir:
        if password:
            passfile = workdir / "pgpass"
            fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(f"*:*:*:*:{_pgpass_escape(password)}\n")
            env["PGPASSFILE"] = str(passfile)
        yield _Client(
            params, password, env, workdir, (*secrets, *((password,) if password else ()))
        )


@contextmanager
def _private_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="spek-restore-") as name:
        os.chmod(name, 0o700)
        yield Path(name)


class _DsnServer:
    """The server by DSN: psycopg sessions, and pg_restore of the server's major version from
    ``bin_root`` on this host, with the password in a private passfile."""

    def __init__(self, client: _Client, bin_root: Path, sql_timeout: float) -> None:
        self.client = client
        self.bin_root = bin_root
        self.sql_timeout = sql_timeout

    @property
    def secrets(self) -> tuple[str, ...]:
        return self.client.secrets

    @contextmanager
    def session(self, dbname: str) -> Iterator[_Sql]:
        with psycopg.connect(
            self.client.conninfo(dbname),
            password=self.client.password,
            autocommit=True,
            prepare_threshold=None,
            connect_timeout=_seconds(self.client.params.get("connect_timeout")),
            application_name=_APP_NAME,
        ) as conn:
            session = _Connection(conn)
            _set_timeout(session, self.sql_timeout)
            yield session

    def _tool(self, major: int) -> Path:
        return self.bin_root / str(major) / "bin" / "pg_restore"

    def check_pg_restore(self, major: int) -> str:
        pg_restore = self._tool(major)
        if not os.access(pg_restore, os.X_OK):
            _refuse(
                f"pg_restore for the server's PostgreSQL {major} not found at {pg_restore}; "
                f"install postgresql-client-{major} (another major version may not read or "
                "restore the archive correctly)"
            )
        return str(pg_restore)

    def list_backup(self, major: int, backup: Path, timeout: float) -> _Ran:
        toc = self.client.workdir / "toc.txt"
        ran = self._run(major, ["--list", "-f", str(toc), str(backup)], timeout)
        if ran.failure is None:
            return _Ran(ran.command, None, ran.output, toc.read_text(errors="replace"))
        return ran

    def load(
        self, major: int, backup: Path, dbname: str, options: Sequence[str], timeout: float
    ) -> _Ran:
        args = [*options, "-d", self.client.conninfo(dbname), str(backup)]
        return self._run(major, args, timeout)

    def _run(self, major: int, args: Sequence[str], timeout: float) -> _Ran:
        client = self.client
        setup = CommandEnv(cwd=client.workdir, env=dict(client.env), secrets=client.secrets)
        ran = run_command([str(self._tool(major)), *args], setup, timeout)
        return _Ran(ran.command, ran.failure, ran.output)


# --- inside the container: psql sessions and pg_restore there ---


class _ContainerServer:
    """The server inside its container: psql sessions there, and the container's pg_restore
    reading the backup from this host through the exec's stdin."""

    def __init__(
        self, where: Container, *, reply_timeout: float, lifetime: float, sql_timeout: float
    ) -> None:
        self.where = where
        self.reply_timeout = reply_timeout
        self.lifetime = lifetime
        self.sql_timeout = sql_timeout

    @property
    def secrets(self) -> tuple[str, ...]:
        return self.where.secrets

    @contextmanager
    def session(self, dbname: str) -> Iterator[_Sql]:
        with open_psql(
            self.where,
            dbname,
            lifetime=self.lifetime,
            reply_timeout=self.reply_timeout,
            application_name=_APP_NAME,
        ) as session:
            _set_timeout(session, self.sql_timeout)
            yield session

    def check_pg_restore(self, major: int) -> str:
        where = self.where
        try:
            ran = run_in_container(
                where, ["pg_restore", "--version"], timeout=where.connect_timeout + 10
            )
        except ContainerError as exc:
            _refuse(str(exc))
        if ran.failure is not None:
            _refuse(f"`{ran.command}` {ran.failure}\n{ran.output}")
        text = ran.stdout.decode(errors="replace")
        found = _TOOL_VERSION.search(text)
        tool_major = None
        if found is not None:
            tool_major = (
                int(found[1]) if int(found[1]) >= 10 else int(found[1]) * 100 + int(found[2] or 0)
            )
        if tool_major != major:
            _refuse(
                f"pg_restore in container {where.name} is {text.strip()[:80]!r}, not of the "
                f"server's PostgreSQL {major} (another major version may not read or restore "
                "the archive correctly)"
            )
        return f"pg_restore in container {where.name} ({text.strip()[:80]})"

    def list_backup(self, major: int, backup: Path, timeout: float) -> _Ran:
        ran = self._run(["pg_restore", "--list"], backup, timeout, stage=None)
        return _Ran(ran.command, ran.failure, ran.output, ran.stdout.decode(errors="replace"))

    def load(
        self, major: int, backup: Path, dbname: str, options: Sequence[str], timeout: float
    ) -> _Ran:
        argv = ["pg_restore", *options, f"--dbname={self.where.conninfo(dbname)}"]
        ran = self._run(argv, backup, timeout, stage="restore")
        return _Ran(ran.command, ran.failure, ran.output)

    def _run(
        self, argv: Sequence[str], backup: Path, timeout: float, *, stage: str | None
    ) -> ExecResult:
        env = {"PGAPPNAME": _APP_NAME, "PGOPTIONS": f"-c statement_timeout={_ms(timeout)}"}
        try:
            return run_in_container(self.where, argv, timeout=timeout, stdin=backup, env=env)
        except ContainerError as exc:
            if stage is None:
                _refuse(str(exc))
            raise _StageError(stage, f"pg_restore in container {self.where.name}: {exc}") from None


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _refuse(reason: str) -> NoReturn:
    raise RestoreError(
        f"{reason}; nothing was created or changed", stage="pre-flight", destructive=False
    )


def _dsn_secrets(dsn: str) -> tuple[str, ...]:
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        return ()
    return (str(password),) if password else ()


def _one_line(exc: BaseException, secrets: Sequence[str] = ()) -> str:
    text = redact(" ".join(str(exc).split()), secrets) or type(exc).__name__
    return text[:_ERROR_CHARS]


def _ms(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


def _seconds(value: float | str | None) -> int:
    return max(2, math.ceil(float(value))) if value else 10  # libpq's floor is 2 s
