"""The live view of ``spek-sentinel demo``: one line per thing that happens, each stamped with
the seconds since the demo began, written as it happens (the executor's events come from its
worker thread, so writes are serialized)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import TextIO

from spek_sentinel.domain.decisions import Decision, Page, Resolve, Rollback
from spek_sentinel.domain.units import format_duration
from spek_sentinel.rollback.executor import RunEvent

_TAG_WIDTH = 9
_INDENT = " " * (10 + _TAG_WIDTH)


class DemoView:
    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.clock = clock
        self.began = clock()
        self._lock = threading.Lock()
        self._step_started: dict[str, float] = {}
        self._steps: list[str] = []

    def elapsed(self) -> float:
        return self.clock() - self.began

    def write(self, text: str) -> None:
        with self._lock:
            self.out.write(text if text.endswith("\n") else text + "\n")
            self.out.flush()

    def line(self, tag: str, text: str, more: Iterable[str] = ()) -> None:
        head = f"[{self.elapsed():6.1f}s] {tag:<{_TAG_WIDTH}}{text}"
        self.write("\n".join([head, *(f"{_INDENT}{extra}" for extra in more)]))

    def heading(self, text: str) -> None:
        self.write(f"\n== {text} ==")

    # --- the engine and the policy ---

    def decision(self, decision: Decision) -> None:
        verdict = decision.verdict
        rule = verdict.rule.name
        if isinstance(decision, Rollback):
            self.line(
                "DECISION",
                f"ROLL BACK: {rule} {verdict.transition} ({verdict.severity.value})",
                [
                    f"playbook: {decision.playbook}   incident: {decision.incident}",
                    f"why:      {decision.reason}",
                    f"evidence: {verdict.evidence}",
                ],
            )
        elif isinstance(decision, Page):
            self.line(
                "DECISION",
                f"PAGE ({decision.kind.value}): {rule} {verdict.transition}",
                [f"why:      {decision.reason}", f"evidence: {verdict.evidence}"],
            )
        elif isinstance(decision, Resolve):
            closed = "; incident closed" if decision.incident_closed else ""
            self.line(
                "DECISION",
                f"RESOLVE: {rule} {verdict.transition}{closed}",
                [f"evidence: {verdict.evidence}"],
            )
        else:
            self.line("rule", f"{rule} {verdict.transition}: {verdict.evidence}")

    # --- the executor ---

    def plan(self, steps: Iterable[str]) -> None:
        self._steps = list(steps)

    def event(self, event: RunEvent, output: str = "") -> None:
        """One executor event; ``output`` is what the finished step recorded in the journal."""
        total = len(self._steps)
        step = event.step or ""
        number = self._steps.index(step) + 1 if step in self._steps else 0
        where = f"{number}/{total} {step}" if number else step
        if event.kind in ("run_started", "run_resumed"):
            self.line("rollback", f"{event.kind.replace('_', ' ')}: {total} steps")
        elif event.kind == "step_started":
            self._step_started[step] = event.at
        elif event.kind in ("step_finished", "step_already_done"):
            began = self._step_started.pop(step, event.at)
            lines = [line for line in output.strip().splitlines() if line.strip()]
            first, rest = (lines[0], lines[1:]) if lines else (event.detail, [])
            shown = rest if step == "verify" else rest[:0]
            self.line(
                "rollback",
                f"{where:<34} done in {format_duration(max(event.at - began, 0.0))}: {first}",
                shown,
            )
        elif event.kind == "step_failed":
            self.line("rollback", f"{where} FAILED: {event.detail}")
        elif event.kind == "run_finished":
            self.line("rollback", f"finished: {event.detail}")
        elif event.kind == "budget_exceeded":
            self.line("rollback", f"DOWNTIME BUDGET EXCEEDED: {event.detail}")
        elif event.kind in ("run_halted", "run_failed"):
            self.line("rollback", f"{event.kind.replace('run_', '').upper()}: {event.detail}")
