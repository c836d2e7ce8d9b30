"""The daemon's read-only routes: liveness, readiness, metrics, and the state of rules,
incidents and releases. Nothing here changes state; every answer is JSON except /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from spek_sentinel.domain.units import iso
from spek_sentinel.rollback.journal import Journal
from spek_sentinel.service.metrics import CONTENT_TYPE, Metrics
from spek_sentinel.service.rollback_run import incident_report
from spek_sentinel.service.watch import Watch
from spek_sentinel.store.open import state_location
from spek_sentinel.store.records import StateStore


class StatusRoutes:
    def __init__(
        self,
        watch: Watch,
        metrics: Metrics,
        stale_after: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``stale_after``: readiness fails when no probe has been evaluated for this long."""
        self.watch = watch
        self.metrics = metrics
        self.stale_after = stale_after
        self.clock = clock
        self.state = state_location(watch.config, watch.environ)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
            Route("/api/v1/rules", self.rules, methods=["GET"]),
            Route("/api/v1/incidents", self.incidents, methods=["GET"]),
            Route("/api/v1/incidents/{incident:str}", self.incident, methods=["GET"]),
            Route("/api/v1/releases", self.releases, methods=["GET"]),
        ]

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        problems = []
        try:
            await asyncio.to_thread(self.watch.desk.store.counts)
        except Exception as exc:
            problems.append(f"state store not reachable: {exc}")
        last = self.watch.state.last_evaluation
        if last is None:
            problems.append("no evaluation yet")
        elif self.clock() - last > self.stale_after:
            problems.append(f"last evaluation {self.clock() - last:.0f}s ago ({iso(last)})")
        body = {
            "ready": not problems,
            "problems": problems,
            "leader": self.watch.leadership.is_leader,
            "last_evaluation": iso(last) if last is not None else None,
        }
        return JSONResponse(body, status_code=200 if not problems else 503)

    async def metrics_text(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.exposition(), media_type=CONTENT_TYPE)

    async def rules(self, request: Request) -> Response:
        rules = [
            {
                "rule": status.rule.name,
                "signal": status.rule.signal,
                "severity": status.rule.severity.value,
                "phase": status.rule.phase,
                "state": status.state.value,
                "blind": status.blind,
                "value": status.value,
                "last_usable_at": iso(status.last_usable_at) if status.last_usable_at else None,
                "playbook": status.rule.playbook,
            }
            for status in self.watch.sentinel.engine.status()
        ]
        incident = self.watch.sentinel.policy.incident
        return JSONResponse(
            {"rules": rules, "incident": incident.id if incident is not None else None}
        )

    def _runs(self) -> list[dict[str, object]]:
        journal = Journal.open(self.state)
        try:
            return [
                {
                    "incident": run.incident_id,
                    "status": run.status,
                    "reason": run.reason,
                    "started_at": iso(run.started_at),
                    "ended_at": iso(run.ended_at) if run.ended_at else None,
                    "downtime": run.downtime,
                }
                for run in journal.runs()
            ]
        finally:
            journal.close()

    async def incidents(self, request: Request) -> Response:
        return JSONResponse({"incidents": await asyncio.to_thread(self._runs)})

    def _report(self, incident: str) -> str | None:
        journal = Journal.open(self.state)
        store = StateStore.open(self.state)
        try:
            record = store.incident(incident)
            trigger = record.trigger if record is not None else ""
            return incident_report(self.watch.config, journal, incident, trigger)
        finally:
            journal.close()
            store.close()

    async def incident(self, request: Request) -> Response:
        incident = request.path_params["incident"]
        report = await asyncio.to_thread(self._report, incident)
        if report is None:
            return JSONResponse({"error": f"no incident {incident}"}, status_code=404)
        return JSONResponse({"incident": incident, "report_markdown": report})

    def _releases(self) -> list[dict[str, object]]:
        store = StateStore.open(self.state)
        try:
            return [asdict(release) for release in store.releases()]
        finally:
            store.close()

    async def releases(self, request: Request) -> Response:
        return JSONResponse({"releases": await asyncio.to_thread(self._releases)})
