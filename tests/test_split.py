"""Rules over a signal split by a label: judged per series, retired when a series ends."""

from __future__ import annotations

from builders import STEP, T0, rule
from spek_sentinel.domain.decisions import Action, Page, PageKind
from spek_sentinel.domain.rules import RuleState, Severity, Threshold
from spek_sentinel.domain.samples import Sample
from spek_sentinel.domain.settings import PolicySettings
from spek_sentinel.engine.engine import Engine
from spek_sentinel.engine.sentinel import Sentinel
from spek_sentinel.engine.snapshot import judge_all
from spek_sentinel.replay.series import parse_line

POD_MEMORY = rule(
    "pod_memory",
    "pod_memory_bytes",
    Threshold(">", 500e6),
    for_=30.0,
    split_by="pod",
    severity=Severity.IMMEDIATE,
    playbook="high_error_rate",
)


def pods(step: int, **values: float | None) -> list[Sample]:
    at = T0 + step * STEP
    return [Sample("pod_memory_bytes", at, value=v, series=pod) for pod, v in values.items()]


def run(engine: Engine, steps: list[dict[str, float | None]]) -> list[tuple[float, str, str]]:
    out = []
    for step, values in enumerate(steps):
        for sample in pods(step, **values):
            for verdict in engine.observe(sample):
                out.append((verdict.at - T0, verdict.rule.name, verdict.state.value))
    return out


def test_each_series_has_its_own_state_machine() -> None:
    engine = Engine([POD_MEMORY])
    steps = [{"a": 100e6, "b": 900e6}] * 4
    assert run(engine, steps) == [
        (0.0, 'pod_memory{pod="b"}', "pending"),
        (30.0, 'pod_memory{pod="b"}', "firing"),
    ]


def test_a_series_that_ends_while_others_report_is_retired_not_blind() -> None:
    engine = Engine([POD_MEMORY])
    firing = [{"a": 100e6, "b": 900e6}] * 3
    replaced = [{"a": 100e6, "c": 100e6}] * 30  # pod b replaced by pod c in a deploy
    verdicts = run(engine, firing + replaced)
    assert (30.0, 'pod_memory{pod="b"}', "firing") in verdicts
    later = [v for v in verdicts if v[0] > 30.0]
    assert [(name, state) for _, name, state in later] == [('pod_memory{pod="b"}', "resolved")]
    assert {s.rule.name for s in engine.status()} == {'pod_memory{pod="a"}', 'pod_memory{pod="c"}'}


def test_a_whole_signal_error_reaches_every_series_and_pages_blind_once() -> None:
    sentinel = Sentinel([POD_MEMORY], PolicySettings())
    sentinel.observe_many(pods(0, a=100e6, b=100e6))
    decisions = []
    for step in range(1, 30):
        error = Sample("pod_memory_bytes", T0 + step * STEP, error="prometheus: timed out")
        decisions += sentinel.observe(error)
    states = {(d.verdict.rule.name, d.verdict.state.value) for d in decisions}
    assert states == {('pod_memory{pod="a"}', "unknown"), ('pod_memory{pod="b"}', "unknown")}
    pages = [d for d in decisions if isinstance(d, Page)]
    assert [p.kind for p in pages] == [PageKind.BLIND]
    assert not any(d.action is Action.ROLLBACK for d in decisions)


def test_a_split_signal_that_never_reports_a_series_goes_blind() -> None:
    engine = Engine([POD_MEMORY])
    verdicts = []
    for step in range(30):
        verdicts += engine.observe(Sample("pod_memory_bytes", T0 + step * STEP, value=None))
    assert [(v.at - T0, v.rule.name, v.blind) for v in verdicts] == [(300.0, "pod_memory", True)]
    restored = engine.observe(Sample("pod_memory_bytes", T0 + 30 * STEP, value=1e6, series="a"))
    assert [(v.rule.name, v.sight_restored) for v in restored] == [("pod_memory", True)]


def test_one_series_rolling_back_makes_one_incident() -> None:
    sentinel = Sentinel([POD_MEMORY], PolicySettings())
    decisions = []
    for step in range(4):
        decisions += sentinel.observe_many(pods(step, a=900e6, b=900e6))
    actions = [
        (d.verdict.rule.name, d.action.value) for d in decisions if d.action is not Action.NONE
    ]
    assert actions == [('pod_memory{pod="a"}', "rollback"), ('pod_memory{pod="b"}', "page")]
    assert sentinel.engine.status()[0].state is RuleState.FIRING


def test_check_judges_a_split_rule_once_per_series() -> None:
    samples = {"pod_memory_bytes": pods(0, a=100e6, b=900e6)}
    checks = judge_all([POD_MEMORY], samples)
    assert [(c.rule.name, c.status.value) for c in checks] == [
        ('pod_memory{pod="a"}', "ok"),
        ('pod_memory{pod="b"}', "breach"),
    ]
    blind = judge_all([POD_MEMORY], {"pod_memory_bytes": [Sample("pod_memory_bytes", T0)]})
    assert [(c.rule.name, c.status.value) for c in blind] == [("pod_memory", "unknown")]


def test_a_recorded_series_line_names_its_series() -> None:
    line = '{"ts": 1764036000, "signal": "pod_memory_bytes", "value": 9e8, "series": "b"}'
    assert parse_line(line) == Sample("pod_memory_bytes", 1764036000, value=9e8, series="b")
