"""Invariants of engine + policy over arbitrary series, on the shipped threshold table."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

from hypothesis import event, given, settings
from hypothesis import strategies as st

from builders import T0
from spek_sentinel.config import Config, load_config
from spek_sentinel.domain.decisions import Action, Decision
from spek_sentinel.domain.rules import RuleState
from spek_sentinel.domain.samples import Sample
from spek_sentinel.engine.sentinel import Sentinel
from spek_sentinel.replay.report import decision_record

CONFIG: Config = load_config(Path(__file__).parent.parent / "thresholds.toml", environ={})
UNITS = {
    name: spec.unit
    for probe in CONFIG.model.probes.values()
    for name, spec in probe.signals.items()
}
SIGNALS = sorted(UNITS)
RANGES: dict[str, Callable[[], st.SearchStrategy[float]]] = {
    "ratio": lambda: st.sampled_from([0.0, 0.005, 0.03, 0.05, 0.06, 0.12, 0.3, 1.0]),
    "seconds": lambda: st.sampled_from([0.01, 0.04, 0.1, 0.12, 0.19, 0.25, 0.5, 2.0]),
    "bytes": lambda: st.sampled_from([50e6, 80e6, 99e6, 120e6, 200e6]),
    "count": lambda: st.sampled_from([0.0, 0.0, 1.0, 2.0]),
    "bool": lambda: st.sampled_from([0.0, 1.0, 1.0]),
    "fps": lambda: st.sampled_from([15.0, 29.0, 31.0, 35.0, 60.0]),
}


@st.composite
def values_for(draw: st.DrawFn, signal: str) -> float:
    return draw(RANGES[UNITS[signal]]())


@st.composite
def usable_sample(draw: st.DrawFn, signal: str, at: float) -> Sample:
    volume = draw(st.none() | st.sampled_from([5.0, 50.0, 500.0, 5000.0]))
    return Sample(signal, at, value=draw(values_for(signal)), volume=volume)


@st.composite
def blind_sample(draw: st.DrawFn, signal: str, at: float) -> Sample:
    kind = draw(st.sampled_from(["error", "none", "nan", "inf"]))
    if kind == "error":
        return Sample(signal, at, error=draw(st.sampled_from(["timeout", "refused", "500"])))
    value = {"none": None, "nan": float("nan"), "inf": float("inf")}[kind]
    return Sample(signal, at, value=value)


@st.composite
def timeline(draw: st.DrawFn, max_size: int = 250) -> list[float]:
    gaps = draw(
        st.lists(
            st.sampled_from([0.0, 1.0, 15.0, 15.0, 15.0, 30.0, 60.0, 600.0, 3600.0]),
            min_size=1,
            max_size=max_size,
        )
    )
    times, at = [], T0
    for gap in gaps:
        at += gap
        times.append(at)
    return times


@st.composite
def series(
    draw: st.DrawFn, blind_share: float = 0.2, focus: list[str] | None = None
) -> list[Sample]:
    samples = []
    if focus is None:
        focus = draw(st.lists(st.sampled_from(SIGNALS), min_size=1, max_size=4, unique=True))
    for at in draw(timeline()):
        signal = draw(st.sampled_from(focus))
        blind = draw(st.floats(0, 1)) < blind_share
        make = blind_sample if blind else usable_sample
        samples.append(draw(make(signal, at)))
    return samples


@st.composite
def blind_series(draw: st.DrawFn) -> list[Sample]:
    return [draw(blind_sample(draw(st.sampled_from(SIGNALS)), at)) for at in draw(timeline())]


def records(decisions: list[Decision]) -> list[dict[str, object]]:
    return [decision_record(d) for d in decisions]


@settings(max_examples=200, deadline=None)
@given(blind_series())
def test_no_rollback_and_no_firing_from_errors_and_no_data_alone(samples: list[Sample]) -> None:
    sentinel = Sentinel(CONFIG.rules, CONFIG.policy)
    decisions = sentinel.observe_many(samples)
    decisions += sentinel.advance(samples[-1].at + 86400)
    assert not any(d.action is Action.ROLLBACK for d in decisions)
    assert not any(d.verdict.state is RuleState.FIRING for d in decisions)


@settings(max_examples=150, deadline=None)
@given(series(), st.lists(st.integers(1, 40), min_size=1, max_size=20))
def test_same_decisions_whatever_the_batching(samples: list[Sample], cuts: list[int]) -> None:
    one_by_one = Sentinel(CONFIG.rules, CONFIG.policy)
    expected = [d for s in samples for d in one_by_one.observe(s)]

    batched = Sentinel(CONFIG.rules, CONFIG.policy)
    got: list[Decision] = []
    start = 0
    for size in [*cuts, len(samples)]:
        got += batched.observe_many(samples[start : start + size])
        start += size
    assert records(got) == records(expected)

    engine_first = Sentinel(CONFIG.rules, CONFIG.policy)
    verdicts = engine_first.engine.observe_many(samples)
    via_policy = [d for v in verdicts for d in engine_first.policy.decide(v)]
    assert records(via_policy) == records(expected)


ACK = "ack"


@st.composite
def episodes(draw: st.DrawFn) -> list[Sample | str]:
    """Bad episodes of confirmed events separated by gaps around the cooldown, with acks
    sprinkled in: the shape that would expose a rollback loop."""
    events: list[Sample | str] = []
    at = T0
    for _ in range(draw(st.integers(1, 8))):
        signal = draw(st.sampled_from(["data_corruption", "security_breach", "migration_failed"]))
        for value in [1.0] * draw(st.integers(1, 4)) + [0.0] * draw(st.integers(0, 3)):
            events.append(Sample(signal, at, value=value))
            at += 15
        if draw(st.booleans()):
            events.append(ACK)
        at += draw(st.sampled_from([60.0, 600.0, 1800.0, 3599.0, 3600.0, 5400.0, 7200.0]))
    return events


@settings(max_examples=300, deadline=None)
@given(episodes())
def test_at_most_one_rollback_per_cooldown_and_none_again_without_an_ack(
    events: list[Sample | str],
) -> None:
    sentinel = Sentinel(CONFIG.rules, CONFIG.policy)
    rollbacks: list[float] = []
    acks: list[float] = []
    now = T0
    for item in events:
        if isinstance(item, str):
            sentinel.acknowledge(now)
            acks.append(now)
            continue
        now = item.at
        for decision in sentinel.observe(item):
            if decision.action is Action.ROLLBACK:
                rollbacks.append(decision.verdict.at)
    event(f"rollbacks: {min(len(rollbacks), 3)}")
    for earlier, later in itertools.pairwise(rollbacks):
        assert later - earlier >= CONFIG.policy.cooldown
        assert any(earlier <= ack <= later for ack in acks)


@settings(max_examples=150, deadline=None)
@given(series(blind_share=0.3))
def test_a_rule_starts_firing_only_on_a_usable_sample_of_its_own_signal(
    samples: list[Sample],
) -> None:
    sentinel = Sentinel(CONFIG.rules, CONFIG.policy)
    for sample in samples:
        for decision in sentinel.observe(sample):
            verdict = decision.verdict
            if verdict.state is RuleState.FIRING and verdict.previous is not RuleState.FIRING:
                assert sample.usable
                assert sample.signal == verdict.rule.signal
                assert verdict.at == sample.at
