"""The lease logic the lock back ends share: local lease, settling, tokens, fence, logging.

The lease of a lock acquired or renewed at ``now`` ends at ``now + ttl * (1 - LEASE_MARGIN)``
on the caller's clock. ``now`` is read before the request is sent, so the local lease always
ends before the lock's expiry on the server, and a follower can only take the lock over after
the former leader's local lease has ended.

When the lock may have vanished without expiring (a Redis restart that lost the key and the
token counter; a PostgreSQL session that was killed), a new holder cannot rule out that the
former one still believes it leads: it settles, holding the lock without acting, for one ttl,
after which every former lease has ended.

A token is moved above every token this contender has seen and above the highest recorded in
the fence, and recorded in the fence before it is used; a token that cannot be recorded is
not used: the lock is given back (fail closed).

Logging (stdlib ``logging``): one line per acquisition (or takeover), settling, loss and
release, each with the holder and the token; a follower logs each new holder it sees.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace

from spek_sentinel.domain.errors import SentinelError
from spek_sentinel.ha.leader import Clock, LeaderStatus, NotLeaderError, TokenFence

log = logging.getLogger(__name__)

# The local lease ends this share of the ttl before the lock's expiry on the server: room for
# clocks that run at slightly different rates.
LEASE_MARGIN = 0.05
# How often a contender should call acquire_or_renew, as a share of the ttl.
RENEW_SHARE = 1 / 3


@dataclass(frozen=True, slots=True)
class _Lease:
    token: int
    acquired_at: float
    expires_at: float
    settles_at: float
    announced: bool  # "acts as leader" was logged (at once, or when settling ended)


@dataclass(frozen=True, slots=True)
class Acquired:
    """A back end got the lock: its token, and whether a former holder may still believe it
    leads (the lock or the token counter was lost rather than expired)."""

    token: int
    suspect: bool


@dataclass(frozen=True, slots=True)
class Busy:
    """Somebody else holds the lock (``holder`` "" when unknown), and the newest token seen."""

    holder: str
    token: int


class BackendError(SentinelError):
    """The lock service did not answer as expected; the lease runs out on its own."""

    retryable = True


class LeaseLeadership(abc.ABC):
    """The lease logic every lock back end shares; subclasses talk to their lock service.

    State is kept in one immutable ``_Lease`` swapped as a whole, so the checks read a
    consistent token and expiry from any thread without a lock.
    """

    #: Settle after every acquisition, because the lock can vanish without expiring.
    always_settle: bool = False

    def __init__(
        self,
        *,
        name: str,
        owner_id: str,
        ttl: float,
        fence: TokenFence | None = None,
        clock: Clock | None = None,
        renew_interval: float | None = None,
    ) -> None:
        if not ttl > 0:
            raise ValueError("the lock ttl must be a positive number of seconds")
        if not owner_id:
            raise ValueError("owner_id must not be empty")
        self.name = name
        self._owner_id = owner_id
        self.ttl = float(ttl)
        self._renew_interval = renew_interval if renew_interval is not None else ttl * RENEW_SHARE
        if not 0 < self._renew_interval < ttl:
            raise ValueError("renew_interval must be positive and shorter than the ttl")
        self._fence = fence
        self._clock: Clock = clock or time.monotonic
        self._lease: _Lease | None = None
        self._holder = ""  # as last seen
        self._seen_token = 0  # the highest token seen anywhere: the floor for the next one
        self._busy = asyncio.Lock()  # one acquire_or_renew / release at a time

    # ---- the back end ----------------------------------------------------------------------

    @abc.abstractmethod
    async def _try_acquire(self, floor: int) -> Acquired | Busy:
        """Try to take the lock with a token above ``floor``. Raises BackendError."""

    @abc.abstractmethod
    async def _renew(self, token: int) -> bool:
        """Extend the held lock; False when it is no longer ours. Raises BackendError."""

    @abc.abstractmethod
    async def _unlock(self) -> None:
        """Give the lock up if it is still ours. Raises BackendError."""

    @abc.abstractmethod
    async def _push_counter(self, token: int) -> None:
        """Move the token counter forward to at least ``token``. Raises BackendError."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Close connections (best effort, never raises)."""

    # ---- Leadership ------------------------------------------------------------------------

    @property
    def owner_id(self) -> str:
        return self._owner_id

    @property
    def renew_interval(self) -> float:
        return self._renew_interval

    @property
    def is_leader(self) -> bool:
        return self._leading(self._clock()) is not None

    @property
    def token(self) -> int | None:
        lease = self._leading(self._clock())
        return None if lease is None else lease.token

    def fencing_token(self, now: float | None = None) -> int:
        now = self._clock() if now is None else now
        lease = self._leading(now)
        if lease is None:
            raise self._refusal(None, now)
        return lease.token

    def assert_current(self, token: int, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        lease = self._leading(now)
        if lease is None or lease.token != token:
            raise self._refusal(token, now)

    def check(self, token: int, now: float | None = None) -> None:
        self.assert_current(token, now)

    async def acquire_or_renew(self, now: float | None = None) -> LeaderStatus:
        async with self._busy:
            return await self._acquire_or_renew(self._clock() if now is None else now)

    async def _acquire_or_renew(self, now: float) -> LeaderStatus:
        try:
            lease = self._lease
            if lease is not None:
                if lease.expires_at > now and await self._renew(lease.token):
                    lease = replace(lease, expires_at=self._lease_end(now))
                    if not lease.announced and lease.settles_at <= now:
                        lease = replace(lease, announced=True)
                        log.info(
                            "leadership settled: %s now acts as leader of %s with fencing token %d",
                            self._owner_id,
                            self.name,
                            lease.token,
                        )
                    self._lease = lease
                    return self.status(now)
                why = "its lease ran out" if lease.expires_at <= now else "the lock is not its"
                self._lose(lease, why)
                await self._unlock()  # a lock that is still ours after the lease ran out
            await self._acquire(now)
        except BackendError as exc:
            self._unreachable(exc, now)
        return self.status(now)

    async def release(self) -> None:
        async with self._busy:
            await self._release()

    async def _release(self) -> None:
        lease, self._lease = self._lease, None
        try:
            if lease is not None:
                await self._unlock()
                log.info(
                    "leadership released: %s gave up %s (fencing token %d)",
                    self._owner_id,
                    self.name,
                    lease.token,
                )
                self._holder = ""
        except BackendError as exc:
            log.warning(
                "leadership released: %s could not unlock %s (%s); it expires on its own",
                self._owner_id,
                self.name,
                exc,
            )
        finally:
            await self._close()

    def status(self, now: float | None = None) -> LeaderStatus:
        now = self._clock() if now is None else now
        lease = self._lease
        if lease is None or lease.expires_at <= now:
            holder = "" if self._holder == self._owner_id else self._holder
            return LeaderStatus(False, None, holder, None)
        return LeaderStatus(
            is_leader=lease.settles_at <= now,
            token=lease.token,
            holder=self._owner_id,
            expires_at=lease.expires_at,
            settles_at=lease.settles_at if lease.settles_at > now else None,
        )

    # ---- internals -------------------------------------------------------------------------

    def _lease_end(self, now: float) -> float:
        return now + self.ttl * (1 - LEASE_MARGIN)

    def _leading(self, now: float) -> _Lease | None:
        lease = self._lease
        if lease is None or lease.expires_at <= now or lease.settles_at > now:
            return None
        return lease

    async def _acquire(self, now: float) -> None:
        result = await self._try_acquire(self._seen_token)
        if isinstance(result, Busy):
            self._observe(result)
            return
        try:
            token, suspect = await self._fenced(result.token, result.suspect)
        except Exception:
            with contextlib.suppress(BackendError):
                await self._unlock()
            raise
        self._seen_token = max(self._seen_token, token)
        settle = suspect or self.always_settle
        settles_at = now + self.ttl if settle else now
        self._lease = _Lease(token, now, self._lease_end(now), settles_at, not settle)
        previous, self._holder = self._holder, self._owner_id
        how = f" (took over from {previous})" if previous and previous != self._owner_id else ""
        waits = (
            f"; acting from {self.ttl:g}s from now, when any former leader's lease has ended"
            if settle
            else ""
        )
        verb = "taken over" if how else "acquired"
        log.info(
            "leadership %s: %s holds %s with fencing token %d%s%s",
            verb,
            self._owner_id,
            self.name,
            token,
            how,
            waits,
        )

    async def _fenced(self, token: int, suspect: bool) -> tuple[int, bool]:
        """Move the token above every token seen or recorded in the fence, then record it
        there. A token that cannot be recorded is not used (fail closed)."""
        if token <= self._seen_token:
            token, suspect = self._seen_token + 1, True
            await self._push_counter(token)
        fence = self._fence
        if fence is None:
            return token, suspect
        try:
            highest = await asyncio.to_thread(fence.highest)
            if token <= highest:
                log.warning(
                    "fencing: %s got token %d for %s but the fence records %d: the token "
                    "counter was lost (a lock service restart?); using %d",
                    self._owner_id,
                    token,
                    self.name,
                    highest,
                    highest + 1,
                )
                token, suspect = highest + 1, True
                await self._push_counter(token)
            advanced = await asyncio.to_thread(fence.advance, token, self._owner_id)
        except BackendError:
            raise
        except Exception as exc:  # the fence's store is down: no recorded token, no leader
            raise BackendError(f"cannot record fencing token {token} in the fence: {exc}") from exc
        if not advanced:
            raise BackendError(
                f"the fence already records a token of at least {token}: another contender "
                "advanced it"
            )
        return token, suspect

    def _observe(self, busy: Busy) -> None:
        self._seen_token = max(self._seen_token, busy.token)
        if busy.holder and busy.holder != self._holder:
            log.info(
                "leadership: %s is held by %s (fencing token %s); %s follows",
                self.name,
                busy.holder,
                busy.token or "unknown",
                self._owner_id,
            )
        self._holder = busy.holder

    def _lose(self, lease: _Lease, why: str) -> None:
        self._lease = None
        if self._holder == self._owner_id:
            self._holder = ""
        log.warning(
            "leadership lost: %s no longer leads %s (fencing token %d): %s",
            self._owner_id,
            self.name,
            lease.token,
            why,
        )

    def _unreachable(self, exc: BackendError, now: float) -> None:
        lease = self._lease
        if lease is not None and lease.expires_at > now:
            log.warning(
                "leadership: %s cannot renew %s (%s); it stays leader until its lease ends in "
                "%.1fs",
                self._owner_id,
                self.name,
                exc,
                lease.expires_at - now,
            )
        elif lease is not None:
            self._lose(lease, f"its lease ran out and the lock service failed: {exc}")
        else:
            log.warning("leadership: %s cannot contend for %s: %s", self._owner_id, self.name, exc)

    def _refusal(self, token: int | None, now: float) -> NotLeaderError:
        lease = self._lease
        presented = "" if token is None else f" with fencing token {token}"
        holder = self._holder if self._holder != self._owner_id else ""
        current = lease.token if lease is not None else (self._seen_token or None)
        if lease is None:
            why = "does not hold the lock"
        elif lease.expires_at <= now:
            why = f"lost the lock: its lease (token {lease.token}) ran out"
        elif lease.settles_at > now:
            why = (
                f"holds the lock (token {lease.token}) but is settling for "
                f"{lease.settles_at - now:.1f}s more"
            )
        else:
            stale = (
                "; the presented token is stale"
                if token is not None and token < lease.token
                else ""
            )
            why = f"holds the lock with fencing token {lease.token}, not {token}{stale}"
        now_held = f"; {holder} holds it now" if holder else "; nobody is known to hold it now"
        if lease is not None and lease.expires_at > now:
            now_held = ""
        return NotLeaderError(
            f"{self._owner_id} may not act{presented} on {self.name}: it {why}{now_held}",
            holder=holder,
            token=token,
            current_token=current,
        )
