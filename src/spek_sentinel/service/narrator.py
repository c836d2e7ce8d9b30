"""What stakeholders hear while a rollback runs (runbook "Communication"): started, each phase
done with the downtime so far, finished or halted. Information goes to the notice channels; a
halt, a failure or a blown downtime budget is a critical alert for on-call."""

from __future__ import annotations

import logging

from spek_sentinel.domain.units import format_duration
from spek_sentinel.paging.desk import AlertDesk
from spek_sentinel.rollback.executor import Plan, RunEvent

log = logging.getLogger(__name__)


class RollbackNarrator:
    """Subscribe it to the executor's events (``on_event``). Called from the executor's thread;
    the desk is thread-safe."""

    def __init__(
        self, desk: AlertDesk, plan: Plan, downtime_started_at: float | None = None
    ) -> None:
        """``downtime_started_at``: when traffic stopped, for a run resumed after a restart
        (the journal has it), so the notices count the downtime from the real stop."""
        self.desk = desk
        self.plan = plan
        self._stops = {step.name for step in plan.steps if step.starts_downtime}
        self._downtime_started = downtime_started_at

    def _downtime(self, at: float) -> str:
        if self._downtime_started is None:
            return "no downtime yet"
        return f"downtime so far {format_duration(at - self._downtime_started)}"

    def __call__(self, event: RunEvent) -> None:
        incident = event.incident_id
        what = f"rollback of {incident} ({self.plan.playbook or 'manual'})"
        detail = f": {event.detail}" if event.detail else ""
        if event.kind == "step_started" and event.step in self._stops:
            self._downtime_started = self._downtime_started or event.at
        if event.kind in ("run_started", "run_resumed"):
            verb = "started" if event.kind == "run_started" else "resumed after a restart"
            steps = ", ".join(step.name for step in self.plan.steps)
            self.desk.inform(f"{what} {verb}; steps: {steps}", incident, event.at)
        elif event.kind in ("step_finished", "step_already_done"):
            self.desk.inform(
                f"{what}: {event.step} done{detail} ({self._downtime(event.at)})",
                incident,
                event.at,
            )
        elif event.kind == "run_finished":
            self.desk.inform(f"{what} finished{detail}", incident, event.at)
        elif event.kind == "budget_exceeded":
            self._critical(event, f"{what}: downtime budget exceeded{detail}")
        elif event.kind in ("run_halted", "run_failed"):
            state = "HALTED" if event.kind == "run_halted" else "FAILED"
            self._critical(
                event,
                f"{what} {state} at {event.step or 'start'}{detail}; "
                f"{self._downtime(event.at)}. DO NOT PROCEED without checking the journal "
                f"(spek-sentinel incidents show {incident})",
            )
            self.desk.inform(f"{what} {state.lower()}{detail}", incident, event.at)

    def _critical(self, event: RunEvent, summary: str) -> None:
        key = f"rollback:{event.incident_id}:{event.kind}"
        self.desk.raise_alert(key, summary, incident=event.incident_id, now=event.at)
        log.error("%s", summary)
