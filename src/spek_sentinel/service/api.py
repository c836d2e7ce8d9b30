"""The HTTP API (ASGI, Starlette). Every answer is JSON; mutating routes need the bearer token,
compared in constant time; a rejected request changes nothing.

Routes:
    POST /api/v1/signals                  push or resolve a signal (token)
    GET  /api/v1/signals                  the open pushed signals
    GET  /api/v1/alerts[?all=1]           alerts, newest first (``all``: resolved ones too)
    GET  /api/v1/alerts/{ref}             one alert (id or dedup key) and the answers it got
    POST /api/v1/alerts/{ref}/ack         answer an alert (token): acknowledge, rollback, dismiss
    POST /api/v1/inbound/pagerduty        PagerDuty webhook v3 (its signature, not the token)
    POST /api/v1/inbound/slack            Slack interactivity (its signature, not the token)

The alert routes exist when the app is given the alert desk; the inbound ones answer 404 while
their secret is not configured (``[inbound]``).
"""

from __future__ import annotations

import hmac
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from spek_sentinel.config import Config
from spek_sentinel.domain.alerts import (
    Alert,
    AlertError,
    AlertState,
    Answer,
    HumanAction,
)
from spek_sentinel.domain.errors import InputError
from spek_sentinel.domain.escalation import EscalationPolicy
from spek_sentinel.domain.units import iso
from spek_sentinel.paging.build import InboundSecrets
from spek_sentinel.paging.desk import AlertDesk
from spek_sentinel.paging.inbound import (
    DEFAULT_MAX_AGE,
    REPLAYED,
    InboundAnswer,
    InboundRejected,
    Source,
    verify_pagerduty,
    verify_slack,
)
from spek_sentinel.secrets import read_secret
from spek_sentinel.service.signals import SignalRequest, pushed_measures, record_signal
from spek_sentinel.store.base import SignalStore
from spek_sentinel.store.inbound import ReplayGuard

MAX_BODY = 64 * 1024
_SIGNAL_FIELDS = {"name", "value", "reason", "by", "resolve"}
_ACK_FIELDS = {"by", "note", "answer"}
_MAX_BY = 200
_MAX_NOTE = 2000
_TRUE = {"1", "true", "yes"}
_FALSE = {"", "0", "false", "no"}
# inbound refusals of our own, next to the verifiers' (missing signature, bad signature,
# expired, replayed, malformed): a bounded set, counted by (source, reason)
NOT_CONFIGURED = "not configured"
TOO_LARGE = "too large"
CONFLICT = "conflict"


def api_token(config: Config, environ: Mapping[str, str]) -> str | None:
    """The API token the config names, or None when it names none (mutations refused)."""
    settings = config.model.api
    if settings.token_env is None and settings.token_file is None:
        return None
    secret = read_secret(
        "api", environ, field="token", env=settings.token_env, file=settings.token_file
    )
    return secret.value


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _authorized(request: Request, token: str | None) -> JSONResponse | None:
    """None when the bearer token matches; else the 401 to send."""
    challenge = {"WWW-Authenticate": 'Bearer realm="spek-sentinel"'}
    if token is None:
        return _error(401, "this sentinel has no API token configured ([api] token_env)", challenge)
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode(), token.encode()
    ):
        return _error(401, "missing or wrong bearer token", challenge)
    return None


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise InputError(f"body larger than {MAX_BODY} bytes")
    try:
        parsed = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"malformed JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InputError("expected a JSON object")
    return parsed


def _signal_request(body: dict[str, Any]) -> SignalRequest:
    unknown = set(body) - _SIGNAL_FIELDS
    if unknown:
        raise InputError(f"unknown fields: {', '.join(sorted(unknown))}")
    name, reason, by = body.get("name"), body.get("reason"), body.get("by", "api")
    value, resolve = body.get("value"), body.get("resolve", False)
    if not isinstance(name, str) or not isinstance(reason, str) or not isinstance(by, str):
        raise InputError("'name' and 'reason' are required strings; 'by' is a string")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise InputError("'value' must be a number")
    if not isinstance(resolve, bool):
        raise InputError("'resolve' must be true or false")
    return SignalRequest(name, reason, by, None if value is None else float(value), resolve)


def _when(at: float | None) -> str | None:
    return None if at is None else iso(at)


def level_name(alert: Alert, escalation: EscalationPolicy) -> str | None:
    """The name of the highest escalation level paged for ``alert`` (None: no levels)."""
    if 0 <= alert.level < len(escalation.levels):
        return escalation.levels[alert.level].name
    return None


def alert_json(alert: Alert, escalation: EscalationPolicy) -> dict[str, Any]:
    """An alert as the CLI (``alerts --json``) and the API show it; the README lists the fields.
    Times are RFC 3339 UTC strings, or null."""
    return {
        "id": alert.id,
        "dedup_key": alert.dedup_key,
        "incident": alert.incident,
        "kind": alert.kind,
        "state": alert.state.value,
        "urgency": alert.urgency,
        "summary": alert.summary,
        "rules": list(alert.rules),
        "playbook": alert.playbook,
        "level": alert.level,
        "level_name": level_name(alert, escalation),
        "opened_at": iso(alert.opened_at),
        "notified_at": iso(alert.notified_at),
        "acked_by": alert.acked_by,
        "acked_at": _when(alert.acked_at),
        "ack_note": alert.ack_note,
        "resolved_at": _when(alert.resolved_at),
        "resolution": alert.resolution,
        "rollback_at": _when(alert.rollback_at),
    }


def action_json(action: HumanAction) -> dict[str, Any]:
    """An answer a human gave, and whether the daemon has carried it out yet."""
    return {
        "id": action.id,
        "answer": action.answer.value,
        "by": action.by,
        "note": action.note,
        "source": action.source,
        "at": iso(action.at),
        "applied_at": _when(action.applied_at),
        "outcome": action.outcome,
    }


def _ack_request(body: dict[str, Any]) -> tuple[str, str, Answer]:
    unknown = set(body) - _ACK_FIELDS
    if unknown:
        raise InputError(f"unknown fields: {', '.join(sorted(unknown))}")
    by, note, answer = body.get("by"), body.get("note", ""), body.get("answer", "acknowledge")
    if not isinstance(by, str) or not by.strip():
        raise InputError("'by' is a required string: who answers")
    if not isinstance(note, str):
        raise InputError("'note' must be a string")
    if len(by) > _MAX_BY or len(note) > _MAX_NOTE:
        raise InputError(f"'by' takes at most {_MAX_BY} characters, 'note' {_MAX_NOTE}")
    choices = ", ".join(a.value for a in Answer)
    if not isinstance(answer, str) or answer not in {a.value for a in Answer}:
        raise InputError(f"'answer' must be one of {choices}")
    return by.strip(), note, Answer(answer)


def _include_resolved(request: Request) -> bool:
    value = request.query_params.get("all", "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InputError("'all' must be 1 or 0")


class _Deliveries:
    """Which inbound deliveries were acted on (the ``inbound_seen`` table of the state database,
    the one ``ReplayGuard`` keeps), on the desk's connection to it. Read before acting, recorded
    only once the answer is stored, so a vendor's retry after our failure is still heard."""

    def __init__(self, desk: AlertDesk, max_age: float) -> None:
        self._desk = desk
        self._max_age = max_age

    def seen(self, source: str, event_id: str, now: float) -> bool:
        row = self._desk.db.execute(
            "SELECT 1 FROM inbound_seen WHERE source = ? AND event_id = ? AND seen_at >= ?",
            (source, event_id, now - 2.0 * self._max_age),
        ).one()
        return row is not None

    def record(self, source: str, event_id: str, now: float) -> bool:
        return ReplayGuard(self._desk.db, self._max_age).first_time(source, event_id, now)


class _AlertRoutes:
    """GET /api/v1/alerts, GET /api/v1/alerts/{ref}, POST /api/v1/alerts/{ref}/ack."""

    def __init__(self, desk: AlertDesk, token: str | None, clock: Callable[[], float]) -> None:
        self.desk = desk
        self.token = token
        self.clock = clock

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/alerts", self.list_alerts, methods=["GET"]),
            Route("/api/v1/alerts/{ref:str}", self.get_alert, methods=["GET"]),
            Route("/api/v1/alerts/{ref:str}/ack", self.ack_alert, methods=["POST"]),
        ]

    def shown(self, alert: Alert) -> dict[str, Any]:
        """The alert with every answer it got, oldest first."""
        shown = alert_json(alert, self.desk.escalation)
        shown["actions"] = [action_json(action) for action in self.desk.store.actions(alert.id)]
        return shown

    async def list_alerts(self, request: Request) -> Response:
        try:
            include_resolved = _include_resolved(request)
        except InputError as exc:
            return _error(400, str(exc))
        alerts = self.desk.store.alerts(include_resolved=include_resolved)
        return JSONResponse({"alerts": [alert_json(a, self.desk.escalation) for a in alerts]})

    async def get_alert(self, request: Request) -> Response:
        try:
            alert = self.desk.find(request.path_params["ref"])
        except AlertError as exc:
            return _error(exc.status, str(exc))
        return JSONResponse(self.shown(alert))

    async def ack_alert(self, request: Request) -> Response:
        denied = _authorized(request, self.token)
        if denied is not None:
            return denied
        try:
            by, note, answer = _ack_request(await _json_body(request))
        except InputError as exc:
            return _error(400, str(exc))
        try:
            alert, _ = self.desk.answer(
                request.path_params["ref"], answer, by=by, note=note, source="api", now=self.clock()
            )
        except AlertError as exc:
            return _error(exc.status, str(exc))
        return JSONResponse(self.shown(alert))


class _InboundRoutes:
    """POST /api/v1/inbound/pagerduty and /api/v1/inbound/slack: answers from the pagers,
    authenticated by the vendor's signature. Refusals are counted in ``rejected``."""

    def __init__(
        self,
        desk: AlertDesk | None,
        inbound: InboundSecrets | None,
        clock: Callable[[], float],
    ) -> None:
        self.desk = desk
        self.inbound = inbound
        self.clock = clock
        self.max_age = inbound.max_age if inbound is not None else DEFAULT_MAX_AGE
        self.rejected: Counter[tuple[str, str]] = Counter()

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/inbound/pagerduty", self.pagerduty, methods=["POST"]),
            Route("/api/v1/inbound/slack", self.slack, methods=["POST"]),
        ]

    async def pagerduty(self, request: Request) -> Response:
        return await self.take(request, "pagerduty")

    async def slack(self, request: Request) -> Response:
        return await self.take(request, "slack")

    def refuse(self, source: str, reason: str, status: int, message: str = "") -> Response:
        self.rejected[(source, reason)] += 1
        return _error(status, message or reason)

    async def take(self, request: Request, source: Source) -> Response:
        secret = None if self.inbound is None else getattr(self.inbound, source)
        if self.desk is None or secret is None:
            key = "pagerduty_secret_env" if source == "pagerduty" else "slack_signing_secret_env"
            missing = "no alert desk" if self.desk is None else f"[inbound] {key} is not set"
            message = f"{source} answers are not configured on this sentinel ({missing})"
            return self.refuse(source, NOT_CONFIGURED, 404, message)
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return self.refuse(source, TOO_LARGE, 400, f"body larger than {MAX_BODY} bytes")
        verify = verify_pagerduty if source == "pagerduty" else verify_slack
        now = self.clock()
        try:
            delivery = verify(secret, request.headers, raw, now, self.max_age)
        except InboundRejected as exc:
            return self.refuse(source, exc.reason, exc.status)
        if delivery is None:
            return _ignored(source, "not an answer to an alert")
        return self.answer(self.desk, delivery, now)

    def answer(self, desk: AlertDesk, delivery: InboundAnswer, now: float) -> Response:
        """Act on one verified delivery. Synchronous on purpose: nothing else runs on the event
        loop between the replay check, the answer and recording the delivery as seen, which
        happens only once the answer is stored (a vendor's retry after our failure is heard)."""
        source = delivery.source
        deliveries = _Deliveries(desk, self.max_age)
        if deliveries.seen(source, delivery.event_id, now):
            return self.refuse(source, REPLAYED, 401)
        key = delivery.dedup_key
        alert = desk.store.live(key) or desk.store.latest(key)  # by key only, never as an id
        if alert is None:
            return _ignored(source, f"no alert with dedup key {key}")
        if alert.state is AlertState.RESOLVED and delivery.action in ("acknowledge", "resolve"):
            return _ignored(source, f"alert {alert.id} is resolved")
        # resolving the incident in PagerDuty acknowledges ours: an alert resolves when its
        # condition does, not when a page is closed
        answer = Answer.ACKNOWLEDGE if delivery.action == "resolve" else Answer(delivery.action)
        try:
            alert, _ = desk.answer(
                alert.id, answer, by=delivery.by, note=delivery.note, source=source, now=now
            )
        except AlertError as exc:
            return self.refuse(source, CONFLICT, exc.status, str(exc))
        deliveries.record(source, delivery.event_id, now)
        return JSONResponse(_AlertRoutes(desk, None, self.clock).shown(alert))


def _ignored(source: str, why: str) -> Response:
    """A verified delivery we do not act on: 2xx so the vendor does not retry it. Slack wants
    exactly 200 from an interactivity URL (anything else shows the clicker an error)."""
    return JSONResponse({"ignored": why}, status_code=200 if source == "slack" else 202)


def create_app(
    config: Config,
    store: SignalStore,
    token: str | None,
    clock: Callable[[], float] = time.time,
    *,
    desk: AlertDesk | None = None,
    inbound: InboundSecrets | None = None,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The API app. ``desk``: serve alerts and take answers (without it the alert routes do not
    exist); ``inbound``: the secrets that authenticate PagerDuty and Slack answers (without one,
    that channel answers 404). ``app.state.inbound_rejected`` counts refused inbound deliveries
    by (source, reason)."""

    async def post_signal(request: Request) -> Response:
        denied = _authorized(request, token)
        if denied is not None:
            return denied
        try:
            outcome = record_signal(
                config, store, _signal_request(await _json_body(request)), clock()
            )
        except InputError as exc:
            return _error(400, str(exc))
        return JSONResponse(asdict(outcome), status_code=201)

    async def list_signals(request: Request) -> Response:
        current = store.current(sorted(pushed_measures(config)))
        return JSONResponse({"signals": [asdict(signal) for signal in current.values()]})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail), exc.headers)

    answers = _InboundRoutes(desk, inbound, clock)
    routes: list[BaseRoute] = [
        Route("/api/v1/signals", post_signal, methods=["POST"]),
        Route("/api/v1/signals", list_signals, methods=["GET"]),
        *answers.routes(),
    ]
    if desk is not None:
        routes += _AlertRoutes(desk, token, clock).routes()
    routes += extra_routes
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.inbound_rejected = answers.rejected
    return app
