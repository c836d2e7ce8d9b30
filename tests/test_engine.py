"""The rule state machines: sustained windows, gaps, blindness, hysteresis, guards."""

from __future__ import annotations

import math

from builders import STEP, T0, error_rate_rule, rule, run, series, states
from spek_sentinel.domain.rules import (
    Baseline,
    Event,
    Relative,
    RuleState,
    Threshold,
    Trend,
)
from spek_sentinel.domain.samples import ReleaseMark, Sample
from spek_sentinel.engine.engine import Engine

BAD = 0.08
GOOD = 0.01


def test_breach_sustained_for_the_whole_window_fires_exactly_when_it_elapses() -> None:
    engine = Engine([error_rate_rule()])
    verdicts = run(engine, series("error_rate", [BAD] * 22))
    # pending at 0 s; the 21st sample (t = 300 s) completes the 5 minute window
    assert states(verdicts) == [(0.0, "pending"), (300.0, "firing")]
    assert "held 5m" in verdicts[-1].evidence
    assert verdicts[-1].detail["breach_samples"] == 21


def test_breach_that_clears_before_the_window_elapses_never_fires() -> None:
    engine = Engine([error_rate_rule()])
    verdicts = run(engine, series("error_rate", [BAD] * 20 + [GOOD] + [BAD] * 19))
    assert all(v.state is not RuleState.FIRING for v in verdicts)
    assert states(verdicts)[:3] == [(0.0, "pending"), (300.0, "ok"), (315.0, "pending")]


def test_gap_longer_than_max_gap_restarts_the_window() -> None:
    engine = Engine([error_rate_rule()])
    before = series("error_rate", [BAD] * 10)  # 0..135 s
    after = series("error_rate", [BAD] * 21, start=T0 + 135 + 60)  # 60 s silence > 45 s
    verdicts = run(engine, before + after)
    fired = [v for v in verdicts if v.state is RuleState.FIRING]
    assert len(fired) == 1
    # the window restarted at 195 s, so it completes at 495 s, not at 300 s
    assert fired[0].at - T0 == 195 + 300


def test_single_probe_error_inside_max_gap_keeps_the_window() -> None:
    engine = Engine([error_rate_rule()])
    values: list[float | str | None] = [BAD] * 22
    values[8] = "prometheus: query timed out"
    verdicts = run(engine, series("error_rate", values))
    assert states(verdicts) == [(0.0, "pending"), (300.0, "firing")]
    assert verdicts[-1].detail["breach_samples"] == 20


def test_errors_past_max_gap_make_the_rule_unknown_and_lose_the_window() -> None:
    engine = Engine([error_rate_rule()])
    values: list[float | str | None] = [BAD] * 8 + ["timeout"] * 4 + [BAD] * 21
    verdicts = run(engine, series("error_rate", values))
    assert states(verdicts)[:3] == [(0.0, "pending"), (165.0, "unknown"), (180.0, "pending")]
    fired = [v for v in verdicts if v.state is RuleState.FIRING]
    assert [v.at - T0 for v in fired] == [180.0 + 300]


def test_only_errors_and_no_data_never_fire_and_go_blind_once() -> None:
    engine = Engine([error_rate_rule()])
    values: list[float | str | None] = ["connection refused", None] * 40
    verdicts = run(engine, series("error_rate", values))
    assert all(v.state is not RuleState.FIRING for v in verdicts)
    assert states(verdicts) == [(60.0, "unknown"), (300.0, "unknown blind")]
    assert "sample for 5m" in verdicts[-1].evidence


def test_nan_and_inf_are_no_data_not_breaches() -> None:
    engine = Engine([error_rate_rule(for_=0.0)])
    verdicts = run(engine, series("error_rate", [math.nan, math.inf, -math.inf, math.nan]))
    assert states(verdicts) == [(60.0, "unknown")] or states(verdicts) == []
    assert all(v.state is not RuleState.FIRING for v in verdicts)


def test_silence_with_no_samples_at_all_is_noticed_when_time_advances() -> None:
    engine = Engine([error_rate_rule()])
    run(engine, series("error_rate", [GOOD]))
    assert engine.advance(T0 + 45) == []
    lost = engine.advance(T0 + 46)
    assert states(lost) == [(46.0, "unknown")]
    blind = engine.advance(T0 + 300)
    assert states(blind) == [(300.0, "unknown blind")]
    assert engine.advance(T0 + 900) == []  # blind is announced once


def test_firing_rule_stays_firing_while_blind_and_sight_returns() -> None:
    engine = Engine([error_rate_rule(for_=0.0)])
    verdicts = run(engine, series("error_rate", [BAD] + ["timeout"] * 30 + [BAD]))
    assert states(verdicts) == [(0.0, "firing"), (300.0, "firing blind"), (465.0, "firing")]
    assert verdicts[-1].sight_restored
    assert verdicts[-1].previous is RuleState.FIRING


def test_hysteresis_keeps_firing_between_clear_line_and_threshold() -> None:
    hysteresis = Threshold(">", 0.05, clear=0.04)
    engine = Engine([error_rate_rule(condition=hysteresis, for_=0.0, keep_firing_for=60.0)])
    hovering = [0.051, 0.049, 0.052, 0.045, 0.048, 0.051, 0.046]
    verdicts = run(engine, series("error_rate", hovering))
    assert states(verdicts) == [(0.0, "firing")]
    # below the clear line: it resolves only after keep_firing_for of clear samples
    tail = series("error_rate", [0.03] * 6, start=T0 + len(hovering) * STEP)
    resolved = run(engine, tail)
    first_clear = T0 + len(hovering) * STEP
    assert [(v.at, v.state) for v in resolved] == [
        (first_clear + 60, RuleState.RESOLVED),
        (first_clear + 75, RuleState.OK),
    ]


def test_a_value_inside_the_band_restarts_the_clear_timer() -> None:
    hysteresis = Threshold(">", 0.05, clear=0.04)
    engine = Engine([error_rate_rule(condition=hysteresis, for_=0.0, keep_firing_for=30.0)])
    verdicts = run(engine, series("error_rate", [BAD, 0.03, 0.03, 0.045, 0.03, 0.03, 0.03]))
    assert states(verdicts) == [(0.0, "firing"), (90.0, "resolved")]


def test_ratio_with_too_little_volume_is_not_judged() -> None:
    guarded = Threshold(">", 0.05, min_volume=100)
    engine = Engine([error_rate_rule(condition=guarded, for_=0.0)])
    # 1 error in 3 requests at 3 a.m. is 33%, but it is not a reason to roll back
    assert run(engine, series("error_rate", [0.33] * 10, volume=3)) == []
    later = series("error_rate", [0.33], start=T0 + 10 * STEP, volume=500)
    assert states(run(engine, later)) == [(150.0, "firing")]


def test_low_volume_does_not_make_the_rule_blind() -> None:
    guarded = Threshold(">", 0.05, min_volume=100)
    engine = Engine([error_rate_rule(condition=guarded)])
    verdicts = run(engine, series("error_rate", [0.5] * 40, volume=1))
    assert verdicts == []


def test_min_samples_needs_that_many_breaches() -> None:
    engine = Engine([error_rate_rule(for_=0.0, min_samples=3)])
    verdicts = run(engine, series("error_rate", [BAD, BAD, BAD]))
    assert states(verdicts) == [(0.0, "pending"), (30.0, "firing")]


def test_below_rule_fires_on_low_fps_and_clears_above_its_clear_line() -> None:
    fps = rule("low_render_fps", "render_fps", Threshold("<", 30, clear=33), for_=30.0)
    engine = Engine([fps])
    verdicts = run(engine, series("render_fps", [25, 24, 26, 31, 32, 34]))
    assert states(verdicts) == [(0.0, "pending"), (30.0, "firing"), (75.0, "resolved")]


def test_relative_rule_compares_with_a_rolling_median_and_says_so() -> None:
    slow = rule(
        "slow_responses",
        "latency_p95",
        Relative(0.5, Baseline("rolling_median", 3600, 20), clear_increase=0.25),
        for_=60.0,
    )
    engine = Engine([slow])
    normal = [0.10, 0.12, 0.11] * 10
    assert run(engine, series("latency_p95", normal)) == []
    slower = series("latency_p95", [0.18] * 6, start=T0 + 30 * STEP)
    verdicts = run(engine, slower)
    assert [v.state for v in verdicts] == [RuleState.PENDING, RuleState.FIRING]
    assert verdicts[-1].detail["baseline"] == 0.11
    assert "rolling median over 1h" in verdicts[-1].evidence
    assert "+64%" in verdicts[-1].evidence


def test_relative_baseline_does_not_learn_from_the_breach_itself() -> None:
    slow = rule("slow", "latency_p95", Relative(0.5, Baseline("rolling_median", 600, 5)))
    engine = Engine([slow])
    run(engine, series("latency_p95", [0.1] * 10))
    # an hour of slow responses: if the baseline learned them, the rule would resolve
    verdicts = run(engine, series("latency_p95", [0.3] * 240, start=T0 + 150))
    assert [v.state for v in verdicts] == [RuleState.FIRING]


def test_relative_before_release_freezes_the_median_of_the_window_before_the_deploy() -> None:
    slow = rule("slow", "latency_p95", Relative(0.5, Baseline("before_release", 3600, 10)))
    engine = Engine([slow])
    run(engine, series("latency_p95", [0.2] * 20))
    run(engine, series("latency_p95", [0.1] * 21, start=T0 + 20 * STEP))
    release_at = T0 + 41 * STEP
    engine.release(ReleaseMark(release_at, "v2"))
    verdicts = run(engine, series("latency_p95", [0.23], start=release_at))
    # the median of the hour before the release is 0.1 (21 of 41 samples), so 0.23 is +130%
    assert [v.state for v in verdicts] == [RuleState.FIRING]
    assert verdicts[0].detail["baseline"] == 0.1
    assert "before the current release" in verdicts[0].evidence


def test_relative_rule_without_enough_history_does_not_judge() -> None:
    slow = rule("slow", "latency_p95", Relative(0.5, Baseline("rolling_median", 3600, 20)))
    engine = Engine([slow])
    assert run(engine, series("latency_p95", [0.1] * 5 + [5.0] * 5)) == []


def leak_rule(**overrides: object) -> Trend:
    fields: dict[str, object] = {"window": 1800.0, "min_growth": 0.2, "min_rising": 0.7}
    fields.update(overrides)
    return Trend(**fields)  # type: ignore[arg-type]


def test_memory_growing_steadily_over_the_window_is_a_leak() -> None:
    engine = Engine([rule("memory_leak", "memory_bytes", leak_rule(), max_gap=60.0)])
    # +1 MB per minute from 80 MB with a dip every 5th sample: about +37% over 30 min
    values = [80e6 + i * 0.25e6 - (0.3e6 if i % 5 == 4 else 0) for i in range(130)]
    verdicts = run(engine, series("memory_bytes", values))
    assert [v.state for v in verdicts] == [RuleState.FIRING]
    assert verdicts[0].at - T0 >= 1800 - 60  # judged only once the window is full
    assert "grew +" in verdicts[0].evidence


def test_warm_up_then_plateau_is_not_a_leak() -> None:
    engine = Engine([rule("memory_leak", "memory_bytes", leak_rule(), max_gap=60.0)])
    warm = [40e6 + i * 2e6 for i in range(20)]  # fast growth for 5 minutes: +100%
    plateau = [80e6 + (i % 3) * 0.2e6 for i in range(200)]  # then flat, with noise
    verdicts = run(engine, series("memory_bytes", warm + plateau))
    assert all(v.state is not RuleState.FIRING for v in verdicts)


def test_growth_that_levels_off_inside_the_window_is_not_a_leak() -> None:
    engine = Engine([rule("memory_leak", "memory_bytes", leak_rule(), max_gap=60.0)])
    # rises steadily for 20 minutes, then holds: total growth and rising share alone would fire
    rising = [60e6 + i * 0.5e6 for i in range(80)]
    level = [100e6 + (i % 2) * 0.1e6 for i in range(40)]
    verdicts = run(engine, series("memory_bytes", rising + level))
    assert all(v.state is not RuleState.FIRING for v in verdicts)


def test_release_restarts_the_trend_window_and_skips_warm_up() -> None:
    trend = leak_rule(window=600.0, warmup=300.0)
    engine = Engine([rule("memory_leak", "memory_bytes", trend, max_gap=60.0)])
    engine.release(ReleaseMark(T0, "v2"))
    growing = [50e6 + i * 1e6 for i in range(80)]
    verdicts = run(engine, series("memory_bytes", growing))
    fired = [v for v in verdicts if v.state is RuleState.FIRING]
    # warm-up ends at 300 s, then the 600 s window must fill: not before ~840 s
    assert len(fired) == 1
    assert fired[0].at - T0 >= 300 + 600 - 60


def test_one_confirmed_event_fires_at_once() -> None:
    event = rule("data_corruption", "data_corruption", Event(), playbook="data_corruption")
    engine = Engine([event])
    verdicts = run(engine, series("data_corruption", [0, 0, 1]))
    assert states(verdicts) == [(30.0, "firing")]


def test_event_rule_with_min_samples_needs_confirmation() -> None:
    check = rule("integrity", "integrity_violations", Event(), min_samples=2)
    engine = Engine([check])
    verdicts = run(engine, series("integrity_violations", [0, 3, 0, 2, 2]))
    assert states(verdicts) == [
        (15.0, "pending"),
        (30.0, "ok"),
        (45.0, "pending"),
        (60.0, "firing"),
    ]


def test_a_sample_slightly_older_than_another_signals_newest_is_still_judged() -> None:
    # probes run concurrently: the database probe may report t=100 after Prometheus reported t=101
    db = rule("database_unreachable", "db_up", Threshold("<", 1))
    engine = Engine([error_rate_rule(for_=0.0), db])
    engine.observe(Sample("error_rate", T0 + 101, value=GOOD))
    verdicts = engine.observe(Sample("db_up", T0 + 100, value=0))
    assert [(v.rule.name, v.state) for v in verdicts] == [
        ("database_unreachable", RuleState.FIRING)
    ]
    assert engine.out_of_order == 0


def test_out_of_order_samples_are_ignored_and_counted() -> None:
    engine = Engine([error_rate_rule(for_=0.0)])
    run(engine, series("error_rate", [GOOD], start=T0 + 100))
    assert engine.observe(Sample("error_rate", T0, value=BAD)) == []
    assert engine.out_of_order == 1


def test_missing_may_be_declared_ok_explicitly() -> None:
    pushed = rule("fps", "render_fps", Threshold("<", 30), missing="ok")
    engine = Engine([pushed])
    assert run(engine, series("render_fps", [None] * 40)) == []


def test_missing_may_be_declared_a_breach_on_an_evaluate_rule() -> None:
    strict = rule("ws", "websocket_failure_ratio", Threshold(">", 0.1), missing="breach")
    engine = Engine([strict])
    verdicts = run(engine, series("websocket_failure_ratio", [None]))
    assert states(verdicts) == [(0.0, "firing")]


def test_samples_of_unwatched_signals_are_counted_not_judged() -> None:
    engine = Engine([error_rate_rule()])
    assert engine.observe(Sample("cpu", T0, value=1.0)) == []
    assert engine.unrouted == 1
