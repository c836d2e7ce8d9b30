"""Alertmanager (API v2): teams that already route through Alertmanager keep their routing.

Each notice is one alert in ``POST /api/v2/alerts``. Alertmanager knows an alert by its
labels, so a TRIGGER and its RESOLVE must carry the same ``rule``, ``urgency``, ``incident``
and ``dedup_key``: the RESOLVE re-posts those labels with ``endsAt`` = the notice's time, and
Alertmanager sends its receivers a ``resolved`` notification.

A firing alert gets ``endsAt`` = now + ``hold`` (default 24h). Alertmanager resolves an alert
nobody re-posts once ``endsAt`` passes (without ``endsAt`` it would use its own
``resolve_timeout``, 5m by default): ``hold`` bounds how long a page stays up when the sentinel
dies before it could send the RESOLVE. Re-posting a TRIGGER is harmless (same labels, one alert).

Alertmanager has no acknowledgement (a human silences an alert in Alertmanager itself) and
nothing to show an INFO notice to: both are skipped and reported as an ok ``Delivery`` whose
detail says they were not sent.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from spek_sentinel.paging.base import Delivery, Notice, NoticeKind
from spek_sentinel.secrets import redact

ALERTS_PATH = "/api/v2/alerts"
DEFAULT_ALERTNAME = "SpekSentinel"
_LABEL_NAME = re.compile(r"[^A-Za-z0-9_]")
_DETAIL_BODY = 300  # characters of Alertmanager's answer kept in a detail
_GENERATOR_LINKS = ("generator", "report", "dashboard")  # the first present is generatorURL


@dataclass(frozen=True, slots=True)
class AlertmanagerSettings:
    """Where and how to post. ``token`` is the already-resolved secret (never logged)."""

    url: str  # base URL, such as http://alertmanager:9093 (a route prefix may follow)
    # sent as ``Authorization: Bearer <token>`` when set
    token: str | None = field(default=None, repr=False)
    timeout: float = 10.0  # seconds for the whole request
    hold: float = 86400.0  # seconds a firing alert stays up without a re-post or a RESOLVE
    labels: Mapping[str, str] = field(default_factory=dict)  # extra labels for routing (team)
    name: str = "alertmanager"


def rfc3339(at: float) -> str:
    """Unix seconds as RFC 3339 in UTC with milliseconds: ``2026-11-25T03:05:00.000Z``."""
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def label_name(name: str) -> str:
    """``name`` made a valid Prometheus label name (letters, digits, underscores)."""
    cleaned = _LABEL_NAME.sub("_", name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"_{cleaned}"


def alert_labels(notice: Notice, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The labels that identify the notice's alert in Alertmanager (empty values omitted)."""
    labels = {label_name(key): value for key, value in (extra or {}).items() if value}
    labels.update(
        alertname=notice.rule or DEFAULT_ALERTNAME,
        severity=notice.urgency.value,
        dedup_key=notice.dedup_key,
        source=notice.source,
    )
    if notice.incident:
        labels["incident"] = notice.incident
    return labels


def alert_annotations(notice: Notice) -> dict[str, str]:
    """What a human reads: summary, evidence, value, threshold, playbook, ``<link>_url``s."""
    annotations = {
        "summary": notice.summary,
        "description": notice.evidence,
        "value": notice.value or "",
        "threshold": notice.threshold or "",
        "playbook": notice.playbook or "",
    }
    for name, url in notice.links.items():
        annotations[f"{label_name(name)}_url"] = url
    return {key: value for key, value in annotations.items() if value}


def generator_url(links: Mapping[str, str]) -> str | None:
    preferred = [links[name] for name in _GENERATOR_LINKS if name in links]
    for url in [*preferred, *links.values()]:
        if url.startswith(("http://", "https://")):
            return url
    return None


def alert_body(
    notice: Notice, hold: float, extra: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """One alert of the ``POST /api/v2/alerts`` list for a TRIGGER or RESOLVE notice."""
    firing_until = max(notice.at, time.time()) + hold
    ends_at = notice.at if notice.kind is NoticeKind.RESOLVE else firing_until
    alert: dict[str, Any] = {
        "labels": alert_labels(notice, extra),
        "annotations": alert_annotations(notice),
        "startsAt": rfc3339(notice.at),
        "endsAt": rfc3339(ends_at),
    }
    generator = generator_url(notice.links)
    if generator is not None:
        alert["generatorURL"] = generator
    return alert


class AlertmanagerPager:
    """Posts notices to one Alertmanager; one HTTP client, closed by ``aclose``."""

    def __init__(self, settings: AlertmanagerSettings) -> None:
        self._settings = settings
        headers = {"Content-Type": "application/json", "User-Agent": "spek-sentinel"}
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        self._endpoint = settings.url.rstrip("/") + ALERTS_PATH
        self._secrets = [settings.token] if settings.token else []
        self._client = httpx.AsyncClient(
            headers=headers, timeout=settings.timeout, follow_redirects=False
        )

    @property
    def name(self) -> str:
        return self._settings.name

    async def notify(self, notice: Notice) -> Delivery:
        if notice.kind is NoticeKind.ACKNOWLEDGE:
            return self._delivery(
                True, False, None, "not sent: Alertmanager has no acknowledgement"
            )
        if notice.kind is NoticeKind.INFO:
            return self._delivery(True, False, None, "not sent: Alertmanager takes alerts only")
        body = [alert_body(notice, self._settings.hold, self._settings.labels)]
        try:
            answer = await self._client.post(self._endpoint, json=body)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:  # misconfigured URL
            return self._delivery(False, False, None, self._describe(exc))
        except httpx.TimeoutException:
            return self._delivery(
                False, True, None, f"no answer within {self._settings.timeout:g}s"
            )
        except httpx.HTTPError as exc:  # refused, reset, DNS, TLS: may work later
            return self._delivery(False, True, None, self._describe(exc))
        except Exception as exc:  # anything else (a bad header value): reported, never raised
            return self._delivery(False, False, None, self._describe(exc))
        return self._judge(answer)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _judge(self, answer: httpx.Response) -> Delivery:
        status = answer.status_code
        if answer.is_success:
            return self._delivery(True, False, status, f"accepted ({status})")
        text = " ".join(answer.text.split())[:_DETAIL_BODY]
        detail = f"Alertmanager answered {status}: {text}" if text else f"Alertmanager {status}"
        retryable = status == httpx.codes.TOO_MANY_REQUESTS or status >= 500
        return self._delivery(False, retryable, status, detail)

    def _describe(self, exc: BaseException) -> str:
        message = str(exc).strip()
        text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        return f"cannot post to {self._endpoint}: {text}"

    def _delivery(self, ok: bool, retryable: bool, status: int | None, detail: str) -> Delivery:
        return Delivery(
            pager=self.name,
            ok=ok,
            retryable=retryable,
            status=status,
            detail=redact(detail, self._secrets),
        )
