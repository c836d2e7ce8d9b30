"""Leadership through a PostgreSQL advisory lock held on a dedicated connection.

``pg_try_advisory_lock(lock_id)`` on a connection that stays open; the fencing token is
``nextval`` of a sequence on every acquisition (sequences never go back, even after a crash).
Each renewal asks the server whether this very session still holds the lock, under a timeout;
a dead, killed or hung connection is leadership lost.

The server releases the lock the moment the session ends, not after an expiry, so the former
leader may still believe it leads for up to one ttl after a takeover: every acquisition
therefore settles for one ttl before acting. The session sets ``idle_session_timeout`` to the
ttl (PostgreSQL 14+): a leader that stops renewing (paused, hung) loses its session, and with
it the lock, one ttl later instead of holding it for as long as its TCP connection lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg import sql

from spek_sentinel.ha.fence import SCHEMA_LOCK
from spek_sentinel.ha.leader import Clock, TokenFence
from spek_sentinel.ha.lease import Acquired, BackendError, Busy, LeaseLeadership
from spek_sentinel.secrets import redact

T = TypeVar("T")
log = logging.getLogger(__name__)

SEQUENCE = "sentinel_leader_token"
APPLICATION_NAME_MAX = 63  # NAMEDATALEN - 1
_MAX_LOCK_ID = 2**63 - 1

# Who holds the one-key (bigint) advisory lock in this database: the application_name of the
# session, which every contender sets to its owner id.
_HOLDER = """
SELECT COALESCE(NULLIF(a.application_name, ''), 'the session with pid ' || l.pid)
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = %s AND l.objid::bigint = %s
"""
_MINE = """
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND pid = pg_backend_pid()
      AND classid::bigint = %s AND objid::bigint = %s
)
"""


class PostgresLeadership(LeaseLeadership):
    always_settle = True

    def __init__(
        self,
        dsn: str,
        lock_id: int,
        owner_id: str,
        ttl: float = 15.0,
        *,
        fence: TokenFence | None = None,
        clock: Clock | None = None,
        renew_interval: float | None = None,
        op_timeout: float | None = None,
        sequence: str = SEQUENCE,
    ) -> None:
        if not 0 <= lock_id <= _MAX_LOCK_ID:
            raise ValueError("lock_id must be between 0 and 2**63 - 1")
        super().__init__(
            name=f"advisory lock {lock_id}",
            owner_id=owner_id,
            ttl=ttl,
            fence=fence,
            clock=clock,
            renew_interval=renew_interval,
        )
        self.lock_id = lock_id
        self._lock_keys = (lock_id >> 32, lock_id & 0xFFFFFFFF)  # as pg_locks shows it
        self._dsn = dsn
        self._sequence = sql.Identifier(sequence)
        self._op_timeout = op_timeout if op_timeout is not None else self.renew_interval
        self._conn: psycopg.AsyncConnection[Any] | None = None

    # ---- the connection --------------------------------------------------------------------

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        conn = await self._bounded(
            psycopg.AsyncConnection.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=max(2, round(self._op_timeout)),
                application_name=self.owner_id[:APPLICATION_NAME_MAX],
                keepalives=1,
                keepalives_idle=max(1, round(self.ttl)),
                keepalives_interval=1,
                keepalives_count=3,
            )
        )
        try:
            if conn.info.server_version >= 140000:
                idle_ms = str(max(1, round(self.ttl * 1000)))
                await conn.execute(
                    "SELECT set_config('idle_session_timeout', %s, false)", (idle_ms,)
                )
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", SCHEMA_LOCK)
                await conn.execute(
                    sql.SQL("CREATE SEQUENCE IF NOT EXISTS {}").format(self._sequence)
                )
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return conn

    async def _bounded(self, call: Awaitable[T]) -> T:
        return await asyncio.wait_for(call, self._op_timeout)

    async def _fetch(
        self, query: LiteralString | sql.Composed, params: tuple[Any, ...] = ()
    ) -> Any:
        """The first column of the first row, under the operation timeout."""
        try:
            conn = await self._connection()
            cursor = await self._bounded(conn.execute(query, params))
            row = await cursor.fetchone()
        except (psycopg.Error, OSError, TimeoutError) as exc:
            await self._close()  # a connection in doubt is not reused: its locks die with it
            message = redact(str(exc) or type(exc).__name__, (self._dsn,))
            raise BackendError(f"PostgreSQL: {message}") from exc
        return None if row is None else row[0]

    # ---- the lock --------------------------------------------------------------------------

    async def _try_acquire(self, floor: int) -> Acquired | Busy:
        try:
            locked = await self._fetch("SELECT pg_try_advisory_lock(%s)", (self.lock_id,))
        except BackendError:
            # A follower's idle connection may have been ended by the server (a restart, the
            # idle-session timeout when renewals were late): one more try on a new one.
            locked = await self._fetch("SELECT pg_try_advisory_lock(%s)", (self.lock_id,))
        if locked:
            token = int(await self._fetch(sql.SQL("SELECT nextval({})").format(self._seq_text())))
            if token <= floor:
                token = floor + 1
                await self._push_counter(token)
            return Acquired(token=token, suspect=False)
        holder = await self._fetch(_HOLDER, self._lock_keys)
        last = await self._fetch(
            sql.SQL("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {}").format(
                self._sequence
            )
        )
        return Busy(holder=str(holder or ""), token=int(last or 0))

    async def _renew(self, token: int) -> bool:
        try:
            return bool(await self._fetch(_MINE, self._lock_keys))
        except BackendError as exc:
            # The session is gone or in doubt, and the server frees its locks with it.
            log.warning("leadership: %s lost its session: %s", self.owner_id, exc)
            return False

    async def _unlock(self) -> None:
        # Ending the session frees every lock it holds, however often it was taken.
        await self._close()

    async def _push_counter(self, token: int) -> None:
        await self._fetch(
            sql.SQL("SELECT setval({seq}, GREATEST(%s, (SELECT last_value FROM {name})))").format(
                seq=self._seq_text(), name=self._sequence
            ),
            (token,),
        )

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    def _seq_text(self) -> sql.Composable:
        """The sequence as a regclass argument (nextval/setval take its name as text)."""
        return sql.Literal(self._sequence.as_string(None))
