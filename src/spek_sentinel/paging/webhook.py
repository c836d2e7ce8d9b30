"""A generic JSON webhook, signed so the receiver can tell it is us and not a replay.

Each notice is one ``POST`` of a JSON object (``Content-Type: application/json``):

``version``      1; a field is only ever added within a version
``kind``         ``trigger`` | ``acknowledge`` | ``resolve`` | ``info``
``dedup_key``    stable per alert: fold repeats of the same key (pages are at-least-once)
``summary``      the one line a human reads first
``urgency``      ``critical`` | ``warning`` | ``info``
``at``           when the event happened, RFC 3339 in UTC (``2026-11-25T03:05:00.000Z``)
``rule``, ``value``, ``threshold``, ``playbook``, ``incident``   strings, or null
``evidence``     free text ("" when none)
``links``        object: name -> URL (report, dashboard)
``source``       the sender (``spek-sentinel`` unless configured otherwise)

Two headers sign it: ``X-Spek-Timestamp: <unix seconds at sending>`` and
``X-Spek-Signature: sha256=<hex>``, the HMAC-SHA256 with the shared secret of
``<timestamp>.<raw body bytes>``. A receiver recomputes it over the bytes it received (before any
JSON parsing), compares in constant time, and refuses timestamps more than five minutes from its
own clock, which bounds replays; ``verify_signature`` does all three.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from spek_sentinel.paging.base import Delivery, Notice
from spek_sentinel.secrets import redact

TIMESTAMP_HEADER = "X-Spek-Timestamp"
SIGNATURE_HEADER = "X-Spek-Signature"
BODY_VERSION = 1
_DETAIL_CHARS = 200


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    url: str
    secret: str = field(repr=False)  # the HMAC key, already read from env or file
    timeout: float = 10.0  # seconds for the whole request


def rfc3339(at: float) -> str:
    moment = dt.datetime.fromtimestamp(at, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def body(notice: Notice) -> dict[str, Any]:
    """The JSON object sent for ``notice`` (the fields of the module docstring)."""
    return {
        "version": BODY_VERSION,
        "kind": notice.kind.value,
        "dedup_key": notice.dedup_key,
        "summary": notice.summary,
        "urgency": notice.urgency.value,
        "at": rfc3339(notice.at),
        "rule": notice.rule,
        "value": notice.value,
        "threshold": notice.threshold,
        "playbook": notice.playbook,
        "incident": notice.incident,
        "evidence": notice.evidence,
        "links": dict(notice.links),
        "source": notice.source,
    }


def sign(secret: str, timestamp: str, raw: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 with ``secret`` over ``<timestamp>.<raw>``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + raw, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    now: float,
    *,
    tolerance: float = 300,
) -> bool:
    """Whether ``signature`` (the X-Spek-Signature header) signs ``body`` at ``timestamp`` (the
    X-Spek-Timestamp header) with ``secret``, and that timestamp is within ``tolerance`` seconds
    of ``now``. Compares in constant time; a malformed header is simply False."""
    stamp = timestamp.strip()
    if not stamp.isdigit() or abs(now - int(stamp)) > tolerance:
        return False
    expected = sign(secret, stamp, body).encode()
    return hmac.compare_digest(expected, signature.strip().encode())


def outcome(pager: str, status: int, text: str, secrets: tuple[str, ...]) -> Delivery:
    """2xx is delivered; 408, 429 and 5xx may succeed later; any other answer will not."""
    if 200 <= status < 300:
        return Delivery(pager, ok=True, retryable=False, status=status, detail="delivered")
    retryable = status in (408, 429) or status >= 500
    snippet = " ".join(text.split())[:_DETAIL_CHARS]
    detail = redact(f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}", secrets)
    return Delivery(pager, ok=False, retryable=retryable, status=status, detail=detail)


def failure(pager: str, exc: Exception, timeout: float, secrets: tuple[str, ...]) -> Delivery:
    """A request that got no answer. A URL httpx cannot use will never work; anything else (a
    timeout, a refused or dropped connection) may succeed later."""
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        detail = f"no answer within {timeout:g}s"
    else:
        message = str(exc).strip()
        detail = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    retryable = not isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol)
    return Delivery(
        pager, ok=False, retryable=retryable, status=None, detail=redact(detail, secrets)
    )


class WebhookPager:
    """POSTs the signed JSON body of the module docstring to ``settings.url``."""

    def __init__(
        self,
        name: str,
        settings: WebhookSettings,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._name = name
        self._settings = settings
        self._clock = clock
        self._secrets = (settings.secret, settings.url)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout), transport=transport, follow_redirects=False
        )

    @property
    def name(self) -> str:
        return self._name

    async def notify(self, notice: Notice) -> Delivery:
        raw = json.dumps(body(notice), separators=(",", ":")).encode()
        timestamp = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._settings.secret, timestamp, raw),
        }
        try:
            async with asyncio.timeout(self._settings.timeout):
                response = await self._client.post(self._settings.url, content=raw, headers=headers)
        except Exception as exc:  # never raise: the outbox retries what is retryable
            return failure(self._name, exc, self._settings.timeout, self._secrets)
        return outcome(self._name, response.status_code, response.text, self._secrets)

    async def aclose(self) -> None:
        await self._client.aclose()
