"""The state schema, written once for both back ends: ``MIGRATIONS`` is SQLite-flavoured DDL
(the shape every existing state file was created with); PostgreSQL runs the same text through
``store.ddl.postgres_ddl``. SQLite versions it in ``PRAGMA user_version``, PostgreSQL in the
``sentinel_schema`` table."""

from __future__ import annotations

import re

from spek_sentinel.store.ddl import ddl, postgres_ddl, statements
from spek_sentinel.store.inbound import INBOUND_MIGRATION

__all__ = [
    "MIGRATIONS",
    "TABLES",
    "SchemaTooNewError",
    "ddl",
    "postgres_ddl",
    "statements",
]

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
    """The state was written by a newer spek-sentinel: migrating it down would lose data."""

    def __init__(self, version: int, known: int, where: str) -> None:
        super().__init__(
            f"state schema version {version} is newer than this spek-sentinel knows "
            f"({known}); run the newer version or restore a matching {where}"
        )
        self.version = version
        self.known = known


# every table the migrations create, in a fixed order: a PostgreSQL write transaction locks
# them all, in this order, in one statement
TABLES: tuple[str, ...] = tuple(
    dict.fromkeys(
        match.group(1)
        for migration in MIGRATIONS
        for match in re.finditer(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", migration)
    )
)
