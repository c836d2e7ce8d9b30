"""PagerDuty through the Events API v2 (``POST https://events.pagerduty.com/v2/enqueue``).

A trigger sends ``routing_key``, ``event_action: "trigger"``, ``dedup_key``, ``payload``
(``summary`` cut to 1024 characters, ``source``, ``severity``, ``timestamp``, ``component``,
``custom_details``) and ``links``; acknowledge and resolve send only the routing key, the action
and the ``dedup_key`` that names the alert. Info notices are for people, not for on-call
escalation: they are not sent at all. PagerDuty answers 202 when it took the event, 400 when
the event is invalid (sending it again will not help), 429 when rate limited and 5xx when it
is struggling (both worth retrying). The routing key never appears in a ``Delivery``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import httpx

from spek_sentinel.paging.base import Delivery, Notice, NoticeKind, Urgency

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
SUMMARY_CHARS = 1024  # PagerDuty's limit on payload.summary
_DETAIL_CHARS = 200

SEVERITY = {Urgency.CRITICAL: "critical", Urgency.WARNING: "warning", Urgency.INFO: "info"}


@dataclass(frozen=True, slots=True)
class PagerDutySettings:
    routing_key: str = field(repr=False)  # the integration key, already read from env or file
    url: str = EVENTS_URL  # another base only for tests or a proxy
    component: str | None = None  # payload.component: the part of the platform, e.g. "spek-app"
    timeout: float = 10.0  # seconds for the whole request


def event(notice: Notice, settings: PagerDutySettings) -> dict[str, Any]:
    """The Events API v2 body for a trigger, acknowledge or resolve notice."""
    body: dict[str, Any] = {
        "routing_key": settings.routing_key,
        "event_action": notice.kind.value,
        "dedup_key": notice.dedup_key,
    }
    if notice.kind is not NoticeKind.TRIGGER:
        return body
    summary = notice.summary
    if len(summary) > SUMMARY_CHARS:
        summary = summary[: SUMMARY_CHARS - 1] + "…"
    details = {
        "rule": notice.rule,
        "value": notice.value,
        "threshold": notice.threshold,
        "playbook": notice.playbook,
        "incident": notice.incident,
        "evidence": notice.evidence or None,
    }
    payload: dict[str, Any] = {
        "summary": summary,
        "source": notice.source,
        "severity": SEVERITY[notice.urgency],
        "timestamp": dt.datetime.fromtimestamp(notice.at, dt.UTC).isoformat(timespec="seconds"),
        "custom_details": {key: value for key, value in details.items() if value is not None},
    }
    if settings.component:
        payload["component"] = settings.component
    body["payload"] = payload
    body["links"] = [{"href": url, "text": name} for name, url in notice.links.items()]
    return body


class PagerDutyPager:
    """Sends trigger, acknowledge and resolve notices to one PagerDuty service."""

    def __init__(
        self,
        name: str,
        settings: PagerDutySettings,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._name = name
        self._settings = settings
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout), transport=transport, follow_redirects=False
        )

    @property
    def name(self) -> str:
        return self._name

    async def notify(self, notice: Notice) -> Delivery:
        if notice.kind is NoticeKind.INFO:
            return self._delivery(True, False, None, "not sent: informational")
        try:
            async with asyncio.timeout(self._settings.timeout):
                response = await self._client.post(
                    self._settings.url, json=event(notice, self._settings)
                )
        except Exception as exc:  # never raise: the outbox retries what is retryable
            return self._failure(exc)
        status = response.status_code
        if 200 <= status < 300:  # 202 is documented; any 2xx took the event
            return self._delivery(True, False, status, "delivered")
        retryable = status in (408, 429) or status >= 500
        # a 400 says which field was wrong: {"status":"invalid event","errors":[...]}
        snippet = " ".join(response.text.split())[:_DETAIL_CHARS]
        return self._delivery(False, retryable, status, f"HTTP {status}: {snippet}".rstrip(": "))

    def _failure(self, exc: Exception) -> Delivery:
        if isinstance(exc, TimeoutError | httpx.TimeoutException):
            detail = f"no answer within {self._settings.timeout:g}s"
        else:
            text = str(exc).strip()
            detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        retryable = not isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol)
        return self._delivery(False, retryable, None, detail)

    def _delivery(self, ok: bool, retryable: bool, status: int | None, detail: str) -> Delivery:
        if self._settings.routing_key:
            detail = detail.replace(self._settings.routing_key, "***")
        return Delivery(self._name, ok=ok, retryable=retryable, status=status, detail=detail)

    async def aclose(self) -> None:
        await self._client.aclose()
