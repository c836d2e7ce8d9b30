"""SQLite state store: one file under the state dir, WAL, schema versioned by user_version."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from spek_sentinel.store.base import IncidentRecord, PushedSignal, Release
from spek_sentinel.store.inbound import INBOUND_MIGRATION

STATE_FILE = "sentinel.sqlite3"

# Append only: each entry migrates from version index to index + 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE pushed_signals (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        value REAL NOT NULL,
        reason TEXT NOT NULL,
        pushed_by TEXT NOT NULL,
        pushed_at REAL NOT NULL,
        resolved_at REAL,
        resolved_by TEXT,
        resolve_reason TEXT
    );
    CREATE INDEX pushed_signals_open ON pushed_signals (name, resolved_at, pushed_at);
    """,
    """
    CREATE TABLE releases (
        id INTEGER PRIMARY KEY,
        version TEXT NOT NULL,
        first_seen REAL NOT NULL,
        healthy_since REAL,
        known_good_at REAL,
        source TEXT NOT NULL
    );
    CREATE INDEX releases_by_time ON releases (first_seen);
    """,
    """
    CREATE TABLE rollback_runs (
        incident_id TEXT PRIMARY KEY,
        plan_fingerprint TEXT NOT NULL,
        plan TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'halted', 'failed')),
        reason TEXT NOT NULL,
        owner TEXT NOT NULL,
        fencing_token INTEGER NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        downtime_started_at REAL,
        downtime_ended_at REAL,
        budget_exceeded_at REAL
    );
    CREATE TABLE rollback_steps (
        incident_id TEXT NOT NULL REFERENCES rollback_runs (incident_id),
        step_index INTEGER NOT NULL,
        name TEXT NOT NULL,
        idempotent INTEGER NOT NULL,
        destructive INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('claimed', 'succeeded', 'failed', 'skipped')),
        attempt INTEGER NOT NULL,
        owner TEXT NOT NULL,
        fencing_token INTEGER NOT NULL,
        claimed_at REAL NOT NULL,
        ended_at REAL,
        duration REAL,
        output TEXT NOT NULL,
        error TEXT NOT NULL,
        verified_backup TEXT,
        PRIMARY KEY (incident_id, step_index)
    );
    """,
    """
    CREATE TABLE incidents (
        id TEXT PRIMARY KEY,
        opened_at REAL NOT NULL,
        trigger TEXT NOT NULL,
        playbook TEXT NOT NULL,
        target_release TEXT,
        details TEXT NOT NULL
    );
    """,
    """
    CREATE TABLE page_outbox (
        id INTEGER PRIMARY KEY,
        pager TEXT NOT NULL,
        dedup_key TEXT NOT NULL,
        notice TEXT NOT NULL,
        created_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed', 'expired')),
        last_error TEXT NOT NULL DEFAULT '',
        ended_at REAL
    );
    CREATE INDEX page_outbox_due ON page_outbox (status, next_attempt_at);
    """,
    """
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        dedup_key TEXT NOT NULL,
        incident TEXT,
        kind TEXT NOT NULL,
        urgency TEXT NOT NULL,
        summary TEXT NOT NULL,
        rules TEXT NOT NULL,
        playbook TEXT,
        state TEXT NOT NULL CHECK (state IN ('open', 'acknowledged', 'resolved')),
        opened_at REAL NOT NULL,
        escalation_started_at REAL NOT NULL,
        level INTEGER NOT NULL,
        notified_at REAL NOT NULL,
        acked_by TEXT,
        acked_at REAL,
        ack_note TEXT NOT NULL DEFAULT '',
        resolved_at REAL,
        resolution TEXT NOT NULL DEFAULT '',
        rollback_at REAL,
        notice TEXT NOT NULL
    );
    CREATE UNIQUE INDEX alerts_live_key ON alerts (dedup_key) WHERE state != 'resolved';
    CREATE TABLE alert_actions (
        id INTEGER PRIMARY KEY,
        alert_id INTEGER NOT NULL REFERENCES alerts (id),
        answer TEXT NOT NULL CHECK (answer IN ('acknowledge', 'rollback', 'dismiss')),
        actor TEXT NOT NULL,
        note TEXT NOT NULL,
        source TEXT NOT NULL,
        at REAL NOT NULL,
        applied_at REAL,
        outcome TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX alert_actions_pending ON alert_actions (applied_at, id);
    """,
    INBOUND_MIGRATION,
    """
    CREATE TABLE sentinel_state (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        saved_at REAL NOT NULL
    );
    """,
)


class SchemaTooNewError(RuntimeError):
    pass


def migrate(connection: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; returns it. Refuses a newer schema than known,
    which means a newer spek-sentinel wrote this file: downgrading would lose data."""
    # BEGIN IMMEDIATE takes the write lock before the version is read, so two processes
    # opening a new state file at once do not both run the same migration
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = int(connection.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise SchemaTooNewError(
                f"state schema version {version} is newer than this spek-sentinel knows "
                f"({len(MIGRATIONS)}); run the newer version or restore a matching state file"
            )
        for index in range(version, len(MIGRATIONS)):
            for statement in MIGRATIONS[index].split(";"):  # DDL only: no ';' inside literals
                if statement.strip():
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {index + 1}")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return len(MIGRATIONS)


def open_state_db(path: Path, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    """A connection to the state file: autocommit (transactions are explicit), WAL, durable
    commits, the schema migrated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    db.execute("PRAGMA synchronous = FULL")
    migrate(db)
    return db


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = open_state_db(path)

    @classmethod
    def in_dir(cls, state_dir: Path) -> SqliteStore:
        return cls(state_dir / STATE_FILE)

    def push(self, name: str, value: float, reason: str, by: str, at: float) -> PushedSignal:
        with self._lock:
            self._db.execute(
                "INSERT INTO pushed_signals (name, value, reason, pushed_by, pushed_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, value, reason, by, at),
            )
        return PushedSignal(name, value, reason, by, at)

    def resolve(self, name: str, reason: str, by: str, at: float) -> int:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE pushed_signals SET resolved_at = ?, resolved_by = ?, resolve_reason = ? "
                "WHERE name = ? AND resolved_at IS NULL",
                (at, by, reason, name),
            )
            return cursor.rowcount

    def current(self, names: list[str]) -> dict[str, PushedSignal]:
        found: dict[str, PushedSignal] = {}
        with self._lock:
            for name in names:
                row = self._db.execute(
                    "SELECT value, reason, pushed_by, pushed_at FROM pushed_signals "
                    "WHERE name = ? AND resolved_at IS NULL ORDER BY pushed_at DESC, id DESC "
                    "LIMIT 1",
                    (name,),
                ).fetchone()
                if row is not None:
                    found[name] = PushedSignal(name, float(row[0]), row[1], row[2], float(row[3]))
        return found

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- incidents --------------------------------------------------------------------------

    def record_incident(self, incident: IncidentRecord) -> None:
        """Write (or rewrite, on a resumed run) what an incident is about."""
        with self._lock:
            self._db.execute(
                "INSERT INTO incidents (id, opened_at, trigger, playbook, target_release, details)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " trigger = excluded.trigger, playbook = excluded.playbook,"
                " target_release = excluded.target_release, details = excluded.details",
                (
                    incident.id,
                    incident.opened_at,
                    incident.trigger,
                    incident.playbook,
                    incident.target_release,
                    incident.details,
                ),
            )

    def incident(self, incident_id: str) -> IncidentRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, opened_at, trigger, playbook, target_release, details FROM incidents"
                " WHERE id = ?",
                (incident_id,),
            ).fetchone()
        return IncidentRecord(*row) if row is not None else None

    # -- releases ---------------------------------------------------------------------------

    def record_release(self, version: str, at: float, source: str) -> Release:
        """A release started. Recording the one already current changes nothing."""
        with self._lock:
            current = self._current_release()
            if current is not None and current.version == version:
                return current
            self._db.execute(
                "INSERT INTO releases (version, first_seen, source) VALUES (?, ?, ?)",
                (version, at, source),
            )
            latest = self._current_release()
        assert latest is not None
        return latest

    def mark_healthy(self, at: float, healthy: bool, known_good_after: float) -> Release | None:
        """Every rule is OK (``healthy``) or not at ``at``. A release healthy without a break for
        ``known_good_after`` becomes known good, and stays so."""
        with self._lock:
            current = self._current_release()
            if current is None:
                return None
            since = current.healthy_since if healthy else None
            if healthy and since is None:
                since = at
            known_good = current.known_good_at
            if known_good is None and since is not None and at - since >= known_good_after:
                known_good = at
            self._db.execute(
                "UPDATE releases SET healthy_since = ?, known_good_at = ? WHERE id = ?",
                (since, known_good, current.id),
            )
            return self._current_release()

    def releases(self) -> list[Release]:
        with self._lock:
            rows = self._db.execute(_RELEASES_NEWEST_FIRST).fetchall()
        return [Release(*row) for row in rows]

    def rollback_target(self) -> Release | None:
        """The newest known-good release that is not the current one."""
        history = self.releases()
        if not history:
            return None
        current = history[0]
        for release in history[1:]:
            if release.known_good_at is not None and release.version != current.version:
                return release
        return None

    def _current_release(self) -> Release | None:
        row = self._db.execute(_RELEASES_NEWEST_FIRST + " LIMIT 1").fetchone()
        return Release(*row) if row is not None else None


_RELEASES_NEWEST_FIRST = (
    "SELECT id, version, first_seen, healthy_since, known_good_at, source FROM releases "
    "ORDER BY first_seen DESC, id DESC"
)
