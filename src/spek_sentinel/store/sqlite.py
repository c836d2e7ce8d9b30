"""The SQLite state file (the default back end): one file under the state dir, WAL, schema
versioned by ``PRAGMA user_version``. The names here are kept for callers of the first
version; the interface both back ends share is ``store.db.StateDb``."""

from __future__ import annotations

from spek_sentinel.store.db import STATE_FILE, SqliteDb
from spek_sentinel.store.db import migrate_sqlite as migrate
from spek_sentinel.store.db import open_sqlite as open_state_db
from spek_sentinel.store.records import StateStore
from spek_sentinel.store.schema import MIGRATIONS, SchemaTooNewError

# the store of pushed signals, releases and incidents, by its first name: it runs on either
# back end (``StateStore``)
SqliteStore = StateStore

__all__ = [
    "MIGRATIONS",
    "STATE_FILE",
    "SchemaTooNewError",
    "SqliteDb",
    "SqliteStore",
    "StateStore",
    "migrate",
    "open_state_db",
]
