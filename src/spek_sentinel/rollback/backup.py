"""Emergency and routine PostgreSQL backups, verified before anything destructive runs.

The runbook's "Create Emergency Backup ... Verify backup ... Backup failed! DO NOT PROCEED with
rollback!" as code. Every failure is a ``BackupError`` whose message ends in "DO NOT PROCEED";
nothing here changes the database, so none of them leaves anything destroyed.

- ``create_backup``: ``pg_dump -Fc`` of the target to ``<label>_<UTC stamp>.dump.partial`` in
  the backup dir (mode 0600), fsync, ``verify_backup``, then the checksum file
  ``<name>.dump.sha256`` (``sha256sum -c`` reads it) and only then the rename to ``.dump``. A
  failed dump or verify deletes the partial file: a ``*.dump`` exists only once verified.
- ``verify_backup``: at least ``MIN_DUMP_BYTES``, the custom-format magic, sha256 (and the
  recorded one, if given), ``pg_restore --list`` reads the table of contents (entry count,
  tables; every expected table with its data), and ``pg_restore -f /dev/null`` reads every data
  block. The last one is what notices a truncated file: ``--list`` only reads the TOC at the
  head of the archive and passes on a dump cut short anywhere after it.
- ``check_backup_dir`` / ``estimate_dump_size`` / ``preflight``: before traffic is stopped.
- ``prune``: retention for routine backups.

How the database is reached (``DatabaseTarget``):

- by DSN: the pg_dump/pg_restore of the server's major version (``/usr/lib/postgresql/<major>``
  when several are installed) run on this host. A password in the DSN goes to a 0600 passfile
  in a private temp dir, named by ``passfile=`` in the conninfo; the child's ``PGPASSWORD``
  is removed, since libpq would prefer it. The password is never on a command line.
- inside its container, as in the runbook (``docker exec spek-postgres pg_dump ...``): pg_dump
  runs in the container through the engine's exec API, under the container's ``timeout`` so it
  cannot outlive the step, and its stdout is streamed into the file on this host. The password
  goes in the exec's environment (``PGPASSWORD`` inside the container only). Verification runs
  on this host against the bytes that landed here, never inside the container: what is checked
  is the file that will be restored, with tools that do not depend on the container being
  healthy. So the host needs a pg_restore at least as new as the container's pg_dump
  (``postgresql-client-<major>``); preflight refuses otherwise.

pg_dump must not be older (by major version) than the server: it would refuse or, worse, miss
what it does not know. That is checked before dumping.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors
import psycopg
import requests
from psycopg import conninfo

from spek_sentinel.domain.errors import RollbackError
from spek_sentinel.secrets import redact

# pg_dump 15 -Fc of an empty database is 854 bytes (header, ENCODING, STDSTRINGS, SEARCHPATH
# and DATABASE entries); anything smaller cannot be a complete custom-format dump. Truncation
# of a larger dump is caught by reading every block, not by this floor.
MIN_DUMP_BYTES = 512
# Free space asked for beyond the estimate: 10% of it, at least this much.
MIN_MARGIN_BYTES = 16 * 1024 * 1024
PG_BIN_ROOT = Path("/usr/lib/postgresql")
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DUMP_SUFFIX = ".dump"
PARTIAL_SUFFIX = ".partial"
CHECKSUM_SUFFIX = ".sha256"
MARKS_SUFFIX = ".meta.json"  # what the backup belongs to: release, schema version

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_DUMP_NAME = re.compile(r"(?P<label>.+)_(?P<stamp>\d{8}T\d{6}Z)\.dump")
_CHECKSUM_LINE = re.compile(r"(?P<sha>[0-9a-f]{64})  (?P<name>.+)\n?")
_MAGIC = b"PGDMP"
_TOOL_VERSION = re.compile(r"\(PostgreSQL\)\s+(?P<text>(?P<major>\d+)(?:\.(?P<minor>\d+))?\S*.*)")
_TOC_ENTRY = re.compile(r"(?P<id>\d+);\s+\d+\s+\d+\s+(?P<rest>.+)")
_CONNECT_TIMEOUT = 10  # seconds; a server that does not answer in this long is down for us
_STDERR_KEEP = 4000  # characters of a tool's stderr kept for the error message
_NOT_PROCEED = "DO NOT PROCEED"
# Regular tables that pg_dump dumps with their data: not system, not temporary, not owned by an
# extension (pg_dump leaves those to CREATE EXTENSION). Names travel as JSON, so any character in
# them survives psql's text output unharmed.
_SERVER_SQL = """
SELECT json_build_object(
  'version', current_setting('server_version'),
  'version_num', current_setting('server_version_num')::int,
  'size', pg_database_size(current_database()),
  'tables', coalesce((
    SELECT json_agg(json_build_array(n.nspname, c.relname) ORDER BY n.nspname, c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND c.relpersistence <> 't'
      AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
      AND NOT EXISTS (
        SELECT 1 FROM pg_depend d
        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
  ), '[]'::json))::text
"""


class BackupError(RollbackError):
    """No usable backup: the rollback must not go on. ``reason`` says what to do about it.

    Backing up never changes the database, so ``destructive_started`` is always False.
    """

    destructive_started = False

    def __init__(self, reason: str, output: str = "") -> None:
        self.reason = reason
        self.output = output  # the tool's stderr, credentials removed
        message = f"{reason} — {_NOT_PROCEED}"
        if output:
            message += f"\n--- output tail ---\n{output}"
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """The database to back up: by ``dsn``, or inside ``container`` as ``user`` on ``dbname``.

    ``password`` is for the container path (the DSN carries its own); None when the server does
    not ask for one there (the official image trusts its local socket).
    """

    dsn: str | None = field(default=None, repr=False)
    container: str | None = None
    dbname: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    docker_host: str = DEFAULT_DOCKER_HOST

    def __post_init__(self) -> None:
        if (self.dsn is None) == (self.container is None):
            raise ValueError("set exactly one of dsn or container")
        if self.container is not None and (not self.dbname or not self.user):
            raise ValueError("a database inside a container needs dbname and user")
        if self.dsn is not None:
            try:
                conninfo.conninfo_to_dict(self.dsn)
            except psycopg.Error:
                raise ValueError("the DSN cannot be parsed") from None  # it may hold a password

    def describe(self) -> str:
        """Where the database is, for messages: never the password."""
        if self.container is not None:
            return f"database {self.dbname!r} in container {self.container!r} as {self.user}"
        params = conninfo.conninfo_to_dict(self.dsn or "")
        where = f"{params.get('host', 'local socket')}:{params.get('port', '5432')}"
        return f"database {params.get('dbname', '(default)')!r} at {where}"

    @property
    def secrets(self) -> tuple[str, ...]:
        found = [self.password or ""]
        if self.dsn is not None:
            found.append(str(conninfo.conninfo_to_dict(self.dsn).get("password") or ""))
        return tuple(secret for secret in found if secret)


@dataclass(frozen=True, slots=True)
class ServerInfo:
    version: str  # server_version, such as "15.20 (Debian 15.20-0+deb12u1)"
    version_num: int  # server_version_num, such as 150020
    database_size: int  # pg_database_size, bytes
    tables: tuple[str, ...]  # regular tables as "schema.name", the ones the dump must hold

    @property
    def major(self) -> int:
        return _major(self.version_num)


@dataclass(frozen=True, slots=True)
class Verification:
    path: Path
    size: int
    sha256: str
    toc_entries: int  # entries that pg_restore --list shows
    tables: tuple[str, ...]  # TABLE entries as "schema.name", sorted
    dumped_from: str  # server version the archive says it came from
    dumped_by: str  # pg_dump version the archive says made it


@dataclass(frozen=True, slots=True)
class BackupRecord:
    path: Path
    size: int
    sha256: str
    created_at: datetime  # UTC, also in the file name
    server_version: str
    pg_dump_version: str
    tables: tuple[str, ...]
    label: str
    duration: float  # seconds, dump and verification
    toc_entries: int
    checksum_path: Path  # <name>.dump.sha256, what prune and sha256sum -c read


@dataclass(frozen=True, slots=True)
class Preflight:
    server_version: str
    pg_dump_version: str
    pg_restore: Path
    estimated_bytes: int
    free_bytes: int


@dataclass(frozen=True, slots=True)
class PruneResult:
    deleted: tuple[Path, ...]
    kept: tuple[Path, ...]
    problems: tuple[str, ...]  # labels left untouched, and why


@dataclass(frozen=True, slots=True)
class _Tools:
    server: ServerInfo
    pg_dump: Path | None  # on this host (DSN path); None when pg_dump runs in the container
    pg_dump_version: str
    pg_restore: Path


# ---------------------------------------------------------------------------------- public API


def estimate_dump_size(target: DatabaseTarget, timeout: float = 30.0) -> int:
    """Bytes to plan for: ``pg_database_size``. A compressed dump is usually far smaller (no
    indexes, no dead rows), so this is a generous upper bound rather than a forecast."""
    return _server_info(target, time.monotonic() + timeout).database_size


def check_backup_dir(
    backup_dir: Path, needed_bytes: int, *, margin_bytes: int | None = None
) -> int:
    """The backup dir exists (or is created, 0700), takes a file, and has ``needed_bytes`` free
    plus a margin (10%, at least ``MIN_MARGIN_BYTES``). Returns the free bytes."""
    margin = max(needed_bytes // 10, MIN_MARGIN_BYTES) if margin_bytes is None else margin_bytes
    try:
        backup_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create backup dir {backup_dir}: {_oserror(exc)}") from None
    if not backup_dir.is_dir():
        raise BackupError(f"backup dir {backup_dir} is not a directory")
    probe = backup_dir / f".spek-sentinel-probe-{uuid.uuid4().hex}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise BackupError(f"backup dir {backup_dir} is not writable: {_oserror(exc)}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    free = shutil.disk_usage(backup_dir).free
    if free < needed_bytes + margin:
        raise BackupError(
            f"backup dir {backup_dir} has {_size(free)} free, needs {_size(needed_bytes + margin)}"
            f" ({_size(needed_bytes)} estimated + {_size(margin)} margin): free space there or"
            " point backup_dir at a bigger disk"
        )
    return free


def preflight(
    target: DatabaseTarget,
    backup_dir: Path,
    timeout: float = 60.0,
    *,
    tools_root: Path = PG_BIN_ROOT,
) -> Preflight:
    """Everything ``create_backup`` needs, checked before traffic is stopped: the server answers,
    the tools are new enough, and the backup dir takes the estimated dump."""
    tools = _tools(target, time.monotonic() + timeout, tools_root)
    free = check_backup_dir(backup_dir, tools.server.database_size)
    return Preflight(
        server_version=tools.server.version,
        pg_dump_version=tools.pg_dump_version,
        pg_restore=tools.pg_restore,
        estimated_bytes=tools.server.database_size,
        free_bytes=free,
    )


def create_backup(
    target: DatabaseTarget,
    backup_dir: Path,
    label: str,
    timeout: float,
    *,
    tools_root: Path = PG_BIN_ROOT,
    lock_wait_timeout: float = 30.0,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BackupRecord:
    """Dump ``target`` to ``<backup_dir>/<label>_<UTC stamp>.dump`` and verify it.

    ``timeout`` bounds the whole call; ``lock_wait_timeout`` how long pg_dump waits for a table
    lock held by someone else (a migration) before giving up rather than queueing behind it.
    Does not check free space: ``preflight`` does, before traffic stops; a disk that fills up
    during the dump fails it like any other error.
    """
    if not _LABEL.fullmatch(label):
        raise ValueError(f"label {label!r}: use letters, digits, '_', '.', '-' (at most 64)")
    started = time.monotonic()
    deadline = started + timeout
    tools = _tools(target, deadline, tools_root)
    created_at = clock().astimezone(UTC)
    final = backup_dir / f"{label}_{created_at.strftime(_STAMP_FORMAT)}{DUMP_SUFFIX}"
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    checksum = final.with_name(final.name + CHECKSUM_SUFFIX)
    try:
        backup_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create backup dir {backup_dir}: {_oserror(exc)}") from None
    if final.exists():
        raise BackupError(f"{final} exists already: another backup with label {label!r} ran")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise BackupError(f"cannot create {partial}: {_oserror(exc)}") from None
    finished = False
    try:
        with os.fdopen(fd, "wb") as sink:
            if tools.pg_dump is not None:
                _dump_by_dsn(target, tools.pg_dump, partial, deadline, lock_wait_timeout)
            else:
                _dump_in_container(target, sink, deadline, lock_wait_timeout)
            sink.flush()
            os.fsync(sink.fileno())
        verified = verify_backup(
            partial,
            expected_tables=tools.server.tables,
            pg_restore=tools.pg_restore,
            timeout=_remaining(deadline, "verifying the dump"),
        )
        _write_atomically(checksum, f"{verified.sha256}  {final.name}\n".encode())
        os.rename(partial, final)
        _fsync_dir(backup_dir)
        finished = True
    except OSError as exc:
        raise BackupError(f"backup to {partial} failed: {_oserror(exc)}") from None
    finally:
        if not finished:
            partial.unlink(missing_ok=True)
            checksum.unlink(missing_ok=True)
    return BackupRecord(
        path=final,
        size=verified.size,
        sha256=verified.sha256,
        created_at=created_at,
        server_version=tools.server.version,
        pg_dump_version=tools.pg_dump_version,
        tables=verified.tables,
        label=label,
        duration=time.monotonic() - started,
        toc_entries=verified.toc_entries,
        checksum_path=checksum,
    )


def verify_backup(
    path: Path,
    expected_sha256: str | None = None,
    *,
    expected_tables: Iterable[str] = (),
    pg_restore: Path | None = None,
    timeout: float = 600.0,
    min_bytes: int = MIN_DUMP_BYTES,
) -> Verification:
    """Whether ``path`` is a complete custom-format dump that pg_restore can read, with every
    table in ``expected_tables`` ("schema.name") and its data. Raises ``BackupError`` if not."""
    deadline = time.monotonic() + timeout
    try:
        size = path.stat().st_size
        with path.open("rb") as dump:
            magic = dump.read(len(_MAGIC))
    except OSError as exc:
        raise BackupError(f"cannot read backup {path}: {_oserror(exc)}") from None
    if size < min_bytes:
        raise BackupError(
            f"backup {path} is {size} bytes, less than the {min_bytes} of any complete dump:"
            " the dump failed or was cut short"
        )
    if magic != _MAGIC:
        raise BackupError(f"backup {path} is not a pg_dump custom-format archive (no PGDMP header)")
    sha256 = _sha256(path)
    if expected_sha256 is not None and sha256 != expected_sha256.lower():
        raise BackupError(
            f"backup {path} has sha256 {sha256}, but {expected_sha256} was recorded when it was"
            " made: the file changed since; do not restore it"
        )
    restore = pg_restore or _newest_tool("pg_restore", PG_BIN_ROOT)
    listing = _run(
        [str(restore), "--list", str(path)], None, _remaining(deadline, "verifying"), "pg_restore"
    )
    if listing.returncode != 0:
        raise BackupError(
            f"pg_restore --list cannot read the table of contents of {path}",
            _tail(listing.stderr.decode(errors="replace")),
        )
    toc = _parse_toc(listing.stdout.decode(errors="replace"))
    if toc.format != "CUSTOM":
        raise BackupError(f"backup {path} is in format {toc.format or '(unknown)'}, not CUSTOM")
    expected = set(expected_tables)
    missing = sorted((expected - toc.tables) | (expected - toc.data))
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise BackupError(f"backup {path} lacks tables (or their data) the database has: {shown}")
    reading = _run(
        [str(restore), "--file=/dev/null", str(path)],
        None,
        _remaining(deadline, "verifying"),
        "pg_restore",
    )
    if reading.returncode != 0:
        raise BackupError(
            f"pg_restore cannot read every block of {path}: truncated or corrupt",
            _tail(reading.stderr.decode(errors="replace")),
        )
    return Verification(
        path=path,
        size=size,
        sha256=sha256,
        toc_entries=toc.entries,
        tables=tuple(sorted(toc.tables)),
        dumped_from=toc.dumped_from,
        dumped_by=toc.dumped_by,
    )


@dataclass(frozen=True, slots=True)
class BackupFile:
    path: Path
    label: str
    taken_at: datetime  # UTC, from the file name
    size: int
    sha256: str | None  # recorded beside it once verified; None for an unverified file
    release: str | None = None  # the release current when it was taken
    schema: str | None = None  # the schema version (migration) it holds


def mark_backup(dump: Path, release: str | None, schema: str | None) -> None:
    """Record beside ``dump`` which release and schema version it belongs to."""
    marks = dump.with_name(dump.name + MARKS_SUFFIX)
    partial = marks.with_name(marks.name + ".partial")
    partial.write_text(json.dumps({"release": release, "schema": schema}), encoding="utf-8")
    partial.replace(marks)


def _marks(dump: Path) -> tuple[str | None, str | None]:
    try:
        data = json.loads(dump.with_name(dump.name + MARKS_SUFFIX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    release, schema = data.get("release"), data.get("schema")
    return (
        release if isinstance(release, str) else None,
        schema if isinstance(schema, str) else None,
    )


def list_backups(backup_dir: Path) -> list[BackupFile]:
    """The dumps in ``backup_dir``, newest first; partial files are not dumps."""
    found = []
    for dump in backup_dir.glob(f"*{DUMP_SUFFIX}") if backup_dir.is_dir() else ():
        named = _DUMP_NAME.fullmatch(dump.name)
        if named is None:
            continue
        taken_at = datetime.strptime(named["stamp"], _STAMP_FORMAT).replace(tzinfo=UTC)
        size = dump.stat().st_size
        release, schema = _marks(dump)
        found.append(
            BackupFile(
                dump, named["label"], taken_at, size, _recorded_sha256(dump), release, schema
            )
        )
    return sorted(found, key=lambda backup: (backup.taken_at, backup.path.name), reverse=True)


def prune(backup_dir: Path, keep: int, keep_labels: Iterable[str] = ()) -> PruneResult:
    """Delete the oldest verified dumps beyond ``keep`` per label.

    Verified means a ``<name>.dump`` with its ``.sha256`` file (``create_backup`` writes it only
    after verification); other files (unverified dumps, ``.partial``) are never touched. The
    newest dump of a label is always kept, and a label in ``keep_labels`` is left alone. Before
    deleting anything of a label, the newest dump's sha256 is checked against its file: if it
    no longer matches, nothing of that label is deleted and the label is named in ``problems``.
    """
    if keep < 0:
        raise ValueError("keep must be 0 or more")
    protected = set(keep_labels)
    by_label: dict[str, list[tuple[str, Path]]] = {}
    for dump in backup_dir.glob(f"*{DUMP_SUFFIX}"):
        named = _DUMP_NAME.fullmatch(dump.name)
        if named and _recorded_sha256(dump) is not None:
            by_label.setdefault(named["label"], []).append((named["stamp"], dump))
    deleted: list[Path] = []
    kept: list[Path] = []
    problems: list[str] = []
    for label, dumps in sorted(by_label.items()):
        newest_first = [dump for _, dump in sorted(dumps, reverse=True)]
        retained = max(keep, 1)
        if label in protected or len(newest_first) <= retained:
            kept.extend(newest_first)
            continue
        newest = newest_first[0]
        if _sha256(newest) != _recorded_sha256(newest):
            problems.append(
                f"{label}: newest dump {newest.name} no longer matches its sha256; kept every"
                " dump of this label"
            )
            kept.extend(newest_first)
            continue
        kept.extend(newest_first[:retained])
        for dump in newest_first[retained:]:
            dump.unlink()
            dump.with_name(dump.name + CHECKSUM_SUFFIX).unlink(missing_ok=True)
            dump.with_name(dump.name + MARKS_SUFFIX).unlink(missing_ok=True)
            deleted.append(dump)
    return PruneResult(tuple(deleted), tuple(kept), tuple(problems))


# ------------------------------------------------------------------------- server and tools


def _tools(target: DatabaseTarget, deadline: float, root: Path) -> _Tools:
    """The server's version and tables, and the pg_dump/pg_restore to use against it."""
    server = _server_info(target, deadline)
    if target.container is None:
        pg_dump = _tool("pg_dump", server.major, root)
        dump_version, dump_num = _tool_version(pg_dump, deadline)
    else:
        pg_dump = None
        found = _in_container(target, ["pg_dump", "--version"], None, deadline, "pg_dump --version")
        dump_version, dump_num = _parse_tool_version(found.decode(errors="replace"), "pg_dump")
    if _major(dump_num) < server.major:
        where = f"container {target.container!r}" if pg_dump is None else str(pg_dump)
        raise BackupError(
            f"pg_dump {dump_version} in {where} is older than the server ({server.version}); it"
            f" cannot be trusted with the dump: install pg_dump {_major_text(server.version_num)}"
            f" (postgresql-client-{_major_text(server.version_num)}) there"
        )
    pg_restore = _tool("pg_restore", _major(dump_num), root)
    restore_version, restore_num = _tool_version(pg_restore, deadline)
    if _major(restore_num) < _major(dump_num):
        raise BackupError(
            f"pg_restore {restore_version} ({pg_restore}) cannot read archives of pg_dump"
            f" {dump_version}: install postgresql-client-{_major_text(dump_num)} on this host"
        )
    return _Tools(server, pg_dump, dump_version, pg_restore)


def _server_info(target: DatabaseTarget, deadline: float) -> ServerInfo:
    if target.container is not None:
        text = _in_container(
            target,
            ["psql", "-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             f"--dbname={_container_conninfo(target)}", "-c", _SERVER_SQL],
            None,
            deadline,
            "psql",
        ).decode(errors="replace")  # fmt: skip
    else:
        text = _query_by_dsn(target, deadline)
    try:
        data = json.loads(text)
        return ServerInfo(
            version=str(data["version"]),
            version_num=int(data["version_num"]),
            database_size=int(data["size"]),
            tables=tuple(f"{schema}.{name}" for schema, name in data["tables"]),
        )
    except (ValueError, KeyError, TypeError):
        raise BackupError(f"unexpected answer from {target.describe()}: {text[:200]!r}") from None


def _query_by_dsn(target: DatabaseTarget, deadline: float) -> str:
    seconds = _remaining(deadline, "querying the server")
    try:
        with psycopg.connect(
            target.dsn or "",
            autocommit=True,
            connect_timeout=max(1, min(_CONNECT_TIMEOUT, int(seconds))),
        ) as conn:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false)", [f"{int(seconds * 1000)}ms"]
            )
            row = conn.execute(_SERVER_SQL).fetchone()
    except psycopg.Error as exc:
        raise BackupError(
            f"cannot query {target.describe()}: {_one_line(redact(str(exc), target.secrets))};"
            " no backup was taken"
        ) from None
    return str(row[0]) if row else ""


def _tool(name: str, major: int, root: Path) -> Path:
    """``<root>/<major>/bin/<name>`` when installed, else the oldest newer major, else PATH's
    (whose version the caller checks)."""
    installed = _installed(name, root)
    for found_major, path in installed:
        if found_major >= major:
            return path
    on_path = shutil.which(name)
    if on_path is not None:
        return Path(on_path)
    if installed:
        return installed[-1][1]  # too old: the caller's version check says so
    raise BackupError(f"{name} not found in {root}/*/bin or on PATH: install postgresql-client")


def _newest_tool(name: str, root: Path) -> Path:
    installed = _installed(name, root)
    if installed:
        return installed[-1][1]
    on_path = shutil.which(name)
    if on_path is None:
        raise BackupError(f"{name} not found in {root}/*/bin or on PATH: install postgresql-client")
    return Path(on_path)


def _installed(name: str, root: Path) -> list[tuple[int, Path]]:
    """(major, path) of ``<root>/<major>/bin/<name>``, oldest first."""
    found = [
        (int(path.parent.parent.name), path)
        for path in root.glob(f"*/bin/{name}")
        if path.parent.parent.name.isdigit() and os.access(path, os.X_OK)
    ]
    return sorted(found)


def _tool_version(path: Path, deadline: float) -> tuple[str, int]:
    result = _run([str(path), "--version"], None, _remaining(deadline, path.name), path.name)
    if result.returncode != 0:
        raise BackupError(f"`{path} --version` exited with {result.returncode}")
    return _parse_tool_version(result.stdout.decode(errors="replace"), str(path))


def _parse_tool_version(text: str, what: str) -> tuple[str, int]:
    """("15.20 (Debian ...)", 150020) from ``pg_dump --version``; 9.6.24 gives 90624."""
    found = _TOOL_VERSION.search(text)
    if found is None:
        raise BackupError(f"cannot tell the version of {what} from {text.strip()[:200]!r}")
    major, minor = int(found["major"]), int(found["minor"] or 0)
    if major >= 10:
        return found["text"].strip(), major * 10000 + minor
    patch = re.match(r"\d+\.\d+\.(\d+)", found["text"])
    return found["text"].strip(), major * 10000 + minor * 100 + int(patch[1] if patch else 0)


def _major(version_num: int) -> int:
    """Comparable major version: 15 for 150020; 906 for 9.6 (90624), which sorts below 10."""
    return version_num // 10000 if version_num >= 100000 else version_num // 100


def _major_text(version_num: int) -> str:
    if version_num >= 100000:
        return str(version_num // 10000)
    return f"{version_num // 10000}.{version_num // 100 % 100}"


# ------------------------------------------------------------------------------ the dumps


def _dump_by_dsn(
    target: DatabaseTarget, pg_dump: Path, out: Path, deadline: float, lock_wait: float
) -> None:
    params = conninfo.conninfo_to_dict(target.dsn or "")
    if params.get("sslpassword"):
        raise BackupError(
            "the DSN carries sslpassword, which pg_dump could only get on its command line: use"
            " a client key without a passphrase, readable only by the sentinel"
        )
    password = str(params.pop("password", "") or "")
    params.setdefault("connect_timeout", str(_CONNECT_TIMEOUT))
    env = dict(os.environ)
    with _passfile(password) as passfile:
        if passfile is not None:
            params["passfile"] = str(passfile)
            env.pop("PGPASSWORD", None)  # libpq would prefer it to the passfile
        argv = [
            str(pg_dump), "--format=custom", "--no-password",
            f"--lock-wait-timeout={int(lock_wait * 1000)}",
            f"--file={out}", f"--dbname={conninfo.make_conninfo('', **params)}",
        ]  # fmt: skip
        result = _run(argv, env, _remaining(deadline, "pg_dump"), "pg_dump")
    if result.returncode != 0:
        stderr = redact(result.stderr.decode(errors="replace"), target.secrets)
        raise BackupError(
            f"pg_dump of {target.describe()} exited with {result.returncode}"
            f"{_lock_hint(stderr, lock_wait)}; no backup was kept",
            _tail(stderr),
        )


@contextlib.contextmanager
def _passfile(password: str) -> Iterator[Path | None]:
    """A 0600 passfile in a private temp dir, holding only ``password``; removed afterwards."""
    if not password:
        yield None
        return
    if "\n" in password or "\r" in password:
        raise BackupError("the password contains a line break and cannot go in a passfile")
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    with tempfile.TemporaryDirectory(prefix="spek-sentinel-pg-") as private:  # mode 0700
        path = Path(private) / "pgpass"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"*:*:*:*:{escaped}\n")
        yield path


def _dump_in_container(
    target: DatabaseTarget, sink: IO[bytes], deadline: float, lock_wait: float
) -> None:
    argv = [
        "pg_dump", "--format=custom", "--no-password",
        f"--lock-wait-timeout={int(lock_wait * 1000)}",
        f"--dbname={_container_conninfo(target)}",
    ]  # fmt: skip
    _in_container(target, argv, sink, deadline, "pg_dump")


def _lock_hint(stderr: str, lock_wait: float | None) -> str:
    """pg_dump's lock wait ends as a "statement timeout" on LOCK TABLE: say what that means."""
    if "statement timeout" not in stderr or "LOCK TABLE" not in stderr:
        return ""
    waited = f" {lock_wait:g}s" if lock_wait is not None else ""
    return (
        f" after waiting{waited} for a table lock that another session holds (a migration?);"
        " find it in pg_locks, let it finish or end it, then back up again"
    )


def _container_conninfo(target: DatabaseTarget) -> str:
    return conninfo.make_conninfo(
        "", dbname=target.dbname, user=target.user, connect_timeout=str(_CONNECT_TIMEOUT)
    )


def _in_container(
    target: DatabaseTarget,
    argv: list[str],
    sink: IO[bytes] | None,
    deadline: float,
    what: str,
) -> bytes:
    """Run ``argv`` in the target's container; stdout into ``sink`` (or returned).

    The engine's exec API is used directly (exec_create/exec_start/exec_inspect, what
    ``Container.exec_run`` wraps) because a streamed ``exec_run`` does not give the exit code.
    The command runs under the container's ``timeout`` (coreutils or busybox), so it ends even
    if this process stops reading; the read has its own limit a little later.
    """
    seconds = max(1, int(_remaining(deadline, what)))
    env = {"PGCONNECT_TIMEOUT": str(_CONNECT_TIMEOUT)}
    if target.password:
        env["PGPASSWORD"] = target.password
    command = ["timeout", "-s", "TERM", "-k", "5", str(seconds), *argv]
    out = bytearray()
    err = bytearray()
    try:
        client = docker.DockerClient(
            base_url=target.docker_host, version="auto", timeout=seconds + 30
        )
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise BackupError(
            f"cannot reach the docker engine at {target.docker_host}: {exc}"
        ) from None
    try:
        container = _running_container(client, target)
        exec_id = client.api.exec_create(
            container.id, command, stdout=True, stderr=True, environment=env
        )["Id"]
        # a grace period past the container's own timeout, for its kill and the last bytes
        finished = _stream_exec(client, exec_id, sink, out, err, limit=seconds + 15)
        code = _exit_code(client, exec_id) if finished else None
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise BackupError(
            f"{what} in container {target.container!r} failed:"
            f" {_one_line(redact(str(exc), target.secrets))}"
        ) from None
    finally:
        client.close()
    if not finished:
        raise BackupError(
            f"{what} in container {target.container!r} did not finish in {seconds + 15}s and"
            " stopped answering; no backup was kept"
        )
    stderr = redact(err.decode(errors="replace"), target.secrets)
    if code == 124:
        raise BackupError(
            f"{what} in container {target.container!r} did not finish in {seconds}s; no backup"
            " was kept",
            _tail(stderr),
        )
    if code in (126, 127):
        raise BackupError(
            f"{what} could not start in container {target.container!r} (exit {code}): it needs"
            f" `timeout` and `{argv[0]}` on its PATH"
        )
    if code != 0:
        detail = stderr or (out.decode(errors="replace") if sink is None else "")
        raise BackupError(
            f"{what} of {target.describe()} exited with {code}{_lock_hint(stderr, None)};"
            " no backup was kept",
            _tail(redact(detail, target.secrets)),
        )
    return bytes(out)


def _stream_exec(
    client: Any,
    exec_id: str,
    sink: IO[bytes] | None,
    out: bytearray,
    err: bytearray,
    *,
    limit: float,
) -> bool:
    """Copy the exec's stdout to ``sink`` (or ``out``) and its stderr's tail to ``err``.

    False when ``limit`` seconds passed first. docker-py reads a stream without any timeout,
    so a watchdog closes the connection (which also ends the read) when the time is up; the
    connection is closed on every way out, so the engine never waits on a reader that left.
    """
    stream = client.api.exec_start(exec_id, stream=True, demux=True)
    expired = threading.Event()

    def cancel() -> None:
        expired.set()
        with contextlib.suppress(OSError):
            stream.close()

    watchdog = threading.Timer(limit, cancel)
    watchdog.daemon = True
    watchdog.start()
    try:
        for chunk_out, chunk_err in stream:
            if chunk_out:
                if sink is None:
                    out.extend(chunk_out)
                else:
                    sink.write(chunk_out)
            if chunk_err:
                err.extend(chunk_err)
                del err[: -_STDERR_KEEP * 2]
    finally:
        watchdog.cancel()
        with contextlib.suppress(OSError):
            stream.close()
    return not expired.is_set()


def _running_container(client: Any, target: DatabaseTarget) -> Any:
    try:
        container = client.containers.get(target.container)
    except docker.errors.NotFound:
        raise BackupError(
            f"container {target.container!r} does not exist: cannot dump {target.describe()}"
        ) from None
    if container.status != "running":
        raise BackupError(
            f"container {target.container!r} is {container.status}, not running: cannot dump"
            f" {target.describe()}"
        )
    return container


def _exit_code(client: Any, exec_id: str) -> int | None:
    """The exec's exit code; the engine may mark it finished a moment after the stream ends."""
    pause = threading.Event()
    for _ in range(100):
        info = client.api.exec_inspect(exec_id)
        if not info.get("Running"):
            code = info.get("ExitCode")
            return int(code) if code is not None else None
        pause.wait(0.05)
    return None


# ------------------------------------------------------------------------ archive listing


@dataclass(frozen=True, slots=True)
class _Toc:
    entries: int
    tables: frozenset[str]
    data: frozenset[str]  # tables with a TABLE DATA entry
    format: str
    dumped_from: str
    dumped_by: str


def _parse_toc(listing: str) -> _Toc:
    """Read ``pg_restore --list``: header comments, then ``id; catalog oid TYPE schema name
    owner`` lines. Names are not quoted there, so a table name may hold spaces but the schema
    and the owner are taken to be single words."""
    header: dict[str, str] = {}
    entries = 0
    tables: set[str] = set()
    data: set[str] = set()
    for line in listing.splitlines():
        if line.startswith(";"):
            key, _, value = line.lstrip("; ").partition(":")
            header.setdefault(key.strip(), value.strip())
            continue
        entry = _TOC_ENTRY.fullmatch(line.strip())
        if entry is None:
            continue
        entries += 1
        rest = entry["rest"]
        for kind, found in (("TABLE DATA ", data), ("TABLE ", tables)):
            if rest.startswith(kind):
                words = rest[len(kind) :].split(" ")
                if len(words) >= 3:
                    found.add(f"{words[0]}.{' '.join(words[1:-1])}")
                break
    return _Toc(
        entries=entries,
        tables=frozenset(tables),
        data=frozenset(data),
        format=header.get("Format", ""),
        dumped_from=header.get("Dumped from database version", ""),
        dumped_by=header.get("Dumped by pg_dump version", ""),
    )


# ---------------------------------------------------------------------------------- helpers


def _run(
    argv: list[str], env: Mapping[str, str] | None, timeout: float, what: str
) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BackupError(f"{what} did not finish in {timeout:.0f}s and was stopped") from None
    except OSError as exc:
        raise BackupError(f"cannot run {argv[0]}: {_oserror(exc)}") from None


def _remaining(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise BackupError(f"the backup's time ran out before {what}")
    return left


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1024 * 1024), b""):
                digest.update(block)
    except OSError as exc:
        raise BackupError(f"cannot read backup {path}: {_oserror(exc)}") from None
    return digest.hexdigest()


def _recorded_sha256(dump: Path) -> str | None:
    """The sha256 in ``<dump>.sha256`` when that file names this dump, else None."""
    try:
        text = dump.with_name(dump.name + CHECKSUM_SUFFIX).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    found = _CHECKSUM_LINE.fullmatch(text)
    return found["sha"] if found and found["name"] == dump.name else None


def _write_atomically(path: Path, content: bytes) -> None:
    temporary = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _STDERR_KEEP else "..." + text[-_STDERR_KEEP:]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _oserror(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
