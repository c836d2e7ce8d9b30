"""PostgreSQL and Redis: a few pooled async connections, the agent_tasks queries, and the Redis
keys (a request counter, a task queue, a cached summary), all under the configured prefix."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import psycopg
import redis.asyncio
from psycopg.rows import TupleRow

AConn = psycopg.AsyncConnection[TupleRow]
STATUSES = ("queued", "running", "succeeded", "failed")
QUERY_TIMEOUT_MS = 5000


class Pool:
    """At most ``size`` connections, opened on demand; a broken one is dropped, not reused."""

    def __init__(self, dsn: str, size: int = 4) -> None:
        self._dsn = dsn
        self._idle: list[AConn] = []
        self._slots = asyncio.Semaphore(size)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AConn]:
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed or conn.broken:
                conn = await psycopg.AsyncConnection.connect(
                    self._dsn,
                    autocommit=True,
                    connect_timeout=3,
                    application_name="spek-app",
                    options=f"-c statement_timeout={QUERY_TIMEOUT_MS}",
                )
            try:
                yield conn
            finally:
                if (
                    conn.broken
                    or conn.closed
                    or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
                ):
                    await conn.close()
                else:
                    self._idle.append(conn)

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().close()


class Store:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def ping(self) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("SELECT 1")

    async def schema_version(self) -> int:
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            ).fetchone()
        return int(row[0]) if row else 0

    async def agents(self) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            rows = await (await conn.execute("SELECT id, name FROM agents ORDER BY id")).fetchall()
        return [{"id": r[0], "name": r[1]} for r in rows]

    async def create_task(self, kind: str, agent: str | None, actor: str, audit: bool) -> int:
        """A queued task for ``agent`` (by name; the least busy agent when None). With
        ``audit`` (v1.1.0 and later) an audit_logs row is written in the same transaction."""
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "INSERT INTO agent_tasks (agent_id, kind, status)"
                " SELECT a.id, %s, 'queued' FROM agents a"
                " WHERE (%s::text IS NULL OR a.name = %s)"
                " ORDER BY (SELECT count(*) FROM agent_tasks t"
                "   WHERE t.agent_id = a.id AND t.status = 'queued'), a.id LIMIT 1"
                " RETURNING id",
                (kind, agent, agent),
            )
            row = await cursor.fetchone()
            if row is None:
                raise LookupError(f"no agent named {agent!r}")
            task_id = int(row[0])
            if audit:
                await conn.execute(
                    "INSERT INTO audit_logs (actor, action, task_id)"
                    " VALUES (%s, 'task.create', %s)",
                    (actor, task_id),
                )
        return task_id

    async def task(self, task_id: int) -> dict[str, Any] | None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(f"{_SELECT_TASK} WHERE t.id = %s", (task_id,))
            row = await cursor.fetchone()
        return _task(row) if row else None

    async def tasks(self, limit: int) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(f"{_SELECT_TASK} ORDER BY t.id DESC LIMIT %s", (limit,))
            rows = await cursor.fetchall()
        return [_task(r) for r in rows]

    async def counts(self) -> dict[str, int]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute("SELECT status, count(*) FROM agent_tasks GROUP BY status")
            rows = await cursor.fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    async def start_task(self, task_id: int) -> str | None:
        """Marks a queued task running; its kind, or None when it is not queued (any more)."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE agent_tasks SET status = 'running', attempts = attempts + 1"
                " WHERE id = %s AND status = 'queued' RETURNING kind",
                (task_id,),
            )
            row = await cursor.fetchone()
        return str(row[0]) if row else None

    async def finish_task(self, task_id: int, outcome: str, duration_ms: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE agent_tasks SET status = %s, duration_ms = %s, finished_at = now()"
                " WHERE id = %s",
                (outcome, duration_ms, task_id),
            )

    async def finish_task_corrupted(self, task_id: int, outcome: str, duration_ms: int) -> None:
        """v2.0.0-corrupt's finish: each task is damaged in one of four ways, by its id."""
        variant = task_id % 4
        statement = (
            # the task moves to an agent that does not exist (an orphan row)
            "UPDATE agent_tasks SET status = %s, duration_ms = %s, finished_at = now(),"
            " agent_id = agent_id + 100000 WHERE id = %s",
            # finished an hour before it was created
            "UPDATE agent_tasks SET status = %s, duration_ms = %s,"
            " finished_at = created_at - interval '1 hour' WHERE id = %s",
            # a negative duration
            "UPDATE agent_tasks SET status = %s, duration_ms = -1 - %s, finished_at = now()"
            " WHERE id = %s",
            # an outcome that is no status at all, and no finish time
            "UPDATE agent_tasks SET status = %s::text || '?', duration_ms = %s WHERE id = %s",
        )[variant]
        async with self.pool.connection() as conn:
            await conn.execute(statement.encode(), (outcome, duration_ms, task_id))


_SELECT_TASK = (
    "SELECT t.id, a.name, t.kind, t.status, t.attempts, t.duration_ms, t.created_at,"
    " t.finished_at FROM agent_tasks t LEFT JOIN agents a ON a.id = t.agent_id"
)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _task(row: TupleRow) -> dict[str, Any]:
    return {
        "id": row[0],
        "agent": row[1],
        "kind": row[2],
        "status": row[3],
        "attempts": row[4],
        "duration_ms": row[5],
        "created_at": _iso(row[6]),
        "finished_at": _iso(row[7]),
    }


class Cache:
    """The app's Redis keys, all under ``prefix``."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def ping(self) -> None:
        await self.client.ping()

    async def count_request(self) -> int:
        return int(await self.client.incr(self.key("api_requests")))

    async def requests(self) -> int:
        return int(await self.client.get(self.key("api_requests")) or 0)

    async def enqueue(self, task_id: int) -> None:
        await self.client.lpush(self.key("agent_queue"), str(task_id))

    async def next_task(self, wait: float) -> int | None:
        found = await self.client.brpop([self.key("agent_queue")], timeout=wait)
        return int(found[1]) if found else None

    async def cached_counts(self) -> dict[str, int] | None:
        raw = await self.client.hgetall(self.key("task_counts"))
        return {_text(k): int(v) for k, v in raw.items()} if raw else None

    async def cache_counts(self, counts: dict[str, int], ttl: float) -> None:
        key = self.key("task_counts")
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if counts:
                pipe.hset(key, mapping=counts)  # type: ignore[arg-type]
            pipe.pexpire(key, int(ttl * 1000))
            await pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
