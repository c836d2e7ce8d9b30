"""Emergency backups against real PostgreSQL servers, on this host and inside a container.

Every failure must end in a BackupError saying "DO NOT PROCEED" with no file left that looks
like a backup; a backup that passes is restorable with the same rows.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import docker
import psutil
import psycopg
import pytest
from psycopg import sql

from harness import HarnessError
from harness.docker_engine import Containers
from harness.postgres import PostgresServer
from harness.postgres_image import ensure_postgres_image
from harness.wait import wait_until
from spek_sentinel.rollback.backup import (
    BackupError,
    DatabaseTarget,
    check_backup_dir,
    create_backup,
    estimate_dump_size,
    preflight,
    prune,
    verify_backup,
)

PG_BIN = Path("/usr/lib/postgresql/15/bin")
# ':' and '\' need escaping in a passfile, '@' and '/' in a URL, the quote in a conninfo
PASSWORD = "s3cr:et\\pw@/'x-" + uuid.uuid4().hex[:8]
SEED_SQL = """
CREATE TABLE projects (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE agents (id int PRIMARY KEY, project_id int REFERENCES projects, kind text);
CREATE SCHEMA app;
CREATE TABLE app.tasks (id int PRIMARY KEY, agent_id int REFERENCES agents, title text);
INSERT INTO projects SELECT g, 'project-' || g FROM generate_series(1, 50) g;
INSERT INTO agents SELECT g, 1 + g % 50, 'kind-' || g % 7 FROM generate_series(1, 200) g;
INSERT INTO app.tasks SELECT g, 1 + g % 200, 'task ' || g FROM generate_series(1, 1000) g;
"""
SEEDED_TABLES = {"public.projects", "public.agents", "app.tasks"}
SEEDED_ROWS = {
    "public.projects": [(g, f"project-{g}") for g in range(1, 51)],
    "public.agents": [(g, 1 + g % 50, f"kind-{g % 7}") for g in range(1, 201)],
    "app.tasks": [(g, 1 + g % 200, f"task {g}") for g in range(1, 1001)],
}


# ------------------------------------------------------------------------------- helpers


def rows(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    found = {}
    with psycopg.connect(dsn) as conn:
        for table in sorted(SEEDED_TABLES):
            schema, name = table.split(".")
            query = sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(schema, name))
            found[table] = conn.execute(query).fetchall()
    return found


def seed(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SEED_SQL)


def restore(path: Path, dsn: str) -> None:
    subprocess.run(
        [str(PG_BIN / "pg_restore"), "--no-owner", "--exit-on-error", f"--dbname={dsn}", str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    )


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def fails_closed(call: Callable[[], object], backup_dir: Path) -> BackupError:
    """The call raises a BackupError that says DO NOT PROCEED and leaves no file behind."""
    with pytest.raises(BackupError) as caught:
        call()
    assert str(caught.value).split("\n")[0].endswith("DO NOT PROCEED")
    assert caught.value.destructive_started is False
    assert files_in(backup_dir) == []
    return caught.value


def pg_dump_of(backup_dir: Path) -> psutil.Process | None:
    """The running pg_dump (on this host) that writes into ``backup_dir``."""
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "pg_dump" and any(str(backup_dir) in a for a in cmdline):
            return process
    return None


@contextlib.contextmanager
def table_locked(dsn: str, table: str = "projects") -> Iterator[None]:
    """An ACCESS EXCLUSIVE lock on ``table`` (a migration at work), held until the block ends."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table))
        )
        yield
        conn.rollback()


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.fail(
            f"cannot mount a tmpfs at {path} (needs root with CAP_SYS_ADMIN): {mounted.stderr}",
            pytrace=False,
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True, timeout=30)


def at(minute: int) -> Callable[[], datetime]:
    return lambda: datetime(2026, 11, 25, 3, 0, tzinfo=UTC) + timedelta(minutes=minute)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    return tmp_path / "backups"


@pytest.fixture
def seeded(postgres_db: str) -> str:
    seed(postgres_db)
    return postgres_db


@pytest.fixture
def fresh_db(postgres_server: PostgresServer) -> Iterator[str]:
    name = f"t_restore_{uuid.uuid4().hex[:8]}"
    yield postgres_server.create_database(name)
    postgres_server.drop_database(name)


@pytest.fixture(scope="module")
def scram_server() -> Iterator[PostgresServer]:
    """A cluster of its own where every TCP login except the admin's needs a scram password,
    with a role ``spek_user`` that owns a seeded database ``spek_db``."""
    try:
        server = PostgresServer()
        server.start()
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            hba = Path(str(conn.execute("SHOW hba_file").fetchone()[0]))  # type: ignore[index]
            hba.write_text(
                "local all all trust\n"
                "host all postgres 127.0.0.1/32 trust\n"
                "host all all 127.0.0.1/32 scram-sha-256\n"
            )
            conn.execute("SELECT pg_reload_conf()")
            conn.execute(
                sql.SQL("CREATE ROLE spek_user LOGIN PASSWORD {}").format(sql.Literal(PASSWORD))
            )
            conn.execute("CREATE DATABASE spek_db OWNER spek_user")
        with psycopg.connect(server.dsn("spek_db"), autocommit=True) as conn:
            conn.execute("SET ROLE spek_user")
            conn.execute(SEED_SQL)
        yield server
    finally:
        server.close()


def scram_dsn(server: PostgresServer, password: str = PASSWORD) -> str:
    return f"postgresql://spek_user:{quote(password, safe='')}@127.0.0.1:{server.port}/spek_db"


# ----------------------------------------------------------------------- backups by DSN


def test_targets_and_labels_are_checked_before_anything_runs(backup_dir: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of dsn or container"):
        DatabaseTarget(dsn="postgresql://x@127.0.0.1/db", container="spek-postgres")
    with pytest.raises(ValueError, match="needs dbname and user"):
        DatabaseTarget(container="spek-postgres", dbname="spek_db")
    with pytest.raises(ValueError, match="cannot be parsed") as caught:
        DatabaseTarget(dsn=f"postgresql://u:{PASSWORD}@127.0.0.1:notaport/db x=")
    assert PASSWORD not in str(caught.value)
    target = DatabaseTarget(container="c", dbname="d", user="u", password=PASSWORD)
    assert PASSWORD not in repr(target)
    with pytest.raises(ValueError, match="label"):
        create_backup(target, backup_dir, "../elsewhere", 30)
    assert not backup_dir.exists()


def test_backup_verifies_records_sha_and_tables_and_restores_the_same_rows(
    seeded: str, backup_dir: Path, fresh_db: str
) -> None:
    record = create_backup(DatabaseTarget(dsn=seeded), backup_dir, "emergency", timeout=60)

    assert record.path.parent == backup_dir
    assert record.path.name == f"emergency_{record.created_at:%Y%m%dT%H%M%SZ}.dump"
    assert files_in(backup_dir) == [record.path.name, record.checksum_path.name]
    assert stat.S_IMODE(record.path.stat().st_mode) == 0o600
    assert record.size == record.path.stat().st_size > 1000
    assert record.sha256 == hashlib.sha256(record.path.read_bytes()).hexdigest()
    # the checksum file is what `sha256sum -c` reads
    subprocess.run(
        ["sha256sum", "--check", "--status", record.checksum_path.name],
        cwd=backup_dir,
        check=True,
        timeout=30,
    )
    assert set(record.tables) == SEEDED_TABLES
    assert record.toc_entries >= 9  # 3 tables, their data, constraints, the schema
    assert record.server_version.startswith("15.")
    assert record.pg_dump_version.startswith("15.")
    assert record.label == "emergency"
    assert record.duration > 0

    again = verify_backup(record.path, record.sha256)
    assert (again.sha256, again.toc_entries, again.tables) == (
        record.sha256,
        record.toc_entries,
        record.tables,
    )
    assert again.dumped_from.startswith("15.")

    restore(record.path, fresh_db)
    assert rows(fresh_db) == rows(seeded) == SEEDED_ROWS


def test_password_reaches_pg_dump_through_a_passfile_never_its_command_line(
    scram_server: PostgresServer, backup_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libpq prefers PGPASSWORD to a passfile: a wrong one here must not reach pg_dump
    monkeypatch.setenv("PGPASSWORD", "wrong-password")
    target = DatabaseTarget(dsn=scram_dsn(scram_server))
    assert PASSWORD not in repr(target)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # the lock holds pg_dump still while its command line and environment are read
        with table_locked(scram_server.dsn("spek_db")):
            running = pool.submit(create_backup, target, backup_dir, "emergency", 60)
            process = wait_until(lambda: pg_dump_of(backup_dir), timeout=20)
            cmdline = process.cmdline()
            environ = process.environ()
            passfile = Path(next(a for a in cmdline if "passfile=" in a).split("passfile=")[1])
            passfile_mode = (
                stat.S_IMODE(passfile.stat().st_mode),
                stat.S_IMODE(passfile.parent.stat().st_mode),
            )
        record = running.result(timeout=60)

    assert not any(PASSWORD in arg for arg in cmdline)
    assert passfile_mode == (0o600, 0o700)
    assert "PGPASSWORD" not in environ
    assert not any(PASSWORD in value for value in environ.values())
    assert not passfile.exists()  # removed once pg_dump finished
    assert set(record.tables) == SEEDED_TABLES


def test_wrong_password_fails_closed_and_the_error_does_not_show_it(
    scram_server: PostgresServer, backup_dir: Path
) -> None:
    wrong = "not-" + PASSWORD
    target = DatabaseTarget(dsn=scram_dsn(scram_server, wrong))
    error = fails_closed(lambda: create_backup(target, backup_dir, "emergency", 30), backup_dir)
    assert "password authentication failed" in str(error)
    assert wrong not in str(error)
    assert PASSWORD not in str(error)


def test_missing_database_fails_closed(postgres_server: PostgresServer, backup_dir: Path) -> None:
    target = DatabaseTarget(dsn=postgres_server.dsn(f"t_missing_{uuid.uuid4().hex[:8]}"))
    error = fails_closed(lambda: create_backup(target, backup_dir, "emergency", 30), backup_dir)
    assert "does not exist" in str(error)


def test_stopped_server_fails_closed(scram_server: PostgresServer, backup_dir: Path) -> None:
    target = DatabaseTarget(dsn=scram_dsn(scram_server))
    scram_server.stop()
    try:
        error = fails_closed(lambda: create_backup(target, backup_dir, "emergency", 30), backup_dir)
    finally:
        scram_server.start()
    assert "no backup was taken" in str(error)
    assert PASSWORD not in str(error)


def test_pg_dump_failing_midway_leaves_no_file(seeded: str, backup_dir: Path) -> None:
    target = DatabaseTarget(dsn=seeded)
    with table_locked(seeded):
        error = fails_closed(
            lambda: create_backup(target, backup_dir, "emergency", 30, lock_wait_timeout=0.5),
            backup_dir,
        )
    assert "pg_dump" in error.reason
    assert "waiting 0.5s for a table lock" in error.reason
    assert "LOCK TABLE public.projects" in error.output


def test_pg_dump_past_the_timeout_is_stopped_and_leaves_no_file(
    seeded: str, backup_dir: Path
) -> None:
    target = DatabaseTarget(dsn=seeded)
    with table_locked(seeded):
        error = fails_closed(
            lambda: create_backup(target, backup_dir, "emergency", 3, lock_wait_timeout=60),
            backup_dir,
        )
        assert "did not finish" in str(error)
        assert pg_dump_of(backup_dir) is None


def test_disk_filling_up_during_the_dump_fails_closed(postgres_db: str, tmp_path: Path) -> None:
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE blobs (id int, payload text)")
        # hex of random md5s: about 2 MB once compressed, twice the disk below
        conn.execute(
            "INSERT INTO blobs SELECT g, md5(random()::text) || md5(random()::text)"
            " FROM generate_series(1, 60000) g"
        )
    with tmpfs(tmp_path / "small", "size=1m,mode=0700") as small:
        error = fails_closed(
            lambda: create_backup(DatabaseTarget(dsn=postgres_db), small, "emergency", 60), small
        )
    assert "No space left on device" in str(error)


def test_pg_dump_older_than_the_server_is_refused(
    seeded: str, backup_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only PostgreSQL 15 is installable here, so an older pg_dump is a stand-in that answers
    # --version the way pg_dump 14 does; the refusal must come before it is asked to dump.
    old = tmp_path / "pg" / "14" / "bin"
    old.mkdir(parents=True)
    for tool in ("pg_dump", "pg_restore"):
        script = old / tool
        script.write_text(f"#!/bin/sh\necho '{tool} (PostgreSQL) 14.11'\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no other pg_dump to fall back on
    error = fails_closed(
        lambda: create_backup(
            DatabaseTarget(dsn=seeded), backup_dir, "emergency", 30, tools_root=tmp_path / "pg"
        ),
        backup_dir,
    )
    assert "pg_dump 14.11" in str(error)
    assert "older than the server" in str(error)


def test_the_tools_of_the_servers_major_version_are_used(
    seeded: str, backup_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "pg"
    for major in ("14", "15"):
        (root / major / "bin").mkdir(parents=True)
    for tool in ("pg_dump", "pg_restore"):
        (root / "15" / "bin" / tool).symlink_to(PG_BIN / tool)
        stand_in = root / "14" / "bin" / tool
        stand_in.write_text("#!/bin/sh\nexit 1\n")  # would fail the backup if it were chosen
        stand_in.chmod(0o755)

    checked = preflight(DatabaseTarget(dsn=seeded), backup_dir, tools_root=root)
    assert checked.pg_restore == root / "15" / "bin" / "pg_restore"
    assert checked.pg_dump_version.startswith("15.")
    record = create_backup(DatabaseTarget(dsn=seeded), backup_dir, "x", 60, tools_root=root)
    assert set(record.tables) == SEEDED_TABLES


# --------------------------------------------------------------------------- verification


@pytest.fixture
def good_dump(seeded: str, tmp_path: Path) -> tuple[Path, str]:
    record = create_backup(DatabaseTarget(dsn=seeded), tmp_path / "good", "emergency", 60)
    return record.path, record.sha256


def test_truncated_dump_fails_verification(good_dump: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = good_dump
    data = path.read_bytes()
    cut = tmp_path / "cut.dump"
    cut.write_bytes(data[: len(data) * 9 // 10])
    # the table of contents at the head still reads: only reading every block notices
    listing = subprocess.run(
        [str(PG_BIN / "pg_restore"), "--list", str(cut)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert listing.returncode == 0
    with pytest.raises(BackupError, match="truncated or corrupt"):
        verify_backup(cut)

    cut.write_bytes(data[:300])
    with pytest.raises(BackupError, match="less than the 512"):
        verify_backup(cut)
    cut.write_bytes(b"")
    with pytest.raises(BackupError, match="DO NOT PROCEED"):
        verify_backup(cut)


def test_tampered_dump_fails_against_its_recorded_sha(
    good_dump: tuple[Path, str], tmp_path: Path
) -> None:
    path, sha = good_dump
    assert verify_backup(path, sha).sha256 == sha
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x01
    tampered = tmp_path / "tampered.dump"
    tampered.write_bytes(bytes(data))
    with pytest.raises(BackupError, match="changed since"):
        verify_backup(tampered, sha)


def test_dump_without_an_expected_table_or_its_data_fails(
    good_dump: tuple[Path, str], seeded: str, tmp_path: Path
) -> None:
    path, _ = good_dump
    with pytest.raises(BackupError, match=r"lacks tables .*public\.gone"):
        verify_backup(path, expected_tables=["public.projects", "public.gone"])
    schema_only = tmp_path / "schema.dump"
    subprocess.run(
        [str(PG_BIN / "pg_dump"), "-Fc", "--schema-only", f"--file={schema_only}", seeded],
        check=True,
        timeout=30,
    )
    assert set(verify_backup(schema_only).tables) == SEEDED_TABLES
    with pytest.raises(BackupError, match=r"lacks tables \(or their data\)"):
        verify_backup(schema_only, expected_tables=SEEDED_TABLES)


# ------------------------------------------------------------------------- the backup dir


def test_check_backup_dir_creates_the_dir_and_leaves_nothing_behind(
    seeded: str, tmp_path: Path
) -> None:
    target_dir = tmp_path / "new" / "backups"
    estimate = estimate_dump_size(DatabaseTarget(dsn=seeded))
    free = check_backup_dir(target_dir, estimate)
    assert target_dir.is_dir()
    assert stat.S_IMODE(target_dir.stat().st_mode) == 0o700
    assert files_in(target_dir) == []
    assert free > estimate
    record = create_backup(DatabaseTarget(dsn=seeded), target_dir, "emergency", 60)
    assert 0 < record.size < estimate  # the estimate is an upper bound


def test_backup_dir_that_cannot_be_written_fails(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "readonly", "ro,size=1m") as readonly:
        with pytest.raises(BackupError, match=r"not writable.*DO NOT PROCEED"):
            check_backup_dir(readonly, 0)
        with pytest.raises(BackupError, match="cannot create backup dir"):
            check_backup_dir(readonly / "backups", 0)
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(BackupError, match="cannot create backup dir"):
        check_backup_dir(a_file / "backups", 0)


def test_backup_dir_without_room_fails(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=1m") as small:
        assert check_backup_dir(small, 100_000, margin_bytes=0) > 100_000
        with pytest.raises(BackupError, match=r"needs 2\.0 MiB"):
            check_backup_dir(small, 2 * 1024 * 1024, margin_bytes=0)
        # the default margin alone (16 MiB) is more than the disk has
        with pytest.raises(BackupError, match=r"1\.0 MiB free, needs 16\.0 MiB"):
            check_backup_dir(small, 0)
        assert files_in(small) == []


# ------------------------------------------------------------------------------- retention


def test_prune_deletes_the_oldest_verified_dumps_beyond_keep(seeded: str, backup_dir: Path) -> None:
    target = DatabaseTarget(dsn=seeded)
    routine = [create_backup(target, backup_dir, "routine", 60, clock=at(m)) for m in range(4)]
    pre_deploy = [create_backup(target, backup_dir, "pre-deploy", 60, clock=at(m)) for m in (0, 1)]
    unverified = backup_dir / "routine_20000101T000000Z.dump"  # no checksum file: never touched
    unverified.write_bytes(routine[0].path.read_bytes())
    in_flight = backup_dir / "routine_20261125T040000Z.dump.partial"
    in_flight.write_bytes(b"PGDMP")

    result = prune(backup_dir, keep=2, keep_labels={"pre-deploy"})

    assert set(result.deleted) == {routine[0].path, routine[1].path}
    assert set(result.kept) == {r.path for r in routine[2:] + pre_deploy}
    assert result.problems == ()
    assert sorted(files_in(backup_dir)) == sorted(
        [r.path.name for r in routine[2:] + pre_deploy]
        + [r.checksum_path.name for r in routine[2:] + pre_deploy]
        + [unverified.name, in_flight.name]
    )

    # keep=0 still keeps the newest verified dump of each label
    result = prune(backup_dir, keep=0)
    assert set(result.deleted) == {routine[2].path, pre_deploy[0].path}
    assert set(result.kept) == {routine[3].path, pre_deploy[1].path}


def test_prune_deletes_nothing_of_a_label_whose_newest_dump_changed(
    seeded: str, backup_dir: Path
) -> None:
    target = DatabaseTarget(dsn=seeded)
    dumps = [create_backup(target, backup_dir, "routine", 60, clock=at(m)) for m in range(3)]
    with dumps[-1].path.open("r+b") as newest:
        newest.seek(-10, os.SEEK_END)
        newest.write(b"XXXXXXXXXX")

    result = prune(backup_dir, keep=1)

    assert result.deleted == ()
    assert set(result.kept) == {d.path for d in dumps}
    assert len(result.problems) == 1
    assert "routine" in result.problems[0]
    assert "no longer matches" in result.problems[0]


# --------------------------------------------------------------- the database in a container


@pytest.fixture(scope="module")
def postgres_container(docker_engine: docker.DockerClient) -> Iterator[str]:
    """A PostgreSQL 15 container whose every login needs a password, with ``spek_db`` seeded;
    reachable only through ``docker exec`` (nothing published), as in the runbook."""
    try:
        image = ensure_postgres_image(docker_engine)
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)
    factory = Containers(docker_engine, image, "backup")
    try:
        container = factory.run(
            [], environment={"POSTGRES_USER": "spek_user", "POSTGRES_PASSWORD": PASSWORD}
        )
        wait_until(
            lambda: container.exec_run(["pg_isready", "-q"]).exit_code == 0,
            timeout=60,
            message="PostgreSQL in the test container did not become ready",
        )
        psql(container, "postgres", "CREATE DATABASE spek_db")
        psql(container, "spek_db", SEED_SQL)
        yield str(container.name)
    finally:
        factory.close()


def psql(container: Any, dbname: str, command: str, **options: Any) -> Any:
    argv = ["psql", "-X", "-tA", "-v", "ON_ERROR_STOP=1", "-U", "spek_user", "-d", dbname]
    result = container.exec_run(
        [*argv, "-c", command], environment={"PGPASSWORD": PASSWORD}, **options
    )
    if not options.get("detach"):
        assert result.exit_code == 0, result.output
    return result


@contextlib.contextmanager
def locked_in_container(container: Any) -> Iterator[None]:
    """A session in the container holds an ACCESS EXCLUSIVE lock on projects until the end."""
    psql(
        container,
        "spek_db",
        "BEGIN; LOCK TABLE projects IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120)",
        detach=True,
    )
    granted = (
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
        " WHERE c.relname = 'projects' AND l.mode = 'AccessExclusiveLock' AND l.granted"
    )
    try:
        wait_until(lambda: psql(container, "spek_db", granted).output.strip() == b"1")
        yield
    finally:
        psql(
            container,
            "spek_db",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE query LIKE '%pg_sleep(120)%' AND pid <> pg_backend_pid()",
        )


def pg_dump_sessions(container: Any) -> int:
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump'"
    return int(psql(container, "spek_db", query).output.strip())


def container_target(name: str, password: str | None = PASSWORD) -> DatabaseTarget:
    return DatabaseTarget(container=name, dbname="spek_db", user="spek_user", password=password)


def test_backup_inside_the_container_verifies_on_the_host_and_restores(
    postgres_container: str, backup_dir: Path, fresh_db: str
) -> None:
    record = create_backup(container_target(postgres_container), backup_dir, "emergency", 60)

    assert set(record.tables) == SEEDED_TABLES
    assert record.server_version.startswith("15.")
    assert record.pg_dump_version.startswith("15.")
    assert files_in(backup_dir) == [record.path.name, record.checksum_path.name]
    assert stat.S_IMODE(record.path.stat().st_mode) == 0o600
    assert verify_backup(record.path, record.sha256).tables == record.tables
    restore(record.path, fresh_db)
    assert rows(fresh_db) == SEEDED_ROWS


def test_container_password_travels_in_the_exec_environment_only(
    postgres_container: str, backup_dir: Path, docker_engine: docker.DockerClient
) -> None:
    container = docker_engine.containers.get(postgres_container)

    def dumping_exec() -> dict[str, Any] | None:
        container.reload()
        for exec_id in container.attrs.get("ExecIDs") or []:
            found: dict[str, Any] = docker_engine.api.exec_inspect(exec_id)
            arguments = found["ProcessConfig"]["arguments"]
            if found["Running"] and "pg_dump" in arguments and "--format=custom" in arguments:
                return found
        return None

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        target = container_target(postgres_container)
        # a session inside the container holds a lock, so pg_dump waits while it is looked at
        with locked_in_container(container):
            running = pool.submit(create_backup, target, backup_dir, "emergency", 60)
            dumping = wait_until(dumping_exec, timeout=20)
            host_process = psutil.Process(dumping["Pid"])  # the exec's process, seen from here
            # docker reports the pid before the runtime has exec'd pg_dump in it: read its
            # arguments and environment once it is pg_dump, not the runtime's init
            wait_until(lambda: "pg_dump" in " ".join(host_process.cmdline()), timeout=20)
            cmdline, environ = host_process.cmdline(), host_process.environ()
        record = running.result(timeout=60)

    assert not any(PASSWORD in arg for arg in dumping["ProcessConfig"]["arguments"])
    assert not any(PASSWORD in arg for arg in cmdline)
    assert environ.get("PGPASSWORD") == PASSWORD
    assert set(record.tables) == SEEDED_TABLES


def test_container_without_the_password_fails_closed(
    postgres_container: str, backup_dir: Path
) -> None:
    target = container_target(postgres_container, password=None)
    error = fails_closed(lambda: create_backup(target, backup_dir, "emergency", 30), backup_dir)
    assert "no password supplied" in str(error)


def test_missing_container_fails_closed(
    backup_dir: Path, docker_engine: docker.DockerClient
) -> None:
    target = container_target(f"spek-test-missing-{uuid.uuid4().hex[:8]}")
    error = fails_closed(lambda: create_backup(target, backup_dir, "emergency", 30), backup_dir)
    assert "does not exist" in str(error)
    assert PASSWORD not in str(error)


def test_pg_dump_in_the_container_past_the_timeout_is_stopped_there(
    postgres_container: str, backup_dir: Path, docker_engine: docker.DockerClient
) -> None:
    container = docker_engine.containers.get(postgres_container)
    target = container_target(postgres_container)
    with locked_in_container(container):
        error = fails_closed(
            lambda: create_backup(target, backup_dir, "emergency", 3, lock_wait_timeout=60),
            backup_dir,
        )
        assert "did not finish" in str(error)
        # stopped inside the container, not merely abandoned by this process
        wait_until(lambda: pg_dump_sessions(container) == 0, timeout=10)


def test_disk_filling_up_during_a_dump_from_the_container_fails_closed(
    postgres_container: str, tmp_path: Path, docker_engine: docker.DockerClient
) -> None:
    container = docker_engine.containers.get(postgres_container)
    dbname = f"blobs_{uuid.uuid4().hex[:8]}"
    psql(container, "postgres", f"CREATE DATABASE {dbname}")
    psql(
        container,
        dbname,
        "CREATE TABLE blobs AS SELECT g AS id, md5(random()::text) || md5(random()::text)"
        " AS payload FROM generate_series(1, 60000) g",
    )
    target = DatabaseTarget(
        container=postgres_container, dbname=dbname, user="spek_user", password=PASSWORD
    )
    with tmpfs(tmp_path / "small", "size=1m,mode=0700") as small:
        error = fails_closed(lambda: create_backup(target, small, "emergency", 60), small)
    assert "No space left on device" in str(error)
    wait_until(lambda: pg_dump_sessions(container) == 0, timeout=20)


def test_container_that_is_not_running_fails_closed(
    backup_dir: Path, docker_engine: docker.DockerClient
) -> None:
    name = f"spek-test-created-{uuid.uuid4().hex[:8]}"
    docker_engine.containers.create(ensure_postgres_image(docker_engine), name=name)
    try:
        target = container_target(name)
        error = fails_closed(lambda: create_backup(target, backup_dir, "emergency", 30), backup_dir)
    finally:
        docker_engine.api.remove_container(name, force=True)
    assert "is created, not running" in str(error)
