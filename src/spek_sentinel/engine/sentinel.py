"""Engine and policy together: samples in, decisions out. What replay and the daemon drive."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from spek_sentinel.domain.decisions import Decision, Refused, Rollback
from spek_sentinel.domain.rules import Rule
from spek_sentinel.domain.samples import ReleaseMark, Sample
from spek_sentinel.domain.settings import PolicySettings
from spek_sentinel.domain.verdicts import Verdict
from spek_sentinel.engine.engine import Engine
from spek_sentinel.engine.policy import Policy


class Sentinel:
    def __init__(self, rules: Sequence[Rule], settings: PolicySettings | None = None) -> None:
        self.engine = Engine(rules)
        self.policy = Policy(settings)

    def _decide(self, verdicts: Iterable[Verdict]) -> list[Decision]:
        decisions: list[Decision] = []
        for verdict in verdicts:
            for decision in self.policy.decide(verdict):
                decisions.append(decision)
        return decisions

    def observe(self, sample: Sample) -> list[Decision]:
        verdicts = self.engine.observe(sample)
        return self._decide(verdicts) if verdicts else []

    def observe_many(self, samples: Iterable[Sample]) -> list[Decision]:
        decisions: list[Decision] = []
        for sample in samples:
            decisions.extend(self.observe(sample))
        return decisions

    def advance(self, now: float) -> list[Decision]:
        return self._decide(self.engine.advance(now))

    def release(self, mark: ReleaseMark) -> None:
        """A release started. While a rollback runs, that release is the rollback landing."""
        self.engine.release(mark)
        if self.policy.rollback_running:
            self.rollback_completed(mark.at)

    def rollback_completed(self, at: float) -> None:
        """Start post-rollback monitoring: checks already failing during the incident must fail
        again after the rollback to page."""
        self.policy.rollback_completed(at)
        self.engine.rearm("post_rollback")

    def snapshot(self) -> dict[str, object]:
        return self.policy.snapshot()

    def restore(self, state: Mapping[str, Any]) -> str | None:
        """Take back the policy's state after a restart; rules of the open incident that were
        firing start as FIRING, so recovery resolves them and closes the incident. Returns the
        id of an incident closed here because none of its rules can fire again (a split
        rule's series are only known once seen)."""
        self.policy.restore(state)
        incident = self.policy.incident
        if incident is None:
            return None
        incident.firing &= self.engine.resume_firing(incident.firing)
        if incident.firing:
            return None
        self.policy.incident = None
        return incident.id

    def acknowledge(self, at: float) -> None:
        self.policy.acknowledge(at)

    def approve(self, incident_id: str, by: str, at: float) -> Rollback | Refused:
        return self.policy.approve(incident_id, by, at)

    def dismiss(self, incident_id: str, by: str, at: float) -> str | Refused:
        return self.policy.dismiss(incident_id, by, at)

    def veto(self, incident_id: str, by: str, at: float) -> str | Refused:
        return self.policy.veto(incident_id, by, at)
