"""Runbook phase 2, option C, with the database reachable only inside its container (``docker
exec spek-postgres ...``): a real Docker engine and PostgreSQL 15 in a container whose every
login needs a password; backups taken the way the sentinel takes them (pg_dump streamed out of
the container), restored by streaming them back into the container's pg_restore."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest

from harness import HarnessError
from harness.docker_engine import Containers
from harness.postgres_image import ensure_postgres_image
from harness.wait import wait_until
from spek_sentinel.domain.errors import RollbackError
from spek_sentinel.rollback.backup import DatabaseTarget, create_backup
from spek_sentinel.rollback.restore import Rename, RestoreError, restore_in_container

# ':' and '\' are special in a passfile, the quote and space in a conninfo, '$' in a shell
PASSWORD = "Zq9:s3'cr\\et pw@/$x-" + uuid.uuid4().hex[:8]
USER = "spek_user"
TABLES = ("public.projects", "public.tasks", 'audit."change log"')
ROWS = "coalesce(json_agg(t ORDER BY t.id), '[]')"

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


# ------------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def pg_container(docker_engine: docker.DockerClient) -> Iterator[str]:
    """A PostgreSQL 15 container reachable only through ``docker exec`` (nothing published),
    whose every login, the local socket's too, needs ``PASSWORD``; ``USER`` is its superuser."""
    try:
        image = ensure_postgres_image(docker_engine)
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)
    factory = Containers(docker_engine, image, "restore")
    try:
        container = factory.run(
            [], environment={"POSTGRES_USER": USER, "POSTGRES_PASSWORD": PASSWORD}
        )
        wait_until(
            lambda: container.exec_run(["pg_isready", "-q"]).exit_code == 0,
            timeout=60,
            message="PostgreSQL in the test container did not become ready",
        )
        yield str(container.name)
    finally:
        factory.close()


def psql(container: str, dbname: str, command: str, *, client: docker.DockerClient) -> str:
    found = client.containers.get(container).exec_run(
        ["psql", "-X", "-qtA", "-v", "ON_ERROR_STOP=1", "-U", USER, "-d", dbname, "-c", command],
        environment={"PGPASSWORD": PASSWORD},
    )
    assert found.exit_code == 0, found.output
    return str(found.output.decode()).strip()


@dataclass
class Db:
    """The production database of a test, inside the container, owned by an application role
    and with database-level settings and privileges, as restore must carry them over."""

    client: docker.DockerClient
    container: str
    name: str
    owner: str

    def sql(self, command: str, dbname: str | None = None) -> str:
        return psql(self.container, dbname or self.name, command, client=self.client)

    def target(self, password: str | None = PASSWORD) -> DatabaseTarget:
        return DatabaseTarget(
            container=self.container, dbname=self.name, user=USER, password=password
        )

    def snapshot(self, dbname: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Every row of every table, in key order: what "equals the backup" is checked
        against."""
        return {
            table: json.loads(self.sql(f"SELECT {ROWS} FROM {table} t", dbname))  # noqa: S608
            for table in TABLES
        }

    def like(self) -> list[str]:
        """The databases whose names start with this one's: it, the restored, the damaged."""
        query = "SELECT datname FROM pg_database WHERE starts_with(datname, '{}') ORDER BY 1"
        return self.sql(query.format(self.name), "postgres").splitlines()

    def backup(self, backup_dir: Path) -> Path:
        """A verified last-known-good backup, taken as the sentinel takes it."""
        return create_backup(self.target(), backup_dir, "last_known_good", 60).path

    def make_slow(self, rows: int, delay: float) -> None:
        """A table whose every row, when pg_restore loads it, takes ``delay`` seconds (its check
        constraint sleeps), so that a restore of a backup taken now is slow enough to watch."""
        self.sql(
            "CREATE FUNCTION slow_ok(int) RETURNS boolean LANGUAGE sql AS 'SELECT true';"
            " CREATE TABLE slow (id int PRIMARY KEY CHECK (slow_ok(id)));"
            f" INSERT INTO slow SELECT generate_series(1, {rows});"
            " CREATE OR REPLACE FUNCTION slow_ok(int) RETURNS boolean LANGUAGE sql"
            f" AS 'SELECT pg_sleep({delay}) IS NOT NULL'"
        )


@pytest.fixture
def db(pg_container: str, docker_engine: docker.DockerClient) -> Iterator[Db]:
    suffix = uuid.uuid4().hex[:10]
    live = Db(docker_engine, pg_container, f"spek_{suffix}", f"spek_app_{suffix}")
    for statement in (
        f"CREATE ROLE {live.owner} NOLOGIN",
        f"CREATE DATABASE {live.name} OWNER {live.owner}",
        f"ALTER DATABASE {live.name} SET work_mem = '8MB'",
        f"ALTER DATABASE {live.name} SET search_path = audit, public",
        f"REVOKE CONNECT, TEMPORARY ON DATABASE {live.name} FROM PUBLIC",
        f"GRANT CONNECT ON DATABASE {live.name} TO {live.owner}",
    ):
        live.sql(statement, "postgres")
    live.sql(f"SET ROLE {live.owner}; {SCHEMA}")
    try:
        yield live
    finally:
        for name in live.like():
            live.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', "postgres")
        live.sql(f"DROP ROLE IF EXISTS {live.owner}", "postgres")


class ProcessWatch:
    """Samples every process on this host (the container's are among them) while a restore
    runs: each command line seen, and the environment of the container's pg_restore."""

    def __init__(self, dbname: str) -> None:
        self.dbname = dbname
        self.cmdlines: set[tuple[str, ...]] = set()
        self.pg_restore_env: dict[str, str] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            for process in psutil.process_iter(["cmdline"]):
                cmdline = tuple(process.info["cmdline"] or ())
                self.cmdlines.add(cmdline)
                loading = any(f"dbname={self.dbname}_restore_" in arg for arg in cmdline)
                if cmdline[:1] == ("pg_restore",) and loading and self.pg_restore_env is None:
                    try:
                        self.pg_restore_env = process.environ()
                    except psutil.Error:
                        continue

    def running(self, program: str) -> list[tuple[str, ...]]:
        """Command lines that run ``program`` (by itself, or under ``timeout``)."""
        return [c for c in self.cmdlines if program in c]


# ----------------------------------------------------------------------------- the restores


def test_restore_in_the_container_puts_the_backup_in_place_row_by_row_and_keeps_the_damage(
    db: Db, tmp_path: Path
) -> None:
    good = db.snapshot()
    backup = db.backup(tmp_path / "backups")
    db.sql(CORRUPTION)
    corrupted = db.snapshot()
    assert corrupted != good

    record = restore_in_container(db.target(), backup, timeout=60)

    assert db.snapshot() == good, "row by row, the live database is the backup again"
    assert record.damaged is not None and record.damaged.startswith(f"{db.name}_damaged_")
    assert record.restored_as.startswith(f"{db.name}_restore_")
    assert record.renames == (
        Rename(db.name, record.damaged),
        Rename(record.restored_as, db.name),
    )
    assert db.snapshot(record.damaged) == corrupted, "the evidence is kept, not dropped"
    assert db.like() == sorted([db.name, record.damaged])
    counts = {t.table: (t.before, t.after) for t in record.tables}
    assert counts == {
        "audit.change log": (0, 20),
        "public.projects": (50, 50),
        "public.tasks": (200, 300),
    }
    assert record.server_major == 15 and record.terminated == () and record.notes == ()
    assert record.pg_restore.startswith(f"pg_restore in container {db.container} (")
    assert {"preflight", "create", "restore", "verify", "swap", "total"} <= set(record.durations)

    def describe(dbname: str) -> list[str]:
        return [
            db.sql(
                "SELECT pg_get_userbyid(datdba) || ' ' || datallowconn FROM pg_database"
                " WHERE datname = current_database()",
                dbname,
            ),
            db.sql(
                "SELECT array_to_string(setconfig, ';') FROM pg_db_role_setting"
                " WHERE setrole = 0 AND setdatabase ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())",
                dbname,
            ),
            db.sql(
                "SELECT string_agg(coalesce(pg_get_userbyid(nullif(a.grantee, 0)), 'PUBLIC')"
                " || ':' || a.privilege_type, ',' ORDER BY 1) FROM pg_database d,"
                " aclexplode(d.datacl) a WHERE d.datname = current_database()",
                dbname,
            ),
            db.sql("SELECT string_agg(DISTINCT tableowner, ',') FROM pg_tables"
                   " WHERE schemaname IN ('public', 'audit')", dbname),
        ]  # fmt: skip

    restored, damaged = describe(db.name), describe(record.damaged)
    assert restored == damaged, "created like the live one; the damaged one is open again"
    assert restored[0] == f"{db.owner} true"
    assert restored[1] == "work_mem=8MB;search_path=audit, public"
    assert f"{db.owner}:CONNECT" in restored[2] and "PUBLIC:CONNECT" not in restored[2]
    assert restored[3] == db.owner, "tables owned by the application's role, not the admin"


def test_sessions_on_the_live_database_are_terminated_before_the_swap(
    db: Db, tmp_path: Path
) -> None:
    backup = db.backup(tmp_path / "backups")
    container = db.client.containers.get(db.container)
    container.exec_run(
        ["psql", "-X", "-U", USER, "-d", db.name, "-c", "SELECT pg_sleep(120)"],
        environment={"PGPASSWORD": PASSWORD, "PGAPPNAME": "still-running-app"},
        detach=True,
    )
    waiting = "SELECT pid FROM pg_stat_activity WHERE application_name = 'still-running-app'"
    pid = int(wait_until(lambda: db.sql(waiting, "postgres"), timeout=20))

    record = restore_in_container(db.target(), backup, timeout=60, swap_timeout=20)

    assert [(s.pid, s.application) for s in record.terminated] == [(pid, "still-running-app")]
    assert record.terminated[0].state == "active"
    assert db.sql(waiting, "postgres") == "", "ended"
    assert record.damaged in db.like()


@pytest.mark.parametrize("kind", ["truncated", "garbage", "plain-sql"])
def test_a_broken_backup_leaves_the_live_database_untouched_and_nothing_behind(
    db: Db, tmp_path: Path, kind: str
) -> None:
    backup = tmp_path / "broken.dump"
    if kind == "truncated":  # the table of contents reads fine; the data ends early
        whole = db.backup(tmp_path / "backups").read_bytes()
        backup.write_bytes(whole[:-64])
    elif kind == "garbage":
        backup.write_bytes(b"this is not a pg_dump archive\n" * 100)
    else:
        container = db.client.containers.get(db.container)
        dumped = container.exec_run(
            ["pg_dump", "-Fp", "-U", USER, "-d", db.name],
            environment={"PGPASSWORD": PASSWORD},
            demux=True,
        )
        assert dumped.exit_code == 0
        backup.write_bytes(dumped.output[0])
    db.sql(CORRUPTION)
    before = db.snapshot()

    with pytest.raises(RestoreError) as caught:
        restore_in_container(db.target(), backup, timeout=60)

    error = caught.value
    assert isinstance(error, RollbackError) and not error.destructive and error.kept == ()
    if kind == "truncated":
        assert error.stage == "restore", error.reason
        assert "end of file" in error.reason, error.reason
        assert f"{db.name}_restore_" in error.reason and "was dropped" in error.reason
        assert f"docker exec -i {db.container} pg_restore" in error.reason
    else:
        assert error.stage == "pre-flight" and "nothing was created" in error.reason
    if kind == "plain-sql":
        assert "plain SQL dump" in error.reason
    assert PASSWORD not in str(error)
    assert db.like() == [db.name], "no _restore_ database left over"
    assert db.snapshot() == before, "the live database, row by row, as it was"


def test_the_password_is_on_no_command_line_in_no_message_and_in_no_log(
    db: Db, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db.make_slow(rows=30, delay=0.05)  # pg_restore takes 1.5 s: long enough to be watched
    backup = db.backup(tmp_path / "backups")
    caplog.set_level(logging.DEBUG)

    with ProcessWatch(db.name) as watch:
        record = restore_in_container(db.target(), backup, timeout=60)

    assert record.damaged is not None
    psql_sessions = [c for c in watch.running("psql") if any(USER in a for a in c)]
    assert psql_sessions, "the psql sessions in the container were seen"
    assert watch.pg_restore_env is not None, "pg_restore in the container was seen"
    assert watch.pg_restore_env.get("PGPASSWORD") == PASSWORD, "it got it from its environment"
    assert not [c for c in watch.cmdlines if any(PASSWORD in arg for arg in c)]
    assert PASSWORD not in repr(record) and PASSWORD not in repr(db.target())
    assert PASSWORD not in caplog.text

    # a failure's message does not carry it either, nor a wrong password's
    truncated = tmp_path / "truncated.dump"
    truncated.write_bytes(backup.read_bytes()[:-64])
    later = datetime.now(UTC) + timedelta(hours=1)
    with pytest.raises(RestoreError) as failed:
        restore_in_container(db.target(), truncated, 60, now=lambda: later)
    assert failed.value.stage == "restore"
    wrong = "wr0ng:'pw\\" + uuid.uuid4().hex[:6]
    with pytest.raises(RestoreError) as refused:
        restore_in_container(db.target(password=wrong), backup, 60)
    assert refused.value.stage == "pre-flight"
    assert "password authentication failed" in refused.value.reason
    for text in (str(failed.value), str(refused.value), caplog.text):
        assert PASSWORD not in text and wrong not in text


def test_pg_restore_past_its_time_is_stopped_inside_the_container(db: Db, tmp_path: Path) -> None:
    db.make_slow(rows=200, delay=0.05)  # 10 s to restore
    backup = db.backup(tmp_path / "backups")
    db.sql(CORRUPTION)
    before = db.snapshot()

    with pytest.raises(RestoreError) as caught:
        restore_in_container(db.target(), backup, timeout=2)

    error = caught.value
    assert error.stage == "restore" and not error.destructive, error.reason
    assert "statement timeout" in error.reason or "did not finish in 2s" in error.reason
    assert db.like() == [db.name] and db.snapshot() == before
    restoring = "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE '{}_restore_%'"
    assert db.sql(restoring.format(db.name), "postgres") == "0", (
        "nothing of it goes on in the container"
    )


def test_a_second_restore_of_the_same_database_is_refused_while_one_runs(
    db: Db, tmp_path: Path
) -> None:
    db.make_slow(rows=60, delay=0.05)  # 3 s to restore
    backup = db.backup(tmp_path / "backups")
    restoring = "SELECT count(*) FROM pg_database WHERE datname LIKE '{}_restore_%'"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(restore_in_container, db.target(), backup, 60)
        wait_until(lambda: db.sql(restoring.format(db.name), "postgres") == "1", timeout=20)
        later = datetime.now(UTC) + timedelta(hours=1)
        with pytest.raises(RestoreError, match=r"another restore of \S+ is running") as caught:
            restore_in_container(db.target(), backup, 60, now=lambda: later)
        assert caught.value.stage == "pre-flight"
        record = first.result(timeout=60)
    assert db.like() == sorted([db.name, record.damaged or ""])


def test_refusals_before_anything_is_created(
    db: Db, tmp_path: Path, docker_engine: docker.DockerClient
) -> None:
    backup = db.backup(tmp_path / "backups")
    directory = tmp_path / "dir.dump"
    directory.mkdir()
    (directory / "toc.dat").write_bytes(b"PGDMP")
    missing = DatabaseTarget(
        container=f"spek-test-missing-{uuid.uuid4().hex[:8]}", dbname=db.name, user=USER
    )
    for call, message in (
        (lambda: restore_in_container(missing, backup, 60), "does not exist"),
        (
            lambda: restore_in_container(db.target(), backup, 60, admin_dbname=db.name),
            "connects to",
        ),
        (lambda: restore_in_container(db.target(password=None), backup, 60), "no password"),
        (lambda: restore_in_container(db.target(), directory, 60), "directory"),
        (lambda: restore_in_container(db.target(), tmp_path / "no.dump", 60), "cannot be read"),
    ):
        with pytest.raises(RestoreError, match=message) as caught:
            call()
        assert caught.value.stage == "pre-flight" and not caught.value.destructive
    assert db.like() == [db.name]
