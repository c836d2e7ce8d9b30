"""Small factories for engine tests: rules and sample series without the config layer."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from spek_sentinel.domain.rules import Condition, Rule, Severity, Threshold
from spek_sentinel.domain.samples import Sample
from spek_sentinel.domain.verdicts import Verdict
from spek_sentinel.engine.engine import Engine

T0 = 1_764_036_000.0  # 2025-11-25T02:00:00Z: a fixed clock keeps evidence and ids stable
STEP = 15.0


def error_rate_rule(**overrides: object) -> Rule:
    """The runbook's first row: error rate >5% sustained for 5 minutes, immediate."""
    fields: dict[str, object] = {
        "name": "high_error_rate",
        "signal": "error_rate",
        "severity": Severity.IMMEDIATE,
        "condition": Threshold(">", 0.05),
        "for_": 300.0,
        "max_gap": 45.0,
        "blind_after": 300.0,
        "playbook": "high_error_rate",
    }
    fields.update(overrides)
    return Rule(**fields)  # type: ignore[arg-type]


def rule(name: str, signal: str, condition: Condition, **overrides: object) -> Rule:
    fields: dict[str, object] = {
        "name": name,
        "signal": signal,
        "severity": Severity.EVALUATE,
        "condition": condition,
        "max_gap": 45.0,
        "blind_after": 300.0,
    }
    fields.update(overrides)
    return Rule(**fields)  # type: ignore[arg-type]


def series(
    signal: str,
    values: Sequence[float | str | None],
    start: float = T0,
    step: float = STEP,
    volume: float | None = None,
) -> list[Sample]:
    """One sample per step. A str value is a probe error with that text; None is no data."""
    samples = []
    for index, value in enumerate(values):
        at = start + index * step
        if isinstance(value, str):
            samples.append(Sample(signal, at, error=value))
        else:
            samples.append(Sample(signal, at, value=value, volume=volume))
    return samples


def run(engine: Engine, samples: Iterable[Sample]) -> list[Verdict]:
    return engine.observe_many(samples)


def states(verdicts: Iterable[Verdict]) -> list[tuple[float, str]]:
    """(seconds since T0, state) for each verdict: readable in assertion diffs."""
    return [(v.at - T0, v.state.value + (" blind" if v.blind else "")) for v in verdicts]
