"""The alert desk: the policy's decisions become alerts and pages; humans' answers are recorded.

Every change to an alert and the pages it causes are written in one transaction to the state
file (the outbox sends them later and retries), so a crash loses neither. Humans may answer
from another process (the CLI) or the HTTP API: their answers are stored as actions, which
the daemon carries out once each (``pending_actions`` / ``mark_applied``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from spek_sentinel.domain.alerts import (
    Alert,
    AlertError,
    AlertState,
    Answer,
    HumanAction,
    UnknownAlertError,
    check_answerable,
)
from spek_sentinel.domain.decisions import Decision, Page, PageKind, Resolve, Rollback
from spek_sentinel.domain.escalation import EscalationPolicy
from spek_sentinel.domain.rules import Severity
from spek_sentinel.engine.escalation import EscalationDue, Step, escalation_due, levels_reached
from spek_sentinel.paging.base import Notice, NoticeKind, Urgency
from spek_sentinel.paging.outbox import Outbox, notice_from_json, notice_to_json
from spek_sentinel.paging.text import condition_text, value_text
from spek_sentinel.store.alerts import AlertStore
from spek_sentinel.store.db import STATE_FILE, StateDb, sqlite_or_given
from spek_sentinel.store.open import StateSource, open_state

log = logging.getLogger(__name__)

_CRITICAL_KINDS = {PageKind.BLIND, PageKind.VALIDATION, PageKind.HELD, PageKind.SHADOW}


def alert_key(decision: Page | Rollback | Resolve) -> str | None:
    """The dedup key of the alert a decision belongs to (None: no alert)."""
    verdict = decision.verdict
    if isinstance(decision, Page) and decision.kind is PageKind.BLIND:
        return f"blind:{verdict.rule.signal}"
    if isinstance(decision, Resolve) and verdict.sight_restored:
        return f"blind:{verdict.rule.signal}"
    if verdict.rule.phase == "post_rollback":
        return f"validation:{verdict.rule.name}"
    return decision.incident


def _urgency(decision: Page | Rollback) -> Urgency:
    if isinstance(decision, Rollback) or decision.kind in _CRITICAL_KINDS:
        return Urgency.CRITICAL
    if decision.verdict.rule.severity is Severity.IMMEDIATE:
        return Urgency.CRITICAL
    return Urgency.WARNING


def _notice(decision: Page | Rollback, key: str, at: float) -> Notice:
    verdict = decision.verdict
    rule = verdict.rule
    return Notice(
        kind=NoticeKind.TRIGGER,
        dedup_key=key,
        summary=decision.reason,
        urgency=_urgency(decision),
        at=at,
        rule=rule.name,
        value=value_text(verdict.value),
        threshold=condition_text(rule.condition),
        playbook=decision.playbook if isinstance(decision, Rollback) else rule.playbook,
        incident=decision.incident,
        evidence=verdict.evidence,
    )


class AlertDesk:
    def __init__(
        self,
        db: StateDb | Path,
        escalation: EscalationPolicy,
        notice_pagers: Sequence[str] = (),
    ) -> None:
        """``db``: an open state database (the desk closes it), or the SQLite file's path. The
        alerts and the outbox share it: an alert's change and its pages commit together."""
        self._db = sqlite_or_given(db)
        self.store = AlertStore(self._db)
        self.outbox = Outbox(self._db, shared=True)
        self.escalation = escalation
        self.notice_pagers = tuple(notice_pagers)

    @classmethod
    def in_dir(
        cls, state_dir: Path, escalation: EscalationPolicy, notice_pagers: Sequence[str] = ()
    ) -> AlertDesk:
        return cls(state_dir / STATE_FILE, escalation, notice_pagers)

    @classmethod
    def open(
        cls,
        source: StateSource,
        escalation: EscalationPolicy,
        notice_pagers: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> AlertDesk:
        """On the state database the config names (``[sentinel]``)."""
        return cls(open_state(source, environ), escalation, notice_pagers)

    @property
    def db(self) -> StateDb:
        """The state database the desk writes to (shared by its alerts and its outbox)."""
        return self._db

    def close(self) -> None:
        self._db.close()

    # -- decisions ----------------------------------------------------------------------------

    def handle(self, decision: Decision, now: float) -> Alert | None:
        """Open, join or resolve the alert a decision is about; enqueue what must be said."""
        if isinstance(decision, Page | Rollback):
            return self._trigger(decision, now)
        if isinstance(decision, Resolve):
            return self._resolve(decision, now)
        return None

    def _trigger(self, decision: Page | Rollback, now: float) -> Alert:
        key = alert_key(decision)
        assert key is not None, "a page or rollback always names its alert"
        return self._open_or_join(
            key,
            _notice(decision, key, now),
            kind="rollback" if isinstance(decision, Rollback) else decision.kind.value,
            rule=decision.verdict.rule.name,
            rollback_at=decision.not_before if isinstance(decision, Rollback) else None,
            now=now,
        )

    def raise_alert(
        self, key: str, summary: str, *, incident: str | None, now: float, evidence: str = ""
    ) -> Alert:
        """A critical alert that no rule raised: a rollback halted, a backup failed to verify,
        the downtime budget was exceeded."""
        notice = Notice(
            kind=NoticeKind.TRIGGER,
            dedup_key=key,
            summary=summary,
            urgency=Urgency.CRITICAL,
            at=now,
            incident=incident,
            evidence=evidence,
        )
        return self._open_or_join(key, notice, kind=key.partition(":")[0], rule=None, now=now)

    def _open_or_join(
        self,
        key: str,
        notice: Notice,
        *,
        kind: str,
        rule: str | None,
        now: float,
        rollback_at: float | None = None,
    ) -> Alert:
        with self.store.transaction():
            alert = self.store.live(key)
            if alert is None:
                alert = self.store.insert(
                    Alert(
                        id=0,
                        dedup_key=key,
                        incident=notice.incident,
                        kind=kind,
                        urgency=notice.urgency.value,
                        summary=notice.summary,
                        rules=(rule,) if rule else (),
                        playbook=notice.playbook,
                        state=AlertState.OPEN,
                        opened_at=now,
                        escalation_started_at=now,
                        level=0,
                        notified_at=now,
                        rollback_at=rollback_at,
                    ),
                    notice_to_json(notice),
                )
                log.info("alert %s opened (%s): %s", alert.id, key, notice.summary)
            else:
                rules = alert.rules
                if rule is not None and rule not in rules:
                    rules = (*rules, rule)
                critical = Urgency.CRITICAL.value in (alert.urgency, notice.urgency.value)
                notice = replace(notice, urgency=Urgency.CRITICAL if critical else notice.urgency)
                alert = replace(
                    alert,
                    kind=kind if kind == "rollback" else alert.kind,
                    urgency=notice.urgency.value,
                    summary=notice.summary,
                    rules=rules,
                    playbook=alert.playbook or notice.playbook,
                    notified_at=now,
                    rollback_at=rollback_at if rollback_at is not None else alert.rollback_at,
                )
                self.store.update(alert, notice_to_json(notice))
                log.info("alert %s updated (%s): %s", alert.id, key, notice.summary)
            self._send(notice, levels_reached(self.escalation, alert.level), now)
        return alert

    def _resolve(self, decision: Resolve, now: float) -> Alert | None:
        key = alert_key(decision)
        closes = decision.verdict.sight_restored or decision.verdict.rule.phase == "post_rollback"
        if key is None or not (decision.incident_closed or closes):
            return None
        return self.resolve(key, decision.reason, now)

    def resolve(self, key: str, reason: str, now: float) -> Alert | None:
        """Resolve the live alert with ``key`` for a reason no decision carries (a restart)."""
        with self.store.transaction():
            alert = self.store.live(key)
            if alert is None:
                return None
            alert = replace(alert, state=AlertState.RESOLVED, resolved_at=now, resolution=reason)
            self.store.update(alert)
            self._say(alert, NoticeKind.RESOLVE, f"resolved: {reason}", now)
        log.info("alert %s resolved: %s", alert.id, reason)
        return alert

    # -- humans -------------------------------------------------------------------------------

    def find(self, reference: int | str) -> Alert:
        """An alert by id, or by dedup key (the newest with it); UnknownAlertError otherwise."""
        alert: Alert | None
        if isinstance(reference, int) or reference.isdigit():
            alert = self.store.get(int(reference))
        else:
            alert = self.store.live(reference) or self.store.latest(reference)
        if alert is None:
            raise UnknownAlertError(reference)
        return alert

    def answer(
        self,
        reference: int | str,
        answer: Answer,
        *,
        by: str,
        note: str,
        source: str,
        now: float,
        veto_only: bool = False,
    ) -> tuple[Alert, HumanAction]:
        """Record a human's answer: the alert is acknowledged (escalation stops) and the answer
        is kept for the daemon to carry out. "dismiss" also vetoes a rollback still waiting;
        ``veto_only`` refuses (409) when none waits any more, checked in the same transaction
        as the answer, so a rollback that started meanwhile is never reported as vetoed."""
        if not by.strip():
            raise AlertError("say who answers (by)", 400)
        with self.store.transaction():
            alert = self.find(reference)
            check_answerable(alert, answer)
            if veto_only and alert.rollback_at is None:
                raise AlertError(
                    f"alert {alert.id} has no rollback waiting in its veto window "
                    "(none was decided, or it has started)",
                    409,
                )
            vetoed = answer is Answer.DISMISS and alert.rollback_at is not None
            acked = alert.state is AlertState.OPEN
            alert = replace(
                alert,
                state=AlertState.ACKNOWLEDGED if acked else alert.state,
                acked_by=by if acked or alert.acked_by is None else alert.acked_by,
                acked_at=now if acked or alert.acked_at is None else alert.acked_at,
                ack_note=note or alert.ack_note,
                rollback_at=None if vetoed else alert.rollback_at,
            )
            self.store.update(alert)
            action = self.store.record_action(
                alert.id, answer, by=by, note=note, source=source, at=now
            )
            said = {
                Answer.ACKNOWLEDGE: f"acknowledged by {by}",
                Answer.ROLLBACK: f"{by} approved a rollback",
                Answer.DISMISS: f"dismissed by {by}"
                + (" (pending rollback vetoed)" if vetoed else ""),
            }[answer]
            if note:
                said += f": {note}"
            # a second acknowledgement (often the pager echoing ours back) is recorded, not
            # re-sent: that would ping-pong with the pager
            if acked or answer is not Answer.ACKNOWLEDGE:
                self._say(alert, NoticeKind.ACKNOWLEDGE, said, now)
        log.info("alert %s %s (via %s)", alert.id, said, source)
        return alert, action

    def pending_actions(self) -> list[HumanAction]:
        return self.store.pending_actions()

    def mark_applied(self, action: HumanAction, outcome: str, now: float) -> None:
        self.store.mark_applied(action.id, outcome, now)
        log.info("answer %s to alert %s carried out: %s", action.answer, action.alert_id, outcome)

    def rollback_started(self, alert: Alert, now: float) -> None:
        """The rollback an alert was waiting for has started: the veto window is over."""
        with self.store.transaction():
            current = self.store.get(alert.id)
            if current is not None and current.rollback_at is not None:
                self.store.update(replace(current, rollback_at=None))

    # -- time ---------------------------------------------------------------------------------

    def escalate(self, now: float) -> list[EscalationDue]:
        """Escalate, remind or re-open every alert that is due; returns what was done."""
        done = []
        for alert in self.store.alerts():
            due = escalation_due(alert, self.escalation, now)
            if due is None:
                continue
            with self.store.transaction():
                self._apply(alert, due, now)
            log.info("alert %s: %s", alert.id, due.reason)
            done.append(due)
        return done

    def _apply(self, alert: Alert, due: EscalationDue, now: float) -> None:
        notice = notice_from_json(self.store.notice(alert.id))
        level = self.escalation.levels[due.level]
        contacts = f" ({', '.join(level.contacts)})" if level.contacts else ""
        if due.step is Step.ESCALATE:
            reached = levels_reached(self.escalation, due.level)
            before = levels_reached(self.escalation, alert.level)
            pagers = tuple(p for p in reached if p not in before) or level.pagers
            alert = replace(alert, level=due.level, notified_at=now)
            prefix = f"ESCALATED to {level.name}{contacts}"
        elif due.step is Step.RENOTIFY:
            pagers = levels_reached(self.escalation, alert.level)
            alert = replace(alert, notified_at=now)
            prefix = "REMINDER, unacknowledged"
        else:
            pagers = levels_reached(self.escalation, alert.level)
            # escalation resumes where it stood: the runbook counts "not resolved in 30
            # minutes" from the start, not from the acknowledgement
            alert = replace(alert, state=AlertState.OPEN, notified_at=now)
            prefix = f"RE-OPENED, acknowledgement by {alert.acked_by} timed out"
        self.store.update(alert)
        self._send(replace(notice, summary=f"{prefix}: {notice.summary}", at=now), pagers, now)

    # -- saying things ------------------------------------------------------------------------

    def inform(self, summary: str, incident: str | None, now: float, evidence: str = "") -> None:
        """A stakeholder notice (rollback started, phase done, finished): information only."""
        if not self.notice_pagers:
            return
        notice = Notice(
            kind=NoticeKind.INFO,
            dedup_key=f"info:{incident or 'sentinel'}",
            summary=summary,
            urgency=Urgency.INFO,
            at=now,
            incident=incident,
            evidence=evidence,
        )
        with self.store.transaction():
            self.outbox.enqueue(notice, self.notice_pagers, now)

    def _say(self, alert: Alert, kind: NoticeKind, summary: str, now: float) -> None:
        """Tell every pager that was paged for ``alert`` that its state changed."""
        base = notice_from_json(self.store.notice(alert.id))
        notice = replace(base, kind=kind, summary=summary, at=now)
        self._send(notice, levels_reached(self.escalation, alert.level), now)

    def _send(self, notice: Notice, pagers: Sequence[str], now: float) -> None:
        if pagers:
            self.outbox.enqueue(notice, pagers, now)
        else:
            log.warning("no pager configured: %s not sent: %s", notice.kind, notice.summary)
