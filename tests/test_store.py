"""The state store, on SQLite and on PostgreSQL alike: pushed signals survive a restart until
resolved; the schema is versioned, migrated once when several processes open a new state at
the same moment, and a newer schema than known is refused."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from spek_sentinel.domain.alerts import Alert, AlertState
from spek_sentinel.store.alerts import AlertStore
from spek_sentinel.store.db import PostgresDb, SqliteDb, to_format
from spek_sentinel.store.open import StateLocation
from spek_sentinel.store.records import StateStore
from spek_sentinel.store.sqlite import MIGRATIONS, STATE_FILE, SchemaTooNewError, SqliteStore
from spek_sentinel.store.state import POLICY, StateDocuments
from state_helpers import CHILD_STATE, schema_version, set_schema_version, state_arg


def test_pushed_signal_is_current_until_resolved(state: StateLocation) -> None:
    store = StateStore.open(state)
    store.push("security_breach", 1, "api key leaked", "alice", 100.0)
    assert store.current(["security_breach", "data_corruption"])["security_breach"].by == "alice"
    assert "data_corruption" not in store.current(["data_corruption"])
    assert store.resolve("security_breach", "keys rotated", "bob", 200.0) == 1
    assert store.current(["security_breach"]) == {}
    assert store.resolve("security_breach", "again", "bob", 300.0) == 0
    store.close()


def test_the_newest_push_wins(state: StateLocation) -> None:
    store = StateStore.open(state)
    store.push("render_fps", 55, "client report", "web", 100.0)
    store.push("render_fps", 24.5, "client report", "web", 115.0)
    assert store.current(["render_fps"])["render_fps"].value == 24.5
    store.close()


def test_pushed_signal_survives_a_restart(state: StateLocation) -> None:
    first = StateStore.open(state)
    first.push("data_corruption", 1, "orphaned tasks found by DBA", "dba", 100.0)
    first.close()
    second = StateStore.open(state)
    current = second.current(["data_corruption"])
    assert current["data_corruption"].reason == "orphaned tasks found by DBA"
    assert current["data_corruption"].at == 100.0
    second.close()


def test_times_keep_full_precision(state: StateLocation) -> None:
    """Seconds since the epoch with milliseconds need a double (PostgreSQL's REAL is 4 bytes)."""
    store = StateStore.open(state)
    store.push("render_fps", 59.94, "client report", "web", 1_795_575_900.123)
    [pushed] = store.current(["render_fps"]).values()
    assert (pushed.value, pushed.at) == (59.94, 1_795_575_900.123)
    store.close()


def test_schema_version_is_recorded_and_a_newer_schema_is_refused(state: StateLocation) -> None:
    StateStore.open(state).close()
    assert schema_version(state) == len(MIGRATIONS)
    set_schema_version(state, len(MIGRATIONS) + 1)
    with pytest.raises(SchemaTooNewError, match="newer than this spek-sentinel knows"):
        StateStore.open(state)
    assert schema_version(state) == len(MIGRATIONS) + 1  # left as it was


def test_the_back_end_is_the_one_asked_for(state: StateLocation) -> None:
    db = state.open()
    assert isinstance(db, SqliteDb if state.path is not None else PostgresDb)
    assert db.dialect == state.dialect
    assert "@" not in db.where and "password" not in db.where
    db.close()


def test_store_uses_write_ahead_logging(tmp_path: Path) -> None:
    SqliteStore.in_dir(tmp_path).close()
    db = sqlite3.connect(tmp_path / STATE_FILE)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


OPEN_WHEN_TOLD = (
    CHILD_STATE
    + """
print("ready", flush=True)
sys.stdin.readline()  # every process is started and waits here: then all open at once
state.open().close()
print("migrated", flush=True)
"""
)


def test_processes_opening_a_new_state_at_once_migrate_it_once(state: StateLocation) -> None:
    """Every migration creates its tables without IF NOT EXISTS: a second run of one would
    fail, so six processes that all succeed migrated exactly once between them."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_WHEN_TOLD, state_arg(state)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
    for process in processes:  # the go signal, to all of them in a row
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    outcomes = [process.communicate(timeout=60) for process in processes]
    assert [(p.returncode, out) for p, (out, _) in zip(processes, outcomes, strict=True)] == [
        (0, "migrated\n")
    ] * 6, [err for _, err in outcomes]
    assert schema_version(state) == len(MIGRATIONS)


def test_placeholders_become_psycopg_ones_outside_quotes() -> None:
    assert to_format("SELECT * FROM t WHERE a = ? AND b LIKE 'x%?' AND c = ?") == (
        "SELECT * FROM t WHERE a = %s AND b LIKE 'x%%?' AND c = %s"
    )


def test_state_documents_are_saved_replaced_and_kept_across_a_restart(
    state: StateLocation,
) -> None:
    documents = StateDocuments.open(state)
    assert documents.load(POLICY) is None
    documents.save(POLICY, {"incident": "inc-1", "cooldown_until": 1_795_579_500.5}, 100.0)
    documents.save(POLICY, {"incident": None, "cooldown_until": 1_795_579_500.5}, 200.0)
    documents.close()
    reopened = StateDocuments.open(state)
    assert reopened.load(POLICY) == {"incident": None, "cooldown_until": 1_795_579_500.5}
    reopened.save("list", [1, 2], 300.0)  # type: ignore[arg-type]  # not what save takes
    with pytest.raises(ValueError, match="not a JSON object"):
        reopened.load("list")
    reopened.close()


def test_alert_counts_and_ids_are_the_same_on_both(state: StateLocation) -> None:
    """``sum(state = 'open')`` is SQLite only: the count is written once, for both."""
    desk_db = state.open()
    store = AlertStore(desk_db)
    opened = [
        store.insert(
            Alert(
                id=0,
                dedup_key=f"inc-{n}",
                incident=f"inc-{n}",
                kind="page",
                urgency="warning",
                summary="slow",
                rules=("slow_responses",),
                playbook=None,
                state=AlertState.OPEN,
                opened_at=100.0,
                escalation_started_at=100.0,
                level=0,
                notified_at=100.0,
            ),
            "{}",
        )
        for n in range(3)
    ]
    assert [alert.id for alert in opened] == [1, 2, 3]
    with store.transaction():
        store.update(replace(opened[0], state=AlertState.ACKNOWLEDGED, acked_by="alice"))
        store.update(replace(opened[1], state=AlertState.RESOLVED))
    assert store.counts() == (2, 1)
    assert store.notice(opened[0].id) == "{}"  # kept when an update gives none
    desk_db.close()


def test_a_failed_transaction_leaves_nothing_behind(state: StateLocation) -> None:
    db = state.open()
    store = StateStore(db)
    with pytest.raises(RuntimeError, match="changed my mind"), db.transaction():
        store.push("security_breach", 1, "api key leaked", "alice", 100.0)
        with db.transaction():  # joins the outer one
            store.push("data_corruption", 1, "orphaned rows", "dba", 100.0)
        raise RuntimeError("changed my mind")
    assert store.current(["security_breach", "data_corruption"]) == {}
    store.close()
