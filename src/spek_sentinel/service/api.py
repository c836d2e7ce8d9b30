"""The HTTP API (ASGI, Starlette). Every answer is JSON; mutating routes need the bearer token,
compared in constant time; a rejected request changes nothing."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from spek_sentinel.config import Config
from spek_sentinel.domain.errors import InputError
from spek_sentinel.secrets import read_secret
from spek_sentinel.service.signals import SignalRequest, pushed_measures, record_signal
from spek_sentinel.store.base import SignalStore

MAX_BODY = 64 * 1024
_SIGNAL_FIELDS = {"name", "value", "reason", "by", "resolve"}


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


def create_app(
    config: Config,
    store: SignalStore,
    token: str | None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
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

    return Starlette(
        routes=[
            Route("/api/v1/signals", post_signal, methods=["POST"]),
            Route("/api/v1/signals", list_signals, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
    )
