"""The sample app's `migrate up|down|status` and spek-sentinel's MigrationRunner keep the same
books: each carries on where the other stopped, on a real PostgreSQL database."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest

from harness.spek_app import APP_DIR, MIGRATIONS_DIR, query_one
from spek_sentinel.rollback.app_migrations import AppCommandMigrator, AppCommands
from spek_sentinel.rollback.migrations import (
    MigrationRefusedError,
    MigrationRunner,
    MigrationStepError,
    SqlMigrator,
    current_version,
)


def app_migrate(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The app's own command, as the runbook's `node scripts/migrate.js ...`."""
    return subprocess.run(
        [sys.executable, "-m", "spek_app", "migrate", *args],
        env={**os.environ, "PYTHONPATH": str(APP_DIR), "SPEK_APP_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {str(r[0]) for r in rows}


def test_app_and_sentinel_migrations_round_trip(postgres_db: str) -> None:
    runner = MigrationRunner(MIGRATIONS_DIR)
    assert [m.version for m in runner.migrations()] == [1, 2, 3, 4]  # the directory passes

    # the app migrates up as v1.1.0 would: to 003
    out = ok(app_migrate(postgres_db, "up", "--version", "v1.1.0"))
    assert "Applied: 003_add_audit_logs.up.sql" in out
    states = runner.status(postgres_db)
    assert [(s.version, s.state) for s in states] == [
        (1, "applied"),
        (2, "applied"),
        (3, "applied"),
        (4, "pending"),
    ]
    assert current_version(states) == 3  # same name, same checksum: no drift

    # the sentinel rolls back one step (runbook option A); the app sees it
    run = runner.down(postgres_db, steps=1)
    assert (run.version_before, run.version_after) == (3, 2)
    assert "audit_logs" not in tables(postgres_db)
    status = ok(app_migrate(postgres_db, "status"))
    assert "003_add_audit_logs: pending" in status
    assert "database at version 2" in status

    # the sentinel migrates up again; the app rolls everything back (option B)
    assert runner.up(postgres_db, to=3).version_after == 3
    out = ok(app_migrate(postgres_db, "down", "--all"))
    assert out.index("003_add_audit_logs.down.sql") < out.index("001_create_agents.down.sql")
    assert tables(postgres_db) == {"schema_migrations"}
    assert current_version(runner.status(postgres_db)) == 0

    # v1.0.0's `migrate up` stops at 002; the sentinel's status agrees
    ok(app_migrate(postgres_db, "up", "--version", "v1.0.0"))
    assert SqlMigrator(runner, postgres_db).status().summary == "at version 2"
    assert tables(postgres_db) == {"schema_migrations", "agents", "agent_tasks"}


def test_migration_004_fails_the_same_way_under_both(postgres_db: str) -> None:
    ok(app_migrate(postgres_db, "up", "--to", "3"))
    failed = app_migrate(postgres_db, "up", "--version", "v2.0.0-badmigration")
    assert failed.returncode == 1
    assert "Migration failed: 004_add_task_priority.up.sql" in failed.stderr
    assert "database is at version 3" in failed.stderr

    with pytest.raises(MigrationStepError) as caught:
        MigrationRunner(MIGRATIONS_DIR).up(postgres_db)
    assert (caught.value.failed, caught.value.version) == ("004_add_task_priority.up.sql", 3)
    assert query_one(postgres_db, "SELECT max(version) FROM schema_migrations") == 3
    assert "task_priorities" not in tables(postgres_db)


def test_the_app_command_is_a_migrator_for_the_sentinel(postgres_db: str) -> None:
    """spek-sentinel's AppCommandMigrator runs the app's `migrate down|status`, the DSN in the
    child's environment only."""
    ok(app_migrate(postgres_db, "up", "--to", "3"))
    python = (sys.executable, "-m", "spek_app", "migrate")
    migrator = AppCommandMigrator(
        AppCommands(
            down=(*python, "down"),
            down_all=(*python, "down", "--all"),
            status=(*python, "status"),
            cwd=APP_DIR,
            env={
                "PATH": os.environ["PATH"],
                "PYTHONPATH": str(APP_DIR),
                "SPEK_APP_DSN": postgres_db,
            },
        )
    )
    outcome = migrator.down()
    assert "Rolled back: 003_add_audit_logs.down.sql" in outcome.output
    assert "003_add_audit_logs: pending" in migrator.status().output
    assert current_version(MigrationRunner(MIGRATIONS_DIR).status(postgres_db)) == 2


def test_app_and_sentinel_share_the_migration_lock(postgres_db: str) -> None:
    """A migration by one is never run next to one by the other: the same advisory lock."""
    from spek_app.migrate import LOCK_KEY  # noqa: PLC0415 - on the path the harness sets

    with psycopg.connect(postgres_db, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        with pytest.raises(MigrationRefusedError, match="another migration runner"):
            MigrationRunner(MIGRATIONS_DIR).up(postgres_db, to=2)
        busy = app_migrate(postgres_db, "up", "--to", "2")
        assert busy.returncode == 1
        assert "another migration is running" in busy.stderr
        holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    assert MigrationRunner(MIGRATIONS_DIR).up(postgres_db, to=2).version_after == 2
