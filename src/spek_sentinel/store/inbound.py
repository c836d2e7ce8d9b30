"""Replay protection for inbound answers (PagerDuty webhooks, Slack buttons), kept in the state
database so a restart does not reopen the window.

Each verified delivery we act on is recorded once as ``(source, event_id)``; a second delivery
with the same pair is a replay. Signatures already bound each delivery to a time window
(``max_age`` either side of our clock), so a row only has to outlive that window: rows older than
``2 * max_age`` are pruned as new ones arrive, and the table stays a few hundred rows at most.

``INBOUND_MIGRATION`` is the schema, one of ``store.schema.MIGRATIONS``. It uses ``CREATE TABLE IF
NOT EXISTS`` on purpose: ``ReplayGuard.ensure_schema`` created the same table before the migration
was appended, and a state file created that way must still migrate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spek_sentinel.store.ddl import ddl

if TYPE_CHECKING:  # store.db imports the schema, which imports this module
    from spek_sentinel.store.db import StateDb

# DDL only, no ';' inside: migrations are split on ';'.
INBOUND_MIGRATION = """
    CREATE TABLE IF NOT EXISTS inbound_seen (
        source TEXT NOT NULL,
        event_id TEXT NOT NULL,
        seen_at REAL NOT NULL,
        PRIMARY KEY (source, event_id)
    );
    """

DEFAULT_MAX_AGE = 300.0  # seconds; the same window the verifiers in paging.inbound use


class ReplayGuard:
    """Remembers which inbound deliveries were already accepted, across restarts and processes
    sharing the state database (the primary key makes the check-and-record one atomic
    statement). The caller owns ``db``."""

    def __init__(self, db: StateDb, max_age: float = DEFAULT_MAX_AGE) -> None:
        if max_age <= 0:
            raise ValueError("max_age must be positive")
        self._db = db
        self._keep = 2.0 * max_age

    def ensure_schema(self) -> None:
        """Create the table when the state's migrations do not include it (they do since
        schema version 7: then this changes nothing)."""
        for statement in ddl(INBOUND_MIGRATION, self._db.dialect):
            self._db.execute(statement)

    def first_time(self, source: str, event_id: str, now: float) -> bool:
        """Record ``(source, event_id)`` as seen at ``now``; True when it was not seen before
        (within the kept window), False for a replay."""
        self._db.execute("DELETE FROM inbound_seen WHERE seen_at < ?", (now - self._keep,))
        inserted = self._db.execute(
            "INSERT INTO inbound_seen (source, event_id, seen_at) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (source, event_id, now),
        )
        return inserted.rowcount == 1

    def prune(self, now: float) -> int:
        """Forget deliveries older than ``2 * max_age``; returns how many rows went."""
        return self._db.execute(
            "DELETE FROM inbound_seen WHERE seen_at < ?", (now - self._keep,)
        ).rowcount
