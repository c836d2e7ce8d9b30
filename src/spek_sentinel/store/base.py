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
