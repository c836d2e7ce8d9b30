"""`spek-sentinel rollback` end to end: a playbook planned, dry-run, then carried out against a
real Docker engine and a real PostgreSQL, with the journal, report and release history."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import psycopg
import pytest

from rollback.test_app_docker import V1, V2, App, app, app_images
from rollback.test_restore_container import PASSWORD, USER, pg_container, psql
from spek_sentinel.cli import main
from spek_sentinel.rollback.backup import list_backups

__all__ = ["app", "app_images", "pg_container"]

TABLE = """
[sentinel]
state_dir = "{root}/state"

[rollback]
backup_dir = "{root}/backups"
incidents_dir = "{root}/incidents"
step_timeout = "60s"

[rollback.database]
dsn_env = "PLAYBOOK_TEST_DSN"

[rollback.application]
kind = "docker"
container = "{container}"

[probes.app]
kind = "http"
url = "http://127.0.0.1:{port}/"
start_grace = "0s"
timeout = "2s"
signals.app_up = {{ unit = "bool", measure = "up" }}

[probes.database]
kind = "postgres"
dsn_env = "PLAYBOOK_TEST_DSN"
signals.db_up = {{ unit = "bool", measure = "up" }}

[playbooks.high_error_rate]
scenario = "Scenario 2: high error rate after deployment"
application = "previous_release"

[playbooks.performance_degradation]
scenario = "Scenario 4: performance degradation"
application = "previous_release"

[playbooks.data_corruption]
scenario = "Scenario 3: data corruption detected"
database = ["restore"]
restore_from = "last_known_good"
application = "none"

[[rules]]
name = "app_wont_start"
signal = "app_up"
kind = "threshold"
severity = "immediate"
below = 1
playbook = "high_error_rate"
"""


@pytest.fixture
def table(
    tmp_path: Path, app: App, postgres_db: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    with psycopg.connect(postgres_db, autocommit=True) as db:
        db.execute("CREATE TABLE projects (id int primary key, name text)")
        db.execute("INSERT INTO projects VALUES (1, 'atlantis'), (2, 'loop 3')")
    monkeypatch.setenv("PLAYBOOK_TEST_DSN", postgres_db)
    path = tmp_path / "thresholds.toml"
    path.write_text(TABLE.format(root=tmp_path, container=app.name, port=app.port), "utf-8")
    app.run(V2)
    app.wait_serving("v2")
    yield str(path)


def test_dry_run_prints_the_plan_in_the_runbooks_order_and_changes_nothing(
    table: str, app: App, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["rollback", "-c", table, "--playbook", "high_error_rate", "--to", V1, "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    steps = [line.split(". ", 1)[1].split(":")[0] for line in out.splitlines() if ". " in line]
    assert steps == [
        "document the incident",
        "pre-flight",
        "emergency backup and verify",
        "stop traffic",
        "application rollback",
        "restart",
        "verify",
    ]
    assert f"-> {V1}" in out and "dry run: nothing was changed" in out
    assert app.served() == "v2"
    assert list_backups(tmp_path / "backups") == []


def test_without_yes_nothing_is_stopped(
    table: str, app: App, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rollback", "-c", table, "--playbook", "high_error_rate", "--to", V1]) == 1
    assert "add --yes" in capsys.readouterr().err
    assert app.served() == "v2"


@pytest.mark.parametrize("playbook", ["high_error_rate", "performance_degradation"])
def test_previous_release_playbooks_return_the_previous_image_with_the_data_intact(  # noqa: PLR0917 -- fixtures
    table: str,
    app: App,
    tmp_path: Path,
    postgres_db: str,
    capsys: pytest.CaptureFixture[str],
    playbook: str,
) -> None:
    args = ["rollback", "-c", table, "--playbook", playbook, "--to", V1, "--yes"]
    args += ["--reason", "error rate 8% after v2"]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "rollback succeeded; downtime" in out

    app.wait_serving("v1")
    [backup] = list_backups(tmp_path / "backups")
    assert (backup.label, backup.sha256 is not None) == ("emergency", True)
    with psycopg.connect(postgres_db) as db:
        assert db.execute("SELECT count(*) FROM projects").fetchone() == (2,)

    assert main(["incidents", "-c", table]) == 0
    [line] = capsys.readouterr().out.splitlines()
    incident = line.split()[0]
    assert "succeeded" in line
    assert main(["incidents", "-c", table, "show", incident]) == 0
    report = capsys.readouterr().out
    assert "- Status: **succeeded**" in report and "- Downtime: " in report
    assert "- Trigger: error rate 8% after v2" in report  # kept in the state store
    assert "| 7 | verify | succeeded |" in report
    assert (tmp_path / "incidents" / f"{incident}.md").read_text("utf-8").startswith("# Incident")

    assert main(["releases", "-c", table, "--json"]) == 0
    current = json.loads(capsys.readouterr().out.splitlines()[0])
    assert (current["version"], current["source"]) == (V1, "rollback")


def test_a_playbook_that_needs_a_backup_nobody_took_is_refused_before_anything_runs(
    table: str, app: App, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rollback", "-c", table, "--playbook", "data_corruption", "--yes"]) == 1
    assert "no verified 'last_known_good' backup" in capsys.readouterr().err
    assert app.served() == "v2"


MIGRATIONS = {
    "001_projects.up.sql": "CREATE TABLE projects (id int primary key, name text);",
    "001_projects.down.sql": "DROP TABLE projects;",
    "002_agents.up.sql": "CREATE TABLE agents (id int primary key, project int);",
    "002_agents.down.sql": "DROP TABLE agents;",
    "003_add_audit_logs.up.sql": (
        "CREATE TABLE audit_logs (id int); ALTER TABLE projects ADD COLUMN audited boolean;"
    ),
    "003_add_audit_logs.down.sql": (
        "ALTER TABLE projects DROP COLUMN audited; DROP TABLE audit_logs;"
    ),
}

MIGRATION_FAILED = """
[playbooks.migration_failed]
scenario = "Scenario 1: migration failed during deployment"
database = ["migrate_down", "restore"]
restore_from = "pre_deployment"
application = "previous_release"
"""


def test_migration_failed_playbook_restores_the_pre_deployment_data_and_keeps_the_damage(
    tmp_path: Path,
    app: App,
    postgres_db: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from spek_sentinel.rollback.migrations import MigrationRunner, MigrationSettings  # noqa: PLC0415

    migrations = tmp_path / "migrations"
    migrations.mkdir()
    for name, text in MIGRATIONS.items():
        (migrations / name).write_text(text, encoding="utf-8")
    runner = MigrationRunner(migrations, MigrationSettings())
    runner.up(postgres_db, to=2)
    with psycopg.connect(postgres_db, autocommit=True) as db:
        db.execute("INSERT INTO projects VALUES (1, 'atlantis'), (2, 'loop 3')")
    monkeypatch.setenv("PLAYBOOK_TEST_DSN", postgres_db)
    text = TABLE.format(root=tmp_path, container=app.name, port=app.port)
    text = text.replace(
        'dsn_env = "PLAYBOOK_TEST_DSN"\n\n[rollback.application]',
        f'dsn_env = "PLAYBOOK_TEST_DSN"\nmigrations_dir = "{migrations}"\n\n[rollback.application]',
    )
    table = tmp_path / "thresholds.toml"
    table.write_text(text + MIGRATION_FAILED, encoding="utf-8")

    # the deploy: backup first (release record), then its migration, then the new image
    assert main(["release", "record", "-c", str(table), V2]) == 0
    runner.up(postgres_db)
    with psycopg.connect(postgres_db, autocommit=True) as db:
        db.execute("UPDATE projects SET name = 'broken by 003', audited = false")
    app.run(V2)
    app.wait_serving("v2")
    capsys.readouterr()

    args = ["rollback", "-c", str(table), "--playbook", "migration_failed", "--to", V1, "--yes"]
    assert main(args) == 0, capsys.readouterr().err

    app.wait_serving("v1")
    with psycopg.connect(postgres_db) as db:
        rows = db.execute("SELECT id, name FROM projects ORDER BY id").fetchall()
        columns = db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'projects'"
            " ORDER BY ordinal_position"
        ).fetchall()
        # <db>_damaged_<UTC stamp>, the name cut to PostgreSQL's 63 bytes: 38 of it stay
        prefix = psycopg.conninfo.conninfo_to_dict(postgres_db)["dbname"][:38]
        damaged = db.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            (prefix.replace("_", "\\_") + "\\_damaged\\_%",),
        ).fetchall()
    assert rows == [(1, "atlantis"), (2, "loop 3")]  # the pre-deployment data, row by row
    assert [c for (c,) in columns] == ["id", "name"]  # 003 is gone
    assert len(damaged) == 1  # the damaged database is kept for forensics
    report = capsys.readouterr().out
    assert "rollback succeeded" in report


def test_a_missing_previous_image_halts_at_pre_flight_before_traffic_stops(
    table: str, app: App, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = "spek-sentinel-test/app:v9"
    args = ["rollback", "-c", table, "--playbook", "high_error_rate", "--to", missing, "--yes"]
    assert main(args) == 1
    assert f"rollback target {missing} does not exist" in capsys.readouterr().err
    assert app.served() == "v2"  # never stopped
    assert list_backups(tmp_path / "backups") == []  # halted before the backup step


def test_data_corruption_playbook_stops_restores_the_last_known_good_backup_and_restarts(
    table: str, app: App, postgres_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backup", "-c", table]) == 0  # the routine last-known-good backup (cron)
    with psycopg.connect(postgres_db, autocommit=True) as db:
        db.execute("DELETE FROM projects WHERE id = 2")
        db.execute("UPDATE projects SET name = 'corrupted'")
    capsys.readouterr()

    args = ["rollback", "-c", table, "--playbook", "data_corruption", "--yes"]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out

    steps = [line.split(". ", 1)[1].split(":")[0] for line in out.splitlines() if ". " in line]
    assert steps[:5] == [
        "document the incident",
        "pre-flight",
        "emergency backup and verify",
        "stop traffic",
        "database restore",
    ]
    with psycopg.connect(postgres_db) as db:
        rows = db.execute("SELECT id, name FROM projects ORDER BY id").fetchall()
    assert rows == [(1, "atlantis"), (2, "loop 3")]
    app.wait_serving("v2")  # the same release, restarted


def test_data_corruption_playbook_restores_inside_the_database_container(  # noqa: PLR0917 -- fixtures
    tmp_path: Path,
    app: App,
    pg_container: str,
    docker_engine: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The shipped table's way: [rollback.database] names the container, and the database is
    reachable only through docker exec (no DSN, nothing published)."""
    dbname = f"spek_{uuid.uuid4().hex[:10]}"

    def sql(command: str, database: str = dbname) -> str:
        return psql(pg_container, database, command, client=docker_engine)

    def databases() -> list[str]:  # this one, and what the restore left beside it
        named = "SELECT datname FROM pg_database WHERE starts_with(datname, '{}')"
        return sql(named.format(dbname), "postgres").splitlines()

    sql(f"CREATE DATABASE {dbname}", "postgres")
    try:
        sql("CREATE TABLE projects (id int primary key, name text);"
            " INSERT INTO projects VALUES (1, 'atlantis'), (2, 'loop 3')")  # fmt: skip
        monkeypatch.setenv("PLAYBOOK_TEST_PG_PASSWORD", PASSWORD)
        text = TABLE.format(root=tmp_path, container=app.name, port=app.port)
        text = text.replace(
            '[rollback.database]\ndsn_env = "PLAYBOOK_TEST_DSN"\n',
            f'[rollback.database]\ncontainer = "{pg_container}"\ndbname = "{dbname}"\n'
            f'user = "{USER}"\npassword_env = "PLAYBOOK_TEST_PG_PASSWORD"\n',
        )
        probe = text.index("[probes.database]")  # no DSN to probe it by from here
        text = text[:probe] + text[text.index("[playbooks.", probe) :]
        table = tmp_path / "thresholds.toml"
        table.write_text(text, encoding="utf-8")
        app.run(V2)
        app.wait_serving("v2")
        assert main(["backup", "-c", str(table)]) == 0, capsys.readouterr().err
        sql("DELETE FROM projects WHERE id = 2; UPDATE projects SET name = 'corrupted'")
        capsys.readouterr()

        args = ["rollback", "-c", str(table), "--playbook", "data_corruption", "--yes"]
        assert main(args) == 0, capsys.readouterr().err
        out, err = capsys.readouterr()

        steps = [line.split(". ", 1)[1].split(":")[0] for line in out.splitlines() if ". " in line]
        assert steps[:5] == [
            "document the incident",
            "pre-flight",
            "emergency backup and verify",
            "stop traffic",
            "database restore",
        ]
        assert sql("SELECT id, name FROM projects ORDER BY id") == "1|atlantis\n2|loop 3"
        damaged = [name for name in databases() if name.startswith(f"{dbname}_damaged_")]
        assert len(damaged) == 1, "the damaged database is kept for forensics"
        assert sql("SELECT id, name FROM projects", damaged[0]) == "1|corrupted"
        [report] = (tmp_path / "incidents").glob("*.md")
        assert "| database restore | succeeded |" in report.read_text(encoding="utf-8")
        app.wait_serving("v2")  # the same release, restarted
        leaked = [
            path
            for path in tmp_path.rglob("*")
            if path.is_file() and PASSWORD.encode() in path.read_bytes()
        ]
        assert PASSWORD not in out + err and leaked == [], "the password is written nowhere"
    finally:
        for name in databases():
            sql(f'DROP DATABASE "{name}" WITH (FORCE)', "postgres")


SECURITY_BREACH = """
[playbooks.security_breach]
scenario = "Scenario 5: security breach detected"
stop_first = true
rotate_secrets = ["SESSION_SECRET", "JWT_SECRET"]
database = ["restore"]
restore_from = "last_known_good"
application = "none"
"""


def test_security_breach_playbook_rotates_the_secrets_and_restores_the_database(
    table: str, app: App, postgres_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("SESSION_SECRET=leaked-1\nJWT_SECRET=leaked-2\nPORT=3000\n", "utf-8")
    text = (
        Path(table)
        .read_text(encoding="utf-8")
        .replace("[rollback]\n", f'[rollback]\nenv_file = "{env_file}"\n', 1)
    )
    Path(table).write_text(text + SECURITY_BREACH, encoding="utf-8")
    assert main(["backup", "-c", table]) == 0
    with psycopg.connect(postgres_db, autocommit=True) as db:
        db.execute("UPDATE projects SET name = 'defaced'")
    capsys.readouterr()

    args = ["rollback", "-c", table, "--playbook", "security_breach", "--yes"]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out

    env = env_file.read_text(encoding="utf-8")
    assert "leaked-1" not in env and "leaked-2" not in env and "PORT=3000" in env
    assert "leaked" not in out  # old secrets never logged
    with psycopg.connect(postgres_db) as db:
        names = db.execute("SELECT name FROM projects ORDER BY id").fetchall()
    assert names == [("atlantis",), ("loop 3",)]
    app.wait_serving("v2")


APP_MIGRATE = """
import sys
from pathlib import Path

import psycopg

dsn = Path(__file__).with_name("dsn").read_text().strip()
with psycopg.connect(dsn, autocommit=True) as db:
    if sys.argv[1:] == ["down"]:
        db.execute("ALTER TABLE projects DROP COLUMN IF EXISTS audited")
        print("Rolled back: 003_add_audit_logs.sql")
    elif sys.argv[1:] == ["status"]:
        print("ok")
    else:
        sys.exit(f"unexpected {sys.argv[1:]}")
"""


def test_the_apps_own_migrate_command_rolls_the_migration_back(
    table: str, app: App, postgres_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys  # noqa: PLC0415 -- the venv's python runs the stand-in for migrate.js

    scripts = tmp_path / "atlantis-ui"
    scripts.mkdir()
    (scripts / "migrate.py").write_text(APP_MIGRATE, encoding="utf-8")
    (scripts / "dsn").write_text(postgres_db, encoding="utf-8")
    migrate = [sys.executable, "migrate.py"]
    text = (
        Path(table)
        .read_text(encoding="utf-8")
        .replace(
            'dsn_env = "PLAYBOOK_TEST_DSN"\n\n[rollback.application]',
            'dsn_env = "PLAYBOOK_TEST_DSN"\n'
            f"migrate_down_command = {json.dumps([*migrate, 'down'])}\n"
            f"migrate_down_all_command = {json.dumps([*migrate, 'down', '--all'])}\n"
            f"migrate_status_command = {json.dumps([*migrate, 'status'])}\n"
            f'migrate_cwd = "{scripts}"\n\n[rollback.application]',
        )
    )
    text += (
        '\n[playbooks.bad_migration]\nscenario = "Scenario 1, option A"\n'
        'database = ["migrate_down"]\napplication = "previous_release"\n'
    )
    Path(table).write_text(text, encoding="utf-8")
    with psycopg.connect(postgres_db, autocommit=True) as db:
        db.execute("ALTER TABLE projects ADD COLUMN audited boolean")

    args = ["rollback", "-c", table, "--playbook", "bad_migration", "--to", V1, "--yes"]
    assert main(args) == 0, capsys.readouterr().err

    with psycopg.connect(postgres_db) as db:
        columns = db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'projects'"
            " ORDER BY ordinal_position"
        ).fetchall()
    assert [c for (c,) in columns] == ["id", "name"]
    [report] = (tmp_path / "incidents").glob("*.md")
    assert "Rolled back: 003_add_audit_logs.sql" in report.read_text(encoding="utf-8")
    app.wait_serving("v1")


def test_a_release_that_fails_verification_halts_the_run_and_the_report_says_so(
    table: str, app: App, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.docker_engine import BUSYBOX_IMAGE  # noqa: PLC0415

    text = (
        Path(table)
        .read_text(encoding="utf-8")
        .replace('step_timeout = "60s"', 'step_timeout = "8s"')
    )
    Path(table).write_text(text, encoding="utf-8")
    # the busybox image exists but serves nothing: the rollback lands and verification fails
    args = [
        "rollback",
        "-c",
        table,
        "--playbook",
        "high_error_rate",
        "--to",
        BUSYBOX_IMAGE,
        "--yes",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "rollback halted" in err and "verification failed" in err and "app_up is up" in err
    [report] = (tmp_path / "incidents").glob("*.md")
    assert "| 7 | verify | failed |" in report.read_text(encoding="utf-8")


def test_a_playbook_can_migrate_down_to_a_named_version(
    table: str, app: App, postgres_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from spek_sentinel.rollback.migrations import MigrationRunner, MigrationSettings  # noqa: PLC0415

    migrations = tmp_path / "migrations"
    migrations.mkdir()
    for name, text in MIGRATIONS.items():
        (migrations / name).write_text(text, encoding="utf-8")
    with psycopg.connect(postgres_db, autocommit=True) as db:
        db.execute("DROP TABLE projects")  # the fixture's table; migration 001 makes it
    MigrationRunner(migrations, MigrationSettings()).up(postgres_db)
    text = (
        Path(table)
        .read_text(encoding="utf-8")
        .replace(
            'dsn_env = "PLAYBOOK_TEST_DSN"\n\n[rollback.application]',
            f'dsn_env = "PLAYBOOK_TEST_DSN"\nmigrations_dir = "{migrations}"\n\n'
            "[rollback.application]",
        )
    )
    text += (
        '\n[playbooks.back_to_one]\nscenario = "Scenario 1, to a named version"\n'
        'database = ["migrate_down"]\nmigrate_to_version = 1\napplication = "none"\n'
    )
    Path(table).write_text(text, encoding="utf-8")

    assert main(["rollback", "-c", table, "--playbook", "back_to_one", "--yes"]) == 0, (
        capsys.readouterr().err
    )
    with psycopg.connect(postgres_db) as db:
        tables = db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            " AND table_name <> 'schema_migrations' ORDER BY table_name"
        ).fetchall()
    assert tables == [("projects",)]


def test_a_rebuild_playbook_keeps_the_current_release(
    table: str, app: App, capsys: pytest.CaptureFixture[str]
) -> None:
    text = Path(table).read_text(encoding="utf-8") + (
        '\n[playbooks.clear_cache]\nscenario = "Phase 3 option B: keep code, clear cache"\n'
        'application = "rebuild"\n'
    )
    Path(table).write_text(text, encoding="utf-8")
    assert main(["rollback", "-c", table, "--playbook", "clear_cache", "--yes"]) == 0, (
        capsys.readouterr().err
    )
    assert "application rebuild" in capsys.readouterr().out
    app.wait_serving("v2")
