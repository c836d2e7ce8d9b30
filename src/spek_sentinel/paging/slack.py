"""Slack through an incoming webhook: one message per notice, readable on a phone at 3 a.m.

The message is ``{"text": ..., "blocks": [...]}``: ``text`` is the one-line fallback that
notifications show, the blocks carry the summary, rule, value against threshold, playbook,
incident, evidence and links (``<url|name>``). A resolve, acknowledge or info notice says so in
its first words. The webhook URL is the credential (anyone holding it may post): it comes from
env or a file and never appears in a ``Delivery``.

A trigger ends with an ``actions`` block of three Block Kit buttons (``type: "button"``, a
``plain_text`` label, ``action_id``, ``value`` = the notice's dedup key): Acknowledge
(``spek_ack``, style ``primary``), Roll back now (``spek_rollback``, style ``danger``, behind a
confirmation dialog) and Dismiss (``spek_dismiss``). A click reaches the Slack app's
interactivity Request URL, which ``paging.inbound.verify_slack`` reads. Slack refuses a button
whose ``value`` is over 2000 characters, and with it the whole message: a longer dedup key gets
no buttons rather than a lost page.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from spek_sentinel.paging.base import Delivery, Notice, NoticeKind, Urgency
from spek_sentinel.paging.inbound import SLACK_ACK, SLACK_DISMISS, SLACK_ROLLBACK
from spek_sentinel.secrets import redact

_DETAIL_CHARS = 200
_SECTION_CHARS = 3000  # Slack's limit on a section's text
_FIELD_CHARS = 2000  # and on each of its fields
BUTTON_VALUE_CHARS = 2000  # Slack's limit on a button's value
ACTIONS_BLOCK_ID = "spek_answer"

_HEADLINE = {
    NoticeKind.RESOLVE: ":white_check_mark: Resolved",
    NoticeKind.ACKNOWLEDGE: ":eyes: Acknowledged",
    NoticeKind.INFO: ":information_source: Info",
}
_TRIGGER = {
    Urgency.CRITICAL: ":rotating_light: CRITICAL",
    Urgency.WARNING: ":warning: WARNING",
    Urgency.INFO: ":information_source: Info",
}


@dataclass(frozen=True, slots=True)
class SlackSettings:
    webhook_url: str = field(repr=False)  # the secret, already read from env or file
    timeout: float = 10.0  # seconds for the whole request


def escape(text: str) -> str:
    """Slack's mrkdwn escaping: only &, < and > are special."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def headline(notice: Notice) -> str:
    if notice.kind is NoticeKind.TRIGGER:
        return _TRIGGER[notice.urgency]
    return _HEADLINE[notice.kind]


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text}


def buttons(notice: Notice) -> dict[str, Any] | None:
    """The actions block a trigger carries, or None when the dedup key cannot be a value."""
    key = notice.dedup_key
    if notice.kind is not NoticeKind.TRIGGER or not key or len(key) > BUTTON_VALUE_CHARS:
        return None
    rollback_confirm = {
        "title": _plain("Roll back now?"),
        "text": _plain(_clip(f"Start the rollback for this alert now: {notice.summary}", 300)),
        "confirm": _plain("Roll back"),
        "deny": _plain("Cancel"),
        "style": "danger",
    }
    elements = [
        {
            "type": "button",
            "text": _plain("Acknowledge"),
            "action_id": SLACK_ACK,
            "value": key,
            "style": "primary",
        },
        {
            "type": "button",
            "text": _plain("Roll back now"),
            "action_id": SLACK_ROLLBACK,
            "value": key,
            "style": "danger",
            "confirm": rollback_confirm,
        },
        {"type": "button", "text": _plain("Dismiss"), "action_id": SLACK_DISMISS, "value": key},
    ]
    return {"type": "actions", "block_id": ACTIONS_BLOCK_ID, "elements": elements}


def message(notice: Notice) -> dict[str, Any]:
    """The JSON body posted to the webhook."""
    title = f"{headline(notice)}: {notice.summary}"
    blocks: list[dict[str, Any]] = [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": _clip(f"*{escape(title)}*", _SECTION_CHARS)},
        }
    ]
    facts: list[str] = []
    if notice.rule:
        facts.append(f"*Rule:* `{escape(notice.rule)}`")
    if notice.value is not None:
        against = f" (threshold {notice.threshold})" if notice.threshold else ""
        facts.append(f"*Value:* {escape(notice.value + against)}")
    if notice.playbook:
        facts.append(f"*Playbook:* `{escape(notice.playbook)}`")
    if notice.incident:
        facts.append(f"*Incident:* `{escape(notice.incident)}`")
    if facts:
        fields = [{"type": "mrkdwn", "text": _clip(fact, _FIELD_CHARS)} for fact in facts]
        blocks.append({"type": "section", "fields": fields})
    if notice.evidence:
        evidence = _clip(escape(notice.evidence), _SECTION_CHARS - 8)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{evidence}```"}})
    if notice.links:
        links = " · ".join(
            f"<{url}|{escape(name).replace('|', '¦')}>" for name, url in notice.links.items()
        )
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": links}]})
    context = f"{escape(notice.source)} · dedup `{escape(notice.dedup_key)}`"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    actions = buttons(notice)
    if actions is not None:
        blocks.append(actions)
    return {"text": title, "blocks": blocks}


class SlackPager:
    """Posts each notice to one Slack incoming webhook."""

    def __init__(
        self,
        name: str,
        settings: SlackSettings,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._name = name
        self._settings = settings
        path = urlsplit(settings.webhook_url).path.strip("/")
        # the whole URL, and its path on its own in case an error message shows only that
        self._secrets = tuple(s for s in (settings.webhook_url, path) if s)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout), transport=transport, follow_redirects=False
        )

    @property
    def name(self) -> str:
        return self._name

    async def notify(self, notice: Notice) -> Delivery:
        try:
            async with asyncio.timeout(self._settings.timeout):
                response = await self._client.post(self._settings.webhook_url, json=message(notice))
        except Exception as exc:  # never raise: the outbox retries what is retryable
            return self._failure(exc)
        status = response.status_code
        if 200 <= status < 300:
            return Delivery(self._name, ok=True, retryable=False, status=status, detail="delivered")
        # Slack answers a short error code in plain text: invalid_payload, no_service...
        retryable = status in (408, 429) or status >= 500
        snippet = " ".join(response.text.split())[:_DETAIL_CHARS]
        detail = redact(f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}", self._secrets)
        return Delivery(self._name, ok=False, retryable=retryable, status=status, detail=detail)

    def _failure(self, exc: Exception) -> Delivery:
        if isinstance(exc, TimeoutError | httpx.TimeoutException):
            detail = f"no answer within {self._settings.timeout:g}s"
        else:
            text = str(exc).strip()
            detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        retryable = not isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol)
        detail = redact(detail, self._secrets)
        return Delivery(self._name, ok=False, retryable=retryable, status=None, detail=detail)

    async def aclose(self) -> None:
        await self._client.aclose()
