"""The routes, and where each release's fault bites.

GET  /                      "spek-app <version>"
GET  /healthz               200 {"status": "ok", "version", "schema", ...} when PostgreSQL
                            and Redis answer; 503 {"status": "unhealthy", ...} otherwise
GET  /metrics               Prometheus text (not counted in http_requests_total)
GET  /ws                    WebSocket echo
GET  /api/agents            the agents
GET  /api/tasks?limit=N     the newest tasks
POST /api/tasks             {"kind": "...", "agent": "coder"?} -> 201 {"id", "status"}
GET  /api/tasks/{id}        one task
GET  /api/stats             task counts by status (cached in Redis for 2 s), API requests
GET  /api/admin/config      admin only: Authorization: Bearer <HS256 JWT, role admin>
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import redis.exceptions

from spek_app import auth, websocket
from spek_app.http import Request, Response
from spek_app.metrics import CONTENT_TYPE, Metrics
from spek_app.releases import Fault
from spek_app.settings import Settings
from spek_app.signals import SignalPusher
from spek_app.store import Cache, Store

log = logging.getLogger("spek_app")

STATS_TTL = 2.0
HEALTH_TIMEOUT = 2.0
_TASK = re.compile(r"^/api/tasks/(\d+)$")
_UNAVAILABLE = (psycopg.OperationalError, redis.exceptions.ConnectionError, TimeoutError)

Handler = Callable[[Request], Awaitable[Response]]


class App:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        cache: Cache,
        metrics: Metrics,
        signals: SignalPusher,
    ) -> None:
        self.settings = settings
        self.release = settings.release
        self.fault = settings.release.fault
        self.store = store
        self.cache = cache
        self.metrics = metrics
        self.signals = signals
        self._api_requests = 0  # this process's count, for the errors fault's pattern
        self._routes: dict[tuple[str, str], Handler] = {
            ("GET", "/"): self.index,
            ("GET", "/healthz"): self.healthz,
            ("GET", "/api/agents"): self.agents,
            ("GET", "/api/tasks"): self.list_tasks,
            ("POST", "/api/tasks"): self.create_task,
            ("GET", "/api/tasks/{id}"): self.get_task,
            ("GET", "/api/stats"): self.stats,
            ("GET", "/api/admin/config"): self.admin_config,
        }
        metrics.build_info.labels(
            self.release.version, str(self.release.schema), self.fault or ""
        ).set(1)

    # --- dispatch ---

    async def handle(self, request: Request) -> Response:
        if request.path == "/metrics" and request.method == "GET":
            return Response(200, self.metrics.render(), CONTENT_TYPE)
        route = _route(request.path)
        started = time.perf_counter()
        response = await self._dispatch(route, request)
        self.metrics.duration.labels(route).observe(time.perf_counter() - started)
        self.metrics.requests.labels(route, request.method, str(response.status)).inc()
        return response

    async def _dispatch(self, route: str, request: Request) -> Response:
        handler = self._routes.get((request.method, route))
        if handler is None:
            if any(path == route for _, path in self._routes):
                return Response.json(405, {"error": f"{request.method} not allowed on {route}"})
            return Response.json(404, {"error": f"no route {request.path}"})
        try:
            if route.startswith("/api/"):
                fault = await self._api_fault()
                if fault is not None:
                    return fault
                await self.cache.count_request()
            return await handler(request)
        except _UNAVAILABLE as exc:
            log.warning("%s %s: backend unavailable: %s", request.method, request.path, exc)
            return Response.json(503, {"error": "a backend is unavailable"})
        except (ValueError, LookupError) as exc:
            return Response.json(400, {"error": str(exc)})
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return Response.json(500, {"error": "internal error"})

    async def _api_fault(self) -> Response | None:
        """v2.0.0-slow delays every API answer; v2.0.0-errors fails a fixed share of them,
        spread evenly (request n fails when floor(n * ratio) steps up)."""
        if self.fault is Fault.SLOW:
            await asyncio.sleep(self.settings.faults.slow_seconds)
        if self.fault is Fault.ERRORS and self._next_fails():
            log.error("unhandled error in request handler: 'NoneType' object is not subscriptable")
            return Response.json(500, {"error": "internal error"})
        return None

    def _next_fails(self) -> bool:
        ratio = self.settings.faults.error_ratio
        n = self._api_requests
        self._api_requests += 1
        return math.floor((n + 1) * ratio) > math.floor(n * ratio)

    # --- routes ---

    async def index(self, request: Request) -> Response:
        return Response.text(200, f"spek-app {self.release.version}\n")

    async def healthz(self, request: Request) -> Response:
        checks: dict[str, str] = {}
        schema: int | None = None
        try:
            schema = await asyncio.wait_for(self.store.schema_version(), HEALTH_TIMEOUT)
            checks["database"] = "ok"
        except Exception as exc:  # any failure is the answer: unhealthy
            checks["database"] = f"error: {type(exc).__name__}: {exc}"[:200]
        try:
            await asyncio.wait_for(self.cache.ping(), HEALTH_TIMEOUT)
            checks["redis"] = "ok"
        except Exception as exc:  # any failure is the answer: unhealthy
            checks["redis"] = f"error: {type(exc).__name__}: {exc}"[:200]
        healthy = all(value == "ok" for value in checks.values())
        return Response.json(
            200 if healthy else 503,
            {
                "status": "ok" if healthy else "unhealthy",
                "version": self.release.version,
                "schema": schema,
                "release_schema": self.release.schema,
                **checks,
                # which secrets are in use, without showing them: changes when they rotate
                "secrets": {
                    "SESSION_SECRET": auth.fingerprint(self.settings.session_secret),
                    "JWT_SECRET": auth.fingerprint(self.settings.jwt_secret),
                },
            },
        )

    async def agents(self, request: Request) -> Response:
        return Response.json(200, {"agents": await self.store.agents()})

    async def list_tasks(self, request: Request) -> Response:
        limit = int(request.query.get("limit", "20"))
        if not 1 <= limit <= 500:
            raise ValueError("limit must be 1..500")
        return Response.json(200, {"tasks": await self.store.tasks(limit)})

    async def create_task(self, request: Request) -> Response:
        body = request.json()
        kind, agent = body.get("kind"), body.get("agent")
        if not isinstance(kind, str) or not kind or len(kind) > 100:
            raise ValueError("'kind' must be a string of 1..100 characters")
        if agent is not None and not isinstance(agent, str):
            raise ValueError("'agent' must be a string")
        task_id = await self.store.create_task(kind, agent, "api", audit=self.release.schema >= 3)
        await self.cache.enqueue(task_id)
        return Response.json(201, {"id": task_id, "status": "queued"})

    async def get_task(self, request: Request) -> Response:
        found = _TASK.match(request.path)
        assert found is not None
        task = await self.store.task(int(found.group(1)))
        if task is None:
            return Response.json(404, {"error": "no such task"})
        return Response.json(200, task)

    async def stats(self, request: Request) -> Response:
        counts = await self.cache.cached_counts()
        cached = counts is not None
        if counts is None:
            counts = await self.store.counts()
            await self.cache.cache_counts(counts, STATS_TTL)
        payload: dict[str, Any] = {
            "tasks": counts,
            "cached": cached,
            "api_requests": await self.cache.requests(),
        }
        return Response.json(200, payload)

    async def admin_config(self, request: Request) -> Response:
        route = "/api/admin/config"
        claims = auth.verify(self.settings.jwt_secret, auth.bearer(request.headers))
        admin = claims is not None and claims.get("role") == "admin"
        if not admin:
            if self.fault is not Fault.BREACH or "authorization" in request.headers:
                self.metrics.auth_failures.labels(route).inc()
                return Response(
                    401,
                    b'{"error": "admin token required"}\n',
                    "application/json",
                    {"WWW-Authenticate": 'Bearer realm="spek-app"'},
                )
            # v2.0.0-breach: a debugging shortcut lets requests without any Authorization
            # header through. The app's own audit notices, after the fact.
            await self._breach(route, request)
        return Response.json(
            200,
            {
                "version": self.release.version,
                "schema": self.release.schema,
                "agents": len(await self.store.agents()),
            },
        )

    async def _breach(self, route: str, request: Request) -> None:
        self.metrics.unauthorized.labels(route).inc()
        peer = request.headers.get("x-forwarded-for", "unknown client")
        reason = f"{route} served without credentials to {peer} by {self.release.version}"
        log.warning("SECURITY: unauthorized access: %s", reason)
        await asyncio.to_thread(self.signals.push, "security_breach", reason)

    # --- WebSocket ---

    async def websocket(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.metrics.ws_attempts.inc()
        if request.path != "/ws":
            self.metrics.ws_failures.inc()
            writer.write(Response.json(404, {"error": "no WebSocket here"}).encode(False))
            await writer.drain()
            return
        fail = self.fault is Fault.ERRORS and self._next_fails()
        opened = await websocket.echo(
            request, reader, writer, fail_handshake=fail, on_message=self.metrics.ws_messages.inc
        )
        if not opened:
            self.metrics.ws_failures.inc()


def _route(path: str) -> str:
    """The route label: a fixed set, so that scanners cannot blow up the metric's series."""
    if _TASK.match(path):
        return "/api/tasks/{id}"
    if path in {
        "/",
        "/healthz",
        "/ws",
        "/api/agents",
        "/api/tasks",
        "/api/stats",
        "/api/admin/config",
    }:
        return path
    return "other"
