"""Escalation: which alerts need whom paged now. Pure; the clock is an argument.

An open alert pages the first level at once; each further level is paged once the alert has
been open (unacknowledged) for that level's ``after``. Open alerts are re-notified every
``renotify_every`` at the levels reached. Acknowledging stops all of it; an acknowledgement
older than ``ack_timeout`` (when set) re-opens the alert and escalation resumes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from spek_sentinel.domain.alerts import Alert, AlertState
from spek_sentinel.domain.escalation import EscalationPolicy


class Step(enum.StrEnum):
    ESCALATE = "escalate"  # page a higher level
    RENOTIFY = "renotify"  # remind the levels already paged
    ACK_EXPIRED = "ack_expired"  # re-open: the acknowledgement timed out


@dataclass(frozen=True, slots=True)
class EscalationDue:
    alert_id: int
    step: Step
    level: int  # the level to page (for ESCALATE, the new one; else the level reached)
    reason: str


def levels_reached(policy: EscalationPolicy, level: int) -> tuple[str, ...]:
    """The pagers of every level up to ``level``, each once, in order."""
    pagers: list[str] = []
    for reached in policy.levels[: level + 1]:
        pagers.extend(p for p in reached.pagers if p not in pagers)
    return tuple(pagers)


def level_due(policy: EscalationPolicy, open_for: float) -> int:
    """The highest level whose delay has passed for an alert open this long."""
    due = 0
    for index, level in enumerate(policy.levels):
        if open_for >= level.after:
            due = index
    return due


def escalation_due(alert: Alert, policy: EscalationPolicy, now: float) -> EscalationDue | None:
    if alert.state is AlertState.RESOLVED or not policy.levels:
        return None
    if alert.state is AlertState.ACKNOWLEDGED:
        timeout = policy.ack_timeout
        if timeout > 0 and alert.acked_at is not None and now - alert.acked_at >= timeout:
            return EscalationDue(
                alert.id,
                Step.ACK_EXPIRED,
                alert.level,
                f"acknowledged by {alert.acked_by} but still unresolved after the "
                f"acknowledgement timeout of {timeout:g}s: re-opened",
            )
        return None
    target = level_due(policy, now - alert.escalation_started_at)
    if target > alert.level:
        level = policy.levels[target]
        return EscalationDue(
            alert.id,
            Step.ESCALATE,
            target,
            f"unacknowledged for {now - alert.escalation_started_at:.0f}s: escalated to "
            f"{level.name}",
        )
    every = policy.renotify_every
    if every > 0 and now - alert.notified_at >= every:
        return EscalationDue(
            alert.id,
            Step.RENOTIFY,
            alert.level,
            f"still unacknowledged: reminder after {now - alert.notified_at:.0f}s",
        )
    return None
