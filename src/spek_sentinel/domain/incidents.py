"""An incident: rules that fired together, and what the sentinel did about them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Incident:
    id: str
    opened_at: float
    rules: list[str] = field(default_factory=list)  # every rule that fired in it, in order
    firing: set[str] = field(default_factory=set)  # rules still firing
    playbook: str | None = None
    rolled_back_at: float | None = None
