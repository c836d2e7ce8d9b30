"""The state store contract, one Protocol per concern."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PushedSignal:
    """A value a human or another system pushed: a confirmed event, or a reported number."""

    name: str
    value: float
    reason: str
    by: str
    at: float


@dataclass(frozen=True, slots=True)
class Release:
    """A release of the watched application (an image or a commit) and how it fared."""

    id: int
    version: str
    first_seen: float
    healthy_since: float | None  # every rule OK without a break since then
    known_good_at: float | None  # when it had been healthy for the known-good period
    source: str  # who recorded it: "deploy", "detected", "rollback"


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """What an incident is about (runbook "Document the Issue"): when, why, what is done."""

    id: str
    opened_at: float
    trigger: str  # the rule and its evidence, or the human's reason
    playbook: str
    target_release: str | None
    details: str  # symptoms and affected components, as text


class SignalStore(Protocol):
    def push(self, name: str, value: float, reason: str, by: str, at: float) -> PushedSignal:
        """Record a pushed value; it stays current until resolved or superseded."""
        ...

    def resolve(self, name: str, reason: str, by: str, at: float) -> int:
        """Resolve every open value of ``name``; returns how many were open."""
        ...

    def current(self, names: list[str]) -> dict[str, PushedSignal]:
        """The newest unresolved value of each name that has one."""
        ...

    def close(self) -> None: ...
