"""PostgreSQL: can the sentinel connect, how fast, and what the database says about itself.

Each collection opens a fresh connection and closes it afterwards. The connect is what ``up``
and ``connect_latency`` measure, so a kept connection would hide exactly the failures that
matter (max_connections exhausted, a restarted server, a broken pg_hba.conf), and after a
cancelled collection its state would be unknown. One connection per interval costs nothing.

Measures (``measure`` in a signal; ``sql`` where noted):

- ``up``: 1 when connect + ``SELECT 1`` work within the budget; 0 when the server cannot be
  reached, refuses the connection, does not answer in time or is not PostgreSQL. The server
  rejecting the probe's own credentials is not "database down": every signal is an error.
- ``connect_latency``: seconds for connect + ``SELECT 1``.
- ``query_latency`` with ``sql``: seconds to run that SQL (rows are fetched and discarded).
- ``sql`` alone: the number the SQL returns, one row of one column; a second column is the
  volume behind it (e.g. the number of tasks behind a failure ratio). No row or NULL is no
  data; more rows or columns, or a non-number, is an error for that signal only.
- ``row_drop`` with ``sql`` returning a row count: the fractional drop against the highest
  count this probe has seen since it started (0 when stable or growing, 0.5 when half the rows
  went); the volume is that highest count, so ``min_volume`` can ignore tiny tables.
- ``checksum_failures``, ``conflicts``: pg_stat_database counters of the connected database,
  cumulative since the last statistics reset; checksum failures are an error when the cluster
  runs without data checksums (nothing to see).

When the server is down, ``up`` is 0 and every other signal is an error (not measured). All
work shares a budget of ``BUDGET_SHARE`` of the probe timeout: each SQL runs with a
``statement_timeout`` of what is left, so a slow query fails alone and in time; signals whose
turn comes after the budget is spent are errors. Sessions are read-only.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from spek_sentinel.config.probes import PostgresProbe as PostgresConfig
from spek_sentinel.domain.errors import ProbeError
from spek_sentinel.probes.base import Failed, Reading, redact
from spek_sentinel.secrets import read_secret

BUDGET_SHARE = 0.8  # the rest of the timeout is margin for answers and cancellation
_MIN_STATEMENT_SECONDS = 0.01

# Rejections of the probe's own login: the sentinel is misconfigured or its role was changed;
# that says nothing about whether the database serves the application. libpq gives no SQLSTATE
# for a failed connection, so this matches the server's (English) messages.
_OWN_LOGIN_REJECTED = re.compile(
    r"password authentication failed|no pg_hba\.conf entry|role \".*\" does not exist"
    r"|authentication failed|password is required|permission denied for database",
    re.IGNORECASE,
)

_STATS_SQL = (
    "SELECT conflicts, checksum_failures FROM pg_stat_database WHERE datname = current_database()"
)

Value = Reading | Failed | float | None
Conn = psycopg.AsyncConnection[TupleRow]
Row = tuple[object, ...]


class _UnreachableError(Exception):
    """The server could not be reached or would not serve a connection: up = 0."""


class _BadResultError(Exception):
    """The SQL ran but did not return what the signal needs."""


class _BudgetSpentError(Exception):
    def __init__(self, budget: float) -> None:
        super().__init__(f"not run: the probe's time budget ({budget:.3g}s) was spent")


class _LostError(Exception):
    """The connection can no longer be used; later signals are not measured."""


@dataclass(frozen=True, slots=True)
class _Signal:
    name: str
    measure: str  # a config measure, or "value" for ``sql`` alone
    sql: str | None = None


@dataclass(slots=True)
class PostgresProbe:
    name: str
    interval: float
    timeout: float
    dsn: str = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False)
    plan: tuple[_Signal, ...]
    peaks: dict[str, float] = field(default_factory=dict)  # row_drop: highest count seen

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.plan)

    async def collect(self) -> Mapping[str, Value]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout * BUDGET_SHARE
        started = time.perf_counter()
        try:
            conn = await self._connect(deadline)
        except _UnreachableError as exc:
            reason = f"not measured: cannot connect to database: {exc}"
            return {s.name: 0.0 if s.measure == "up" else Failed(reason) for s in self.plan}
        try:
            connect_seconds = time.perf_counter() - started
            return await self._measure(conn, deadline, connect_seconds)
        finally:
            await conn.close()

    async def aclose(self) -> None:
        return None  # nothing is kept between collections

    async def _connect(self, deadline: float) -> Conn:
        """A connection that answered ``SELECT 1``, or _UnreachableError (up = 0)."""
        budget = deadline - asyncio.get_running_loop().time()
        conn: Conn | None = None
        try:
            async with asyncio.timeout_at(deadline):
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn,
                    autocommit=True,
                    prepare_threshold=None,  # nothing is prepared: poolers stay happy
                    connect_timeout=max(2, math.ceil(budget)),  # libpq's floor is 2 s
                )
                await conn.execute("SELECT 1")
        except TimeoutError:
            await _close(conn)
            raise _UnreachableError(f"no answer within {budget:.3g}s") from None
        except psycopg.OperationalError as exc:
            await _close(conn)
            message = self._text(exc)
            if _OWN_LOGIN_REJECTED.search(message):
                raise ProbeError(
                    f"the database rejected the probe's login (check the DSN's user, password "
                    f"and database; this is not 'database down'): {message}"
                ) from None
            raise _UnreachableError(message) from None
        except psycopg.Error as exc:
            await _close(conn)
            raise ProbeError(f"cannot use the DSN: {self._text(exc)}") from None
        return conn

    async def _measure(
        self, conn: Conn, deadline: float, connect_seconds: float
    ) -> dict[str, Value]:
        readings: dict[str, Value] = {}
        stats: Row | Failed | None = None
        lost: str | None = None  # why the connection cannot be used any more, once it cannot
        for signal in self.plan:
            if signal.measure == "up":
                readings[signal.name] = 1.0
            elif signal.measure == "connect_latency":
                readings[signal.name] = connect_seconds
            elif lost is not None:
                readings[signal.name] = Failed(f"not measured: {lost}")
            elif signal.measure in ("checksum_failures", "conflicts"):
                if stats is None:
                    stats = await self._stats(conn, deadline)
                readings[signal.name] = _stat(signal.measure, stats)
            else:
                try:
                    readings[signal.name] = await self._read(conn, signal, deadline)
                except _LostError as exc:
                    lost = str(exc)
                    readings[signal.name] = Failed(lost)
            if lost is None and (conn.broken or conn.closed):
                lost = "the connection to the database was lost"
        return readings

    async def _read(self, conn: Conn, signal: _Signal, deadline: float) -> Value:
        assert signal.sql is not None
        try:
            rows, width, seconds = await self._query(conn, signal.sql, deadline)
            if signal.measure == "query_latency":
                return seconds
            reading = _one_number(rows, width, allow_volume=signal.measure == "value")
        except (psycopg.Error, _BadResultError, _BudgetSpentError) as exc:
            return Failed(self._describe(exc))
        if signal.measure == "row_drop":
            return self._row_drop(signal, reading.value)
        return reading

    async def _stats(self, conn: Conn, deadline: float) -> Row | Failed:
        try:
            rows, _, _ = await self._query(conn, _STATS_SQL, deadline)
        except (psycopg.Error, _BudgetSpentError) as exc:
            return Failed(f"pg_stat_database: {self._describe(exc)}")
        except _LostError as exc:
            return Failed(f"pg_stat_database: {exc}")
        if len(rows) != 1:
            return Failed("pg_stat_database has no row for the connected database")
        return rows[0]

    async def _query(self, conn: Conn, sql: str, deadline: float) -> tuple[list[Row], int, float]:
        """Run ``sql`` read-only with a statement_timeout of the budget left.

        Returns up to 2 rows, the number of columns and the seconds the query took. The server
        enforces the budget; should it stop answering altogether, the client gives up a little
        later (_LostError) and the rest of the signals are not measured.
        """
        left = deadline - asyncio.get_running_loop().time()
        if left < _MIN_STATEMENT_SECONDS:
            raise _BudgetSpentError(self.timeout * BUDGET_SHARE)
        try:
            async with asyncio.timeout_at(deadline + (1 - BUDGET_SHARE) * self.timeout / 2):
                await conn.execute(
                    "SELECT set_config('statement_timeout', %s, false),"
                    " set_config('default_transaction_read_only', 'on', false)",
                    (str(max(1, int(left * 1000))),),
                )
                started = time.perf_counter()
                # operator-written SQL from the validated config, sent as-is without parameters
                cursor = await conn.execute(sql)
                rows = await cursor.fetchmany(2) if cursor.description is not None else []
                seconds = time.perf_counter() - started
        except TimeoutError:
            raise _LostError(
                "the server stopped answering within the probe's time budget"
            ) from None
        width = len(cursor.description) if cursor.description is not None else 0
        return rows, width, seconds

    def _row_drop(self, signal: _Signal, count: float | None) -> Value:
        if count is None:
            return None
        if count < 0 or not math.isfinite(count):
            return Failed(f"the row count is {count:g}")
        peak = max(self.peaks.get(signal.name, 0.0), count)
        self.peaks[signal.name] = peak
        return Reading((peak - count) / peak if peak > 0 else 0.0, volume=peak)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, pg_errors.QueryCanceled):
            return "query cancelled: it ran past the probe's time budget (statement_timeout)"
        if isinstance(exc, _BadResultError | _BudgetSpentError):
            return str(exc)
        return f"{type(exc).__name__}: {self._text(exc)}"

    def _text(self, exc: BaseException) -> str:
        """One line of an error's text, without the DSN or its password."""
        return redact(" ".join(str(exc).split()), self.secrets)


async def _close(conn: Conn | None) -> None:
    if conn is not None:
        await conn.close()


def _number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool | int | float | Decimal):
        return float(value)
    raise _BadResultError(f"returned {type(value).__name__}, expected a number")


def _one_number(rows: Sequence[Row], width: int, *, allow_volume: bool) -> Reading:
    shape = "one row of one number, or (value, volume)" if allow_volume else "one row, one number"
    if width == 0:
        raise _BadResultError(f"returned no result set; expected {shape}")
    if width > (2 if allow_volume else 1):
        raise _BadResultError(f"returned {width} columns; expected {shape}")
    if len(rows) > 1:
        raise _BadResultError(f"returned more than one row; expected {shape}")
    if not rows:
        return Reading(None)
    row = rows[0]
    return Reading(_number(row[0]), _number(row[1]) if width == 2 else None)


def _stat(measure: str, stats: Row | Failed) -> Value:
    if isinstance(stats, Failed):
        return stats
    conflicts, checksum_failures = stats
    if measure == "conflicts":
        return _number(conflicts)
    if checksum_failures is None:
        return Failed(
            "data checksums are off on this cluster (initdb --data-checksums or "
            "pg_checksums --enable), so checksum failures cannot be seen"
        )
    return _number(checksum_failures)


def _plan(model: PostgresConfig) -> tuple[_Signal, ...]:
    """Signals in the order they are measured: built-ins first, then SQL in table order."""
    signals = [
        _Signal(name, spec.measure or "value", spec.sql) for name, spec in model.signals.items()
    ]
    first = ("up", "connect_latency", "checksum_failures", "conflicts")
    return tuple(sorted(signals, key=lambda s: s.measure not in first))


def build(
    name: str, model: PostgresConfig, interval: float, environ: Mapping[str, str]
) -> PostgresProbe:
    secret = read_secret(
        f"probes.{name}", environ, field="dsn", env=model.dsn_env, file=model.dsn_file
    )
    try:
        params = conninfo_to_dict(secret.value)
    except psycopg.Error:
        # libpq's message quotes the offending fragment, which may be the password
        raise secret.problem(
            "the DSN does not parse as a PostgreSQL connection string (a postgresql:// URL "
            "or key=value pairs); the value is not shown"
        ) from None
    for port in str(params.get("port") or "").split(","):
        if port and not port.strip().isdigit():
            raise secret.problem("the DSN's port is not a number; the value is not shown")
    password = params.get("password")
    return PostgresProbe(
        name=name,
        interval=interval,
        timeout=model.timeout,
        dsn=secret.value,
        secrets=tuple(str(s) for s in (secret.value, password) if s),
        plan=_plan(model),
    )
