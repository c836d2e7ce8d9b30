"""Leader election for running two or three replicas: the contract every lock back end keeps.

Exactly one replica may act (run rollbacks, send pages) at a time. A replica is the leader
while it holds a lock (a Redis key with an expiry, or a PostgreSQL advisory lock) *and* its
local lease has not run out *and* it has settled (see ``lease.py``). Every acquisition gets a
fencing token greater than any handed out before, across leaders and across a Redis restart. A
mutating step checks the token it was started with: ``assert_current`` (local, no I/O) and
``PostgresFence.check`` (in the database, inside the step's own transaction), so a paused
former leader that wakes up after its lock expired cannot act.

Time is the caller's clock (``time.monotonic`` unless another is given); every time-based
method also takes ``now``. The back ends are async and driven by one task calling
``acquire_or_renew`` every ``renew_interval`` (``maintain`` does that); the checks
(``is_leader``, ``token``, ``fencing_token``, ``assert_current``, ``check``) never do I/O and
may be called from any thread, such as the rollback executor's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from spek_sentinel.domain.errors import SentinelError

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class NotLeaderError(SentinelError):
    """This replica may not act with this fencing token: it is not the leader, its lease
    ran out, or a newer token was handed out. Never retryable with the same token."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        holder: str = "",
        token: int | None = None,
        current_token: int | None = None,
    ) -> None:
        self.holder = holder  # who holds the lock now, as last seen; "" when unknown or nobody
        self.token = token  # the token that was presented
        self.current_token = current_token  # the newest token known, when known
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class LeaderStatus:
    """One contender's view after ``acquire_or_renew``.

    ``is_leader``: may act now (holds the lock, the lease is valid, settled).
    ``token``: this contender's fencing token while it holds the lock (also while settling).
    ``holder``: who holds the lock as last seen ("" when nobody or unknown).
    ``expires_at``: end of the local lease on the caller's clock; None when not held.
    ``settles_at``: held, but must not act before this (on the caller's clock).
    """

    is_leader: bool
    token: int | None
    holder: str
    expires_at: float | None
    settles_at: float | None = None


@runtime_checkable
class Leadership(Protocol):
    """Who may act. ``acquire_or_renew`` is called periodically by one task; the rest are
    local checks without I/O."""

    @property
    def owner_id(self) -> str: ...

    @property
    def renew_interval(self) -> float:
        """How often ``acquire_or_renew`` should be called."""
        ...

    async def acquire_or_renew(self, now: float | None = None) -> LeaderStatus: ...

    async def release(self) -> None:
        """Give the lock up (if held) and close connections; the next ``acquire_or_renew``
        starts over."""
        ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def token(self) -> int | None:
        """The fencing token while this contender is the leader, else None."""
        ...

    def fencing_token(self, now: float | None = None) -> int:
        """The token to start a run with; raises NotLeaderError unless leader now."""
        ...

    def assert_current(self, token: int, now: float | None = None) -> None:
        """Raise NotLeaderError unless this contender leads now with exactly ``token``."""
        ...

    def check(self, token: int, now: float | None = None) -> None:
        """The same as ``assert_current``: the per-step guard."""
        ...


class TokenFence(Protocol):
    """Where the highest fencing token is recorded durably (``PostgresFence``)."""

    def highest(self) -> int:
        """The highest token recorded; 0 when none."""
        ...

    def advance(self, token: int, holder: str) -> bool:
        """Record ``token`` if it is higher than the recorded one; True if it was."""
        ...

    def check(self, token: int) -> None:
        """Raise NotLeaderError if a higher token than ``token`` is recorded."""
        ...


def fencing_guard(leadership: Leadership, fence: TokenFence | None = None) -> Callable[[int], None]:
    """The check before a mutating step: still the leader with this token (local, no I/O),
    then, with a fence, no higher token recorded in the shared store."""

    def guard(token: int) -> None:
        leadership.assert_current(token)
        if fence is not None:
            fence.check(token)

    return guard


class SingleNode:
    """The default single-replica setup (SQLite state store): always the leader, token 1."""

    TOKEN = 1

    def __init__(self, owner_id: str = "single-node", renew_interval: float = 60.0) -> None:
        self._owner_id = owner_id
        self._renew_interval = renew_interval

    @property
    def owner_id(self) -> str:
        return self._owner_id

    @property
    def renew_interval(self) -> float:
        return self._renew_interval

    async def acquire_or_renew(self, now: float | None = None) -> LeaderStatus:
        return LeaderStatus(True, self.TOKEN, self._owner_id, None)

    async def release(self) -> None:
        return None

    @property
    def is_leader(self) -> bool:
        return True

    @property
    def token(self) -> int:
        return self.TOKEN

    def fencing_token(self, now: float | None = None) -> int:
        return self.TOKEN

    def assert_current(self, token: int, now: float | None = None) -> None:
        if token != self.TOKEN:
            raise NotLeaderError(
                f"{self._owner_id} runs as the single node with fencing token {self.TOKEN}; "
                f"token {token} is not it",
                holder=self._owner_id,
                token=token,
                current_token=self.TOKEN,
            )

    def check(self, token: int, now: float | None = None) -> None:
        self.assert_current(token, now)


async def maintain(
    leadership: Leadership,
    stop: asyncio.Event,
    on_status: Callable[[LeaderStatus], None] | None = None,
) -> None:
    """Contend for (and keep) leadership every ``renew_interval`` until ``stop`` is set, then
    release. A failing tick or subscriber is logged, never the end of the loop."""
    try:
        while not stop.is_set():
            try:
                status = await leadership.acquire_or_renew()
                if on_status is not None:
                    on_status(status)
            except Exception:
                log.exception("leadership: a renewal tick of %s failed", leadership.owner_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), leadership.renew_interval)
    finally:
        await leadership.release()
