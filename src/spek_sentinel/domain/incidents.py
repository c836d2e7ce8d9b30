"""An incident: rules that fired together, and what the sentinel did about them."""

from __future__ import annotations

from dataclasses import dataclass, field

from spek_sentinel.domain.verdicts import Verdict


@dataclass(slots=True)
class Incident:
    id: str
    opened_at: float
    rules: list[str] = field(default_factory=list)  # every rule that fired in it, in order
    firing: set[str] = field(default_factory=set)  # rules still firing
    playbook: str | None = None
    rolled_back_at: float | None = None
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # rule -> verdict it fired with
    held_by: str | None = None  # a human dismissed or vetoed: no automatic rollback in it
