"""The release history: known good after a healthy period; the rollback target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spek_sentinel.cli import main
from spek_sentinel.store.open import StateLocation
from spek_sentinel.store.records import StateStore

HOUR = 3600.0


def test_recording_the_current_release_again_changes_nothing(state: StateLocation) -> None:
    store = StateStore.open(state)
    first = store.record_release("spek:1.4.0", 100.0, "deploy")
    again = store.record_release("spek:1.4.0", 200.0, "detected")
    assert again == first
    assert [r.version for r in store.releases()] == ["spek:1.4.0"]


def test_a_release_healthy_for_the_period_becomes_known_good(state: StateLocation) -> None:
    store = StateStore.open(state)
    store.record_release("spek:1.4.0", 0.0, "deploy")
    store.mark_healthy(0.0, healthy=True, known_good_after=HOUR)
    store.mark_healthy(1800.0, healthy=False, known_good_after=HOUR)  # a breach: start again
    store.mark_healthy(1900.0, healthy=True, known_good_after=HOUR)
    not_yet = store.mark_healthy(1900.0 + HOUR - 1, healthy=True, known_good_after=HOUR)
    assert not_yet is not None and not_yet.known_good_at is None
    good = store.mark_healthy(1900.0 + HOUR, healthy=True, known_good_after=HOUR)
    assert good is not None and good.known_good_at == 1900.0 + HOUR
    later = store.mark_healthy(9 * HOUR, healthy=False, known_good_after=HOUR)
    assert later is not None and later.known_good_at == 1900.0 + HOUR  # stays known good


def test_the_rollback_target_is_the_newest_known_good_release_that_is_not_current(
    state: StateLocation,
) -> None:
    store = StateStore.open(state)
    for index, version in enumerate(["1.3.0", "1.4.0", "1.5.0"]):
        store.record_release(version, index * 10 * HOUR, "deploy")
        if version != "1.5.0":
            store.mark_healthy(index * 10 * HOUR, healthy=True, known_good_after=HOUR)
            store.mark_healthy(index * 10 * HOUR + HOUR, healthy=True, known_good_after=HOUR)
    target = store.rollback_target()
    assert target is not None and target.version == "1.4.0"


def test_no_known_good_release_means_no_target(state: StateLocation) -> None:
    store = StateStore.open(state)
    store.record_release("1.4.0", 0.0, "deploy")
    store.record_release("1.5.0", HOUR, "deploy")
    assert store.rollback_target() is None


def test_release_record_and_releases_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "thresholds.toml"
    shipped = (Path(__file__).parent.parent / "thresholds.toml").read_text(encoding="utf-8")
    table.write_text(
        shipped.replace("[sentinel]\n", f'[sentinel]\nstate_dir = "{tmp_path / "state"}"\n', 1),
        encoding="utf-8",
    )
    assert main(["release", "record", "-c", str(table), "spek:1.5.0", "--no-backup"]) == 0
    assert "release spek:1.5.0 current since" in capsys.readouterr().out
    assert main(["releases", "-c", str(table), "--json"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["version"] == "spek:1.5.0"
    assert main(["release", "record", "-c", str(table), "  ", "--no-backup"]) == 1


def dsn_table(tmp_path: Path) -> Path:
    table = tmp_path / "thresholds.toml"
    table.write_text(
        f"""
[sentinel]
state_dir = "{tmp_path / "state"}"

[rollback]
backup_dir = "{tmp_path / "backups"}"

[rollback.database]
dsn_env = "RELEASE_TEST_DSN"

[probes.confirmed]
kind = "pushed"
signals.data_corruption = {{ unit = "count", measure = "event" }}

[[rules]]
name = "data_corruption"
signal = "data_corruption"
kind = "event"
severity = "evaluate"
""",
        encoding="utf-8",
    )
    return table


def test_release_record_takes_a_verified_pre_deployment_backup_first(
    tmp_path: Path,
    postgres_db: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import psycopg  # noqa: PLC0415 -- only this test needs a database

    with psycopg.connect(postgres_db, autocommit=True) as db:
        db.execute("CREATE TABLE projects (id int primary key, name text)")
        db.execute("INSERT INTO projects VALUES (1, 'atlantis')")
    monkeypatch.setenv("RELEASE_TEST_DSN", postgres_db)
    table = str(dsn_table(tmp_path))

    assert main(["release", "record", "-c", table, "spek:1.5.0"]) == 0
    captured = capsys.readouterr()
    assert "pre_deployment backup verified:" in captured.err
    assert "release spek:1.5.0 current since" in captured.out

    assert main(["backups", "-c", table, "--json"]) == 0
    [backup] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (backup["label"], backup["verified"]) == ("pre_deployment", True)
    assert Path(backup["path"]).is_file()
    assert backup["release"] is None  # taken before the release it precedes was recorded

    assert main(["backup", "-c", table]) == 0
    capsys.readouterr()
    assert main(["backups", "-c", table, "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    [routine] = [b for b in listed if b["label"] == "last_known_good"]
    assert routine["release"] == "spek:1.5.0"  # marked with the release it belongs to


def test_a_failed_pre_deployment_backup_records_no_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RELEASE_TEST_DSN", "postgresql://postgres@127.0.0.1:1/gone")
    table = str(dsn_table(tmp_path))
    assert main(["release", "record", "-c", table, "spek:1.5.0"]) == 1
    assert "NOT recorded: the pre-deployment backup failed" in capsys.readouterr().err
    assert main(["releases", "-c", table, "--json"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["backups", "-c", table]) == 0
    assert "no backups in" in capsys.readouterr().out
    # the next incident would have nothing to restore: a critical alert for the daemon to page
    assert main(["alerts", "-c", table, "--json"]) == 0
    [alert] = json.loads(capsys.readouterr().out)
    assert (alert["dedup_key"], alert["urgency"], alert["state"]) == (
        "backup:pre_deployment",
        "critical",
        "open",
    )
    assert "backup FAILED" in alert["summary"]


def test_the_daemon_takes_routine_backups_while_all_is_well_and_pages_a_failure(
    tmp_path: Path, postgres_db: str
) -> None:
    import asyncio  # noqa: PLC0415
    import time  # noqa: PLC0415

    from spek_sentinel.config import load_config  # noqa: PLC0415
    from spek_sentinel.domain.samples import Sample  # noqa: PLC0415
    from spek_sentinel.paging.desk import AlertDesk  # noqa: PLC0415
    from spek_sentinel.rollback.backup import list_backups  # noqa: PLC0415
    from spek_sentinel.service.daemon import Generation  # noqa: PLC0415

    config = load_config(str(dsn_table(tmp_path)))

    async def routine(environ: dict[str, str]) -> None:
        generation = Generation(config, environ, time.time)
        # every rule judged OK on a real sample: what "all is well" means
        generation.watch.sentinel.observe(Sample("data_corruption", time.time(), value=0.0))
        try:
            await generation._routine_backup()
        finally:
            await generation.stop()

    asyncio.run(routine({"RELEASE_TEST_DSN": postgres_db}))
    [backup] = list_backups(tmp_path / "backups")
    assert backup.label == "last_known_good" and backup.sha256 is not None

    asyncio.run(routine({"RELEASE_TEST_DSN": "postgresql://postgres@127.0.0.1:1/gone"}))
    assert len(list_backups(tmp_path / "backups")) == 1  # nothing unverified kept
    desk = AlertDesk.in_dir(tmp_path / "state", config.escalation)
    try:
        [alert] = desk.store.alerts()
    finally:
        desk.close()
    assert (alert.dedup_key, alert.urgency) == ("backup:last_known_good", "critical")


def test_a_backup_is_marked_with_the_schema_version_it_holds(
    tmp_path: Path, postgres_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spek_sentinel.rollback.backup import list_backups  # noqa: PLC0415
    from spek_sentinel.rollback.migrations import (  # noqa: PLC0415
        MigrationRunner,
        MigrationSettings,
    )

    migrations = tmp_path / "migrations"
    migrations.mkdir()
    for number, table in ((1, "projects"), (2, "tasks")):
        (migrations / f"00{number}_{table}.up.sql").write_text(
            f"CREATE TABLE {table} (id int primary key)", encoding="utf-8"
        )
        (migrations / f"00{number}_{table}.down.sql").write_text(
            f"DROP TABLE {table}", encoding="utf-8"
        )
    MigrationRunner(migrations, MigrationSettings()).up(postgres_db)
    table = dsn_table(tmp_path)
    text = table.read_text(encoding="utf-8")
    table.write_text(
        text.replace(
            'dsn_env = "RELEASE_TEST_DSN"',
            f'dsn_env = "RELEASE_TEST_DSN"\nmigrations_dir = "{migrations}"',
        ),
        encoding="utf-8",
    )
    monkeypatch.setenv("RELEASE_TEST_DSN", postgres_db)
    assert main(["backup", "-c", str(table)]) == 0
    [backup] = list_backups(tmp_path / "backups")
    assert backup.schema == "2"


def test_no_routine_backup_under_a_release_not_yet_known_good(
    tmp_path: Path, postgres_db: str
) -> None:
    import asyncio  # noqa: PLC0415
    import time  # noqa: PLC0415

    from spek_sentinel.config import load_config  # noqa: PLC0415
    from spek_sentinel.domain.samples import Sample  # noqa: PLC0415
    from spek_sentinel.rollback.backup import list_backups  # noqa: PLC0415
    from spek_sentinel.service.daemon import Generation  # noqa: PLC0415

    config = load_config(str(dsn_table(tmp_path)))
    store = StateStore.in_dir(tmp_path / "state")
    try:
        store.record_release("spek:2.0.0", time.time(), "deploy")  # just deployed
    finally:
        store.close()

    async def routine() -> None:
        generation = Generation(config, {"RELEASE_TEST_DSN": postgres_db}, time.time)
        generation.watch.sentinel.observe(Sample("data_corruption", time.time(), value=0.0))
        try:
            await generation._routine_backup()
        finally:
            await generation.stop()

    asyncio.run(routine())
    # its data may already be damaged: a restore must never pick it as "last known good"
    assert list_backups(tmp_path / "backups") == []
