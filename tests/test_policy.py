"""The policy: rollback, page or resolve; one incident; cooldown, loop guard, shadow mode."""

from __future__ import annotations

import json

from builders import STEP, T0, error_rate_rule, rule, series
from spek_sentinel.domain.decisions import (
    Action,
    Decision,
    Nothing,
    Page,
    PageKind,
    Refused,
    Resolve,
    Rollback,
)
from spek_sentinel.domain.rules import Event, Severity, Threshold
from spek_sentinel.domain.samples import ReleaseMark
from spek_sentinel.domain.settings import PolicySettings
from spek_sentinel.engine.sentinel import Sentinel

BAD = 0.08
GOOD = 0.01
HOUR = 3600.0


def immediate_event(name: str, playbook: str) -> object:
    return rule(name, name, Event(), severity=Severity.IMMEDIATE, playbook=playbook)


def actions(decisions: list[Decision]) -> list[tuple[str, str]]:
    return [(d.verdict.rule.name, d.action.value) for d in decisions if d.action is not Action.NONE]


def fire_error_rate(sentinel: Sentinel, start: float) -> list[Decision]:
    """A bad deploy at ``start``: 6 minutes of 8% errors, then recovery for 3 minutes."""
    bad = series("error_rate", [BAD] * 24, start=start)
    good = series("error_rate", [GOOD] * 12, start=start + 24 * STEP)
    return sentinel.observe_many(bad + good)


def quiet_until(sentinel: Sentinel, start: float, end: float) -> list[Decision]:
    """Healthy samples every step from ``start`` up to (not including) ``end``."""
    count = int((end - start) // STEP)
    return sentinel.observe_many(series("error_rate", [GOOD] * count, start=start))


def test_immediate_rule_firing_rolls_back_with_its_playbook() -> None:
    sentinel = Sentinel([error_rate_rule()])
    decisions = fire_error_rate(sentinel, T0)
    assert actions(decisions) == [("high_error_rate", "rollback"), ("high_error_rate", "resolve")]
    rollback = next(d for d in decisions if d.action is Action.ROLLBACK)
    assert rollback.playbook == "high_error_rate"  # type: ignore[union-attr]
    assert rollback.verdict.at == T0 + 300
    resolve = next(d for d in decisions if isinstance(d, Resolve))
    assert resolve.incident == rollback.incident and resolve.incident_closed


def test_evaluate_rule_firing_pages_and_never_rolls_back() -> None:
    ws = rule("websocket_failures", "ws", Threshold(">", 0.1), for_=60.0, playbook="p")
    sentinel = Sentinel([ws])
    decisions = sentinel.observe_many(series("ws", [0.3] * 10))
    pages = [d for d in decisions if isinstance(d, Page)]
    assert [(p.kind, p.verdict.at - T0) for p in pages] == [(PageKind.BREACH, 60.0)]
    assert "evaluate a rollback; its playbook would be p" in pages[0].reason
    assert not any(d.action is Action.ROLLBACK for d in decisions)


def test_rules_firing_together_make_one_incident_and_one_rollback() -> None:
    sentinel = Sentinel(
        [
            immediate_event("data_corruption", "data_corruption"),
            immediate_event("security_breach", "security_breach"),
        ]
    )
    decisions = sentinel.observe_many(
        series("data_corruption", [1]) + series("security_breach", [1])
    )
    assert actions(decisions) == [("data_corruption", "rollback"), ("security_breach", "page")]
    rollback, page = decisions
    assert isinstance(page, Page) and page.kind is PageKind.JOINED
    assert page.incident == rollback.incident
    assert "no second automatic rollback" in page.reason
    assert sentinel.policy.incident is not None
    assert sentinel.policy.incident.rules == ["data_corruption", "security_breach"]


def test_after_an_automatic_rollback_breaches_page_until_a_human_acknowledges() -> None:
    sentinel = Sentinel([error_rate_rule()], PolicySettings(cooldown=HOUR))
    fire_error_rate(sentinel, T0)
    assert actions(quiet_until(sentinel, T0 + 36 * STEP, T0 + 2 * HOUR)) == []
    # a second bad episode two hours later: past the cooldown, but nobody acknowledged
    second = fire_error_rate(sentinel, T0 + 2 * HOUR)
    held = [d for d in second if isinstance(d, Page)]
    assert [p.kind for p in held] == [PageKind.HELD]
    assert "has not been acknowledged" in held[0].reason
    sentinel.acknowledge(T0 + 2.5 * HOUR)
    quiet_until(sentinel, T0 + 2 * HOUR + 36 * STEP, T0 + 3 * HOUR)
    third = fire_error_rate(sentinel, T0 + 3 * HOUR)
    assert ("high_error_rate", "rollback") in actions(third)


def test_at_most_one_automatic_rollback_per_cooldown_even_when_acknowledged() -> None:
    sentinel = Sentinel([error_rate_rule()], PolicySettings(cooldown=HOUR))
    fire_error_rate(sentinel, T0)
    sentinel.acknowledge(T0 + 600)
    quiet_until(sentinel, T0 + 36 * STEP, T0 + 1200)
    again = fire_error_rate(sentinel, T0 + 1200)
    held = [d for d in again if isinstance(d, Page)]
    assert [p.kind for p in held] == [PageKind.HELD]
    assert "cooldown of 1h" in held[0].reason


def test_shadow_mode_decides_and_pages_but_never_rolls_back() -> None:
    sentinel = Sentinel([error_rate_rule()], PolicySettings(auto_rollback=False))
    decisions = fire_error_rate(sentinel, T0)
    pages = [d for d in decisions if isinstance(d, Page)]
    assert [p.kind for p in pages] == [PageKind.SHADOW]
    assert "would roll back" in pages[0].reason
    assert not any(d.action is Action.ROLLBACK for d in decisions)


def test_blind_signal_pages_once_and_resolves_when_sight_returns() -> None:
    sentinel = Sentinel([error_rate_rule()])
    blind = series("error_rate", ["timeout"] * 25)
    back = series("error_rate", [GOOD], start=T0 + 25 * STEP)
    decisions = sentinel.observe_many(blind + back)
    pages = [d for d in decisions if isinstance(d, Page)]
    assert [p.kind for p in pages] == [PageKind.BLIND]
    assert pages[0].reason.startswith("sentinel blind: no usable error_rate sample for 5m")
    resolves = [d for d in decisions if isinstance(d, Resolve)]
    assert len(resolves) == 1 and "sees error_rate again" in resolves[0].reason
    assert not any(d.action is Action.ROLLBACK for d in decisions)


def test_unknown_and_pending_decide_nothing() -> None:
    sentinel = Sentinel([error_rate_rule()])
    decisions = sentinel.observe_many(series("error_rate", [BAD] + ["timeout"] * 4))
    assert [d.verdict.state.value for d in decisions] == ["pending", "unknown"]
    assert all(isinstance(d, Nothing) for d in decisions)
    assert "unknown never triggers a rollback" in decisions[-1].reason


def validation_rule() -> object:
    return rule(
        "validation.error_rate",
        "error_rate",
        Threshold(">=", 0.01),
        for_=60.0,
        phase="post_rollback",
        description="Error rate should be <1% after rollback",
    )


def test_post_rollback_check_pages_when_a_limit_is_crossed_after_the_rollback_landed() -> None:
    sentinel = Sentinel([error_rate_rule(), validation_rule()])
    decisions = sentinel.observe_many(series("error_rate", [BAD] * 21))
    assert ("high_error_rate", "rollback") in actions(decisions)
    # the validation check has been failing all along; that alone must not page
    assert not any(isinstance(d, Page) for d in decisions)
    landed = T0 + 21 * STEP
    sentinel.release(ReleaseMark(landed, "v1.4.0"))
    after = sentinel.observe_many(series("error_rate", [0.02] * 6, start=landed))
    pages = [d for d in after if isinstance(d, Page)]
    assert [(p.kind, p.verdict.at - landed) for p in pages] == [(PageKind.VALIDATION, 60.0)]
    assert "Error rate should be <1% after rollback" in pages[0].reason


def test_post_rollback_checks_are_quiet_outside_the_monitoring_period() -> None:
    sentinel = Sentinel([validation_rule()], PolicySettings(monitor_for=HOUR))
    decisions = sentinel.observe_many(series("error_rate", [0.02] * 10))
    assert all(isinstance(d, Nothing) for d in decisions)


def test_one_blind_page_per_signal_however_many_rules_read_it() -> None:
    sentinel = Sentinel([error_rate_rule(), validation_rule()])
    blind = series("error_rate", ["timeout"] * 25)
    back = series("error_rate", [GOOD], start=T0 + 25 * STEP)
    decisions = sentinel.observe_many(blind + back)
    assert [d.action for d in decisions if d.action is not Action.NONE] == [
        Action.PAGE,
        Action.RESOLVE,
    ]


def fire_evaluate(sentinel: Sentinel) -> Page:
    decisions = sentinel.observe_many(series("ws", [0.3] * 10))
    pages = [d for d in decisions if isinstance(d, Page)]
    assert len(pages) == 1
    return pages[0]


def ws_rule() -> object:
    return rule("websocket_failures", "ws", Threshold(">", 0.1), for_=60.0, playbook="perf")


def test_a_human_approved_rollback_runs_the_playbook_of_the_firing_rule() -> None:
    sentinel = Sentinel([ws_rule()])
    page = fire_evaluate(sentinel)
    assert page.incident is not None
    decision = sentinel.approve(page.incident, "alice", T0 + 120)
    assert isinstance(decision, Rollback)
    assert (decision.playbook, decision.approved_by, decision.incident) == (
        "perf",
        "alice",
        page.incident,
    )
    assert "approved by alice" in decision.reason
    # the same incident cannot be rolled back twice by approval
    again = sentinel.approve(page.incident, "bob", T0 + 130)
    assert isinstance(again, Refused) and "already running" in again.reason


def test_approval_is_refused_in_shadow_mode_and_for_an_incident_that_is_not_open() -> None:
    shadow = Sentinel([ws_rule()], PolicySettings(auto_rollback=False))
    page = fire_evaluate(shadow)
    assert page.incident is not None
    refused = shadow.approve(page.incident, "alice", T0 + 120)
    assert isinstance(refused, Refused) and "shadow mode" in refused.reason
    other = shadow.approve("inc-nope", "alice", T0 + 120)
    assert isinstance(other, Refused) and "not open" in other.reason


def test_approval_overrides_the_cooldown_a_human_decided() -> None:
    sentinel = Sentinel([error_rate_rule()], PolicySettings(cooldown=HOUR))
    fire_error_rate(sentinel, T0)
    sentinel.rollback_completed(T0 + 400)
    sentinel.acknowledge(T0 + 500)
    quiet_until(sentinel, T0 + 36 * STEP, T0 + 1200)
    second = sentinel.observe_many(series("error_rate", [BAD] * 24, start=T0 + 1200))
    held = [d for d in second if isinstance(d, Page)]
    assert [p.kind for p in held] == [PageKind.HELD] and held[0].incident is not None
    decision = sentinel.approve(held[0].incident, "alice", T0 + 1600)
    assert isinstance(decision, Rollback) and decision.playbook == "high_error_rate"
    assert sentinel.policy.last_rollback_at == T0 + 1600


def test_a_dismissed_incident_pages_instead_of_rolling_back() -> None:
    sentinel = Sentinel([ws_rule(), error_rate_rule()])
    page = fire_evaluate(sentinel)
    assert page.incident is not None
    said = sentinel.dismiss(page.incident, "alice", T0 + 100)
    assert isinstance(said, str) and "dismissed by alice" in said
    decisions = sentinel.observe_many(series("error_rate", [BAD] * 24, start=T0 + 100))
    held = [d for d in decisions if isinstance(d, Page) and d.kind is PageKind.HELD]
    assert len(held) == 1 and "alice dismissed" in held[0].reason
    assert not any(d.action is Action.ROLLBACK for d in decisions)


def test_a_veto_window_delays_the_rollback_and_a_veto_cancels_it() -> None:
    sentinel = Sentinel([error_rate_rule()], PolicySettings(veto_window=120.0, cooldown=HOUR))
    decisions = sentinel.observe_many(series("error_rate", [BAD] * 24))
    rollback = next(d for d in decisions if isinstance(d, Rollback))
    assert rollback.not_before == rollback.verdict.at + 120.0
    assert "in 2m unless vetoed" in rollback.reason
    said = sentinel.veto(rollback.incident, "bob", T0 + 310)
    assert isinstance(said, str) and "vetoed by bob" in said
    assert sentinel.policy.last_rollback_at is None  # a vetoed rollback starts no cooldown
    assert not sentinel.policy.rollback_running and not sentinel.policy.awaiting_ack
    assert isinstance(sentinel.veto(rollback.incident, "bob", T0 + 320), Refused)


def test_without_a_veto_window_the_rollback_is_immediate() -> None:
    sentinel = Sentinel([error_rate_rule()])
    rollback = next(d for d in fire_error_rate(sentinel, T0) if isinstance(d, Rollback))
    assert rollback.not_before is None and rollback.approved_by is None


def test_policy_state_survives_a_restart_and_recovery_closes_the_restored_incident() -> None:
    before = Sentinel([error_rate_rule()], PolicySettings(cooldown=HOUR))
    decisions = before.observe_many(series("error_rate", [BAD] * 24))
    rollback = next(d for d in decisions if isinstance(d, Rollback))
    saved = json.loads(json.dumps(before.snapshot()))  # what the state store keeps

    after = Sentinel([error_rate_rule()], PolicySettings(cooldown=HOUR))
    assert after.restore(saved) is None
    policy = after.policy
    assert policy.incident is not None and policy.incident.id == rollback.incident
    assert (policy.last_rollback_at, policy.awaiting_ack) == (rollback.verdict.at, True)
    # still firing after the restart: no second rollback, the incident is joined
    again = after.observe_many(series("error_rate", [BAD] * 4, start=T0 + 24 * STEP))
    assert not any(isinstance(d, Rollback) for d in again)
    # recovery resolves the restored rule and closes the restored incident
    good = after.observe_many(series("error_rate", [GOOD] * 4, start=T0 + 28 * STEP))
    closing = [d for d in good if isinstance(d, Resolve)]
    assert [(c.incident, c.incident_closed) for c in closing] == [(rollback.incident, True)]


def test_a_restored_incident_whose_rules_are_gone_is_closed_and_named() -> None:
    before = Sentinel([error_rate_rule()])
    before.observe_many(series("error_rate", [BAD] * 24))
    saved = before.snapshot()
    after = Sentinel([error_rate_rule(name="renamed_rule")])
    closed = after.restore(saved)
    assert closed is not None and after.policy.incident is None
    assert after.policy.last_rollback_at is not None  # the cooldown still holds
