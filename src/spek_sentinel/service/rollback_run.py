"""Carry out one rollback: plan it from the table and the release history, run it through the
journal, write the incident report, record the release it landed on. Shared by
``spek-sentinel rollback`` and the daemon."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from spek_sentinel.config import Config
from spek_sentinel.rollback.executor import ExecutorSettings, Plan, RunEvent, RunOutcome, run
from spek_sentinel.rollback.journal import Journal
from spek_sentinel.rollback.report import render
from spek_sentinel.service.rollback_plan import PlanRequest, build_plan
from spek_sentinel.service.rollback_targets import database_target
from spek_sentinel.store.open import state_location
from spek_sentinel.store.records import StateStore


@dataclass(frozen=True, slots=True)
class RollbackResult:
    outcome: RunOutcome
    report_path: Path | None


def incident_report(
    config: Config, journal: Journal, incident: str, trigger: str = ""
) -> str | None:
    record = journal.run(incident)
    if record is None:
        return None
    settings = config.model.rollback
    return render(
        record,
        journal.steps(incident),
        downtime_budget=settings.downtime_budget,
        downtime_target=settings.downtime_target,
        trigger=trigger,
    )


def target_release(
    config: Config, requested: str | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The release to return to: the one asked for, else the newest known good. ``environ``
    holds the state database's secret (default: the process environment)."""
    if requested is not None:
        return requested
    store = StateStore.open(config, environ)
    try:
        known_good = store.rollback_target()
    finally:
        store.close()
    return known_good.version if known_good is not None else None


def plan_rollback(config: Config, request: PlanRequest, environ: Mapping[str, str]) -> Plan:
    """The plan; raises ConfigError or RollbackError before anything runs."""
    return build_plan(config, request, environ)


def execute(
    config: Config,
    plan: Plan,
    request: PlanRequest,
    environ: Mapping[str, str],
    *,
    on_event: Callable[[RunEvent], None] | None = None,
    fencing_token: int = 0,
    guard: Callable[[int], None] | None = None,
) -> RollbackResult:
    """Run ``plan``; write the incident report under the incidents dir; when it succeeded,
    record the release it landed on. Blocking: call it from a worker thread in the daemon."""
    database = database_target(config, environ)
    settings = config.model.rollback
    executor_settings = ExecutorSettings(
        downtime_budget=settings.downtime_budget,
        downtime_target=settings.downtime_target,
        secrets=database.secrets if database is not None else (),
    )
    state = state_location(config, environ)
    journal = Journal.open(state)
    try:
        outcome = run(
            plan,
            journal,
            on_event=on_event,
            fencing_token=fencing_token,
            settings=executor_settings,
            guard=guard,
        )
        report = incident_report(config, journal, plan.incident_id, request.trigger)
    finally:
        journal.close()
    path = None
    if report is not None:
        path = Path(settings.incidents_dir) / f"{plan.incident_id}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report, encoding="utf-8")
    landed = outcome.status == "succeeded" and request.target_release is not None
    if landed and settings.application is not None:
        assert request.target_release is not None
        store = StateStore.open(state)
        try:
            store.record_release(request.target_release, time.time(), "rollback")
        finally:
            store.close()
    return RollbackResult(outcome, path)
