"""What the engine concluded about one rule at one moment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from spek_sentinel.domain.rules import Rule, RuleState, Severity


@dataclass(frozen=True, slots=True)
class Verdict:
    """A state change of one rule (or the moment it went blind), with its evidence."""

    rule: Rule
    at: float
    previous: RuleState
    state: RuleState
    value: float | None
    evidence: str
    blind: bool = False  # this verdict announces that the rule has been blind past its limit
    sight_restored: bool = False  # the rule had gone blind and now sees again
    detail: Mapping[str, object] = field(default_factory=dict)

    @property
    def severity(self) -> Severity:
        return self.rule.severity

    @property
    def transition(self) -> str:
        if self.blind:
            return f"{self.state.value} (blind)"
        return f"{self.previous.value}->{self.state.value}"
