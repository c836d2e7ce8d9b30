"""Redis: does it answer PING, how fast, and what INFO says about memory and clients.

Each collection uses a fresh client and closes it afterwards: a pooled connection left over
from before a Redis restart would fail once and read as "down" although Redis is back. The
client never retries (redis-py retries a refused connection with backoff for seconds by
default), so a down Redis is reported within the probe's timeout.

Measures:

- ``up``: 1 when connect + PING get PONG within the budget; 0 when Redis is refused, does not
  answer in time, answers something that is not PONG or is not Redis at all. Redis rejecting
  the probe's own credentials (wrong password, ACL) is not "Redis down": every signal is an
  error.
- ``latency``: seconds for a second PING on the open connection (the round trip, as
  ``redis-cli --latency`` measures it, without the connect).
- ``used_memory`` (bytes) and ``connected_clients`` (count): from INFO.

When Redis is down, ``up`` is 0 and every other signal is an error (not measured). All work
shares a budget of ``BUDGET_SHARE`` of the probe timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from spek_sentinel.config.probes import RedisProbe as RedisConfig
from spek_sentinel.domain.errors import ProbeError
from spek_sentinel.probes.base import Failed, Reading, redact
from spek_sentinel.secrets import read_secret

BUDGET_SHARE = 0.8  # the rest of the timeout is margin for closing the client
_INFO_FIELDS = {"used_memory": "used_memory", "connected_clients": "connected_clients"}
# The probe's own login was refused: a misconfigured sentinel, not a Redis outage.
_OWN_LOGIN_REJECTED = (
    redis_errors.AuthenticationError,
    redis_errors.AuthorizationError,
    redis_errors.NoPermissionError,
    redis_errors.AuthenticationWrongNumberOfArgsError,
)

Value = Reading | Failed | float | None


class _DownError(Exception):
    """Redis did not answer PING with PONG: up = 0."""


@dataclass(slots=True)
class RedisProbe:
    name: str
    interval: float
    timeout: float
    url: str = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False)
    measures: dict[str, str]  # signal -> measure

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(self.measures)

    async def collect(self) -> Mapping[str, Value]:
        deadline = asyncio.get_running_loop().time() + self.timeout * BUDGET_SHARE
        budget = self.timeout * BUDGET_SHARE
        client: Redis = Redis.from_url(
            self.url,
            socket_connect_timeout=budget,
            socket_timeout=budget,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )
        try:
            try:
                await self._ping(client, deadline)
            except _DownError as exc:
                reason = f"not measured: Redis is down: {exc}"
                return {s: 0.0 if m == "up" else Failed(reason) for s, m in self.measures.items()}
            return await self._measure(client, deadline)
        finally:
            await client.aclose()

    async def aclose(self) -> None:
        return None  # nothing is kept between collections

    async def _ping(self, client: Redis, deadline: float) -> None:
        try:
            async with asyncio.timeout_at(deadline):
                answer = await client.ping()
        except TimeoutError:
            raise _DownError(f"no answer within {self.timeout * BUDGET_SHARE:.3g}s") from None
        except _OWN_LOGIN_REJECTED as exc:
            raise ProbeError(
                f"Redis rejected the probe's login (check the URL's user and password; this "
                f"is not 'Redis down'): {self._describe(exc)}"
            ) from None
        except (redis_errors.RedisError, OSError) as exc:
            raise _DownError(self._describe(exc)) from None
        if answer is not True:
            raise _DownError("PING was not answered with PONG")

    async def _measure(self, client: Redis, deadline: float) -> dict[str, Value]:
        readings: dict[str, Value] = {}
        info: dict[str, Any] | Failed | None = None
        for signal, measure in self.measures.items():
            if measure == "up":
                readings[signal] = 1.0
            elif measure == "latency":
                readings[signal] = await self._timed_ping(client, deadline)
            else:
                if info is None:
                    info = await self._info(client, deadline)
                readings[signal] = _info_field(info, _INFO_FIELDS[measure])
        return readings

    async def _timed_ping(self, client: Redis, deadline: float) -> Value:
        try:
            async with asyncio.timeout_at(deadline):
                started = time.perf_counter()
                answer = await client.ping()
                seconds = time.perf_counter() - started
        except TimeoutError:
            return Failed("PING: no answer within the probe's time budget")
        except (redis_errors.RedisError, OSError) as exc:
            return Failed(f"PING: {self._describe(exc)}")
        return seconds if answer is True else Failed("PING was not answered with PONG")

    async def _info(self, client: Redis, deadline: float) -> dict[str, Any] | Failed:
        try:
            async with asyncio.timeout_at(deadline):
                info = await client.info()
        except TimeoutError:
            return Failed("INFO: no answer within the probe's time budget")
        except (redis_errors.RedisError, OSError) as exc:
            return Failed(f"INFO: {self._describe(exc)}")
        if not isinstance(info, dict):
            return Failed("INFO did not answer with fields")
        return info

    def _describe(self, exc: BaseException) -> str:
        message = " ".join(str(exc).split())
        text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        return redact(text, self.secrets)


def _info_field(info: dict[str, Any] | Failed, name: str) -> Value:
    if isinstance(info, Failed):
        return info
    value = info.get(name)
    if value is None:
        return Failed(f"INFO has no field {name!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return Failed(f"INFO field {name!r} is not a number")
    return float(value)


def build(name: str, model: RedisConfig, interval: float, environ: Mapping[str, str]) -> RedisProbe:
    secret = read_secret(
        f"probes.{name}", environ, field="url", env=model.url_env, file=model.url_file
    )
    try:
        params = parse_url(secret.value)
    except ValueError:
        raise secret.problem(
            "not a Redis URL (redis://[user:password@]host:port/db, rediss://... or "
            "unix:///path); the value is not shown"
        ) from None
    password = params.get("password")
    return RedisProbe(
        name=name,
        interval=interval,
        timeout=model.timeout,
        url=secret.value,
        secrets=tuple(str(s) for s in (secret.value, password) if s),
        measures={signal: spec.measure or "" for signal, spec in model.signals.items()},
    )
