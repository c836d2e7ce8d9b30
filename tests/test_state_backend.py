"""Which state database the config picks (``[sentinel] state_dsn_env`` / ``state_dsn_file``:
PostgreSQL, else SQLite under ``state_dir``), and the daemon and the CLI on PostgreSQL: every
store they open is the configured one, shared by separate processes."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from harness.daemon import DaemonProcess
from harness.http_receiver import HttpReceiver
from harness.ports import free_port
from harness.wait import wait_until
from spek_sentinel.cli import main
from spek_sentinel.config import load_config
from spek_sentinel.domain.errors import ConfigError
from spek_sentinel.paging.desk import AlertDesk
from spek_sentinel.store.db import STATE_FILE, PostgresDb, SqliteDb
from spek_sentinel.store.open import StateLocation, open_state, state_location
from spek_sentinel.store.records import StateStore
from spek_sentinel.store.state import POLICY, StateDocuments

TOKEN = "state-backend-test-token-5d1e"  # noqa: S105 -- test values
WEBHOOK_SECRET = "state-backend-webhook-secret-91aa"  # noqa: S105
PASSWORD = "state-dsn-password-c0ffee"  # noqa: S105 -- trust auth ignores it; logs must not show it

SENTINEL = """
[sentinel]
state_dir = "{state_dir}"
{dsn_keys}
"""

TABLE = """
[api]
listen = "127.0.0.1:{port}"
token_env = "T_API_TOKEN"

[probes.client]
kind = "pushed"
interval = "1s"
signals.render_fps = {{ unit = "fps", measure = "value" }}

[[rules]]
name = "low_render_fps"
signal = "render_fps"
kind = "threshold"
severity = "evaluate"
below = 30
for = "2s"

[pagers.relay]
type = "webhook"
url = "{relay}/page"
secret_env = "T_WEBHOOK_SECRET"

[escalation]
renotify_every = "0s"
"""


def write_table(tmp_path: Path, dsn_keys: str, port: int = 0, relay: str = "") -> Path:
    table = tmp_path / "thresholds.toml"
    text = SENTINEL.format(state_dir=tmp_path / "state", dsn_keys=dsn_keys)
    text += TABLE.format(port=port or free_port(), relay=relay or "http://127.0.0.1:9")
    table.write_text(text, encoding="utf-8")
    return table


def with_password(dsn: str) -> str:
    return dsn.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)


# -- choosing the back end ----------------------------------------------------------------------


def test_without_a_dsn_the_state_is_the_sqlite_file_under_state_dir(tmp_path: Path) -> None:
    config = load_config(write_table(tmp_path, ""))
    location = state_location(config, {})
    assert location == StateLocation.sqlite(tmp_path / "state" / STATE_FILE)
    db = open_state(config.model.sentinel, {})
    assert isinstance(db, SqliteDb) and (tmp_path / "state" / STATE_FILE).exists()
    db.close()


def test_a_dsn_from_the_environment_or_a_file_means_postgresql(
    tmp_path: Path, postgres_db: str
) -> None:
    config = load_config(write_table(tmp_path, 'state_dsn_env = "T_STATE_DSN"'))
    location = state_location(config, {"T_STATE_DSN": with_password(postgres_db)})
    assert location.dialect == "postgresql" and location.source == "T_STATE_DSN"
    assert PASSWORD not in repr(location) and PASSWORD not in location.where
    assert location.secrets == (with_password(postgres_db),)  # for the log redactor
    db = location.open()
    assert isinstance(db, PostgresDb) and PASSWORD not in db.where
    db.close()

    secret = tmp_path / "state.dsn"
    secret.write_text(postgres_db + "\n", encoding="utf-8")
    from_file = load_config(write_table(tmp_path, f'state_dsn_file = "{secret}"'))
    assert state_location(from_file, {}) == StateLocation.postgres(postgres_db, str(secret))
    assert not (tmp_path / "state" / STATE_FILE).exists()


def test_both_dsn_keys_are_refused_and_a_missing_secret_is_named(tmp_path: Path) -> None:
    both = write_table(tmp_path, 'state_dsn_env = "T_STATE_DSN"\nstate_dsn_file = "/x"')
    with pytest.raises(ConfigError, match="state_dsn_env or state_dsn_file, not both"):
        load_config(both)
    config = load_config(write_table(tmp_path, 'state_dsn_env = "T_STATE_DSN"'))
    with pytest.raises(ConfigError, match=r"sentinel\.state_dsn_env.*not set"):
        state_location(config, {})


# -- the CLI --------------------------------------------------------------------------------------


@pytest.fixture
def pg_table(
    tmp_path: Path, postgres_db: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, StateLocation]]:
    monkeypatch.setenv("T_STATE_DSN", with_password(postgres_db))
    table = write_table(tmp_path, 'state_dsn_env = "T_STATE_DSN"')
    yield str(table), StateLocation.postgres(postgres_db)
    assert not (tmp_path / "state" / STATE_FILE).exists()  # nothing went to SQLite


def test_the_commands_use_the_configured_postgresql_state(
    pg_table: tuple[str, StateLocation], capsys: pytest.CaptureFixture[str]
) -> None:
    table, state = pg_table
    assert main(["signal", "-c", table, "render_fps", "--value", "12", "--reason", "p10"]) == 0
    said = capsys.readouterr().out
    assert "postgresql://127.0.0.1" in said and PASSWORD not in said
    assert main(["release", "record", "-c", table, "spek:1.5.0", "--no-backup"]) == 0
    assert main(["releases", "-c", table, "--json"]) == 0
    capsys.readouterr()
    assert main(["check", "-c", table, "--json"]) == 1  # WARNING: the pushed value breaches
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "WARNING"
    assert main(["incidents", "-c", table]) == 0
    assert "no rollbacks recorded" in capsys.readouterr().out

    store = StateStore.open(state)
    assert store.current(["render_fps"])["render_fps"].value == 12
    assert [release.version for release in store.releases()] == ["spek:1.5.0"]
    store.close()


def test_a_command_without_its_state_secret_says_which_and_exits_1(
    pg_table: tuple[str, StateLocation],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    table, _ = pg_table
    monkeypatch.delenv("T_STATE_DSN")
    for command in (["signal", "render_fps", "--value", "1", "--reason", "x"], ["alerts"]):
        assert main([command[0], "-c", table, *command[1:]]) == 1
        assert "sentinel.state_dsn_env" in capsys.readouterr().err


# -- the daemon -----------------------------------------------------------------------------------


def test_the_daemon_keeps_every_piece_of_state_in_postgresql(
    tmp_path: Path, postgres_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Signals pushed over the API, the alert and its pages, a human's answer given with the
    CLI (another process) and carried out by the daemon, the policy saved at SIGTERM: all in
    the PostgreSQL database, none in a state file. The DSN's password is never logged."""
    dsn = with_password(postgres_db)
    secrets = {"T_STATE_DSN": dsn, "T_API_TOKEN": TOKEN, "T_WEBHOOK_SECRET": WEBHOOK_SECRET}
    state = StateLocation.postgres(postgres_db)
    port = free_port()
    with HttpReceiver(status=200) as relay:
        table = write_table(tmp_path, 'state_dsn_env = "T_STATE_DSN"', port, relay.url)
        daemon = DaemonProcess(table, port, secrets, tmp_path / "daemon.log")
        try:
            daemon.start()
            pushed = daemon.post(
                "/api/v1/signals",
                headers={"Authorization": f"Bearer {TOKEN}"},
                json={"name": "render_fps", "value": 12, "reason": "client report"},
            )
            assert pushed.status_code == 201, pushed.text
            desk = AlertDesk.open(state, load_config(table).escalation)

            def paged() -> list[Any]:
                return relay.received

            wait_until(paged, timeout=30, message="the alert was never paged")
            [alert] = desk.store.alerts()
            assert alert.rules == ("low_render_fps",)
            assert [entry.status for entry in desk.outbox.entries()] == ["delivered"]

            with pytest.MonkeyPatch.context() as env:
                env.setenv("T_STATE_DSN", dsn)
                assert main(["ack", "-c", str(table), str(alert.id), "--by", "alice"]) == 0
            capsys.readouterr()

            found = desk.store.get(alert.id)
            assert found is not None and found.acked_by == "alice"

            def carried_out() -> bool:
                return desk.pending_actions() == []

            wait_until(carried_out, timeout=30, message="the daemon never carried out the ack")
            [action] = desk.store.actions(alert.id)
            assert (action.by, action.source, action.applied_at is not None) == (
                "alice",
                "cli",
                True,
            )
            desk.close()
            assert daemon.get("/api/v1/incidents").json() == {"incidents": []}

            daemon.send(signal.SIGTERM)
            assert daemon.wait(timeout=30) == 0
        finally:
            daemon.close()
        logged = (tmp_path / "daemon.log").read_text(encoding="utf-8")
    assert PASSWORD not in logged
    documents = StateDocuments.open(state)
    assert documents.load(POLICY) is not None
    documents.close()
    assert not (tmp_path / "state" / STATE_FILE).exists()


def test_a_lost_postgresql_session_is_replaced_on_the_next_call(postgres_db: str) -> None:
    """The server ended the session (a restart, a failover, idle_in_transaction timeout): the
    call that meets it fails, the next one runs on a new session."""
    store = StateStore.open(StateLocation.postgres(postgres_db))
    store.push("render_fps", 24, "client report", "web", 100.0)
    with psycopg.connect(postgres_db, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'spek-sentinel' AND datname = current_database()"
        )
    with pytest.raises(psycopg.OperationalError):
        store.current(["render_fps"])
    assert store.current(["render_fps"])["render_fps"].value == 24
    store.close()


def test_run_with_its_state_database_unreachable_says_so_and_exits_69(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/state?connect_timeout=2"
    monkeypatch.setenv("T_STATE_DSN", gone)
    monkeypatch.setenv("T_API_TOKEN", TOKEN)
    monkeypatch.setenv("T_WEBHOOK_SECRET", WEBHOOK_SECRET)
    table = write_table(tmp_path, 'state_dsn_env = "T_STATE_DSN"')
    assert main(["run", "-c", str(table), "--log-json"]) == 69  # EX_UNAVAILABLE: not the table
    err = capsys.readouterr().err
    assert "the state database cannot be reached" in err
    assert PASSWORD not in err
