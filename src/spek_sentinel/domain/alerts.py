"""Alerts: what a human is asked to look at, and what they answered.

One alert per incident (its dedup key is the incident id), one per blind signal
(``blind:<signal>``) and one per failing post-rollback check (``validation:<rule>``): rules that
fire together join their incident's alert. States go open -> acknowledged -> resolved; a
resolved condition resolves the alert whatever its state. An acknowledgement whose timeout
passes re-opens the alert, and escalation resumes from where it stood.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class AlertState(enum.StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Answer(enum.StrEnum):
    """What a human may answer to an alert. Every answer acknowledges it."""

    ACKNOWLEDGE = "acknowledge"
    ROLLBACK = "rollback"  # "roll back now": the policy runs the incident's playbook
    DISMISS = "dismiss"  # no automatic rollback in this incident; vetoes a pending one


@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    dedup_key: str
    incident: str | None
    kind: str  # the page kind that opened it ("breach", "blind", ...) or "rollback"
    urgency: str  # "critical" | "warning"
    summary: str
    rules: tuple[str, ...]
    playbook: str | None
    state: AlertState
    opened_at: float
    escalation_started_at: float  # opened, or re-opened after an acknowledgement timed out
    level: int  # index of the highest escalation level paged
    notified_at: float  # the last time its pagers were (re)notified
    acked_by: str | None = None
    acked_at: float | None = None
    ack_note: str = ""
    resolved_at: float | None = None
    resolution: str = ""
    rollback_at: float | None = None  # a rollback waits for its veto window until then

    @property
    def unacknowledged(self) -> bool:
        return self.state is AlertState.OPEN


@dataclass(frozen=True, slots=True)
class HumanAction:
    """An answer a human gave, kept until the daemon has carried it out."""

    id: int
    alert_id: int
    answer: Answer
    by: str
    note: str
    source: str  # "cli" | "api" | "pagerduty" | "slack"
    at: float
    applied_at: float | None = None
    outcome: str = ""


class AlertError(Exception):
    """A human's request about an alert cannot be honoured; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class UnknownAlertError(AlertError):
    def __init__(self, alert_id: int | str) -> None:
        super().__init__(f"no alert {alert_id}", 404)


def check_answerable(alert: Alert, answer: Answer) -> None:
    """Raise AlertError (409) when ``answer`` makes no sense for ``alert`` in its state."""
    if answer is Answer.ACKNOWLEDGE and alert.state is AlertState.ACKNOWLEDGED:
        return  # acknowledging twice is harmless: the second note is recorded
    if answer is not Answer.ACKNOWLEDGE and alert.incident is None:
        raise AlertError(
            f"alert {alert.id} is not about an incident ({alert.dedup_key}): "
            f"only 'acknowledge' applies",
            409,
        )
    if answer is Answer.ROLLBACK and alert.state is AlertState.RESOLVED:
        raise AlertError(
            f"alert {alert.id} is resolved ({alert.resolution}): nothing to roll back", 409
        )
