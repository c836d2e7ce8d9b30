"""Answers from humans, coming back from their pager: verify the vendor's signature over the raw
body, bound replays in time, and turn the delivery into an ``InboundAnswer`` for the alert desk.

Nothing here does I/O except through the optional ``SeenEvents`` guard (the state store's
``ReplayGuard``); the HTTP routes pass the headers and the raw body bytes exactly as received,
before any parsing, and ``now`` from their clock.

PagerDuty (Webhooks v3, developer.pagerduty.com "Verifying Signatures" and "Webhooks Overview")
    ``X-PagerDuty-Signature``: one or more comma-separated ``v1=<hex>`` entries (several during a
    secret rotation), each the HMAC-SHA256 of the raw body with a subscription's secret; the
    delivery is authentic when at least one ``v1`` entry matches, compared in constant time.
    Entries of other versions are skipped. The body is one event::

        {"event": {"id", "event_type", "resource_type", "occurred_at", "agent", "client", "data"}}

    Used: ``event.id`` (unique per event and repeated on each retry of it: the replay key),
    ``event.event_type`` (``incident.acknowledged`` -> acknowledge, ``incident.resolved`` ->
    resolve, anything else is ignored), ``event.occurred_at`` (ISO 8601, the time bound),
    ``event.agent.summary`` (who; the agent is null for some events, then ``event.client.name``),
    and from ``event.data`` (an ``incident`` object for these two types) ``incident_key``,
    ``id``, ``number`` and ``title``.

    The dedup key: an incident created by an Events API v2 trigger carries that event's
    ``dedup_key`` as its ``incident_key`` (PagerDuty's own terms: "dedup_key (Events API v2) or
    incident_key (Events API v1)" name the same identifier, and the REST API finds the incident of
    a dedup key with ``GET /incidents?incident_key=<dedup_key>``). The documented payload shows
    ``data.incident_key``, but it may be null (an incident opened by hand, or by other means than
    an event). An acknowledge or resolve without a string ``incident_key`` is ignored (None): it
    cannot name one of our alerts. When PagerDuty's alert grouping folds our alert into an
    incident another alert opened, the key is that other alert's, and the desk will not know it.

    PagerDuty delivers at least once and retries a failed delivery (timeout, 429, 5xx) up to
    4 times over about 20 minutes with the same ``event.id``; it drops a delivery answered with a
    4xx. A retry older than ``max_age`` is therefore refused as expired, and a retry of an event
    already accepted is refused as replayed: accept (``guard``) only once the answer is handled.

Slack (api.slack.com "Verifying requests from Slack", "block_actions payload")
    ``X-Slack-Request-Timestamp``: unix seconds; more than five minutes from our clock is refused
    before anything else. ``X-Slack-Signature``: ``v0=<hex>`` of the HMAC-SHA256, with the app's
    signing secret, of ``b"v0:" + timestamp + b":" + raw body``. The body of an interactivity
    request is form-encoded, one field ``payload`` holding JSON. Used: ``type`` (only
    ``block_actions`` is acted on), ``user.id`` / ``user.username`` / ``user.name`` (who),
    ``actions[].action_id`` and ``actions[].value`` (the button pressed and the alert's dedup key,
    as ``slack.message`` puts them on a trigger), ``actions[].action_ts`` (when, falling back to
    the signed timestamp), ``channel.name`` (for the note). ``response_url`` and ``trigger_id``
    are not needed here.

    The replay key of a Slack delivery is the SHA-256 of its ``X-Slack-Signature``. The signature
    covers the timestamp and the whole body (with its ``trigger_id`` and ``action_ts``), so two
    real clicks never share it, while a replay, which without the secret can only be a
    byte-for-byte copy, always does; it needs no payload field to be present and holds nothing
    secret. Slack does not retry an interactivity request, so a replay is never a legitimate
    retry.

Every refusal is an ``InboundRejected`` with a short stable ``reason`` (``missing signature``,
``bad signature``, ``expired``, ``replayed``: 401; ``malformed``: 400) that never holds a secret,
a signature or body content; the routes may count by it. A well-signed delivery we do not act on
returns None (answer 2xx so the vendor does not retry).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs

Source = Literal["pagerduty", "slack"]
Action = Literal["acknowledge", "rollback", "dismiss", "resolve"]

PAGERDUTY_SIGNATURE_HEADER = "X-PagerDuty-Signature"
SLACK_TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
SLACK_SIGNATURE_HEADER = "X-Slack-Signature"

# The action_ids of the buttons slack.message puts on a trigger notice.
SLACK_ACK = "spek_ack"
SLACK_ROLLBACK = "spek_rollback"
SLACK_DISMISS = "spek_dismiss"
SLACK_ACTIONS: Mapping[str, Action] = {
    SLACK_ACK: "acknowledge",
    SLACK_ROLLBACK: "rollback",
    SLACK_DISMISS: "dismiss",
}
PAGERDUTY_EVENTS: Mapping[str, Action] = {
    "incident.acknowledged": "acknowledge",
    "incident.resolved": "resolve",
}

MISSING_SIGNATURE = "missing signature"
BAD_SIGNATURE = "bad signature"
EXPIRED = "expired"
REPLAYED = "replayed"
MALFORMED = "malformed"

DEFAULT_MAX_AGE = 300.0  # seconds either side of our clock; Slack's documented five minutes
_MAX_SIGNATURES = 16  # a rotation presents two; more is not PagerDuty
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_SLACK_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_ACTION_TS = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
_NAME_CHARS = 200
_NOTE_CHARS = 500


@dataclass(frozen=True)
class InboundAnswer:
    """A human's answer to one alert, as the alert desk consumes it."""

    source: Source
    event_id: str  # unique per delivery (see the module docstring): the replay key
    dedup_key: str  # the alert's dedup key, as sent in the page
    action: Action
    by: str  # who answered, readable
    note: str  # where and how, readable
    occurred_at: float  # unix seconds


class InboundRejected(Exception):  # noqa: N818 (the name the alert desk and routes use)
    """A delivery to refuse: ``status`` 401 (authenticity or freshness) or 400 (malformed body).
    ``reason`` is one of the stable short strings above; no secret or body content in it."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    def __repr__(self) -> str:
        return f"InboundRejected({self.reason!r}, {self.status})"


class SeenEvents(Protocol):
    """What the verifiers need of the replay guard (``store.inbound.ReplayGuard``)."""

    def first_time(self, source: str, event_id: str, now: float) -> bool: ...


def _unauthorized(reason: str) -> InboundRejected:
    return InboundRejected(reason, 401)


def _malformed() -> InboundRejected:
    return InboundRejected(MALFORMED, 400)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, case-insensitively (HTTP names are; a plain dict is not)."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, found in headers.items():
        if key.lower() == wanted:
            return found
    return None


def _ascii(text: str) -> bytes:
    # compare_digest refuses non-ASCII str; compare bytes, an odd byte just fails to match
    return text.encode("utf-8", "replace")


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_age(at: float, now: float, max_age: float) -> None:
    if abs(now - at) > max_age:
        raise _unauthorized(EXPIRED)


def _accept(guard: SeenEvents | None, answer: InboundAnswer, now: float) -> InboundAnswer:
    if guard is not None and not guard.first_time(answer.source, answer.event_id, now):
        raise _unauthorized(REPLAYED)
    return answer


# -- PagerDuty ------------------------------------------------------------------------------


def pagerduty_signature(secret: str, raw: bytes) -> str:
    """The ``v1=<hex>`` entry PagerDuty sends for ``raw`` signed with ``secret``."""
    digest = hmac.new(secret.encode("utf-8"), raw, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def _pagerduty_signed(secret: str, header: str | None, raw: bytes) -> None:
    if header is None or not header.strip():
        raise _unauthorized(MISSING_SIGNATURE)
    entries = [entry.strip() for entry in header.split(",")]
    if len(entries) > _MAX_SIGNATURES:
        raise _unauthorized(BAD_SIGNATURE)
    presented = [entry[3:] for entry in entries if entry.startswith("v1=")]
    presented = [value.lower() for value in presented if _HEX_SHA256.fullmatch(value)]
    if not presented:
        raise _unauthorized(BAD_SIGNATURE)
    expected = _ascii(pagerduty_signature(secret, raw)[3:])
    # every entry compared, none skipped: the time taken does not tell which one matched
    matches = [hmac.compare_digest(expected, _ascii(value)) for value in presented]
    if not any(matches):
        raise _unauthorized(BAD_SIGNATURE)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _malformed() from None
    if not isinstance(parsed, dict):
        raise _malformed()
    return parsed


def _iso_seconds(text: object) -> float:
    if not isinstance(text, str):
        raise _malformed()
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _malformed() from None
    if moment.tzinfo is None:  # PagerDuty sends UTC with a Z; a bare time is read as UTC
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _string(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _pagerduty_who(event: Mapping[str, Any]) -> str:
    agent = event.get("agent")
    if isinstance(agent, dict):
        name = _string(agent.get("summary")) or _string(agent.get("id"))
        if name:
            return _clip(name, _NAME_CHARS)
    client = event.get("client")
    if isinstance(client, dict) and (name := _string(client.get("name"))):
        return _clip(name, _NAME_CHARS)
    return "PagerDuty"


def _pagerduty_note(event_type: str, event: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    parts = [f"PagerDuty {event_type}"]
    incident = _string(data.get("id"))
    number = data.get("number")
    if incident:
        label = f"incident {incident}"
        if isinstance(number, int) and not isinstance(number, bool):
            label += f" (#{number})"
        parts.append(label)
    title = _string(data.get("title"))
    if title:
        parts.append(f'"{title}"')
    agent = event.get("agent")
    if isinstance(agent, dict) and (kind := _string(agent.get("type"))):
        parts.append(f"by {kind}")  # user_reference: a person; service_reference: an integration
    return _clip(" ".join(parts), _NOTE_CHARS)


def verify_pagerduty(
    secret: str,
    headers: Mapping[str, str],
    raw: bytes,
    now: float,
    max_age: float = DEFAULT_MAX_AGE,
    *,
    guard: SeenEvents | None = None,
) -> InboundAnswer | None:
    """Verify and read one PagerDuty v3 webhook delivery (see the module docstring).

    Returns the answer for ``incident.acknowledged`` / ``incident.resolved`` of an incident with
    an ``incident_key``, None for any other well-signed event. With ``guard``, an answer is
    recorded as seen and a repeat of its ``event.id`` is refused as replayed."""
    _pagerduty_signed(secret, _header(headers, PAGERDUTY_SIGNATURE_HEADER), raw)
    body = _json_object(raw)
    event = body.get("event")
    if not isinstance(event, dict):
        raise _malformed()
    event_id = _string(event.get("id"))
    event_type = _string(event.get("event_type"))
    if event_id is None or event_type is None:
        raise _malformed()
    occurred_at = _iso_seconds(event.get("occurred_at"))
    _check_age(occurred_at, now, max_age)
    action = PAGERDUTY_EVENTS.get(event_type)
    if action is None:
        return None
    data = event.get("data")
    if not isinstance(data, dict):
        raise _malformed()
    dedup_key = data.get("incident_key")
    if not isinstance(dedup_key, str) or not dedup_key:
        return None  # not an incident one of our events opened: nothing to answer
    answer = InboundAnswer(
        source="pagerduty",
        event_id=event_id,
        dedup_key=dedup_key,
        action=action,
        by=_pagerduty_who(event),
        note=_pagerduty_note(event_type, event, data),
        occurred_at=occurred_at,
    )
    return _accept(guard, answer, now)


# -- Slack ----------------------------------------------------------------------------------


def slack_signature(signing_secret: str, timestamp: str, raw: bytes) -> str:
    """The ``X-Slack-Signature`` value Slack sends for ``raw`` sent at ``timestamp``."""
    base = b"v0:" + timestamp.encode("ascii") + b":" + raw
    digest = hmac.new(signing_secret.encode("utf-8"), base, hashlib.sha256).hexdigest()
    return f"v0={digest}"


def _slack_payload(raw: bytes) -> dict[str, Any]:
    try:
        form = parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        raise _malformed() from None
    values = form.get("payload")
    if not values or len(values) != 1:
        raise _malformed()
    return _json_object(values[0].encode("utf-8"))


def _slack_who(user: object) -> str:
    if not isinstance(user, dict):
        return "a Slack user"
    name = _string(user.get("name")) or _string(user.get("username"))
    user_id = _string(user.get("id"))
    if name and user_id:
        return _clip(f"{name} ({user_id})", _NAME_CHARS)
    return _clip(name or user_id or "a Slack user", _NAME_CHARS)


def _slack_note(label: str, payload: Mapping[str, Any]) -> str:
    note = f"Slack button {label}"
    channel = payload.get("channel")
    if isinstance(channel, dict) and (name := _string(channel.get("name"))):
        note += f" in #{name}"
    return _clip(note, _NOTE_CHARS)


def _action_time(action: Mapping[str, Any], signed_at: float) -> float:
    stamp = action.get("action_ts")  # "1548426417.840180"
    if isinstance(stamp, str) and _ACTION_TS.fullmatch(stamp):
        return float(stamp)
    return signed_at


def verify_slack(
    signing_secret: str,
    headers: Mapping[str, str],
    raw: bytes,
    now: float,
    max_age: float = DEFAULT_MAX_AGE,
    *,
    guard: SeenEvents | None = None,
) -> InboundAnswer | None:
    """Verify and read one Slack interactivity request (see the module docstring).

    Returns the answer for a ``block_actions`` click on one of our buttons (``spek_ack``,
    ``spek_rollback``, ``spek_dismiss``), None for any other well-signed interaction. With
    ``guard``, an answer is recorded as seen and a replay of the same request is refused."""
    timestamp = _header(headers, SLACK_TIMESTAMP_HEADER)
    signature = _header(headers, SLACK_SIGNATURE_HEADER)
    if timestamp is None or signature is None or not timestamp.strip() or not signature.strip():
        raise _unauthorized(MISSING_SIGNATURE)
    timestamp = timestamp.strip()
    if not _SLACK_TIMESTAMP.fullmatch(timestamp):
        raise _unauthorized(BAD_SIGNATURE)
    signed_at = float(int(timestamp))
    _check_age(signed_at, now, max_age)  # before hashing anything
    expected = _ascii(slack_signature(signing_secret, timestamp, raw))
    if not hmac.compare_digest(expected, _ascii(signature.strip())):
        raise _unauthorized(BAD_SIGNATURE)
    payload = _slack_payload(raw)
    if payload.get("type") != "block_actions":
        return None
    actions = payload.get("actions")
    if not isinstance(actions, list):
        raise _malformed()
    for action in actions:
        if not isinstance(action, dict):
            raise _malformed()
        action_id = action.get("action_id")
        if not isinstance(action_id, str) or action_id not in SLACK_ACTIONS:
            continue
        dedup_key = action.get("value")
        if not isinstance(dedup_key, str) or not dedup_key:
            raise _malformed()  # our own button always carries the alert's key
        answer = InboundAnswer(
            source="slack",
            event_id=hashlib.sha256(_ascii(signature.strip())).hexdigest(),
            dedup_key=dedup_key,
            action=SLACK_ACTIONS[action_id],
            by=_slack_who(payload.get("user")),
            note=_slack_note(action_id, payload),
            occurred_at=_action_time(action, signed_at),
        )
        return _accept(guard, answer, now)
    return None
