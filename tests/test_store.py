"""The SQLite state store: pushed signals survive a restart until resolved; schema versioned."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from spek_sentinel.store.sqlite import MIGRATIONS, STATE_FILE, SchemaTooNewError, SqliteStore


def test_pushed_signal_is_current_until_resolved(tmp_path: Path) -> None:
    store = SqliteStore.in_dir(tmp_path)
    store.push("security_breach", 1, "api key leaked", "alice", 100.0)
    assert store.current(["security_breach", "data_corruption"])["security_breach"].by == "alice"
    assert "data_corruption" not in store.current(["data_corruption"])
    assert store.resolve("security_breach", "keys rotated", "bob", 200.0) == 1
    assert store.current(["security_breach"]) == {}
    assert store.resolve("security_breach", "again", "bob", 300.0) == 0


def test_the_newest_push_wins(tmp_path: Path) -> None:
    store = SqliteStore.in_dir(tmp_path)
    store.push("render_fps", 55, "client report", "web", 100.0)
    store.push("render_fps", 24, "client report", "web", 115.0)
    assert store.current(["render_fps"])["render_fps"].value == 24


def test_pushed_signal_survives_a_restart(tmp_path: Path) -> None:
    first = SqliteStore.in_dir(tmp_path)
    first.push("data_corruption", 1, "orphaned tasks found by DBA", "dba", 100.0)
    first.close()
    second = SqliteStore.in_dir(tmp_path)
    current = second.current(["data_corruption"])
    assert current["data_corruption"].reason == "orphaned tasks found by DBA"


def test_schema_version_is_recorded_and_a_newer_schema_is_refused(tmp_path: Path) -> None:
    SqliteStore.in_dir(tmp_path).close()
    db = sqlite3.connect(tmp_path / STATE_FILE)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(SchemaTooNewError, match="newer than this spek-sentinel knows"):
        SqliteStore.in_dir(tmp_path)


def test_store_uses_write_ahead_logging(tmp_path: Path) -> None:
    SqliteStore.in_dir(tmp_path).close()
    db = sqlite3.connect(tmp_path / STATE_FILE)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_stores_opening_a_new_state_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    import threading  # noqa: PLC0415 -- only this test races

    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def open_store() -> None:
        start.wait()
        try:
            SqliteStore.in_dir(tmp_path).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    db = sqlite3.connect(tmp_path / STATE_FILE)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
