"""Drive recorded events through a Sentinel, in order, collecting every decision."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from spek_sentinel.domain.decisions import Decision
from spek_sentinel.domain.rules import Rule
from spek_sentinel.domain.samples import ReleaseMark, Sample
from spek_sentinel.domain.settings import PolicySettings
from spek_sentinel.engine.sentinel import Sentinel
from spek_sentinel.replay.series import Ack, Event


@dataclass(slots=True)
class ReplayResult:
    decisions: list[Decision] = field(default_factory=list)
    samples: int = 0
    first_at: float | None = None
    last_at: float | None = None
    unwatched: dict[str, int] = field(default_factory=dict)  # signal -> samples no rule reads

    @property
    def span(self) -> float:
        if self.first_at is None or self.last_at is None:
            return 0.0
        return self.last_at - self.first_at


def replay(
    rules: Iterable[Rule],
    settings: PolicySettings,
    events: Iterable[Event],
    on_decision: Callable[[Decision], None] | None = None,
    on_ack: Callable[[Ack], None] | None = None,
) -> ReplayResult:
    sentinel = Sentinel(list(rules), settings)
    watched = sentinel.engine.signals
    result = ReplayResult()
    for event in events:
        if result.first_at is None:
            result.first_at = event.at
        result.last_at = event.at
        if isinstance(event, Sample):
            result.samples += 1
            if event.signal not in watched:
                result.unwatched[event.signal] = result.unwatched.get(event.signal, 0) + 1
            decisions = sentinel.observe(event)
        elif isinstance(event, ReleaseMark):
            decisions = sentinel.advance(event.at)
            sentinel.release(event)
        else:
            decisions = sentinel.advance(event.at)
            sentinel.acknowledge(event.at)
            if on_ack is not None:
                on_ack(event)
        for decision in decisions:
            result.decisions.append(decision)
            if on_decision is not None:
                on_decision(decision)
    return result
