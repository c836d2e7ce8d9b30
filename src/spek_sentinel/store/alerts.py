"""Alerts and the answers humans gave them, in the state database.

The database connection is shared with the outbox so that an alert's change and the page that
reports it are written in one transaction: either both are stored or neither.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from spek_sentinel.domain.alerts import Alert, AlertState, Answer, HumanAction
from spek_sentinel.store.db import StateDb

_ALERT_COLUMNS = (
    "id, dedup_key, incident, kind, urgency, summary, rules, playbook, state, opened_at,"
    " escalation_started_at, level, notified_at, acked_by, acked_at, ack_note, resolved_at,"
    " resolution, rollback_at"
)
_ACTION_COLUMNS = "id, alert_id, answer, actor, note, source, at, applied_at, outcome"


def _alert(row: Sequence[Any]) -> Alert:
    return Alert(
        id=int(row[0]),
        dedup_key=row[1],
        incident=row[2],
        kind=row[3],
        urgency=row[4],
        summary=row[5],
        rules=tuple(json.loads(row[6])),
        playbook=row[7],
        state=AlertState(row[8]),
        opened_at=row[9],
        escalation_started_at=row[10],
        level=int(row[11]),
        notified_at=row[12],
        acked_by=row[13],
        acked_at=row[14],
        ack_note=row[15],
        resolved_at=row[16],
        resolution=row[17],
        rollback_at=row[18],
    )


def _action(row: Sequence[Any]) -> HumanAction:
    return HumanAction(
        id=int(row[0]),
        alert_id=int(row[1]),
        answer=Answer(row[2]),
        by=row[3],
        note=row[4],
        source=row[5],
        at=row[6],
        applied_at=row[7],
        outcome=row[8],
    )


class AlertStore:
    def __init__(self, db: StateDb) -> None:
        """The caller owns ``db``."""
        self._db = db

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (nested calls join the outer one)."""
        with self._db.transaction():
            yield

    def _query(self, where: str, params: Sequence[object] = ()) -> list[Alert]:
        rows = self._db.execute(
            f"SELECT {_ALERT_COLUMNS} FROM alerts {where}",  # noqa: S608 (constant parts)
            params,
        ).rows
        return [_alert(row) for row in rows]

    def get(self, alert_id: int) -> Alert | None:
        found = self._query("WHERE id = ?", (alert_id,))
        return found[0] if found else None

    def live(self, dedup_key: str) -> Alert | None:
        """The alert with this key that is not resolved, if any."""
        found = self._query("WHERE dedup_key = ? AND state != 'resolved'", (dedup_key,))
        return found[0] if found else None

    def latest(self, dedup_key: str) -> Alert | None:
        found = self._query("WHERE dedup_key = ? ORDER BY id DESC LIMIT 1", (dedup_key,))
        return found[0] if found else None

    def alerts(self, include_resolved: bool = False, limit: int = 200) -> list[Alert]:
        if include_resolved:
            return self._query("ORDER BY id DESC LIMIT ?", (limit,))
        return self._query("WHERE state != 'resolved' ORDER BY id DESC LIMIT ?", (limit,))

    def due_rollbacks(self, now: float) -> list[Alert]:
        return self._query("WHERE rollback_at IS NOT NULL AND rollback_at <= ? ORDER BY id", (now,))

    def notice(self, alert_id: int) -> str:
        row = self._db.execute("SELECT notice FROM alerts WHERE id = ?", (alert_id,)).one()
        return str(row[0]) if row else ""

    def insert(self, alert: Alert, notice: str) -> Alert:
        new_id = self._db.insert(
            "INSERT INTO alerts (dedup_key, incident, kind, urgency, summary, rules, playbook,"
            " state, opened_at, escalation_started_at, level, notified_at, rollback_at,"
            " notice) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                alert.dedup_key,
                alert.incident,
                alert.kind,
                alert.urgency,
                alert.summary,
                json.dumps(list(alert.rules)),
                alert.playbook,
                alert.state.value,
                alert.opened_at,
                alert.escalation_started_at,
                alert.level,
                alert.notified_at,
                alert.rollback_at,
                notice,
            ),
        )
        return replace(alert, id=new_id)

    def update(self, alert: Alert, notice: str | None = None) -> None:
        self._db.execute(
            "UPDATE alerts SET incident = ?, kind = ?, urgency = ?, summary = ?, rules = ?,"
            " playbook = ?, state = ?, escalation_started_at = ?, level = ?,"
            " notified_at = ?, acked_by = ?, acked_at = ?, ack_note = ?, resolved_at = ?,"
            " resolution = ?, rollback_at = ?, notice = coalesce(?, notice) WHERE id = ?",
            (
                alert.incident,
                alert.kind,
                alert.urgency,
                alert.summary,
                json.dumps(list(alert.rules)),
                alert.playbook,
                alert.state.value,
                alert.escalation_started_at,
                alert.level,
                alert.notified_at,
                alert.acked_by,
                alert.acked_at,
                alert.ack_note,
                alert.resolved_at,
                alert.resolution,
                alert.rollback_at,
                notice,
                alert.id,
            ),
        )

    def record_action(
        self, alert_id: int, answer: Answer, *, by: str, note: str, source: str, at: float
    ) -> HumanAction:
        new_id = self._db.insert(
            "INSERT INTO alert_actions (alert_id, answer, actor, note, source, at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (alert_id, answer.value, by, note, source, at),
        )
        return HumanAction(new_id, alert_id, answer, by, note, source, at)

    def pending_actions(self) -> list[HumanAction]:
        rows = self._db.execute(
            f"SELECT {_ACTION_COLUMNS} FROM alert_actions"  # noqa: S608 (constant)
            " WHERE applied_at IS NULL ORDER BY id"
        ).rows
        return [_action(row) for row in rows]

    def actions(self, alert_id: int) -> list[HumanAction]:
        rows = self._db.execute(
            f"SELECT {_ACTION_COLUMNS} FROM alert_actions"  # noqa: S608 (constant)
            " WHERE alert_id = ? ORDER BY id",
            (alert_id,),
        ).rows
        return [_action(row) for row in rows]

    def mark_applied(self, action_id: int, outcome: str, at: float) -> None:
        self._db.execute(
            "UPDATE alert_actions SET applied_at = ?, outcome = ? WHERE id = ?",
            (at, outcome, action_id),
        )

    def counts(self) -> tuple[int, int]:
        """(alerts not resolved, alerts open and unacknowledged)."""
        row = self._db.execute(
            "SELECT count(*), coalesce(sum(CASE WHEN state = 'open' THEN 1 ELSE 0 END), 0)"
            " FROM alerts WHERE state != 'resolved'"
        ).one()
        assert row is not None
        return int(row[0]), int(row[1])
