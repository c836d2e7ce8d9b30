"""Runbook phase 2, option C: restore a backup into a fresh database and swap names, against
a real PostgreSQL server with real pg_dump / pg_restore archives."""

import json
import os
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from harness.postgres import PostgresServer
from spek_sentinel.domain.errors import RollbackError
from spek_sentinel.rollback.restore import Rename, RestoreError, restore_and_swap

PASSWORD = "Zq9:s3cr3t\\pw"  # noqa: S105 -- made up; ':' and '\' must be escaped in a pgpass file
TABLES = ("public.projects", "public.tasks", 'audit."change log"')

SCHEMA = """
CREATE TABLE projects (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE tasks (
    id int PRIMARY KEY, project_id int NOT NULL REFERENCES projects (id), title text NOT NULL
);
CREATE SCHEMA audit;
CREATE TABLE audit."change log" (id serial PRIMARY KEY, note text);
INSERT INTO projects SELECT g, 'project ' || g FROM generate_series(1, 50) g;
INSERT INTO tasks SELECT g, 1 + g % 50, 'task ' || g FROM generate_series(1, 300) g;
INSERT INTO audit."change log" (note) SELECT 'change ' || g FROM generate_series(1, 20) g;
"""

CORRUPTION = """
DELETE FROM tasks WHERE id % 3 = 0;
UPDATE projects SET name = 'corrupted' WHERE id <= 10;
DELETE FROM audit."change log";
"""


@dataclass(frozen=True)
class Live:
    """The production database of a test: its name, DSN, owning role, and the admin DSN."""

    name: str
    dsn: str
    owner: str
    admin_dsn: str


@pytest.fixture
def live(postgres_server: PostgresServer) -> Iterator[Live]:
    """A database owned by an application role, with tables, rows, database-level settings and
    privileges; every database whose name starts with its name is dropped afterwards (the
    restored and damaged copies), then the role."""
    postgres_server.ensure_running()
    suffix = uuid.uuid4().hex[:10]
    name, owner = f"spek_{suffix}", f"spek_app_{suffix}"
    admin_dsn = postgres_server.dsn("postgres")
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(owner)))
    dsn = postgres_server.create_database(name)
    try:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            db, role = sql.Identifier(name), sql.Identifier(owner)
            for statement in (
                "ALTER DATABASE {db} OWNER TO {role}",
                "ALTER DATABASE {db} SET work_mem = '8MB'",
                "ALTER DATABASE {db} SET search_path = audit, public",
                "REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC",
                "GRANT CONNECT ON DATABASE {db} TO {role}",
            ):
                admin.execute(sql.SQL(statement).format(db=db, role=role))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
            conn.execute(SCHEMA)
        yield Live(name, dsn, owner, admin_dsn)
    finally:
        postgres_server.ensure_running()
        for leftover in databases_like(admin_dsn, name):
            postgres_server.drop_database(leftover)
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(owner)))


def databases_like(admin_dsn: str, prefix: str) -> list[str]:
    with psycopg.connect(admin_dsn) as admin:
        rows = admin.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1", (prefix,)
        ).fetchall()
    return [row[0] for row in rows]


def snapshot(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, in key order: what "equals the backup" is checked against."""
    with psycopg.connect(dsn) as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()  # noqa: S608
            for table in TABLES
        }


def pg_dump(server: PostgresServer, dsn: str, path: Path, fmt: str = "c") -> Path:
    subprocess.run(
        [str(server.bin_dir / "pg_dump"), f"-F{fmt}", "-f", str(path), dsn],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


def execute(dsn: str, statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statements)


def dsn_of(server: PostgresServer, name: str) -> str:
    return server.dsn(name)


def test_restore_and_swap_puts_the_backup_in_place_and_keeps_the_damaged_database(
    postgres_server: PostgresServer, live: Live, tmp_path: Path
) -> None:
    good = snapshot(live.dsn)
    backup = pg_dump(postgres_server, live.dsn, tmp_path / "pre-deployment.dump")
    execute(live.dsn, CORRUPTION)
    corrupted = snapshot(live.dsn)
    assert corrupted != good

    record = restore_and_swap(live.admin_dsn, live.name, backup, timeout=60)

    assert snapshot(live.dsn) == good, "row by row, the live database is the backup again"
    assert record.damaged is not None and record.damaged.startswith(f"{live.name}_damaged_")
    assert record.restored_as.startswith(f"{live.name}_restore_")
    assert record.renames == (
        Rename(live.name, record.damaged),
        Rename(record.restored_as, live.name),
    )
    assert snapshot(dsn_of(postgres_server, record.damaged)) == corrupted, "evidence kept"
    assert databases_like(live.admin_dsn, live.name) == sorted([live.name, record.damaged])

    counts = {t.table: (t.before, t.after) for t in record.tables}
    assert counts == {
        "audit.change log": (0, 20),
        "public.projects": (50, 50),
        "public.tasks": (200, 300),
    }
    assert {"preflight", "create", "restore", "verify", "swap", "total"} <= set(record.durations)
    assert record.server_major == int(postgres_server.bin_dir.parent.name)
    assert record.terminated == () and record.notes == ()
    assert live.name in record.describe()


def test_the_restored_database_keeps_owner_settings_and_privileges(
    postgres_server: PostgresServer, live: Live, tmp_path: Path
) -> None:
    backup = pg_dump(postgres_server, live.dsn, tmp_path / "last-known-good.dump")
    record = restore_and_swap(live.admin_dsn, live.name, backup, timeout=60)
    assert record.damaged is not None

    def describe(dbname: str) -> tuple[object, ...]:
        with psycopg.connect(dsn_of(postgres_server, dbname)) as conn:
            owner = conn.execute(
                "SELECT pg_get_userbyid(datdba), datallowconn FROM pg_database"
                " WHERE datname = current_database()"
            ).fetchone()
            settings = conn.execute(
                "SELECT setconfig FROM pg_db_role_setting"
                " WHERE setrole = 0 AND setdatabase = (SELECT oid FROM pg_database"
                " WHERE datname = current_database())"
            ).fetchone()
            grants = conn.execute(
                "SELECT coalesce(pg_get_userbyid(nullif(a.grantee, 0)), 'PUBLIC'),"
                " a.privilege_type FROM pg_database d, aclexplode(d.datacl) a"
                " WHERE d.datname = current_database() ORDER BY 1, 2"
            ).fetchall()
            owners = conn.execute(
                "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname IN ('public', 'audit')"
            ).fetchall()
        return owner, sorted(settings[0]) if settings else None, grants, owners

    restored, damaged = describe(live.name), describe(record.damaged)
    assert restored == damaged, "the damaged one accepts connections again, too"
    assert restored[0] == (live.owner, True)
    assert restored[1] == ["search_path=audit, public", "work_mem=8MB"]
    assert ("PUBLIC", "CONNECT") not in restored[2] and (live.owner, "CONNECT") in restored[2]
    assert restored[3] == [(live.owner,)], "tables owned by the application's role, not the admin"


def test_an_open_session_on_the_damaged_database_is_terminated_and_reported(
    postgres_server: PostgresServer, live: Live, tmp_path: Path
) -> None:
    backup = pg_dump(postgres_server, live.dsn, tmp_path / "backup.dump")
    with psycopg.connect(live.dsn, application_name="still-running-app") as app:
        app.execute("SELECT count(*) FROM projects")  # idle in transaction, holding a lock
        pid = app.info.backend_pid

        record = restore_and_swap(live.admin_dsn, live.name, backup, timeout=60, swap_timeout=20)

        assert [(s.pid, s.application) for s in record.terminated] == [(pid, "still-running-app")]
        assert record.terminated[0].state == "idle in transaction"
        with pytest.raises(psycopg.OperationalError):
            app.execute("SELECT 1")
    assert record.damaged in databases_like(live.admin_dsn, live.name)


@pytest.mark.parametrize("kind", ["garbage", "plain-sql", "truncated"])
def test_a_corrupt_backup_leaves_the_live_database_untouched_and_nothing_behind(
    postgres_server: PostgresServer, live: Live, tmp_path: Path, kind: str
) -> None:
    backup = tmp_path / "backup.dump"
    if kind == "garbage":
        backup.write_bytes(b"this is not a pg_dump archive\n" * 100)
    elif kind == "plain-sql":
        pg_dump(postgres_server, live.dsn, backup, fmt="p")
    else:  # the table of contents reads fine; the data ends early
        whole = pg_dump(postgres_server, live.dsn, tmp_path / "whole.dump").read_bytes()
        backup.write_bytes(whole[:-64])
    execute(live.dsn, CORRUPTION)
    before = snapshot(live.dsn)

    with pytest.raises(RestoreError) as caught:
        restore_and_swap(live.admin_dsn, live.name, backup, timeout=60)

    error = caught.value
    assert isinstance(error, RollbackError) and not error.destructive and error.kept == ()
    if kind == "truncated":
        assert error.stage == "restore" and "end of file" in error.reason, error.reason
        assert "_restore_" in error.reason and "was dropped" in error.reason
    else:
        assert error.stage == "pre-flight" and "nothing was created" in error.reason
    if kind == "plain-sql":
        assert "plain SQL dump" in error.reason
    assert databases_like(live.admin_dsn, live.name) == [live.name], "no _restore_ left over"
    assert snapshot(live.dsn) == before


class DeadlinePassedError(Exception):
    """What the executor's deadline check raises."""


def test_a_deadline_check_that_fires_mid_restore_cleans_up_like_a_failure(
    postgres_server: PostgresServer, live: Live, tmp_path: Path
) -> None:
    backup = pg_dump(postgres_server, live.dsn, tmp_path / "backup.dump")
    execute(live.dsn, CORRUPTION)
    before = snapshot(live.dsn)
    calls = 0

    def check() -> None:  # fires once the backup has been restored, before the swap
        nonlocal calls
        calls += 1
        if calls == 3:
            raise DeadlinePassedError

    with pytest.raises(DeadlinePassedError):
        restore_and_swap(live.admin_dsn, live.name, backup, timeout=60, check=check)
    assert databases_like(live.admin_dsn, live.name) == [live.name]
    assert snapshot(live.dsn) == before


def test_restoring_a_database_that_is_gone_just_names_the_restore(
    postgres_server: PostgresServer, live: Live, tmp_path: Path
) -> None:
    backup = pg_dump(postgres_server, live.dsn, tmp_path / "backup.dump")
    good = snapshot(live.dsn)
    postgres_server.drop_database(live.name)
    record = restore_and_swap(live.admin_dsn, live.name, backup, timeout=60)
    assert record.damaged is None and record.renames == (Rename(record.restored_as, live.name),)
    assert snapshot(live.dsn) == good
    assert all(t.before is None for t in record.tables)


def test_refusals_before_anything_is_created(
    postgres_server: PostgresServer, live: Live, tmp_path: Path
) -> None:
    backup = pg_dump(postgres_server, live.dsn, tmp_path / "backup.dump")
    for call, message in (
        (lambda: restore_and_swap(live.dsn, live.name, backup, 60), "connects to"),
        (lambda: restore_and_swap(live.admin_dsn, "template1", backup, 60), "will not replace"),
        (lambda: restore_and_swap(live.admin_dsn, live.name, tmp_path / "no.dump", 60), "read"),
        (
            lambda: restore_and_swap(live.admin_dsn, live.name, backup, 60, bin_root=tmp_path),
            "install postgresql-client-",
        ),
    ):
        with pytest.raises(RestoreError, match=message) as caught:
            call()
        assert caught.value.stage == "pre-flight" and not caught.value.destructive
    assert databases_like(live.admin_dsn, live.name) == [live.name]


# --- fault injection through a pg_restore wrapper in a bin root of its own ---

WRAPPER = """#!{python}
import json, os, stat, subprocess, sys, threading, time
from pathlib import Path

args = sys.argv[1:]
passfile = os.environ.get("PGPASSFILE")
entry = {{
    "argv": args,
    "env": sorted(os.environ),
    "passfile": Path(passfile).read_text() if passfile else None,
    "passfile_path": passfile,
    "passfile_mode": stat.S_IMODE(os.stat(passfile).st_mode) if passfile else None,
}}
with open({log!r}, "a") as log:
    log.write(json.dumps(entry) + "\\n")
code = subprocess.call([{real!r}, *args])
if code or "--list" in args or not {hold!r}:
    sys.exit(code)
# Someone opens a session on the freshly restored database and stays: renaming it will fail.
marker = Path({marker!r})
dsn = args[args.index("-d") + 1]
hold = (
    "import os, sys, psycopg; from pathlib import Path; c = psycopg.connect(sys.argv[1]);"
    " Path(sys.argv[2]).write_text(str(os.getpid())); c.execute('SELECT pg_sleep(120)')"
)
subprocess.Popen(
    [sys.executable, "-c", hold, dsn, str(marker)], start_new_session=True,
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
deadline, pause = time.monotonic() + 20, threading.Event()
while not marker.exists() and time.monotonic() < deadline:
    pause.wait(0.02)
"""


@dataclass(frozen=True)
class Wrapper:
    bin_root: Path
    log: Path
    marker: Path

    def calls(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def wrapper(server: PostgresServer, tmp_path: Path, *, hold: bool) -> Wrapper:
    major = server.bin_dir.parent.name
    bin_dir = tmp_path / "pgbin" / major / "bin"
    bin_dir.mkdir(parents=True)
    log, marker = tmp_path / "calls.jsonl", tmp_path / "holder.pid"
    script = bin_dir / "pg_restore"
    script.write_text(
        WRAPPER.format(
            python=sys.executable,
            real=str(server.bin_dir / "pg_restore"),
            log=str(log),
            hold=hold,
            marker=str(marker),
        )
    )
    script.chmod(0o755)
    return Wrapper(tmp_path / "pgbin", log, marker)


def test_the_password_reaches_pg_restore_through_a_private_passfile_only(
    postgres_server: PostgresServer, live: Live, tmp_path: Path
) -> None:
    fake = wrapper(postgres_server, tmp_path, hold=False)
    backup = pg_dump(postgres_server, live.dsn, tmp_path / "backup.dump")
    # The test cluster trusts local connections, so the password is carried but not checked.
    admin_dsn = live.admin_dsn.replace("postgres@", "postgres:Zq9%3As3cr3t%5Cpw@")

    record = restore_and_swap(admin_dsn, live.name, backup, timeout=60, bin_root=fake.bin_root)

    calls = fake.calls()
    assert [("--list" in c["argv"]) for c in calls] == [True, False]
    for call in calls:
        assert not any(PASSWORD in arg for arg in call["argv"])
        assert call["passfile"] == "*:*:*:*:Zq9\\:s3cr3t\\\\pw\n"
        assert call["passfile_mode"] == stat.S_IRUSR | stat.S_IWUSR
        assert "PGPASSWORD" not in call["env"]
        assert not Path(str(call["passfile_path"])).exists(), "removed afterwards"
    assert PASSWORD not in repr(record)

    truncated = tmp_path / "truncated.dump"
    truncated.write_bytes(backup.read_bytes()[:-64])
    later = datetime.now(UTC) + timedelta(hours=1)  # the first restore's names are taken
    with pytest.raises(RestoreError) as caught:
        restore_and_swap(
            admin_dsn, live.name, truncated, 60, bin_root=fake.bin_root, now=lambda: later
        )
    assert caught.value.stage == "restore", caught.value.reason
    assert PASSWORD not in str(caught.value) and "Zq9%3A" not in str(caught.value)


def test_when_the_second_rename_fails_the_damaged_database_is_renamed_back(
    postgres_server: PostgresServer, live: Live, tmp_path: Path
) -> None:
    fake = wrapper(postgres_server, tmp_path, hold=True)
    good = snapshot(live.dsn)
    backup = pg_dump(postgres_server, live.dsn, tmp_path / "backup.dump")
    execute(live.dsn, CORRUPTION)
    corrupted = snapshot(live.dsn)
    try:
        with pytest.raises(RestoreError) as caught:
            restore_and_swap(live.admin_dsn, live.name, backup, timeout=60, bin_root=fake.bin_root)
    finally:
        if fake.marker.exists():
            with suppress(ProcessLookupError, ValueError):
                os.kill(int(fake.marker.read_text()), signal.SIGTERM)

    error = caught.value
    assert error.stage == "swap" and not error.destructive
    restore_name = next(n for n in databases_like(live.admin_dsn, live.name) if "_restore_" in n)
    assert error.kept == (restore_name,)
    assert "renamed back" in error.reason and "being accessed by other users" in error.reason
    assert databases_like(live.admin_dsn, live.name) == sorted([live.name, restore_name])
    assert snapshot(live.dsn) == corrupted, "the live database is in place, as it was"
    assert snapshot(dsn_of(postgres_server, restore_name)) == good, "the verified copy is kept"


def test_sessions_the_admin_may_not_end_abort_the_swap_and_leave_everything_as_it_was(
    postgres_server: PostgresServer, live: Live, tmp_path: Path
) -> None:
    """An admin role that may create databases and act as the owner, but not end a superuser's
    session: the swap cannot move the live database aside, so it stays, open again."""
    backup = pg_dump(postgres_server, live.dsn, tmp_path / "backup.dump")
    admin_role = f"{live.owner}_admin"
    role, owner = sql.Identifier(admin_role), sql.Identifier(live.owner)
    with psycopg.connect(live.admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(role))
        admin.execute(sql.SQL("GRANT {} TO {}").format(owner, role))
    try:
        admin_dsn = live.admin_dsn.replace("postgres@", f"{admin_role}@")
        with psycopg.connect(live.dsn) as superuser_session:
            superuser_session.execute("SELECT 1")
            with pytest.raises(RestoreError) as caught:
                restore_and_swap(admin_dsn, live.name, backup, timeout=60)
            superuser_session.execute("SELECT 1")  # still connected
        error = caught.value
        assert error.stage == "swap" and not error.destructive and error.kept == (), error.reason
        assert "pg_signal_backend" in error.reason and "was dropped" in error.reason
        assert databases_like(live.admin_dsn, live.name) == [live.name]
        with psycopg.connect(live.dsn) as conn:  # accepting connections again
            assert conn.execute("SELECT count(*) FROM projects").fetchone() == (50,)
    finally:
        with psycopg.connect(live.admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
