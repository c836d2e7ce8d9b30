"""The alert desk: decisions become alerts and stored pages; answers are recorded once; the
escalation path is followed on an injected clock; a rejected answer changes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from builders import STEP, T0, error_rate_rule, rule, series
from spek_sentinel.domain.alerts import AlertError, AlertState, Answer, UnknownAlertError
from spek_sentinel.domain.decisions import Decision, Page, Resolve, Rollback
from spek_sentinel.domain.escalation import EscalationLevel, EscalationPolicy
from spek_sentinel.domain.rules import Threshold
from spek_sentinel.domain.settings import PolicySettings
from spek_sentinel.engine.sentinel import Sentinel
from spek_sentinel.paging.base import NoticeKind, Urgency
from spek_sentinel.paging.desk import AlertDesk
from spek_sentinel.store.open import StateLocation

MINUTE = 60.0
RUNBOOK_PATH = EscalationPolicy(
    levels=(
        EscalationLevel("development_team", ("#spek-oncall",), ("slack", "pagerduty"), 0.0),
        EscalationLevel("lead_developer", ("lead@spek.example",), ("lead_webhook",), 30 * MINUTE),
        EscalationLevel("project_manager", ("pm@spek.example",), ("pm_webhook",), 60 * MINUTE),
    ),
    renotify_every=15 * MINUTE,
    ack_timeout=20 * MINUTE,
)


def ws_rule() -> object:
    return rule("websocket_failures", "ws", Threshold(">", 0.1), for_=60.0, playbook="perf")


def evaluate_page(sentinel: Sentinel) -> Page:
    pages = [d for d in sentinel.observe_many(series("ws", [0.3] * 6)) if isinstance(d, Page)]
    assert len(pages) == 1
    return pages[0]


def sent(desk: AlertDesk) -> list[tuple[str, NoticeKind, str]]:
    return [(pager, n.kind, n.summary) for pager, n in desk.outbox.notices()]


@pytest.fixture
def desk(state: StateLocation) -> Iterator[AlertDesk]:
    """On SQLite and on PostgreSQL: the same contract."""
    opened = AlertDesk.open(state, RUNBOOK_PATH, notice_pagers=("status_page",))
    yield opened
    opened.close()


def test_an_evaluate_breach_opens_one_alert_paged_on_every_first_level_pager(
    desk: AlertDesk,
) -> None:
    page = evaluate_page(Sentinel([ws_rule()]))
    alert = desk.handle(page, T0 + 60)
    assert alert is not None
    assert (alert.state, alert.dedup_key, alert.urgency) == (
        AlertState.OPEN,
        page.incident,
        Urgency.WARNING.value,
    )
    assert [(p, k) for p, k, _ in sent(desk)] == [
        ("slack", NoticeKind.TRIGGER),
        ("pagerduty", NoticeKind.TRIGGER),
    ]
    [(_, notice)] = desk.outbox.notices()[:1]
    assert (notice.rule, notice.threshold, notice.value) == ("websocket_failures", "> 0.1", "0.3")
    assert notice.dedup_key == page.incident


def test_rules_firing_together_join_one_alert_and_a_closed_incident_resolves_it(
    desk: AlertDesk,
) -> None:
    sentinel = Sentinel([ws_rule(), rule("slow", "latency", Threshold(">", 2.0), for_=60.0)])
    decisions: list[Decision] = []
    decisions += sentinel.observe_many(series("ws", [0.3] * 6) + series("latency", [3.0] * 6))
    alerts = {desk.handle(d, T0 + 90).id for d in decisions if isinstance(d, Page)}  # type: ignore[union-attr]
    assert len(alerts) == 1
    [alert] = desk.store.alerts()
    assert alert.rules == ("websocket_failures", "slow")
    later = T0 + 6 * STEP
    resolved = sentinel.observe_many(series("ws", [0.0] * 2, start=later))
    resolved += sentinel.observe_many(series("latency", [0.1] * 2, start=later))
    for decision in resolved:
        desk.handle(decision, later + 30)
    closing = [d for d in resolved if isinstance(d, Resolve) and d.incident_closed]
    assert len(closing) == 1
    [after] = desk.store.alerts(include_resolved=True)
    assert after.state is AlertState.RESOLVED and "incident" in after.resolution
    kinds = [(p, k) for p, k, _ in sent(desk)]
    assert kinds[-2:] == [("slack", NoticeKind.RESOLVE), ("pagerduty", NoticeKind.RESOLVE)]


def test_an_unacknowledged_alert_escalates_along_the_runbook_path(desk: AlertDesk) -> None:
    alert = desk.handle(evaluate_page(Sentinel([ws_rule()])), T0)
    assert alert is not None
    assert desk.escalate(T0 + 14 * MINUTE) == []
    [reminder] = desk.escalate(T0 + 15 * MINUTE)
    assert reminder.step == "renotify"
    [step] = desk.escalate(T0 + 30 * MINUTE)
    assert (step.step, step.level) == ("escalate", 1)
    assert desk.store.get(alert.id).level == 1  # type: ignore[union-attr]
    escalated = [(p, s) for p, k, s in sent(desk) if s.startswith("ESCALATED")]
    assert escalated == [
        ("lead_webhook", escalated[0][1]),
    ]
    assert "lead_developer (lead@spek.example)" in escalated[0][1]
    [step] = desk.escalate(T0 + 61 * MINUTE)
    assert (step.step, step.level) == ("escalate", 2)


def test_acknowledging_stops_escalation_until_the_acknowledgement_times_out(
    desk: AlertDesk,
) -> None:
    alert = desk.handle(evaluate_page(Sentinel([ws_rule()])), T0)
    assert alert is not None
    acked, action = desk.answer(
        alert.id, Answer.ACKNOWLEDGE, by="alice", note="looking", source="cli", now=T0 + 60
    )
    assert (acked.state, acked.acked_by, acked.ack_note) == (
        AlertState.ACKNOWLEDGED,
        "alice",
        "looking",
    )
    assert [(p, k) for p, k, _ in sent(desk)][-2:] == [
        ("slack", NoticeKind.ACKNOWLEDGE),
        ("pagerduty", NoticeKind.ACKNOWLEDGE),
    ]
    assert desk.pending_actions() == [action]
    assert desk.escalate(T0 + 19 * MINUTE) == []
    [reopened] = desk.escalate(T0 + 21 * MINUTE)
    assert reopened.step == "ack_expired"
    assert desk.store.get(alert.id).state is AlertState.OPEN  # type: ignore[union-attr]
    # escalation resumes where it stood: unresolved 30 minutes after it opened -> level 2
    assert [(s.step, s.level) for s in desk.escalate(T0 + 30 * MINUTE)] == [("escalate", 1)]


def test_rejected_answers_change_nothing(desk: AlertDesk) -> None:
    alert = desk.handle(evaluate_page(Sentinel([ws_rule()])), T0)
    assert alert is not None
    before = (desk.store.alerts(include_resolved=True), desk.outbox.notices())
    with pytest.raises(UnknownAlertError) as unknown:
        desk.answer(999, Answer.ACKNOWLEDGE, by="alice", note="", source="api", now=T0)
    assert unknown.value.status == 404
    with pytest.raises(AlertError) as nobody:
        desk.answer(alert.id, Answer.ACKNOWLEDGE, by=" ", note="", source="api", now=T0)
    assert nobody.value.status == 400
    blind = Sentinel([error_rate_rule()]).observe_many(series("error_rate", ["timeout"] * 25))
    blind_alert = desk.handle(next(d for d in blind if isinstance(d, Page)), T0)
    assert blind_alert is not None
    before = (desk.store.alerts(include_resolved=True), desk.outbox.notices())
    with pytest.raises(AlertError) as conflict:
        desk.answer(blind_alert.id, Answer.ROLLBACK, by="alice", note="", source="api", now=T0)
    assert conflict.value.status == 409
    assert (desk.store.alerts(include_resolved=True), desk.outbox.notices()) == before
    assert desk.pending_actions() == []


def test_a_veto_window_rollback_waits_and_dismissing_vetoes_it(desk: AlertDesk) -> None:
    sentinel = Sentinel([error_rate_rule()], PolicySettings(veto_window=120.0))
    rollback = next(
        d
        for d in sentinel.observe_many(series("error_rate", [0.08] * 24))
        if isinstance(d, Rollback)
    )
    alert = desk.handle(rollback, rollback.verdict.at)
    assert alert is not None and alert.rollback_at == rollback.not_before
    assert alert.urgency == Urgency.CRITICAL.value and "unless vetoed" in alert.summary
    assert desk.store.due_rollbacks(rollback.verdict.at + 60) == []
    assert [a.id for a in desk.store.due_rollbacks(rollback.verdict.at + 120)] == [alert.id]
    vetoed, _ = desk.answer(
        alert.id, Answer.DISMISS, by="bob", note="known noise", source="cli", now=T0 + 400
    )
    assert vetoed.rollback_at is None
    assert desk.store.due_rollbacks(rollback.verdict.at + 120) == []
    assert "pending rollback vetoed" in sent(desk)[-1][2]


def test_alerts_and_unapplied_answers_survive_a_restart(state: StateLocation) -> None:
    first = AlertDesk.open(state, RUNBOOK_PATH)
    alert = first.handle(evaluate_page(Sentinel([ws_rule()])), T0)
    assert alert is not None
    first.answer(alert.id, Answer.ROLLBACK, by="alice", note="", source="api", now=T0 + 5)
    first.close()
    second = AlertDesk.open(state, RUNBOOK_PATH)
    try:
        [pending] = second.pending_actions()
        assert (pending.alert_id, pending.answer, pending.by) == (
            alert.id,
            Answer.ROLLBACK,
            "alice",
        )
        second.mark_applied(pending, "rollback started", T0 + 6)
        assert second.pending_actions() == []
        assert second.find(alert.dedup_key).id == alert.id
    finally:
        second.close()


def test_stakeholder_notices_go_to_the_notice_pagers_only(desk: AlertDesk) -> None:
    desk.inform("rollback of inc-1 started with playbook high_error_rate", "inc-1", T0)
    [(pager, notice)] = desk.outbox.notices()
    assert (pager, notice.kind, notice.urgency) == ("status_page", NoticeKind.INFO, Urgency.INFO)


def test_a_veto_after_the_rollback_started_is_refused_and_records_nothing(
    desk: AlertDesk,
) -> None:
    sentinel = Sentinel([error_rate_rule()], PolicySettings(veto_window=120.0))
    rollback = next(
        d
        for d in sentinel.observe_many(series("error_rate", [0.08] * 24))
        if isinstance(d, Rollback)
    )
    alert = desk.handle(rollback, rollback.verdict.at)
    assert alert is not None
    desk.rollback_started(alert, rollback.verdict.at + 120)  # the daemon started it meanwhile
    with pytest.raises(AlertError) as late:
        desk.answer(
            alert.id, Answer.DISMISS, by="bob", note="", source="cli", now=T0, veto_only=True
        )
    assert late.value.status == 409 and "has started" in str(late.value)
    assert desk.pending_actions() == []
