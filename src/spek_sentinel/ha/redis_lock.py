"""Leadership through a Redis key: ``SET key owner NX PX ttl``, renewed by a script that
extends the expiry only while the value is still ours, and a fencing token from
``INCR key:token`` on every acquisition.

A Redis restart without persistence loses the key and the token counter at once. So:

* The counter never goes back: every contender remembers the highest token it has seen (its
  own, and the counter it reads while following), the acquisition script moves a counter that
  is not above that floor forward (``SET key:token floor+1``), and with a fence
  (``PostgresFence``) the token is also moved above the highest recorded there and recorded
  before it is used.
* Two leaders never act at once: a lock acquired on a fresh counter (the first ever, or after
  Redis lost its data) settles for one ttl before acting, so the former leader, whose renewal
  now fails, has seen its local lease end first.

Acquire, renew and release are each one script: atomic on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from spek_sentinel.ha.leader import Clock, TokenFence
from spek_sentinel.ha.lease import Acquired, BackendError, Busy, LeaseLeadership
from spek_sentinel.secrets import redact

T = TypeVar("T")

# KEYS: lock, counter. ARGV: owner, ttl in ms, the floor the token must exceed.
# Returns {1, token, suspect} when acquired, else {0, holder, counter}.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local token = redis.call('INCR', KEYS[2])
  local suspect = 0
  if token == 1 then suspect = 1 end
  local floor = tonumber(ARGV[3])
  if token <= floor then
    token = floor + 1
    redis.call('SET', KEYS[2], token)
    suspect = 1
  end
  return {1, token, suspect}
end
return {0, redis.call('GET', KEYS[1]) or '', tonumber(redis.call('GET', KEYS[2]) or '0')}
"""
# KEYS: lock. ARGV: owner, ttl in ms. 1 when extended, 0 when the lock is not ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS: lock. ARGV: owner. 1 when deleted, 0 when the lock is not ours.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# KEYS: counter. ARGV: token. Moves the counter forward to the token, never back.
_PUSH = """
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return tonumber(redis.call('GET', KEYS[1]))
"""

_ERRORS = (redis_errors.RedisError, OSError, TimeoutError)


class RedisLeadership(LeaseLeadership):
    """Leader election on one Redis key. ``owner_id`` must be unique per process (include a
    nonce): it is the key's value and tells our lock from another contender's."""

    def __init__(
        self,
        client_url: str,
        key: str,
        owner_id: str,
        ttl: float,
        *,
        fence: TokenFence | None = None,
        clock: Clock | None = None,
        renew_interval: float | None = None,
        op_timeout: float | None = None,
    ) -> None:
        super().__init__(
            name=key,
            owner_id=owner_id,
            ttl=ttl,
            fence=fence,
            clock=clock,
            renew_interval=renew_interval,
        )
        self.key = key
        self.counter_key = f"{key}:token"
        self._url = client_url
        self._op_timeout = op_timeout if op_timeout is not None else self.renew_interval
        self._client: Redis | None = None

    def _redis(self) -> Redis:
        if self._client is None:
            self._client = Redis.from_url(
                self._url,
                socket_timeout=self._op_timeout,
                socket_connect_timeout=self._op_timeout,
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
                decode_responses=True,
            )
        return self._client

    async def _call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        client = self._redis()
        try:
            return await self._bounded(client.eval(script, len(keys), *keys, *args))
        except _ERRORS as exc:
            raise BackendError(f"Redis: {redact(str(exc) or type(exc).__name__)}") from exc

    async def _bounded(self, call: Awaitable[T]) -> T:
        return await asyncio.wait_for(call, self._op_timeout)

    def _ttl_ms(self) -> int:
        return max(1, round(self.ttl * 1000))

    async def _try_acquire(self, floor: int) -> Acquired | Busy:
        for _ in range(2):
            reply = await self._call(
                _ACQUIRE, [self.key, self.counter_key], [self.owner_id, self._ttl_ms(), floor]
            )
            if int(reply[0]) == 1:
                return Acquired(token=int(reply[1]), suspect=bool(int(reply[2])))
            holder, counter = str(reply[1]), int(reply[2])
            if holder != self.owner_id:
                return Busy(holder=holder, token=counter)
            # Ours, but we hold no lease (an acquisition whose reply was lost): give it back
            # and take it properly, with a token we know.
            await self._unlock()
        return Busy(holder=self.owner_id, token=counter)

    async def _renew(self, token: int) -> bool:
        return int(await self._call(_RENEW, [self.key], [self.owner_id, self._ttl_ms()])) == 1

    async def _unlock(self) -> None:
        await self._call(_UNLOCK, [self.key], [self.owner_id])

    async def _push_counter(self, token: int) -> None:
        await self._call(_PUSH, [self.counter_key], [token])

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(*_ERRORS):
                await client.aclose()
