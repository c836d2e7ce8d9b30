"""Runbook phase 2, options A and B: the SQL migration runner and the app's own command,
against a real PostgreSQL server and real subprocesses."""

import os
import sys
from pathlib import Path

import psycopg
import pytest

from harness.ports import free_port
from spek_sentinel.domain.errors import RollbackError
from spek_sentinel.rollback.app_migrations import AppCommandMigrator, AppCommands
from spek_sentinel.rollback.migrations import (
    AppCommandError,
    MigrationLayoutError,
    MigrationRefusedError,
    MigrationRunner,
    MigrationSettings,
    MigrationStepError,
    Migrator,
    SqlMigrator,
    current_version,
    load_migrations,
)

PASSWORD = "Zq9-s3cr3t-pw"  # noqa: S105 -- a made-up secret the tests hunt for in output

MIGRATIONS = {
    "001_create_projects": (
        "CREATE TABLE projects (id serial PRIMARY KEY, name text NOT NULL);\n"
        "INSERT INTO projects (name) VALUES ('alpha'), ('beta');\n",
        "DROP TABLE projects;\n",
    ),
    "002_create_tasks": (
        "CREATE TABLE tasks (id serial PRIMARY KEY,"
        " project_id int NOT NULL REFERENCES projects (id), title text NOT NULL);\n",
        "DROP TABLE tasks;\n",
    ),
    "003_add_audit_logs": (
        "-- a percent sign must reach the server as-is: 100%\n"
        "CREATE TABLE audit_logs (id serial PRIMARY KEY, note text);\n"
        "COMMENT ON TABLE audit_logs IS '100% of changes';\n"
        "ALTER TABLE projects ADD COLUMN archived boolean NOT NULL DEFAULT false;\n",
        "DROP TABLE audit_logs;\nALTER TABLE projects DROP COLUMN archived;\n",
    ),
}


def write_migrations(directory: Path, skip: tuple[str, ...] = ()) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, (up, down) in MIGRATIONS.items():
        if f"{name}.up.sql" not in skip:
            (directory / f"{name}.up.sql").write_text(up)
        if f"{name}.down.sql" not in skip:
            (directory / f"{name}.down.sql").write_text(down)
    (directory / "README.md").write_text("not a migration; ignored\n")
    return directory


def tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


def columns(dsn: str, table: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
        ).fetchall()
    return {row[0] for row in rows}


def applied(runner: MigrationRunner, dsn: str) -> list[int]:
    return [s.version for s in runner.status(dsn) if s.applied]


def test_up_status_down_one_down_to_001_down_all_and_up_again(
    postgres_db: str, tmp_path: Path
) -> None:
    runner = MigrationRunner(write_migrations(tmp_path / "migrations"))
    before = runner.status(postgres_db)
    assert [(s.version, s.state) for s in before] == [
        (1, "pending"),
        (2, "pending"),
        (3, "pending"),
    ]
    assert tables(postgres_db) == set(), "status is read-only: no bookkeeping table yet"

    run = runner.up(postgres_db)
    assert (run.version_before, run.version_after) == (0, 3)
    assert [s.file for s in run.steps] == [
        "001_create_projects.up.sql",
        "002_create_tasks.up.sql",
        "003_add_audit_logs.up.sql",
    ]
    assert tables(postgres_db) == {"projects", "tasks", "audit_logs", "schema_migrations"}
    states = runner.status(postgres_db)
    assert [s.state for s in states] == ["applied"] * 3
    assert all(s.applied_at is not None and not s.drift for s in states)
    with psycopg.connect(postgres_db) as conn:
        comment = conn.execute("SELECT obj_description('audit_logs'::regclass)").fetchone()
        checksum = conn.execute(
            "SELECT checksum FROM schema_migrations WHERE version = 3"
        ).fetchone()
    assert comment == ("100% of changes",)
    assert checksum == (states[2].checksum,)

    migrator: Migrator = SqlMigrator(runner, postgres_db)
    outcome = migrator.down()
    assert outcome.version == 2 and "003_add_audit_logs.down.sql" in outcome.summary
    assert "audit_logs" not in tables(postgres_db)
    assert "archived" not in columns(postgres_db, "projects")
    with psycopg.connect(postgres_db) as conn:
        assert conn.execute("SELECT count(*) FROM projects").fetchone() == (2,), "data kept"
    status = migrator.status()
    assert status.version == 2 and "003_add_audit_logs: pending" in status.output

    run = runner.down(postgres_db, to_version=1)
    assert [s.file for s in run.steps] == ["002_create_tasks.down.sql"]
    assert applied(runner, postgres_db) == [1]
    assert "tasks" not in tables(postgres_db)
    again = runner.down(postgres_db, to_version=1)
    assert again.steps == () and again.version_after == 1, "rolling back to 1 again is a no-op"

    run = runner.down_all(postgres_db)
    assert run.version_after == 0 and [s.version for s in run.steps] == [1]
    assert tables(postgres_db) == {"schema_migrations"}
    assert current_version(runner.status(postgres_db)) == 0
    assert migrator.down_all().summary.startswith("nothing to migrate down")

    assert runner.up(postgres_db).version_after == 3
    assert tables(postgres_db) == {"projects", "tasks", "audit_logs", "schema_migrations"}
    assert runner.up(postgres_db).steps == (), "up at head does nothing"


def test_up_to_a_version_and_down_by_several_steps(postgres_db: str, tmp_path: Path) -> None:
    runner = MigrationRunner(write_migrations(tmp_path / "migrations"))
    assert runner.up(postgres_db, to=2).version_after == 2
    assert applied(runner, postgres_db) == [1, 2]
    run = runner.down(postgres_db, 2)
    assert [s.version for s in run.steps] == [2, 1] and run.version_after == 0
    runner.up(postgres_db)
    migrator = SqlMigrator(runner, postgres_db)
    assert migrator.down_to(1).version == 1
    assert migrator.down_to(1).summary == "nothing to migrate down: the database is at 1"


def test_failing_down_file_stops_there_at_the_last_good_version(
    postgres_db: str, tmp_path: Path
) -> None:
    directory = write_migrations(tmp_path / "migrations")
    runner = MigrationRunner(directory)
    runner.up(postgres_db)
    # The first statement would succeed; the whole file must roll back with the second.
    (directory / "002_create_tasks.down.sql").write_text(
        "DROP TABLE tasks;\nDROP TABLE no_such_table;\n"
    )

    with pytest.raises(MigrationStepError) as caught:
        runner.down_all(postgres_db)

    error = caught.value
    assert isinstance(error, RollbackError)
    assert error.failed == "002_create_tasks.down.sql"
    assert error.completed == ("003_add_audit_logs.down.sql",)
    assert error.version == 2
    assert error.destructive, "003's down committed before the failure"
    assert "002_create_tasks.down.sql" in str(error)
    assert "no_such_table" in str(error) and "database is at version 2" in str(error)
    assert applied(runner, postgres_db) == [1, 2]
    assert tables(postgres_db) == {"projects", "tasks", "schema_migrations"}, (
        "tasks is still there: the failed file's first statement rolled back with it"
    )


def test_failure_of_the_first_step_is_not_destructive(postgres_db: str, tmp_path: Path) -> None:
    directory = write_migrations(tmp_path / "migrations")
    runner = MigrationRunner(directory)
    runner.up(postgres_db)
    (directory / "003_add_audit_logs.down.sql").write_text("SELECT 1/0;\n")
    with pytest.raises(MigrationStepError) as caught:
        runner.down(postgres_db)
    assert caught.value.completed == () and not caught.value.destructive
    assert caught.value.version == 3 and "division by zero" in caught.value.reason


def test_a_connection_killed_mid_migration_reports_the_version_read_afresh(
    postgres_db: str, tmp_path: Path
) -> None:
    directory = write_migrations(tmp_path / "migrations")
    runner = MigrationRunner(directory)
    runner.up(postgres_db)
    (directory / "003_add_audit_logs.down.sql").write_text(
        "DROP TABLE audit_logs;\nSELECT pg_terminate_backend(pg_backend_pid());\n"
    )
    with pytest.raises(MigrationStepError) as caught:
        runner.down(postgres_db)
    assert "connection broke" in caught.value.reason
    assert caught.value.version == 3, "read on a new connection: nothing was committed"
    assert "audit_logs" in tables(postgres_db)


def test_missing_down_file_is_refused_before_anything_runs(
    postgres_db: str, tmp_path: Path
) -> None:
    directory = write_migrations(tmp_path / "migrations", skip=("002_create_tasks.down.sql",))
    runner = MigrationRunner(directory)

    with pytest.raises(MigrationLayoutError) as caught:
        runner.up(postgres_db)
    assert "002_create_tasks.up.sql: no 002_create_tasks.down.sql" in str(caught.value)
    assert "nothing ran" in str(caught.value) and not caught.value.destructive
    assert tables(postgres_db) == set(), "not even the bookkeeping table was created"

    # A down file that disappears after its migration was applied: no down runs at all.
    (directory / "002_create_tasks.down.sql").write_text("DROP TABLE tasks;\n")
    runner.up(postgres_db)
    (directory / "002_create_tasks.down.sql").unlink()
    with pytest.raises(MigrationLayoutError):
        runner.down_all(postgres_db)
    with psycopg.connect(postgres_db) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3]
    assert "audit_logs" in tables(postgres_db), "003 was not rolled back either"


def test_every_layout_problem_is_listed_at_once(tmp_path: Path) -> None:
    files = {
        "001_a.up.sql": "CREATE TABLE a ();",
        "001_a.down.sql": "DROP TABLE a;",
        "001_b.up.sql": "CREATE TABLE b ();",  # the same number twice
        "002_c.up.sql": "BEGIN;\nCREATE TABLE c ();\nCOMMIT;\n",  # transaction control
        "002_c.down.sql": "-- nothing\n\n",  # empty down
        "003_d.up.sql": "CREATE TABLE d ();",
        "003_e.down.sql": "DROP TABLE d;",  # names disagree
        "4-create-x.sql": "CREATE TABLE x ();",  # not NNN_name.up/down.sql
        "000_zero.up.sql": "SELECT 1;",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(MigrationLayoutError) as caught:
        load_migrations(tmp_path)
    problems = "\n".join(caught.value.problems)
    for expected in (
        "001_b.up.sql: version 1 is also used by 001_a.up.sql",
        "002_c.up.sql: contains BEGIN",
        "002_c.down.sql: is empty",
        "003_d.up.sql and 003_e.down.sql: same version, different names",
        "4-create-x.sql: not named NNN_name.up.sql",
        "000_zero.up.sql: version 0",
    ):
        assert expected in problems, problems
    plpgsql = tmp_path / "ok"
    plpgsql.mkdir()
    (plpgsql / "001_f.up.sql").write_text(
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\nBEGIN\n  RETURN 1;\nEND;\n$$;\n"
    )
    (plpgsql / "001_f.down.sql").write_text("DROP FUNCTION f();\n")
    assert [m.version for m in load_migrations(plpgsql)] == [1], "a PL/pgSQL BEGIN is fine"


def test_checksum_drift_is_reported_and_blocks_rolling_that_migration_back(
    postgres_db: str, tmp_path: Path
) -> None:
    directory = write_migrations(tmp_path / "migrations")
    runner = MigrationRunner(directory)
    runner.up(postgres_db)
    edited = directory / "003_add_audit_logs.up.sql"
    edited.write_text(edited.read_text() + "CREATE INDEX ON audit_logs (note);\n")

    states = {s.version: s for s in runner.status(postgres_db)}
    assert states[3].drift and states[3].state == "applied, drifted"
    assert states[3].checksum != states[3].recorded_checksum
    assert not states[1].drift and not states[2].drift
    outcome = SqlMigrator(runner, postgres_db).status()
    assert "attention: 003_add_audit_logs: applied, drifted" in outcome.summary

    with pytest.raises(MigrationRefusedError) as caught:
        runner.down(postgres_db)
    assert "003_add_audit_logs" in str(caught.value) and not caught.value.destructive
    assert applied(runner, postgres_db) == [1, 2, 3]

    assert runner.down(postgres_db, allow_drift=True).version_after == 2


def test_requests_that_do_not_fit_the_database_are_refused(
    postgres_db: str, tmp_path: Path
) -> None:
    runner = MigrationRunner(write_migrations(tmp_path / "migrations"))
    with pytest.raises(MigrationRefusedError, match="1 migration but 0 are applied"):
        runner.down(postgres_db)
    runner.up(postgres_db, to=2)
    for call, message in (
        (lambda: runner.down(postgres_db, 3), "asked to roll back 3 migrations but 2 are"),
        (lambda: runner.down(postgres_db, to_version=3), "version 3 is not applied"),
        (lambda: runner.down(postgres_db, 1, to_version=1), "not both"),
        (lambda: runner.up(postgres_db, to=7), "no migration 7"),
        (lambda: runner.up(postgres_db, to=1), "migrating to 1 is a down"),
    ):
        with pytest.raises(MigrationRefusedError, match=message):
            call()
    assert applied(runner, postgres_db) == [1, 2]


def test_a_lock_held_by_the_app_times_out_and_names_the_file(
    postgres_db: str, tmp_path: Path
) -> None:
    settings = MigrationSettings(lock_timeout=0.3)
    runner = MigrationRunner(write_migrations(tmp_path / "migrations"), settings)
    runner.up(postgres_db)
    with psycopg.connect(postgres_db) as app:  # an application that was not stopped
        app.execute("SELECT * FROM projects")  # its open transaction holds a lock on projects
        with pytest.raises(MigrationStepError) as caught:
            runner.down(postgres_db)
    assert caught.value.failed == "003_add_audit_logs.down.sql"
    assert "lock_timeout" in str(caught.value) and caught.value.version == 3
    assert applied(runner, postgres_db) == [1, 2, 3]


def test_an_unrelated_schema_migrations_table_is_not_used(postgres_db: str, tmp_path: Path) -> None:
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (id text PRIMARY KEY, run_on timestamptz)")
    runner = MigrationRunner(write_migrations(tmp_path / "migrations"))
    with pytest.raises(MigrationRefusedError, match="not spek-sentinel's bookkeeping table"):
        runner.up(postgres_db)
    other = MigrationRunner(runner.directory, MigrationSettings(table="public.sentinel_migrations"))
    assert other.up(postgres_db).version_after == 3


def test_an_unreachable_database_is_refused_without_the_password(tmp_path: Path) -> None:
    runner = MigrationRunner(
        write_migrations(tmp_path / "migrations"), MigrationSettings(connect_timeout=2)
    )
    dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/nowhere"
    with pytest.raises(MigrationRefusedError, match="cannot connect") as caught:
        runner.down(dsn)
    assert PASSWORD not in str(caught.value)


# --- the app's own command ---

APP_MIGRATE = """
import os, sys, time
import psycopg

sys.stdout.reconfigure(line_buffering=True)  # keep stdout and stderr in order
dsn = os.environ["DATABASE_URL"]
command = sys.argv[1:]
with psycopg.connect(dsn, autocommit=True) as conn:
    if command == ["status"]:
        for version, name in conn.execute("SELECT version, name FROM app_migrations ORDER BY 1"):
            print(f"applied: {version:03d}_{name}.sql")
    elif command in (["down"], ["down", "--all"]):
        print("Rolling back migrations...")
        while True:
            row = conn.execute(
                "DELETE FROM app_migrations"
                " WHERE version = (SELECT max(version) FROM app_migrations)"
                " RETURNING version, name"
            ).fetchone()
            if row is None:
                print(f"nothing to roll back on {dsn}", file=sys.stderr)
                sys.exit(3)
            print(f"Rolled back: {row[0]:03d}_{row[1]}.sql")
            if command == ["down"]:
                break
            if not conn.execute("SELECT 1 FROM app_migrations").fetchone():
                break
    elif command == ["noisy"]:
        for n in range(200):
            print(f"line {n}")
        print(f"fatal: cannot migrate {dsn}", file=sys.stderr)
        sys.exit(1)
    elif command == ["hang"]:
        time.sleep(60)
"""


@pytest.fixture
def app_dir(postgres_db: str, tmp_path: Path) -> Path:
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE app_migrations (version int PRIMARY KEY, name text)")
        conn.execute(
            "INSERT INTO app_migrations VALUES (1, 'init'), (2, 'add_tasks'), (3, 'add_audit_logs')"
        )
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "migrate.py").write_text(APP_MIGRATE)
    return tmp_path


def app_commands(app_dir: Path, dsn: str, **changes: object) -> AppCommands:
    script = ["scripts/migrate.py"]
    # The DSN carries a password (the test cluster trusts everyone, so it is not checked):
    # it goes through the environment and must never show in output or messages.
    with_password = dsn.replace("postgres@", f"postgres:{PASSWORD}@")
    fields: dict[str, object] = {
        "down": (sys.executable, *script, "down"),
        "down_all": (sys.executable, *script, "down", "--all"),
        "status": (sys.executable, *script, "status"),
        "cwd": app_dir,
        "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DATABASE_URL": with_password},
        "timeout": 20.0,
    }
    fields.update(changes)
    return AppCommands(**fields)  # type: ignore[arg-type]


def app_versions(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM app_migrations ORDER BY 1")]


def test_app_command_rolls_back_through_the_apps_own_script(
    postgres_db: str, app_dir: Path
) -> None:
    migrator: Migrator = AppCommandMigrator(app_commands(app_dir, postgres_db))

    outcome = migrator.down()
    assert "Rolled back: 003_add_audit_logs.sql" in outcome.output
    assert app_versions(postgres_db) == [1, 2]
    status = migrator.status()
    assert "applied: 002_add_tasks.sql" in status.output
    assert "003" not in status.output

    assert "Rolled back: 002_add_tasks.sql" in migrator.down(1).output
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        conn.execute("INSERT INTO app_migrations VALUES (2, 'add_tasks'), (3, 'add_audit_logs')")
    assert migrator.down_all().summary.endswith("succeeded")
    assert app_versions(postgres_db) == []


def test_app_command_that_fails_reports_its_output_tail_without_secrets(
    postgres_db: str, app_dir: Path
) -> None:
    migrator = AppCommandMigrator(app_commands(app_dir, postgres_db))
    with pytest.raises(AppCommandError) as caught:
        migrator.down(4)  # three migrations to roll back: the fourth run fails
    error = caught.value
    assert error.completed == 3 and error.destructive
    assert "run 4 of 4" in str(error) and "exited with 3" in str(error)
    assert "nothing to roll back on postgresql://postgres:***@" in error.output
    assert PASSWORD not in str(error) and PASSWORD not in error.output

    noisy = AppCommandMigrator(
        app_commands(app_dir, postgres_db, status=(sys.executable, "scripts/migrate.py", "noisy"))
    )
    with pytest.raises(AppCommandError) as caught:
        noisy.status()
    output = caught.value.output
    assert "line 199" in output and "fatal: cannot migrate" in output
    assert "line 100" not in output, "only the tail is kept"
    assert PASSWORD not in output and not caught.value.destructive


def test_app_command_that_hangs_is_stopped_at_its_timeout(postgres_db: str, app_dir: Path) -> None:
    commands = app_commands(
        app_dir, postgres_db, down=(sys.executable, "scripts/migrate.py", "hang"), timeout=1.0
    )
    with pytest.raises(AppCommandError, match="timed out after 1s") as caught:
        AppCommandMigrator(commands).down()
    assert caught.value.destructive, "a down that was cut off may have changed the database"


def test_app_command_refuses_a_password_in_argv(postgres_db: str, app_dir: Path) -> None:
    leaky = (sys.executable, "scripts/migrate.py", "down", f"--password={PASSWORD}")
    with pytest.raises(MigrationRefusedError) as caught:
        AppCommandMigrator(app_commands(app_dir, postgres_db, down=leaky))
    assert PASSWORD not in str(caught.value)
    url = (sys.executable, "scripts/migrate.py", f"postgresql://u:{PASSWORD}@db/x")
    with pytest.raises(MigrationRefusedError, match="through the environment"):
        AppCommandMigrator(app_commands(app_dir, postgres_db, status=url))
    missing = app_commands(app_dir, postgres_db, down=("/nonexistent/node", "migrate.js", "down"))
    with pytest.raises(AppCommandError, match="could not start") as caught_start:
        AppCommandMigrator(missing).down()
    assert not caught_start.value.destructive
