"""The page every pager sends, and the one method every pager has.

A pager turns a ``Notice`` into its vendor's request and reports what happened as a
``Delivery``. It never raises for a delivery failure: the outbox (not built yet) retries what is
``retryable``. Pages fail open: a page may arrive twice (``dedup_key`` lets the receiver fold
them), it must never be lost.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


class NoticeKind(enum.StrEnum):
    TRIGGER = "trigger"  # an alert opened: a human must look
    ACKNOWLEDGE = "acknowledge"  # someone took it
    RESOLVE = "resolve"  # the condition cleared
    INFO = "info"  # a stakeholder notice: rollback started, step done, finished, halted


class Urgency(enum.StrEnum):
    CRITICAL = "critical"  # immediate rules, rollback halted, sentinel blind
    WARNING = "warning"  # evaluate rules
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Notice:
    kind: NoticeKind
    dedup_key: str  # stable per alert (incident id or "blind:<signal>"): receivers fold repeats
    summary: str  # one line a human reads first
    urgency: Urgency
    at: float  # unix seconds of the event
    source: str = "spek-sentinel"
    rule: str | None = None
    value: str | None = None  # as shown to humans ("8.30%")
    threshold: str | None = None  # "> 5%"
    playbook: str | None = None
    incident: str | None = None
    evidence: str = ""
    links: Mapping[str, str] = field(default_factory=dict)  # name -> URL (report, dashboard)


@dataclass(frozen=True, slots=True)
class Delivery:
    pager: str
    ok: bool
    retryable: bool  # a timeout or 5xx/429 may succeed later; a 4xx will not
    status: int | None  # HTTP status, when there was one
    detail: str  # why it failed, never a secret


class Pager(Protocol):
    @property
    def name(self) -> str: ...

    async def notify(self, notice: Notice) -> Delivery:
        """Send one notice; report, never raise, what happened."""
        ...

    async def aclose(self) -> None: ...
