"""The fence in PostgreSQL: the highest fencing token handed out, recorded where the shared
state lives, so the check that really protects the data runs in the database.

Table ``sentinel_fence (name TEXT PRIMARY KEY, token BIGINT NOT NULL, holder TEXT NOT NULL,
updated_at DOUBLE PRECISION)``, one row per leadership (``name``).

* ``advance(token, holder)`` records a token only if it is higher than the recorded one
  (a conditional write: two contenders advancing at once leave the higher).
* ``check(token)`` raises ``NotLeaderError`` when a higher token is recorded (or none at all).
  Given the connection of an open transaction it reads the row ``FOR SHARE``: a new leader's
  ``advance`` then waits until that transaction ends, so a step that passed the check commits
  before the takeover is recorded, and a step that checks after it is refused.
  ``guarded(token)`` opens such a transaction for a mutating step.

The fence is synchronous (psycopg), like the rollback executor that calls it before each
step; the async leaderships call it in a worker thread.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from spek_sentinel.ha.leader import NotLeaderError
from spek_sentinel.secrets import redact

# A two-key advisory lock (a key space apart from the one-key locks leaderships use) that
# serialises CREATE ... IF NOT EXISTS, which is not safe against itself.
SCHEMA_LOCK = (0x5E7, 0xFE7CE)

_CREATE = """
CREATE TABLE IF NOT EXISTS sentinel_fence (
    name TEXT PRIMARY KEY,
    token BIGINT NOT NULL,
    holder TEXT NOT NULL,
    updated_at DOUBLE PRECISION
)
"""
_ADVANCE = """
INSERT INTO sentinel_fence AS f (name, token, holder, updated_at) VALUES (%s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE
    SET token = EXCLUDED.token, holder = EXCLUDED.holder, updated_at = EXCLUDED.updated_at
    WHERE f.token < EXCLUDED.token
RETURNING token
"""
_READ = "SELECT token, holder, updated_at FROM sentinel_fence WHERE name = %s"

Connection = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class FenceRecord:
    name: str
    token: int
    holder: str
    updated_at: float | None


class PostgresFence:
    """The fence row ``name`` in the database at ``dsn``; the table is created on first use.

    Every method without ``conn`` opens a short connection of its own (a database restart
    costs nothing more than one failed call); with ``conn`` it runs inside the caller's
    transaction and neither commits nor rolls back.
    """

    def __init__(
        self,
        dsn: str,
        name: str = "leader",
        *,
        connect_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dsn = dsn
        self.name = name
        self._connect_timeout = max(2, round(connect_timeout))  # libpq's minimum is 2
        self._clock = clock
        self._schema_ready = False

    def __repr__(self) -> str:
        return f"PostgresFence(name={self.name!r})"  # never the DSN

    # ---- connections ---------------------------------------------------------------------

    def connect(self) -> Connection:
        """A new connection to the fence's database (the caller closes it)."""
        try:
            return psycopg.connect(self._dsn, connect_timeout=self._connect_timeout)
        except psycopg.Error as exc:
            raise psycopg.OperationalError(redact(str(exc), (self._dsn,))) from None

    @contextlib.contextmanager
    def _transaction(self, conn: Connection | None) -> Iterator[Connection]:
        self.ensure_schema()
        if conn is not None:
            yield conn
            return
        with self.connect() as own, own.transaction():
            yield own

    def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self.connect() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", SCHEMA_LOCK)
            conn.execute(_CREATE)
        self._schema_ready = True

    # ---- the fence -------------------------------------------------------------------------

    def current(self, *, conn: Connection | None = None) -> FenceRecord | None:
        with self._transaction(conn) as db:
            row = db.execute(_READ, (self.name,)).fetchone()
        if row is None:
            return None
        return FenceRecord(self.name, int(row[0]), str(row[1]), row[2])

    def highest(self) -> int:
        record = self.current()
        return 0 if record is None else record.token

    def advance(self, token: int, holder: str, *, conn: Connection | None = None) -> bool:
        """Record ``token`` for ``holder`` if it is higher than the recorded token; True if it
        was recorded. Waits for transactions that checked the fence (``FOR SHARE``) to end."""
        with self._transaction(conn) as db:
            row = db.execute(_ADVANCE, (self.name, token, holder, self._clock())).fetchone()
        return row is not None

    def check(self, token: int, *, conn: Connection | None = None) -> None:
        """Raise NotLeaderError unless ``token`` is the highest recorded (or higher). Inside
        ``conn``'s transaction the row stays share-locked until that transaction ends."""
        with self._transaction(conn) as db:
            row = db.execute(_READ + " FOR SHARE", (self.name,)).fetchone()
        if row is None:
            raise NotLeaderError(
                f"fence {self.name!r}: no fencing token is recorded, so token {token} cannot "
                "be vouched for; a leader records its token when it acquires the lock",
                token=token,
            )
        recorded, holder = int(row[0]), str(row[1])
        if token < recorded:
            raise NotLeaderError(
                f"fence {self.name!r}: fencing token {token} is stale; {holder} holds the "
                f"newer token {recorded}",
                holder=holder,
                token=token,
                current_token=recorded,
            )

    @contextlib.contextmanager
    def guarded(self, token: int) -> Iterator[Connection]:
        """A transaction that has passed ``check(token)``: run the mutating step's statements
        on the connection it yields; it commits when the block ends without an error."""
        self.ensure_schema()
        with self.connect() as conn, conn.transaction():
            self.check(token, conn=conn)
            yield conn
